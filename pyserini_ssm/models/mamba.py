"""Mamba-1 and Mamba-2 backbones: one set of weights, two ways to run them.

Weights live in the Hugging Face layout (`MambaModel` / `Mamba2Model` parameter names). They run either through
transformers' own torch implementation (any device, the reference) or, on CUDA with `mamba_ssm` installed, through
`mamba_ssm`'s mixer modules and fused Triton/CUDA kernels (`MambaKernelBackbone`, whose state dict has exactly the
same keys). Checkpoints published by state-spaces (`config.json` with `d_model`, `n_layer`, `ssm_cfg`, ... and a
`pytorch_model.bin` with `mamba_ssm` parameter names) are converted on load and can be written back.

`mamba_ssm` is imported lazily, only when the kernel backend is built: this module imports on a machine without it.
See docs/MAMBA.md for the mapping between the formats and what packing with `seq_idx` does.
"""

from __future__ import annotations

import contextlib
import functools
import inspect
import json
import logging
import math
import os
import re
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterator, Literal

import torch
from torch import nn

from pyserini_ssm.errors import UserError

if TYPE_CHECKING:
    import transformers

logger = logging.getLogger(__name__)

Backend = Literal["auto", "torch", "cuda"]

STATE_SPACES_CONFIG = "config.json"
STATE_SPACES_WEIGHTS = "pytorch_model.bin"

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

KERNEL_INSTALL_HINT = "pip install --no-build-isolation mamba-ssm causal-conv1d"

# The SSD of packed Mamba-2 rows on the kernel backend: "short" (ops.ssd_short) or "mamba_ssm" (stock).
SSD_BACKENDS = ("short", "mamba_ssm")
SSD_BACKEND_ENV = "PYSERINI_SSM_SSD"
SHORT_SSD_BLOCK_T = 256


def ssd_backend_from_env() -> str:
    value = os.environ.get(SSD_BACKEND_ENV, "short")
    if value not in SSD_BACKENDS:
        raise UserError(f"{SSD_BACKEND_ENV}={value!r}: choose one of {', '.join(SSD_BACKENDS)}")
    return value


# --------------------------------------------------------------------------------------------------------------------
# Configs


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


# --------------------------------------------------------------------------------------------------------------------
# State dicts and checkpoints

# The only parameter whose name differs: mamba_ssm's MixerModel.embedding vs transformers' MambaModel.embeddings.
_SS_EMBEDDING = re.compile(r"(^|\.)embedding\.")
_HF_EMBEDDING = re.compile(r"(^|\.)embeddings\.")


