"""`ScoringModel`: a backbone, pooling, dropout and a linear head giving one relevance logit per pair.

Backbones: Mamba-1/Mamba-2 through `models.mamba.build_mamba_backbone` (mamba-ssm kernels on CUDA, transformers'
torch implementation elsewhere); decoder and encoder transformers through `AutoModel` (SDPA attention by default).
Pooling `last` reads the hidden state of the last real token (right padding, `last_index` from the batch); `cls`
reads position 0 (of each sequence, in a packed row).

A batch is padded (`ops.batching.pad_batch`) or one packed row (`ops.batching.pack_batch`, it has `seq_idx`):
Mamba-2 packs through `seq_idx`, transformers through varlen attention (`models.attention`), one code path for
`predict`, `train` and the bench. `packing_support` says whether and why not a model packs on a device.
What differs between families (the backbone's forward, packing, pooling rules) is asked of the family's adapter
(`models.families`).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from pyserini_ssm.errors import UserError
from pyserini_ssm.models import attention
# Re-exported: the family names and encoder model types have one home, the family adapters.
from pyserini_ssm.models.families import (  # noqa: F401
    ENCODER_MODEL_TYPES, MAMBA_FAMILIES, FamilyAdapter, adapter_for_config, family_adapter,
)


def output_hidden_size(config: Any) -> int:
    """Width of the backbone's last hidden state (OPT-350m projects 1024 -> 512 after its layers)."""
    if getattr(config, "model_type", None) == "opt":
        return int(config.word_embed_proj_dim)
    for key in ("hidden_size", "d_model", "dim", "n_embd"):
        value = getattr(config, key, None)
        if isinstance(value, int):
            return value
    raise UserError(f"cannot tell the hidden size of a {type(config).__name__}")


def widest_activation(config: Any) -> int:
    """Elements per token of the widest activation one forward of this backbone makes (the int32 cap of
    `ops.batching.int32_token_cap` divides by it), from the HF config:

    - Mamba-2: in_proj's output, d_in_proj = 2*d_inner + 2*ngroups*d_state + nheads (6,448 for mamba2-780m);
    - Mamba-1: in_proj's output, 2*d_inner;
    - transformers: the MLP's inner width (intermediate_size, ffn_dim, n_inner, d_ff; else 4*hidden) or the fused
      QKV projection, 3*hidden, whichever is wider.
    """
    # A model type no family claims (a config made up by hand): the transformers rule still bounds it.
    return (adapter_for_config(config) or FamilyAdapter()).widest_activation(config)


def build_transformer_backbone(config: Any, attn_implementation: str | None = "sdpa",
                               dtype: torch.dtype | None = None) -> nn.Module:
    """A randomly initialised `AutoModel` for a transformers config (SDPA attention where the model supports it)."""
    from transformers import AutoModel

    kwargs: dict[str, Any] = {}
    if dtype is not None:
        kwargs["dtype"] = dtype
    if attn_implementation:
        try:
            return AutoModel.from_config(config, attn_implementation=attn_implementation, **kwargs)
        except (ValueError, ImportError):
            pass  # this architecture has no SDPA path (DeBERTa-v2): eager attention
        return AutoModel.from_config(config, attn_implementation="eager", **kwargs)
    return AutoModel.from_config(config, **kwargs)


