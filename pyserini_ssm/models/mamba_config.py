"""Mamba configs: state-spaces (mamba_ssm `config.json`) <-> transformers `MambaConfig`/`Mamba2Config`.

Absent state-spaces keys take mamba_ssm's defaults; whatever transformers cannot express is a UserError rather than a
silently different model. `family_of` reads the family from a config's own `model_type`. See docs/MAMBA.md.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any, Literal

from pyserini_ssm.errors import UserError

if TYPE_CHECKING:
    import transformers

# The fields of mamba_ssm's `MambaConfig` dataclass (mamba_ssm/models/config_mamba.py), in its order, with its
# defaults: what `MambaLMHeadModel.from_pretrained` assumes for a key that a published config.json leaves out.
STATE_SPACES_DEFAULTS: dict[str, Any] = {
    "d_model": 2560,
    "d_intermediate": 0,
    "n_layer": 64,
    "vocab_size": 50277,
    "ssm_cfg": {},
    "attn_layer_idx": [],
    "attn_cfg": {},
    "rms_norm": True,
    "residual_in_fp32": True,
    "fused_add_norm": True,
    "pad_vocab_size_multiple": 8,
    "tie_embeddings": True,
}
REQUIRED_STATE_SPACES_KEYS = ("d_model", "n_layer", "vocab_size")

# Defaults of the mixer constructors `mamba_ssm.modules.mamba_simple.Mamba` and `mamba_ssm.modules.mamba2.Mamba2`.
MAMBA1_MIXER_DEFAULTS: dict[str, Any] = {
    "d_state": 16,
    "d_conv": 4,
    "expand": 2,
    "dt_rank": "auto",
    "dt_min": 0.001,
    "dt_max": 0.1,
    "dt_init": "random",
    "dt_scale": 1.0,
    "dt_init_floor": 1e-4,
    "conv_bias": True,
    "bias": False,
    "use_fast_path": True,
}
MAMBA2_MIXER_DEFAULTS: dict[str, Any] = {
    "d_state": 128,
    "d_conv": 4,
    "conv_init": None,
    "expand": 2,
    "headdim": 64,
    "d_ssm": None,
    "ngroups": 1,
    "A_init_range": (1, 16),
    "D_has_hdim": False,
    "rmsnorm": True,
    "norm_before_gate": False,
    "dt_min": 0.001,
    "dt_max": 0.1,
    "dt_init_floor": 1e-4,
    "dt_limit": (0.0, float("inf")),
    "bias": False,
    "conv_bias": True,
    "chunk_size": 256,
    "use_mem_eff_path": True,
}

# mamba_ssm builds every RMSNorm (block norms, final norm, Mamba-2's gated norm) with eps 1e-5 and no way to change it
# from config.json.
MAMBA_SSM_NORM_EPS = 1e-5


def _positive_int(value: Any, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or int(value) != value or value <= 0:
        raise UserError(f"state-spaces config: {name} must be a positive integer, got {value!r}")
    return int(value)


def _integral(value: Any, name: str) -> int:
    """HF configs type `expand` as int; mamba_ssm accepts any number. Integral floats are fine, others are not."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or int(value) != value:
        raise UserError(f"state-spaces config: {name}={value!r} is not an integer, which transformers cannot represent")
    return int(value)


def padded_vocab_size(vocab_size: int, multiple: int) -> int:
    """The embedding size mamba_ssm's `MambaLMHeadModel` allocates: vocab_size rounded up to the multiple."""
    if vocab_size % multiple != 0:
        vocab_size += multiple - (vocab_size % multiple)
    return vocab_size


def is_state_spaces_config(config: dict) -> bool:
    """True for a mamba_ssm `config.json` (has `d_model` and `n_layer`, no HF `model_type`)."""
    return isinstance(config, dict) and "d_model" in config and "n_layer" in config and "model_type" not in config