def state_spaces_to_hf(state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """mamba_ssm parameter names -> transformers names (`backbone.embedding.` -> `backbone.embeddings.`).

    Every other name is shared: `backbone.layers.{i}.norm.weight`, `backbone.layers.{i}.mixer.{in_proj, conv1d,
    x_proj, dt_proj, dt_bias, A_log, D, norm, out_proj}.*`, `backbone.norm_f.weight`, `lm_head.weight`; and the
    tensors have the same shapes and meaning in both (checked by the tests and on the device against mamba_ssm).
    """
    return {_SS_EMBEDDING.sub(r"\1embeddings.", key): value for key, value in state_dict.items()}


def hf_to_state_spaces(state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """transformers parameter names -> mamba_ssm names (`backbone.embeddings.` -> `backbone.embedding.`)."""
    return {_HF_EMBEDDING.sub(r"\1embedding.", key): value for key, value in state_dict.items()}


def _causal_lm_class(config: Any) -> type:
    import transformers

    return transformers.MambaForCausalLM if family_of(config) == "mamba1" else transformers.Mamba2ForCausalLM


def _backbone_class(config: Any) -> type:
    import transformers

    return transformers.MambaModel if family_of(config) == "mamba1" else transformers.Mamba2Model


def _read_state_spaces_files(directory: Path) -> tuple[dict, dict[str, torch.Tensor]]:
    if not directory.is_dir():
        raise UserError(f"checkpoint folder not found: {directory}")
    config_path = directory / STATE_SPACES_CONFIG
    weights_path = directory / STATE_SPACES_WEIGHTS
    for path in (config_path, weights_path):
        if not path.is_file():
            raise UserError(
                f"state-spaces checkpoint {directory} has no {path.name} (expected {STATE_SPACES_CONFIG} and "
                f"{STATE_SPACES_WEIGHTS}, as in state-spaces/mamba-130m)"
            )
    try:
        config = json.loads(config_path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise UserError(f"{config_path} is not valid JSON: {error}") from None
    try:
        state_dict = torch.load(weights_path, map_location="cpu", weights_only=True)
    except Exception as error:  # torch raises several types for a truncated or foreign file
        raise UserError(f"cannot read {weights_path} as a PyTorch state dict: {error}") from None
    if not isinstance(state_dict, dict) or not all(isinstance(v, torch.Tensor) for v in state_dict.values()):
        raise UserError(f"{weights_path} does not hold a state dict of tensors")
    return config, state_dict


def load_state_spaces_checkpoint(
    directory: str | Path, dtype: torch.dtype | None = torch.float32
) -> "transformers.MambaForCausalLM | transformers.Mamba2ForCausalLM":
    """A state-spaces checkpoint folder (`config.json` + `pytorch_model.bin`, e.g. state-spaces/mamba2-780m) as a
    transformers `MambaForCausalLM` / `Mamba2ForCausalLM` on the CPU, in `dtype` (None keeps the file's dtypes).

    Missing files, configs transformers cannot express, and missing, unexpected or wrongly shaped tensors are
    UserErrors naming the file or key.
    """
    directory = Path(directory)
    ss_config, ss_state = _read_state_spaces_files(directory)
    if not is_state_spaces_config(ss_config):
        raise UserError(
            f"{directory / STATE_SPACES_CONFIG} is not a state-spaces (mamba_ssm) config: it needs d_model and n_layer "
            "and no model_type (a transformers checkpoint loads with from_pretrained)"
        )
    try:
        config = hf_config_from_state_spaces(ss_config)
    except UserError as error:
        raise UserError(f"{directory / STATE_SPACES_CONFIG}: {error}") from None
    state = state_spaces_to_hf(ss_state)
    return model_from_hf_state_dict(config, state, dtype=dtype, source=str(directory / STATE_SPACES_WEIGHTS))


def model_from_hf_state_dict(
    config: Any, state: dict[str, torch.Tensor], dtype: torch.dtype | None = torch.float32, source: str = "state dict"
) -> "transformers.MambaForCausalLM | transformers.Mamba2ForCausalLM":
    """Build the causal LM of `config` on the meta device and assign `state` (HF names) to it, checking every key and
    shape first, so that no random initialisation is computed and nothing is half-loaded."""
    model_class = _causal_lm_class(config)
    with torch.device("meta"):
        model = model_class(config)
    expected = model.state_dict()
    state = dict(state)
    embedding_key, head_key = "backbone.embeddings.weight", "lm_head.weight"
    if config.tie_word_embeddings:
        if head_key in state and embedding_key in state and not torch.equal(state[head_key], state[embedding_key]):
            raise UserError(f"{source}: tie_embeddings is true but {head_key} differs from the embedding weights")
        if embedding_key in state:
            state[head_key] = state[embedding_key]
    missing = [key for key in expected if key not in state]
    if missing:
        raise UserError(f"{source}: missing tensors {_ss_names(missing)}")
    unexpected = [key for key in state if key not in expected]
    if unexpected:
        raise UserError(f"{source}: unexpected tensors {_ss_names(unexpected)} for this config")
    for key, reference in expected.items():
        if tuple(state[key].shape) != tuple(reference.shape):
            raise UserError(
                f"{source}: {_ss_names([key])[0]} has shape {tuple(state[key].shape)}, the config needs "
                f"{tuple(reference.shape)}"
            )
    if dtype is not None:
        state = {key: value.to(dtype) for key, value in state.items()}
        if config.tie_word_embeddings:  # one tensor, not two equal copies
            state[head_key] = state[embedding_key]
    model.load_state_dict(state, strict=True, assign=True)
    if config.tie_word_embeddings:
        model.lm_head.weight = model.backbone.embeddings.weight
    model.eval()
    return model


def _ss_names(keys: list[str]) -> list[str]:
    """Report keys in the mamba_ssm spelling, which is what the user's file contains."""
    return [_HF_EMBEDDING.sub(r"\1embedding.", key) for key in keys]


def save_state_spaces_checkpoint(model: nn.Module, directory: str | Path) -> Path:
    """Write `model` (a transformers Mamba/Mamba2 causal LM or backbone, or a `MambaBackbone`) as state-spaces
    publishes it: `config.json` with mamba_ssm's `MambaConfig` fields and `pytorch_model.bin` with mamba_ssm parameter
    names (tied `lm_head.weight` included, as `MambaLMHeadModel.save_pretrained` writes it). Loads with
    `MambaLMHeadModel.from_pretrained` and with `load_state_spaces_checkpoint`."""
    from pyserini_ssm.files import atomic_output

    config = model.config
    ss_config = state_spaces_config_from_hf(config)
    state = _hf_causal_lm_state(model)
    if not config.tie_word_embeddings and "lm_head.weight" not in state:
        raise UserError("the model has untied embeddings but no lm_head: it cannot be written as a state-spaces LM")
    ss_state = hf_to_state_spaces({key: value.detach().contiguous() for key, value in state.items()})
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    with atomic_output(directory / STATE_SPACES_WEIGHTS, "wb") as handle:
        torch.save(ss_state, handle)
    with atomic_output(directory / STATE_SPACES_CONFIG) as handle:
        json.dump(ss_config, handle, indent=4)
    return directory


def _hf_causal_lm_state(model: nn.Module) -> dict[str, torch.Tensor]:
    """HF `*ForCausalLM` state dict keys for a causal LM, a bare `MambaModel`, or a `MambaBackbone`."""
    if isinstance(model, MambaBackbone):
        model = model.model
    state = model.state_dict()
    if any(key.startswith("backbone.") for key in state):
        causal = {key: value for key, value in state.items() if key.startswith(("backbone.", "lm_head."))}
    else:
        causal = {f"backbone.{key}": value for key, value in state.items()}
    if model.config.tie_word_embeddings:
        causal["lm_head.weight"] = causal["backbone.embeddings.weight"]
    return causal


# --------------------------------------------------------------------------------------------------------------------
# The mamba_ssm kernel backbone


def mamba_ssm_available() -> bool:
    """Whether mamba_ssm (and causal_conv1d, which its fast paths need) import here."""
    try:
        _import_mamba_ssm()
    except Exception:  # a broken CUDA extension raises anything from ImportError to OSError
        return False
    return True


def _import_mamba_ssm() -> dict[str, Any]:
    import causal_conv1d  # noqa: F401  (without it mamba_ssm silently takes slow, unfused paths)
    from mamba_ssm.modules.mamba2 import Mamba2
    from mamba_ssm.modules.mamba_simple import Mamba
    from mamba_ssm.ops.triton.layer_norm import RMSNorm, layer_norm_fn

    return {"Mamba": Mamba, "Mamba2": Mamba2, "RMSNorm": RMSNorm, "layer_norm_fn": layer_norm_fn}


class _KernelBlock(nn.Module):
    """Holds one layer's parameters under transformers' names (`norm`, `mixer`); the forward is in the backbone."""

    def __init__(self, norm: nn.Module, mixer: nn.Module) -> None:
        super().__init__()
        self.norm = norm
        self.mixer = mixer


class MambaKernelBackbone(nn.Module):
    """transformers' `MambaModel`/`Mamba2Model` computation run by mamba_ssm's modules and fused kernels (CUDA only).

    Its state dict has exactly the keys of the transformers backbone (`embeddings.weight`, `layers.{i}.norm.weight`,
    `layers.{i}.mixer.*`, `norm_f.weight`), so one set of weights loads into either. The layer loop is mamba_ssm's
    `MixerModel` with `fused_add_norm=True` (Add -> RMSNorm fused in Triton, residual kept in fp32 when
    `residual_in_fp32`); the mixers are mamba_ssm's own `Mamba` (fast path: `mamba_inner_fn`) and `Mamba2` (memory-
    efficient path: `mamba_split_conv1d_scan_combined`).
    """

    def __init__(self, config: Any, device: torch.device | str | None = None, dtype: torch.dtype | None = None):
        super().__init__()
        modules = _import_mamba_ssm()
        self.layer_norm_fn = modules["layer_norm_fn"]
        self.config = config
        self.family = family_of(config)
        self.residual_in_fp32 = bool(config.residual_in_fp32)
        if config.hidden_act != "silu":
            raise UserError(f"hidden_act={config.hidden_act!r}: mamba_ssm's kernels only implement silu")
        factory = {"device": device, "dtype": dtype}
        eps = float(config.layer_norm_epsilon)
        self.embeddings = nn.Embedding(config.vocab_size, config.hidden_size, **factory)
        self.layers = nn.ModuleList(
            _KernelBlock(modules["RMSNorm"](config.hidden_size, eps=eps, **factory), self._mixer(modules, i, factory))
            for i in range(config.num_hidden_layers)
        )
        self.norm_f = modules["RMSNorm"](config.hidden_size, eps=eps, **factory)
        # Which SSD runs packed Mamba-2 rows: "short" (ops.ssd_short, with mamba_ssm's chunked scan for sequences
        # longer than its tile) or "mamba_ssm" (the stock memory-efficient path). Settable at run time (benches).
        self.ssd_backend = ssd_backend_from_env()
        self.ssd_block_t = SHORT_SSD_BLOCK_T
        self.last_ssd_kernels: str | None = None  # what the last forward ran (read by the bench)
        self._short_ssd_warned = False
        if torch.device(device or "cpu").type != "meta":
            from mamba_ssm.models.mixer_seq_simple import _init_weights

            self.apply(lambda module: _init_weights(module, n_layer=config.num_hidden_layers))

    @property
    def calls_out_proj_as_module(self) -> bool:
        """Whether packed rows call each mixer's `out_proj` as a module (our short-SSD mixer), so that `models.fp8`
        may convert it too; mamba_ssm's stock fused path reads `out_proj.weight` itself (an FP8 layer there raises)."""
        if self.family != "mamba2" or self.ssd_backend != "short":
            return False
        from pyserini_ssm.models.mamba2_mixer import short_ssd_unsupported

        return short_ssd_unsupported(self.layers[0].mixer) is None

    def _mixer(self, modules: dict[str, Any], layer_idx: int, factory: dict) -> nn.Module:
        config = self.config
        if self.family == "mamba1":
            return modules["Mamba"](
                d_model=config.hidden_size,
                d_state=config.state_size,
                d_conv=config.conv_kernel,
                expand=config.expand,
                dt_rank=int(config.time_step_rank),
                conv_bias=config.use_conv_bias,
                bias=config.use_bias,
                use_fast_path=True,
                layer_idx=layer_idx,
                **factory,
            )
        d_inner = int(config.expand * config.hidden_size)
        if d_inner != config.num_heads * config.head_dim:
            raise UserError(
                f"Mamba2 config: expand*hidden_size={d_inner} != num_heads*head_dim={config.num_heads * config.head_dim}"
            )
        mixer = modules["Mamba2"](
            d_model=config.hidden_size,
            d_state=config.state_size,
            d_conv=config.conv_kernel,
            expand=config.expand,
            headdim=config.head_dim,
            ngroups=config.n_groups,
            rmsnorm=True,
            norm_before_gate=False,  # transformers' MambaRMSNormGated: norm(y * silu(z)), per group of d_inner/ngroups
            dt_limit=tuple(float(x) for x in config.time_step_limit),
            bias=config.use_bias,
            conv_bias=config.use_conv_bias,
            chunk_size=config.chunk_size,
            use_mem_eff_path=True,
            layer_idx=layer_idx,
            **factory,
        )
        mixer.norm.eps = float(config.layer_norm_epsilon)  # transformers uses layer_norm_epsilon for the gated norm
        return mixer

    def forward(
        self,
        input_ids: torch.Tensor,
        seq_idx: torch.Tensor | None = None,
        cu_seqlens: torch.Tensor | None = None,
        output_positions: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Final-normed hidden states (B, L, D) of `input_ids` (B, L), or (B, K, D) at `output_positions` (K,).

        `seq_idx` (B, L) int32 (Mamba-2 only) packs several sequences into a row: a position only sees earlier
        positions with the same id, in the convolution (causal_conv1d masks its window by seq_idx) and in the scan
        (the state restarts where the id changes). `cu_seqlens` (N + 1,) is the same for a single row (B = 1) and
        is turned into `seq_idx`. A Mamba-2 row (B = 1) runs through the short-sequence SSD when `ssd_backend` is
        "short"; its last layer then computes the gated norm, out_proj and final norm only at `output_positions`.
        """
        if cu_seqlens is not None:
            if seq_idx is not None:
                raise ValueError("give seq_idx or cu_seqlens, not both")
            seq_idx = seq_idx_from_cu_seqlens(cu_seqlens, input_ids.shape)
        mixer_kwargs: dict[str, Any] = {}
        if seq_idx is not None:
            if self.family == "mamba1":
                raise NotImplementedError("Mamba-1 has no variable-length kernel: pad the batch instead of packing")
            if seq_idx.shape != input_ids.shape:
                raise ValueError(f"seq_idx shape {tuple(seq_idx.shape)} != input_ids shape {tuple(input_ids.shape)}")
            seq_idx = seq_idx.to(device=input_ids.device, dtype=torch.int32).contiguous()
            mixer_kwargs["seq_idx"] = seq_idx
        plan = self._short_ssd_plan(input_ids, seq_idx)
        hidden = self.embeddings(input_ids)  # (B, L, D)
        residual = None
        last = len(self.layers) - 1
        for index, layer in enumerate(self.layers):
            hidden, residual = self.layer_norm_fn(
                hidden,
                layer.norm.weight,
                None,
                residual=residual,
                prenorm=True,
                residual_in_fp32=self.residual_in_fp32,
                eps=layer.norm.eps,
                is_rms_norm=True,
            )
            if plan is None:
                hidden = layer.mixer(hidden, **mixer_kwargs)  # (B, L, D)
                continue
            from pyserini_ssm.models.mamba2_mixer import mamba2_mixer_forward

            positions = output_positions if index == last else None
            hidden = mamba2_mixer_forward(layer.mixer, hidden, plan, seq_idx, positions)  # (1, L or K, D)
            if positions is not None:
                residual = residual[:, positions]
        out = self.layer_norm_fn(
            hidden,
            self.norm_f.weight,
            None,
            residual=residual,
            prenorm=False,
            residual_in_fp32=self.residual_in_fp32,
            eps=self.norm_f.eps,
            is_rms_norm=True,
        )
        if output_positions is not None and plan is None:
            out = out[:, output_positions]
        return out

    def _short_ssd_plan(self, input_ids: torch.Tensor, seq_idx: torch.Tensor | None):
        """The tiling of the row for the short SSD, or None when the stock mamba_ssm path runs (recorded)."""
        stock = "mamba_ssm mamba_split_conv1d_scan_combined"
        if self.family != "mamba2":
            self.last_ssd_kernels = "mamba_ssm mamba_inner_fn (Mamba-1)"
            return None
        if self.ssd_backend != "short":
            self.last_ssd_kernels = stock
            return None
        if input_ids.shape[0] != 1 or not input_ids.is_cuda:
            self.last_ssd_kernels = f"{stock} (a padded batch of {input_ids.shape[0]}: the short SSD takes rows)"
            return None
        from pyserini_ssm.models.mamba2_mixer import short_ssd_unsupported
        from pyserini_ssm.ops.ssd_short import plan_short_ssd

        reason = short_ssd_unsupported(self.layers[0].mixer)
        if reason is not None:
            if not self._short_ssd_warned:
                logger.warning("short-sequence SSD not usable (%s): mamba_ssm's stock kernels run", reason)
                self._short_ssd_warned = True
            self.last_ssd_kernels = f"{stock} (short SSD unsupported: {reason})"
            return None
        plan = plan_short_ssd(seq_idx, input_ids.shape[1], input_ids.device, block_t=self.ssd_block_t)
        if plan.tiles == 0 and type(self.layers[0].mixer.out_proj) is nn.Linear:
            # Every sequence is longer than a tile: the short SSD has nothing to do, and mamba_ssm's fused path
            # (conv, scan and out_proj in one autograd function) beats our mixer around its chunked scan. Under FP8
            # out_proj is an Fp8Linear that the fused path cannot read, so our mixer keeps the row.
            self.last_ssd_kernels = f"{stock} (no sequence of <= {plan.block_t} tokens in the row)"
            return None
        kernels = f"short-ssd triton ({plan.tiles} tiles of <= {plan.block_t} tokens)"
        if plan.long_sequences:
            kernels += (f" + mamba_chunk_scan_combined ({plan.long_sequences} sequences > {plan.block_t} tokens, "
                        f"{plan.long_tokens} tokens)")
        self.last_ssd_kernels = kernels
        return plan


def seq_idx_from_cu_seqlens(cu_seqlens: torch.Tensor, shape: torch.Size | tuple[int, int]) -> torch.Tensor:
    """(B=1, L) int32 sequence ids from cumulative lengths [0, l0, l0+l1, ..., L]."""
    batch, length = shape
    if batch != 1:
        raise ValueError(f"cu_seqlens describes one packed row, got a batch of {batch}")
    if int(cu_seqlens[-1]) != length:
        raise ValueError(f"cu_seqlens ends at {int(cu_seqlens[-1])}, the row has {length} tokens")
    lengths = cu_seqlens[1:] - cu_seqlens[:-1]
    ids = torch.arange(len(lengths), device=cu_seqlens.device, dtype=torch.int32)
    return torch.repeat_interleave(ids, lengths.long()).unsqueeze(0)


# --------------------------------------------------------------------------------------------------------------------
# One interface over both backends


def padding_side(attention_mask: torch.Tensor) -> Literal["none", "right", "left"]:
    """Where the zeros of a (B, L) attention mask are. One host sync. Masks with holes are a ValueError."""
    mask = attention_mask.bool()
    if bool(mask.all()):
        return "none"
    if bool((mask[:, 1:] <= mask[:, :-1]).all()):  # ones then zeros in every row
        return "right"
    if bool((mask[:, 1:] >= mask[:, :-1]).all()):
        return "left"
    raise ValueError("attention_mask must be padding on one side (ones then zeros, or zeros then ones) in every row")


class MambaBackbone(nn.Module):
    """What the rerankers call: `forward(input_ids, attention_mask=None, seq_idx=None) -> (B, L, D)` final-normed
    hidden states, by transformers' torch code (`backend == "torch"`) or mamba_ssm's kernels (`"cuda"`).

    `self.model` is a transformers `MambaModel`/`Mamba2Model` or a `MambaKernelBackbone`; both have the same state
    dict keys, so a checkpoint written from one backend loads into the other.

    Padding: right padding never changes the real tokens (the model is causal), so the mask is not needed for it.
    Left padding gives the unpadded result on the torch backend (transformers zeroes the padded states) and on the
    Mamba-2 kernel backend (turned into `seq_idx`); Mamba-1 kernels cannot do it (ValueError).
    Packing (`seq_idx`, Mamba-2 only, NotImplementedError for Mamba-1 on both backends so that code tested on CPU
    behaves the same on GPU): kernels natively; the torch backend splits each row into its sequences, runs them as
    a right-padded batch and puts the states back — exact, and what the kernels are tested against.
    """

    def __init__(self, model: nn.Module, backend: Literal["torch", "cuda"]) -> None:
        super().__init__()
        self.model = model
        self.backend = backend
        self.config = model.config
        self.family = family_of(model.config)
        self.supports_packing = self.family == "mamba2"

    @property
    def hidden_size(self) -> int:
        return int(self.config.hidden_size)

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        seq_idx: torch.Tensor | None = None,
        output_positions: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """(B, L, D), or (B, K, D) at `output_positions` (K,) of each row (the kernel backend then skips the last
        layer's out_proj and norms elsewhere on a packed row)."""
        if seq_idx is not None:
            if not self.supports_packing:
                raise NotImplementedError("Mamba-1 has no variable-length kernel: pad the batch instead of packing")
            if attention_mask is not None:
                raise ValueError("give attention_mask or seq_idx, not both (padding in a packed row has its own id)")
            if seq_idx.shape != input_ids.shape:
                raise ValueError(f"seq_idx shape {tuple(seq_idx.shape)} != input_ids shape {tuple(input_ids.shape)}")
        elif attention_mask is not None:
            side = padding_side(attention_mask)
            if side == "none" or (side == "right" and self.backend == "cuda"):
                attention_mask = None
            elif self.backend == "cuda":  # left padding
                if self.family == "mamba1":
                    raise ValueError("the Mamba-1 kernels cannot skip left padding: pad on the right")
                seq_idx, attention_mask = attention_mask.to(torch.int32), None  # padding id 0, tokens id 1
        dtype = self.model.embeddings.weight.dtype
        if self.backend == "cuda":
            return self.model(input_ids, seq_idx=seq_idx, output_positions=output_positions).to(dtype)
        if seq_idx is not None:
            hidden = self._torch_packed(input_ids, seq_idx)
        else:
            hidden = self._torch(input_ids, attention_mask)
        if output_positions is not None:
            hidden = hidden[:, output_positions]
        return hidden.to(dtype)  # transformers returns fp32 when residual_in_fp32; the kernels the weights' dtype

    def _torch(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None) -> torch.Tensor:
        with transformers_torch_functions(self.model):
            output = self.model(input_ids=input_ids, attention_mask=attention_mask, use_cache=False, return_dict=True)
        return output.last_hidden_state  # (B, L, D)

    def _torch_packed(self, input_ids: torch.Tensor, seq_idx: torch.Tensor) -> torch.Tensor:
        """Reference packing: every run of equal ids in a row is one sequence, computed on its own."""
        batch, length = input_ids.shape
        ids = seq_idx.to("cpu")
        starts = torch.ones(batch, length, dtype=torch.bool)
        starts[:, 1:] = ids[:, 1:] != ids[:, :-1]
        rows, begins = starts.nonzero(as_tuple=True)  # (N,), (N,) in row-major order
        ends = torch.full_like(begins, length)
        same_row_next = rows[1:] == rows[:-1]
        ends[:-1] = torch.where(same_row_next, begins[1:], torch.full_like(begins[1:], length))
        lengths = ends - begins
        offsets = torch.arange(int(lengths.max()))
        valid = offsets[None, :] < lengths[:, None]  # (N, max_len)
        columns = (begins[:, None] + offsets[None, :]).clamp(max=length - 1)  # (N, max_len)
        row_grid = rows[:, None].expand_as(columns)
        device = input_ids.device
        segments = input_ids[row_grid.to(device), columns.to(device)]  # (N, max_len), right-padded with repeats
        hidden = self._torch(segments, None)  # (N, max_len, D)
        packed = hidden.new_zeros(batch, length, hidden.shape[-1])
        packed[row_grid[valid].to(device), columns[valid].to(device)] = hidden[valid.to(device)]
        return packed


@functools.cache  # called on every torch-backend forward: build each filtered wrapper once
def _keyword_filtered(function: Any) -> Any:
    """`function` accepting (and ignoring) keywords it does not take, as transformers' kernel wrapper does."""
    parameters = inspect.signature(function).parameters
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters.values()):
        return function

    @functools.wraps(function)
    def call(*args: Any, **kwargs: Any) -> Any:
        return function(*args, **{key: value for key, value in kwargs.items() if key in parameters})

    return call


@contextlib.contextmanager
def transformers_torch_functions(model: nn.Module) -> Iterator[None]:
    """Run transformers' Mamba on its own torch code even where mamba_ssm is installed.

    transformers 5.x binds mamba_ssm's kernels at import time whenever they import, whatever the tensors' device: a
    CPU forward then crashes inside Triton, and the "torch" backend would silently be the kernels. The decorated
    functions keep their torch body as `__wrapped__`; this swaps it in for the duration of the forward.
    """
    module = sys.modules.get(type(model).__module__)
    swapped: dict[str, Any] = {}
    for name, bound in list(vars(module).items()) if module is not None else []:
        # The kernel wrapper's own code object is named `wrapped` (aliases such as `mamba2_chunk_scan` included).
        if inspect.isfunction(bound) and bound.__code__.co_name == "wrapped" and hasattr(bound, "__wrapped__"):
            swapped[name] = bound
            setattr(module, name, _keyword_filtered(bound.__wrapped__))
    try:
        yield
    finally:
        for name, bound in swapped.items():
            setattr(module, name, bound)


def _resolve_backend(backend: str, device: torch.device | str | None = None) -> Literal["torch", "cuda"]:
    """The backend to build for `device` (default: CUDA when available): the kernels only ever run on a GPU."""
    if backend not in ("auto", "torch", "cuda"):
        raise UserError(f"unknown Mamba backend {backend!r} (choose auto, torch or cuda)")
    if backend == "torch":
        return "torch"
    on_gpu = torch.device(device).type == "cuda" if device is not None else torch.cuda.is_available()
    usable = on_gpu and torch.cuda.is_available() and mamba_ssm_available()
    if backend == "cuda" and not usable:
        if not torch.cuda.is_available():
            reason = "CUDA is not available"
        elif not on_gpu:
            reason = f"the model is to run on {device}, not on a GPU (use backend torch there)"
        else:
            reason = "mamba_ssm/causal_conv1d do not import"
        raise UserError(f"the cuda Mamba backend needs a GPU and mamba-ssm: {reason} (install: {KERNEL_INSTALL_HINT})")
    if backend == "auto" and not usable:
        logger.info("Mamba backend: transformers' torch implementation (CPU, no CUDA or no mamba_ssm)")
    return "cuda" if usable else "torch"


def transformers_groups_its_gated_norm() -> bool:
    """Whether transformers' Mamba-2 gated RMSNorm normalises per group of d_inner / n_groups, as mamba_ssm does
    (transformers >= 5.23). Older releases normalise over all of d_inner: for n_groups > 1 their torch forward then
    differs from mamba_ssm's, which defines the published checkpoints (these have n_groups = 1, unaffected)."""
    from transformers.models.mamba2 import modeling_mamba2

    return "group_size" in inspect.signature(modeling_mamba2.MambaRMSNormGated.__init__).parameters


def _warn_if_ungrouped_norm(config: Any) -> None:
    if family_of(config) == "mamba2" and int(getattr(config, "n_groups", 1)) > 1 \
            and not transformers_groups_its_gated_norm():
        import transformers

        logger.warning("transformers %s normalises Mamba-2's gated RMSNorm over all %d groups at once; mamba_ssm (and "
                       "this project's cuda backend) per group: with n_groups=%d the torch backend's scores differ "
                       "from mamba_ssm's. Upgrade transformers to >= 5.23.", transformers.__version__,
                       config.n_groups, config.n_groups)


def build_mamba_backbone(
    model_or_config: Any,
    backend: Backend = "auto",
    device: torch.device | str | None = None,
) -> MambaBackbone:
    """A `MambaBackbone` from a transformers Mamba/Mamba2 causal LM, a bare `MambaModel`/`Mamba2Model`, or a config.

    backend: `torch` (transformers' implementation, on the model's device), `cuda` (mamba_ssm kernels on `device`,
    default the current CUDA device; the weights are shared with the given model when it is already there), or
    `auto` (cuda when the model is to run on a GPU and mamba_ssm imports, else torch; without `device`, a given
    model's own device decides).
    From a config, the weights are freshly initialised by the chosen backend's library.
    """
    if device is None and isinstance(model_or_config, nn.Module) and backend != "cuda":
        device = next(model_or_config.parameters()).device  # `torch` keeps the model where it is
    chosen = _resolve_backend(backend, device)
    if hasattr(model_or_config, "model_type") and not isinstance(model_or_config, nn.Module):
        config = model_or_config
        family_of(config)
        if chosen == "torch":
            _warn_if_ungrouped_norm(config)
            model = _backbone_class(config)(config)
            if device is not None:
                model = model.to(device)
            return MambaBackbone(model.eval(), "torch")
        kernel = MambaKernelBackbone(config, device=device or "cuda")
        return MambaBackbone(kernel.eval(), "cuda")
    hf_backbone = _hf_backbone_of(model_or_config)
    if chosen == "torch":
        _warn_if_ungrouped_norm(hf_backbone.config)
        if device is not None:
            hf_backbone = hf_backbone.to(device)
        return MambaBackbone(hf_backbone, "torch")
    return MambaBackbone(kernel_backbone_from_hf(hf_backbone, device=device or "cuda"), "cuda")


def _hf_backbone_of(model: Any) -> nn.Module:
    if isinstance(model, MambaBackbone):
        model = model.model
    if isinstance(model, MambaKernelBackbone):
        return model
    config = getattr(model, "config", None)
    family_of(config)
    backbone = getattr(model, "backbone", model)
    if not hasattr(backbone, "embeddings") or not hasattr(backbone, "layers"):
        raise UserError(f"{type(model).__name__} is not a transformers Mamba model or backbone")
    return backbone


def kernel_backbone_from_hf(hf_backbone: nn.Module, device: torch.device | str = "cuda") -> MambaKernelBackbone:
    """A `MambaKernelBackbone` holding the weights of a transformers `MambaModel`/`Mamba2Model` (moved to `device`;
    shared, not copied, when they are already there). No random initialisation is computed."""
    if isinstance(hf_backbone, MambaKernelBackbone):
        return hf_backbone.to(device)
    kernel = MambaKernelBackbone(hf_backbone.config, device="meta")
    state = hf_backbone.state_dict()
    expected = kernel.state_dict()
    if set(state) != set(expected):
        raise UserError(
            f"weights do not match the mamba_ssm modules: missing {sorted(set(expected) - set(state))}, "
            f"unexpected {sorted(set(state) - set(expected))}"
        )
    for key, value in expected.items():
        if state[key].shape != value.shape:
            raise UserError(f"{key}: shape {tuple(state[key].shape)}, mamba_ssm expects {tuple(value.shape)}")
    kernel.load_state_dict(state, strict=True, assign=True)
    return kernel.to(device).eval()


# --------------------------------------------------------------------------------------------------------------------
# A step-by-step reference (like mamba_ssm's *_ref functions)


def mamba_reference_forward(
    backbone: nn.Module,
    input_ids: torch.Tensor,
    seq_idx: torch.Tensor | None = None,
    compute_dtype: torch.dtype = torch.float32,
) -> torch.Tensor:
    """Final-normed hidden states (B, L, D) computed token by token from the definitions, in `compute_dtype`.

    Works on anything with transformers' backbone layout (a `MambaModel`/`Mamba2Model`, a `MambaKernelBackbone`,
    or a `MambaBackbone`). With `seq_idx` (B, L), a position sees only earlier positions of the same id, both in the
    causal convolution and in the recurrence (the state restarts where the id changes) -- the semantics of
    mamba_ssm's `seq_idx`. Slow (a Python loop over L); for tests. It calls no kernel of transformers or mamba_ssm,
    which matters on machines where transformers routes its own "torch" Mamba through mamba_ssm.
    """
    if isinstance(backbone, MambaBackbone):
        backbone = backbone.model
    config = backbone.config
    family = family_of(config)
    eps = float(config.layer_norm_epsilon)
    with torch.no_grad():
        hidden = backbone.embeddings.weight[input_ids].to(compute_dtype)  # (B, L, D)
        for layer in backbone.layers:
            normed = _rms_norm(hidden, layer.norm.weight, eps)
            mixer_ref = _mamba1_mixer_reference if family == "mamba1" else _mamba2_mixer_reference
            hidden = hidden + mixer_ref(layer.mixer, normed, seq_idx, config)
        return _rms_norm(hidden, backbone.norm_f.weight, eps)


def _rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps) * weight.to(x.dtype)


def _linear(x: torch.Tensor, layer: nn.Linear) -> torch.Tensor:
    bias = None if layer.bias is None else layer.bias.to(x.dtype)
    return torch.nn.functional.linear(x, layer.weight.to(x.dtype), bias)


def _same_sequence(seq_idx: torch.Tensor | None, shift: int, shape: tuple[int, int], device) -> torch.Tensor | None:
    """(B, L) bool: position t and t - shift belong to the same sequence (and t - shift >= 0)."""
    if seq_idx is None:
        return None
    same = torch.zeros(shape, dtype=torch.bool, device=device)
    same[:, shift:] = seq_idx[:, shift:] == seq_idx[:, : shape[1] - shift]
    return same


def _causal_conv_silu(x: torch.Tensor, conv: nn.Conv1d, seq_idx: torch.Tensor | None) -> torch.Tensor:
    """Depthwise causal convolution + SiLU on (B, L, C); taps never reach into another sequence."""
    batch, length, _ = x.shape
    width = conv.weight.shape[-1]
    weight = conv.weight.to(x.dtype)[:, 0, :]  # (C, W)
    out = torch.zeros_like(x) if conv.bias is None else conv.bias.to(x.dtype).expand_as(x).clone()
    for tap in range(width):
        shift = width - 1 - tap  # tap k of a padded Conv1d reads x[t - (W - 1 - k)]
        shifted = torch.nn.functional.pad(x, (0, 0, shift, 0))[:, :length]
        same = _same_sequence(seq_idx, shift, (batch, length), x.device)
        if same is not None and shift > 0:
            shifted = shifted * same[..., None]
        out = out + shifted * weight[:, tap]
    return torch.nn.functional.silu(out)


def _restart(seq_idx: torch.Tensor | None, t: int) -> torch.Tensor | None:
    if seq_idx is None or t == 0:
        return None
    return seq_idx[:, t] != seq_idx[:, t - 1]  # (B,)


def _mamba1_mixer_reference(mixer: nn.Module, u: torch.Tensor, seq_idx, config) -> torch.Tensor:
    d_inner, d_state = mixer.A_log.shape
    dt_rank = mixer.dt_proj.weight.shape[1]
    x, z = _linear(u, mixer.in_proj).split([d_inner, d_inner], dim=-1)  # (B, L, E) each
    x = _causal_conv_silu(x, mixer.conv1d, seq_idx)
    dt_low, b, c = _linear(x, mixer.x_proj).split([dt_rank, d_state, d_state], dim=-1)
    dt = torch.nn.functional.softplus(_linear(dt_low, mixer.dt_proj))  # (B, L, E)
    a = -torch.exp(mixer.A_log.to(u.dtype))  # (E, N)
    d = mixer.D.to(u.dtype)
    state = u.new_zeros(u.shape[0], d_inner, d_state)  # (B, E, N)
    outputs = []
    for t in range(u.shape[1]):
        restart = _restart(seq_idx, t)
        if restart is not None:
            state = state * (~restart).to(u.dtype)[:, None, None]
        state = torch.exp(dt[:, t, :, None] * a) * state + dt[:, t, :, None] * b[:, t, None, :] * x[:, t, :, None]
        outputs.append((state * c[:, t, None, :]).sum(-1) + d * x[:, t])  # (B, E)
    y = torch.stack(outputs, dim=1) * torch.nn.functional.silu(z)
    return _linear(y, mixer.out_proj)


def _mamba2_mixer_reference(mixer: nn.Module, u: torch.Tensor, seq_idx, config) -> torch.Tensor:
    heads, head_dim, groups, d_state = config.num_heads, config.head_dim, config.n_groups, config.state_size
    d_inner = heads * head_dim
    batch, length, _ = u.shape
    z, xbc, dt = _linear(u, mixer.in_proj).split([d_inner, d_inner + 2 * groups * d_state, heads], dim=-1)
    xbc = _causal_conv_silu(xbc, mixer.conv1d, seq_idx)
    x, b, c = xbc.split([d_inner, groups * d_state, groups * d_state], dim=-1)
    x = x.reshape(batch, length, heads, head_dim)
    # Head h reads group h // (heads / groups), as in mamba_ssm and transformers.
    b = b.reshape(batch, length, groups, d_state).repeat_interleave(heads // groups, dim=2)  # (B, L, H, N)
    c = c.reshape(batch, length, groups, d_state).repeat_interleave(heads // groups, dim=2)
    low, high = (float(v) for v in config.time_step_limit)
    dt = torch.nn.functional.softplus(dt + mixer.dt_bias.to(u.dtype)).clamp(min=low, max=high)  # (B, L, H)
    a = -torch.exp(mixer.A_log.to(u.dtype))  # (H,)
    d = mixer.D.to(u.dtype)
    state = u.new_zeros(batch, heads, head_dim, d_state)  # (B, H, P, N)
    outputs = []
    for t in range(length):
        restart = _restart(seq_idx, t)
        if restart is not None:
            state = state * (~restart).to(u.dtype)[:, None, None, None]
        decay = torch.exp(dt[:, t] * a)[:, :, None, None]
        state = decay * state + dt[:, t, :, None, None] * x[:, t, :, :, None] * b[:, t, :, None, :]
        outputs.append((state * c[:, t, :, None, :]).sum(-1) + d[:, None] * x[:, t])  # (B, H, P)
    y = torch.stack(outputs, dim=1).reshape(batch, length, d_inner)
    # Gated RMSNorm, norm_before_gate=False: normalise y * silu(z) within each of the n_groups groups.
    gated = (y * torch.nn.functional.silu(z)).reshape(batch, length, groups, d_inner // groups)
    eps = float(getattr(mixer.norm, "variance_epsilon", getattr(mixer.norm, "eps", config.layer_norm_epsilon)))
    gated = gated * torch.rsqrt(gated.pow(2).mean(-1, keepdim=True) + eps)
    y = gated.reshape(batch, length, d_inner) * mixer.norm.weight.to(u.dtype)
    return _linear(y, mixer.out_proj)


# --------------------------------------------------------------------------------------------------------------------
# Small helpers for tests and tools


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
