"""`ScoringModel`: a backbone, pooling, dropout and a linear head giving one relevance logit per pair.

Backbones: Mamba-1/Mamba-2 through `models.mamba.build_mamba_backbone` (mamba-ssm kernels on CUDA, transformers'
torch implementation elsewhere); decoder and encoder transformers through `AutoModel` (SDPA attention by default).
Pooling `last` reads the hidden state of the last real token (right padding, `last_index` from the batch); `cls`
reads position 0 (of each sequence, in a packed row).

A batch is padded (`ops.batching.pad_batch`) or one packed row (`ops.batching.pack_batch`, it has `seq_idx`):
Mamba-2 packs through `seq_idx`, transformers through varlen attention (`models.attention`), one code path for
`predict`, `train` and the bench. `packing_support` says whether and why not a model packs on a device.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from pyserini_ssm.errors import UserError
from pyserini_ssm.models import attention

MAMBA_FAMILIES = ("mamba1", "mamba2")

# Encoder model types: explicit, from the checkpoint's own config (never from a name).
ENCODER_MODEL_TYPES = frozenset({
    "bert", "roberta", "xlm-roberta", "electra", "deberta", "deberta-v2", "distilbert", "mpnet", "albert",
    "camembert", "modernbert", "nomic_bert", "xlm", "ernie",
})


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
    model_type = getattr(config, "model_type", None)
    hidden = output_hidden_size(config)
    if model_type == "mamba2":
        d_inner = int(getattr(config, "expand", 2) * config.hidden_size)
        heads = getattr(config, "num_heads", None) or d_inner // int(config.head_dim)
        return 2 * d_inner + 2 * int(config.n_groups) * int(config.state_size) + int(heads)
    if model_type == "mamba":
        d_inner = getattr(config, "intermediate_size", None) or int(getattr(config, "expand", 2) * config.hidden_size)
        return 2 * int(d_inner)
    hidden = int(getattr(config, "hidden_size", None) or hidden)
    inner = next((getattr(config, key) for key in ("intermediate_size", "ffn_dim", "n_inner", "d_ff")
                  if isinstance(getattr(config, key, None), int)), 4 * hidden)
    return max(int(inner), 3 * hidden)


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
        if family in MAMBA_FAMILIES and pooling != "last":
            raise UserError("Mamba models are causal: they need last-token pooling")
        self.backbone = backbone
        self.family = family
        self.pooling = pooling
        self.backbone_config = backbone_config
        self.dropout = nn.Dropout(dropout)
        self.head = nn.Linear(hidden_size, 1)
        # Transformers that route attention through transformers' AttentionInterface take packed rows (varlen
        # attention); padded batches still run SDPA.
        self.varlen = family not in MAMBA_FAMILIES and attention.install_varlen_attention(backbone)

    @property
    def hidden_size(self) -> int:
        return self.head.in_features

    def encode(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """Pooled hidden states (B, D) of a padded batch, or (N, D) of a packed row of N sequences (it has
        `seq_idx`)."""
        input_ids = batch["input_ids"]  # (B, L) or packed (1, T)
        packed = "seq_idx" in batch
        if self.family in MAMBA_FAMILIES:
            if packed and self.pooling == "last":
                # Only the pooled tokens: the kernel backbone skips the rest of the last layer's out_proj and norms.
                return self.backbone(input_ids, seq_idx=batch["seq_idx"], output_positions=batch["last_index"])[0]
            # Right padding: a causal scan never lets padding reach the real tokens, so no mask is needed.
            hidden = self.backbone(input_ids, seq_idx=batch["seq_idx"] if packed else None)  # (B, L, D)
        elif packed:
            if not self.varlen:
                _, why = attention.supports_varlen(self.backbone)
                raise UserError(f"packed rows need varlen attention: {why}; use padded batches")
            hidden = attention.packed_hidden_states(self.backbone, batch, decoder=self.family == "decoder")
        else:
            kwargs = {"input_ids": input_ids, "attention_mask": batch.get("attention_mask")}
            if "token_type_ids" in batch:
                kwargs["token_type_ids"] = batch["token_type_ids"]
            if self.family == "decoder":
                kwargs["use_cache"] = False  # scoring needs no key/value cache
            hidden = self.backbone(**kwargs).last_hidden_state  # (B, L, D)
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
    device = torch.device(device)
    if model.family == "mamba1":
        return None, "Mamba-1 has no variable-length kernel: sorted padded batches are its best path"
    if model.family == "mamba2":
        if getattr(model.backbone, "backend", "") == "cuda":
            return "seq_idx", ""
        return None, "Mamba-2 packing needs the mamba-ssm kernels on CUDA (the torch backend only has a reference)"
    if not model.varlen:
        return None, attention.supports_varlen(model.backbone)[1]
    if device.type != "cuda":
        return "varlen", "CPU: per-sequence SDPA (the reference path, not a fast kernel)"
    if attention.fast_varlen_kernel() is None:
        return None, "no varlen kernel: this PyTorch has no torch.nn.attention.varlen (needs >= 2.9), no flash-attn"
    if compute_dtype is not None and compute_dtype not in attention.FAST_DTYPES:
        return None, f"varlen kernels run in bf16/fp16, not {compute_dtype}: padded SDPA batches"
    return "varlen", ""