def hf_config_from_state_spaces(config: dict) -> "transformers.MambaConfig | transformers.Mamba2Config":
    """The transformers config of the model a state-spaces `config.json` describes.

    Absent keys take mamba_ssm's defaults (its `MambaConfig` dataclass, then the `Mamba`/`Mamba2` constructors), and
    the vocabulary is padded to `pad_vocab_size_multiple` exactly as `MambaLMHeadModel` does. Anything transformers'
    `MambaModel`/`Mamba2Model` cannot express (LayerNorm instead of RMSNorm, attention or MLP layers, a partial SSM
    dimension, per-channel D, norm before gate) is a UserError rather than a silently different model.
    """
    import transformers

    if not isinstance(config, dict):
        raise UserError(f"state-spaces config must be a JSON object, got {type(config).__name__}")
    unknown = sorted(set(config) - set(STATE_SPACES_DEFAULTS))
    if unknown:
        raise UserError(
            f"state-spaces config has unknown keys {unknown}; a mamba_ssm config.json has only "
            f"{list(STATE_SPACES_DEFAULTS)}"
        )
    missing = [key for key in REQUIRED_STATE_SPACES_KEYS if key not in config]
    if missing:
        raise UserError(f"state-spaces config is missing {missing} (needs {list(REQUIRED_STATE_SPACES_KEYS)})")
    full = {**STATE_SPACES_DEFAULTS, **config}
    d_model = _positive_int(full["d_model"], "d_model")
    n_layer = _positive_int(full["n_layer"], "n_layer")
    vocab_size = padded_vocab_size(
        _positive_int(full["vocab_size"], "vocab_size"),
        _positive_int(full["pad_vocab_size_multiple"], "pad_vocab_size_multiple"),
    )
    if full["attn_layer_idx"]:
        raise UserError(
            f"state-spaces config has attention layers (attn_layer_idx={full['attn_layer_idx']}): hybrid Mamba/attention "
            "models are not supported, only pure Mamba-1 and Mamba-2"
        )
    if not full["rms_norm"]:
        raise UserError("state-spaces config has rms_norm=false (LayerNorm): transformers' Mamba models use RMSNorm only")
    ssm_cfg = dict(full["ssm_cfg"] or {})
    layer = ssm_cfg.pop("layer", "Mamba1")
    common = dict(
        hidden_size=d_model,
        num_hidden_layers=n_layer,
        vocab_size=vocab_size,
        layer_norm_epsilon=MAMBA_SSM_NORM_EPS,
        residual_in_fp32=bool(full["residual_in_fp32"]),
        tie_word_embeddings=bool(full["tie_embeddings"]),
        hidden_act="silu",
        # The GPT-NeoX tokenizer of every state-spaces model: <|endoftext|> (id 0) is pad, bos and eos, as in the
        # transformers conversions (state-spaces/mamba-*-hf).
        pad_token_id=0,
        bos_token_id=0,
        eos_token_id=0,
    )
    if layer == "Mamba1":
        return _mamba1_hf_config(ssm_cfg, common, full)
    if layer == "Mamba2":
        return _mamba2_hf_config(ssm_cfg, common, full)
    raise UserError(f"state-spaces config: unknown ssm_cfg.layer {layer!r} (supported: 'Mamba1', 'Mamba2')")


def _check_mixer_keys(ssm_cfg: dict, defaults: dict, layer: str) -> dict:
    unknown = sorted(set(ssm_cfg) - set(defaults) - {"layer_idx"})
    if unknown:
        raise UserError(f"state-spaces config: ssm_cfg keys {unknown} are not arguments of mamba_ssm's {layer}")
    return {**defaults, **ssm_cfg}