class ScoringModel(nn.Module):
    """backbone -> pooled hidden state (B, D) -> dropout -> Linear(D, 1) -> scores (B,) float32."""

    def __init__(self, backbone: nn.Module, family: str, pooling: str, hidden_size: int, dropout: float = 0.1,
                 backbone_config: Any = None) -> None:
        super().__init__()
        if pooling not in ("last", "cls"):
            raise UserError(f"unknown pooling {pooling!r}; expected last or cls")
        self.adapter = family_adapter(family)  # everything that differs between families
        self.adapter.check_pooling(pooling)
        self.backbone = backbone
        self.family = family
        self.pooling = pooling
        self.backbone_config = backbone_config
        self.dropout = nn.Dropout(dropout)
        self.head = nn.Linear(hidden_size, 1)
        # Transformers that route attention through transformers' AttentionInterface take packed rows (varlen
        # attention); padded batches still run SDPA. Mamba packs through seq_idx instead.
        self.varlen = self.adapter.installs_varlen(backbone)

    @property
    def hidden_size(self) -> int:
        return self.head.in_features

    def encode(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """Pooled hidden states (B, D) of a padded batch, or (N, D) of a packed row of N sequences (it has
        `seq_idx`)."""
        packed = "seq_idx" in batch  # a padded batch (B, L), or one packed row (1, T) of N sequences
        if packed:
            pooled = self.adapter.packed_pooled(self, batch)  # a backbone that pools a packed row itself
            if pooled is not None:
                return pooled  # (N, D)
        hidden = self.adapter.hidden_states(self, batch)  # (B, L, D) or (1, T, D)
        if packed:
            index = batch["cu_seqlens"][:-1].long() if self.pooling == "cls" else batch["last_index"]
            return hidden[0, index.to(hidden.device)]  # (N, D)
        if self.pooling == "cls":
            return hidden[:, 0]  # (B, D)
        rows = torch.arange(hidden.shape[0], device=hidden.device)
        return hidden[rows, batch["last_index"]]  # (B, D)

    def forward(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        pooled = self.encode(batch)  # (B, D)
        logits = self.head(self.dropout(pooled.to(self.head.weight.dtype)))  # (B, 1)
        return logits.squeeze(-1).float()  # (B,)


def packing_support(model: ScoringModel, device: Any, compute_dtype: torch.dtype | None = None
                    ) -> tuple[str | None, str]:
    """How `model` packs rows on `device`: "seq_idx" (Mamba-2 on the mamba-ssm kernels), "varlen" (transformers),
    or None, and a note (why not; or that CPU packing is the per-sequence reference). `compute_dtype`: the dtype
    attention runs in (the autocast dtype when training under autocast); CUDA varlen kernels need bf16/fp16."""
    return family_adapter(model.family).packing_support(model, torch.device(device), compute_dtype)


def transformer_hidden_states(model: ScoringModel, batch: dict[str, torch.Tensor], *, causal: bool) -> torch.Tensor:
    """A transformers backbone's last hidden states: (B, L, D) of a padded batch through SDPA, or (1, T, D) of a
    packed row through varlen attention. `causal` (decoders): no key/value cache is built."""
    if "seq_idx" in batch:
        if not model.varlen:
            _, why = attention.supports_varlen(model.backbone)
            raise UserError(f"packed rows need varlen attention: {why}; use padded batches")
        return attention.packed_hidden_states(model.backbone, batch, decoder=causal)
    kwargs = {"input_ids": batch["input_ids"], "attention_mask": batch.get("attention_mask")}
    if "token_type_ids" in batch:
        kwargs["token_type_ids"] = batch["token_type_ids"]
    if causal:
        kwargs["use_cache"] = False  # scoring needs no key/value cache
    return model.backbone(**kwargs).last_hidden_state  # (B, L, D)


def varlen_packing_support(model: ScoringModel, device: torch.device, compute_dtype: torch.dtype | None = None
                           ) -> tuple[str | None, str]:
    """`packing_support` for a transformers backbone: varlen attention where it installed, on CUDA with a fast
    kernel in bf16/fp16; on the CPU the per-sequence reference."""
    if not model.varlen:
        return None, attention.supports_varlen(model.backbone)[1]
    if device.type != "cuda":
        return "varlen", "CPU: per-sequence SDPA (the reference path, not a fast kernel)"
    if attention.fast_varlen_kernel() is None:
        return None, "no varlen kernel: this PyTorch has no torch.nn.attention.varlen (needs >= 2.9), no flash-attn"
    if compute_dtype is not None and compute_dtype not in attention.FAST_DTYPES:
        return None, f"varlen kernels run in bf16/fp16, not {compute_dtype}: padded SDPA batches"
    return "varlen", ""
