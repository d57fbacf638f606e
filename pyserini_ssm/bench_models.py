"""The models the bench measures: registry architectures (and its own `llama-780m`) with random weights at full
size, or a checkpoint folder; and what a built model says about itself (how it packs, its attention kernels, its
widest activation and so the int32 cap of one forward, its SSD kernels, its parameter count).

This module imports no pyserini and no Java: it runs on the GPU machines.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any

from pyserini_ssm.bench_workloads import synthetic_tokenizer

# A Llama-style decoder the size of mamba2-780m (780.2M parameters): same vocabulary (GPT-NeoX tokenizer) and width,
# Llama-3.2's shapes otherwise (SwiGLU 8/3 x width, 64-dim heads, 3 query heads per key/value head); 28 layers make
# 782.0M parameters. The papers compare Mamba-2 with transformers of the same size; no registry entry has it.
# 16,384 positions (RoPE, random weights): the efficiency figure goes out to 16k tokens.
SAME_SIZE_LLAMA = "llama-780m"
BENCH_ARCHITECTURES: dict[str, tuple[str, dict[str, Any]]] = {
    SAME_SIZE_LLAMA: ("llama-3.2-1b", {
        "hidden_size": 1536, "intermediate_size": 4096, "num_hidden_layers": 28, "num_attention_heads": 24,
        "num_key_value_heads": 8, "head_dim": 64, "vocab_size": 50288, "tie_word_embeddings": True,
        "max_position_embeddings": 16384, "rope_scaling": None,
    }),
}


def count_parameters(module: Any) -> int:
    """Parameters of a torch module: `models.reranker.count_parameters`, the one count (imported lazily: torch)."""
    from pyserini_ssm.models.reranker import count_parameters as parameters_of

    return int(parameters_of(module))


def bench_spec(name: str) -> Any:
    """A registry entry, or one of the bench's own architectures (`llama-780m`)."""
    from pyserini_ssm.models.registry import get_spec

    if name in BENCH_ARCHITECTURES:
        base, overrides = BENCH_ARCHITECTURES[name]
        spec = get_spec(base)
        architecture = {**spec.architecture, **overrides}
        architecture = {key: value for key, value in architecture.items() if value is not None}
        return replace(spec, name=name, checkpoint=f"(random {name})", architecture=architecture)
    return get_spec(name)


def build_bench_reranker(name: str, *, scale: str = "full", tokenizer: Any = None, device: Any = None,
                         dtype: Any = None, backend: str = "auto", max_length: int = 512, seed: int = 0) -> Any:
    """A `Reranker` with random weights of a registry (or bench) architecture at `scale`, built on `device` — or,
    when `name` is a folder, the checkpoint in it (real weights)."""
    from pyserini_ssm.models.reranker import Reranker

    if Path(name).is_dir():
        return Reranker.from_pretrained(name, device=device, dtype=dtype, max_length=max_length, backend=backend,
                                        tokenizer=tokenizer)
    from pyserini_ssm.models.random_init import build_random_reranker
    from pyserini_ssm.models.checkpoints import load_tokenizer

    spec = replace(bench_spec(name), max_length=max_length)
    if tokenizer is None:
        tokenizer = synthetic_tokenizer()
    elif isinstance(tokenizer, (str, Path)):
        tokenizer = load_tokenizer(tokenizer)
    return build_random_reranker(spec, scale, tokenizer, seed=seed, device=device, dtype=dtype, backend=backend)


def packing_mode(reranker: Any, compute_dtype: Any = None) -> tuple[str | None, str]:
    """How this model packs on its device: "seq_idx" (Mamba-2), "varlen" (transformers), or None and why
    (`models.scoring.packing_support`, what `Reranker.predict` and `train` ask too)."""
    from pyserini_ssm.models.scoring import packing_support

    return packing_support(reranker.model, reranker.device, compute_dtype or reranker.dtype)


def attention_label(reranker: Any) -> str:
    """The attention kernels recorded since the last `reset_kernel_record()`; "none (SSM)" for Mamba."""
    from pyserini_ssm.models.attention import kernels_used

    from pyserini_ssm.models.families import family_adapter

    if not family_adapter(reranker.spec.family).has_attention:
        return "none (SSM)"
    return kernels_used()


def widest_activation(model: Any) -> int:
    """The widest activation per token of a `ScoringModel`'s backbone (mamba2-780m: in_proj 6,448), from its config:
    the one rule `Reranker.score_encoded` caps its forwards by (`models.scoring.widest_activation`)."""
    from pyserini_ssm.models.scoring import widest_activation as config_widest_activation

    config = getattr(model, "backbone_config", None) or model.backbone.config
    return config_widest_activation(config)


def max_tokens_per_call(model: Any) -> int:
    """Tokens one forward may hold so that tokens x widest activation < 2^31 (issue 17: int32 indexing)."""
    from pyserini_ssm.ops.batching import int32_token_cap

    return int32_token_cap(widest_activation(model))


def ssd_kernels_of(reranker: Any) -> str:
    """What the Mamba kernel backbone's last forward ran ("" for other models and backends)."""
    backbone = getattr(getattr(reranker.model, "backbone", None), "model", None)
    return getattr(backbone, "last_ssd_kernels", None) or ""