def _mamba1_hf_config(ssm_cfg: dict, common: dict, full: dict) -> "transformers.MambaConfig":
    import transformers

    if full["d_intermediate"]:
        raise UserError("state-spaces config: d_intermediate > 0 (MLP blocks) is not supported")
    mixer = _check_mixer_keys(ssm_cfg, MAMBA1_MIXER_DEFAULTS, "Mamba")
    d_model = common["hidden_size"]
    dt_rank = math.ceil(d_model / 16) if mixer["dt_rank"] == "auto" else _positive_int(mixer["dt_rank"], "dt_rank")
    if mixer["dt_init"] not in ("random", "constant"):
        raise UserError(f"state-spaces config: ssm_cfg.dt_init={mixer['dt_init']!r} (mamba_ssm knows random, constant)")
    return transformers.MambaConfig(
        **common,
        state_size=_positive_int(mixer["d_state"], "d_state"),
        conv_kernel=_positive_int(mixer["d_conv"], "d_conv"),
        expand=_integral(mixer["expand"], "expand"),
        time_step_rank=dt_rank,
        use_conv_bias=bool(mixer["conv_bias"]),
        use_bias=bool(mixer["bias"]),
        time_step_min=float(mixer["dt_min"]),
        time_step_max=float(mixer["dt_max"]),
        time_step_floor=float(mixer["dt_init_floor"]),
        time_step_scale=float(mixer["dt_scale"]),
        time_step_init_scheme=mixer["dt_init"],
    )


def _mamba2_hf_config(ssm_cfg: dict, common: dict, full: dict) -> "transformers.Mamba2Config":
    import transformers

    if full["d_intermediate"]:
        raise UserError(
            f"state-spaces config: d_intermediate={full['d_intermediate']} adds gated-MLP blocks, which transformers' "
            "Mamba2Model does not have"
        )
    mixer = _check_mixer_keys(ssm_cfg, MAMBA2_MIXER_DEFAULTS, "Mamba2")
    d_model = common["hidden_size"]
    expand = _integral(mixer["expand"], "expand")
    d_inner = expand * d_model
    headdim = _positive_int(mixer["headdim"], "headdim")
    ngroups = _positive_int(mixer["ngroups"], "ngroups")
    if mixer["d_ssm"] is not None and mixer["d_ssm"] != d_inner:
        raise UserError(
            f"state-spaces config: ssm_cfg.d_ssm={mixer['d_ssm']} < expand*d_model={d_inner} (part gated MLP) is not "
            "supported by transformers' Mamba2"
        )
    if mixer["D_has_hdim"]:
        raise UserError("state-spaces config: ssm_cfg.D_has_hdim=true (per-channel D) is not supported by transformers")
    if not mixer["rmsnorm"]:
        raise UserError("state-spaces config: ssm_cfg.rmsnorm=false (no gated norm) is not supported by transformers")
    if mixer["norm_before_gate"]:
        raise UserError(
            "state-spaces config: ssm_cfg.norm_before_gate=true is not supported: transformers' Mamba2 computes "
            "norm(y * silu(z)), mamba_ssm's default"
        )
    if d_inner % headdim:
        raise UserError(f"state-spaces config: expand*d_model={d_inner} is not a multiple of headdim={headdim}")
    num_heads = d_inner // headdim
    if num_heads % ngroups:
        raise UserError(f"state-spaces config: {num_heads} heads do not split into ngroups={ngroups}")
    dt_limit = tuple(float(x) for x in mixer["dt_limit"])
    if len(dt_limit) != 2:
        raise UserError(f"state-spaces config: ssm_cfg.dt_limit must be [min, max], got {mixer['dt_limit']!r}")
    return transformers.Mamba2Config(
        **common,
        num_heads=num_heads,
        head_dim=headdim,
        n_groups=ngroups,
        state_size=_positive_int(mixer["d_state"], "d_state"),
        conv_kernel=_positive_int(mixer["d_conv"], "d_conv"),
        expand=expand,
        use_conv_bias=bool(mixer["conv_bias"]),
        use_bias=bool(mixer["bias"]),
        chunk_size=_positive_int(mixer["chunk_size"], "chunk_size"),
        time_step_limit=dt_limit,
        time_step_min=float(mixer["dt_min"]),
        time_step_max=float(mixer["dt_max"]),
        time_step_floor=float(mixer["dt_init_floor"]),
    )


def family_of(config: Any) -> Literal["mamba1", "mamba2"]:
    """`mamba1` or `mamba2`, from the HF config's own `model_type` (never from a name)."""
    model_type = getattr(config, "model_type", None)
    if model_type == "mamba":
        return "mamba1"
    if model_type == "mamba2":
        return "mamba2"
    raise UserError(f"not a Mamba config: model_type={model_type!r} (expected 'mamba' or 'mamba2')")


