"""A micro-batch's model inputs: its groups' (query, document) pairs cut to the per-field token limits, encoded
through the model's template, padded or packed into one row (`--pack`), and refused past the int32 cap.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any, Sequence

from pyserini_ssm.errors import UserError
from pyserini_ssm.training.data import TrainingGroup
from pyserini_ssm.training.optimization import resolve_dtype

if TYPE_CHECKING:
    from pyserini_ssm.training.config import TrainConfig

logger = logging.getLogger(__name__)


def check_packing(reranker, device, dtype: str) -> str:
    """The packing mode of `--pack` ("seq_idx" or "varlen"), or a UserError saying why this model cannot pack
    here. Transformers pack through varlen attention: on CUDA in bf16/fp16 autocast, on CPU through the
    per-sequence reference (slow; it exists for tests)."""
    import torch

    from pyserini_ssm.models.scoring import packing_support

    device = torch.device(device)
    from pyserini_ssm.models.dtypes import DTYPES

    compute = DTYPES.get(resolve_dtype(dtype, device))
    mode, why = packing_support(reranker.model, device, compute)
    if mode is None:
        raise UserError(f"--pack: {reranker.spec.name} cannot pack on {device}: {why}")
    if why:
        logger.warning("--pack: %s", why)
    return mode


class PairBatcher:
    """Groups -> padded model inputs, with optional per-field token limits (cut on token boundaries)."""

    def __init__(self, reranker, config: TrainConfig, device):
        self.encoder = reranker.encoder
        self.tokenizer = reranker.tokenizer
        self.max_query_length = config.max_query_length
        self.max_doc_length = config.max_doc_length
        self.device = device
        self.pack = config.pack
        if self.pack:
            check_packing(reranker, device, config.dtype)
        self.pad_id = int(reranker.pad_id)
        self._query_cut: dict[str, str] = {}
        self.activation_width = getattr(reranker, "activation_width", None)

    def _cut(self, text: str, limit: int | None) -> str:
        """The prefix of `text` holding its first `limit` tokens (whole text when shorter)."""
        if limit is None:
            return text
        encoded = self.tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
        offsets = encoded["offset_mapping"]
        if len(offsets) <= limit:
            return text
        return text[: offsets[limit - 1][1]]

    def __call__(self, groups: Sequence[TrainingGroup]) -> dict:
        from pyserini_ssm.ops.batching import pack_batch, pad_batch

        pairs = []
        for group in groups:
            query = self._query_cut.get(group.query)
            if query is None:
                query = self._query_cut.setdefault(group.query, self._cut(group.query, self.max_query_length))
            pairs.extend((query, self._cut(document, self.max_doc_length)) for document in group.documents)
        encoded = self.encoder.encode_many(pairs)
        self._check_int32_cap(encoded)
        if self.pack:
            return pack_batch(encoded, device=self.device)  # one row; scores come back in pair order
        return pad_batch(encoded, self.pad_id, device=self.device)

    def _check_int32_cap(self, encoded: Sequence[Any]) -> None:
        """A micro-batch is one forward (its groups share one loss): past 2^31 elements of the widest activation,
        mamba_ssm's int32-indexed kernels would read out of bounds and kill the CUDA context, so refuse it."""
        from pyserini_ssm.ops.batching import int32_token_cap

        if not self.activation_width or not encoded:
            return
        lengths = [len(item.input_ids) for item in encoded]
        tokens = sum(lengths) if self.pack else len(lengths) * max(lengths)
        if tokens > int32_token_cap(self.activation_width):
            raise UserError(f"a micro-batch of {len(lengths)} pairs ({tokens} tokens x {self.activation_width} "
                            "activations) is past 2^31 elements, which mamba_ssm's kernels cannot index: lower "
                            "--batch-size and raise --grad-accum to keep the same global batch (or lower "
                            "--max-length)")