def state_spaces_config_from_hf(config: "transformers.MambaConfig | transformers.Mamba2Config") -> dict:
    """The config.json state-spaces would publish for this model: every mamba_ssm `MambaConfig` field, in its order,
    and in `ssm_cfg` only the mixer arguments that differ from mamba_ssm's defaults (plus `layer` for Mamba-2)."""
    family = family_of(config)
    if abs(config.layer_norm_epsilon - MAMBA_SSM_NORM_EPS) > 1e-12:
        raise UserError(
            f"layer_norm_epsilon={config.layer_norm_epsilon} cannot be written in the state-spaces format "
            f"(mamba_ssm fixes it at {MAMBA_SSM_NORM_EPS})"
        )
    if config.hidden_act != "silu":
        raise UserError(f"hidden_act={config.hidden_act!r}: mamba_ssm only has silu")
    if family == "mamba1":
        mixer = {
            "d_state": config.state_size,
            "d_conv": config.conv_kernel,
            "expand": config.expand,
            "dt_rank": int(config.time_step_rank),
            "conv_bias": config.use_conv_bias,
            "bias": config.use_bias,
        }
        defaults = dict(MAMBA1_MIXER_DEFAULTS, dt_rank=math.ceil(config.hidden_size / 16))
        ssm_cfg = {key: value for key, value in mixer.items() if value != defaults[key]}
    else:
        mixer = {
            "d_state": config.state_size,
            "d_conv": config.conv_kernel,
            "expand": config.expand,
            "headdim": config.head_dim,
            "ngroups": config.n_groups,
            "dt_limit": tuple(float(x) for x in config.time_step_limit),
            "bias": config.use_bias,
            "conv_bias": config.use_conv_bias,
            "chunk_size": config.chunk_size,
        }
        ssm_cfg = {"layer": "Mamba2"}
        ssm_cfg.update({key: value for key, value in mixer.items() if value != MAMBA2_MIXER_DEFAULTS[key]})
        if "dt_limit" in ssm_cfg:
            ssm_cfg["dt_limit"] = list(ssm_cfg["dt_limit"])
    vocab_size = int(config.vocab_size)
    # Any multiple that already divides the vocabulary makes mamba_ssm allocate exactly vocab_size rows.
    multiple = next(m for m in (16, 8, 1) if vocab_size % m == 0)
    return {
        "d_model": config.hidden_size,
        "d_intermediate": 0,
        "n_layer": config.num_hidden_layers,
        "vocab_size": vocab_size,
        "ssm_cfg": ssm_cfg,
        "attn_layer_idx": [],
        "attn_cfg": {},
        "rms_norm": True,
        "residual_in_fp32": bool(config.residual_in_fp32),
        "fused_add_norm": True,
        "pad_vocab_size_multiple": multiple,
        "tie_embeddings": bool(config.tie_word_embeddings),
    }


def _causal_lm_class(config: Any) -> type:
    import transformers

    return transformers.MambaForCausalLM if family_of(config) == "mamba1" else transformers.Mamba2ForCausalLM


def _backbone_class(config: Any) -> type:
    import transformers

    return transformers.MambaModel if family_of(config) == "mamba1" else transformers.Mamba2Model


def tiny_hf_config(family: Literal["mamba1", "mamba2"], **overrides: Any) -> Any:
    """A few-layer random-init config for tests and examples (d_model 64, vocab 100)."""
    import transformers

    common = dict(
        hidden_size=64, num_hidden_layers=2, vocab_size=112, layer_norm_epsilon=MAMBA_SSM_NORM_EPS,
        pad_token_id=0, bos_token_id=0, eos_token_id=0, tie_word_embeddings=True,
    )
    if family == "mamba1":
        return transformers.MambaConfig(**{**common, "state_size": 8, "time_step_rank": "auto", **overrides})
    return transformers.Mamba2Config(
        **{**common, "state_size": 16, "head_dim": 16, "num_heads": 8, "n_groups": 2, "chunk_size": 16, **overrides}
    )
