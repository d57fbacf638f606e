"""Length sorting, padding, packing and scattering scores back: pure functions shared by every model family.

Padding is always on the RIGHT: a causal model (Mamba, decoder transformers) then computes the real tokens exactly as
it would without padding, and pooling reads the hidden state at `last_index`, the last real token.
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np

# mamba_ssm's Triton kernels (e.g. `_chunk_cumsum_fwd` over Mamba-2's in_proj output) index with int32: a forward
# whose activation holds 2^31 elements or more reads out of bounds (an illegal memory access that kills the CUDA
# context; no out-of-memory backoff recovers from it). Every forward is planned under this many elements.
INT32_ELEMENTS = 2**31


def to_device(tensor: Any, device: Any) -> Any:
    """`tensor` (CPU) on `device` without waiting for the device: to a GPU through pinned memory, as a
    non-blocking copy. A copy from pageable memory is ordered after the work already queued and torch waits for it
    (a blocking `.to` synchronises the stream), so the host could not queue the next row while the GPU runs this one.
    """
    import torch

    device = torch.device(device)
    if device.type == "cuda":
        return tensor.pin_memory().to(device, non_blocking=True)
    return tensor.to(device)


def int32_token_cap(activation_width: int) -> int:
    """The most tokens (padded rows x longest length, or a packed row's length) one forward may hold so that
    tokens x `activation_width` (the widest activation per token, see `models.scoring.widest_activation`) stays
    under 2^31 elements."""
    if activation_width < 1:
        raise ValueError(f"activation_width must be >= 1, not {activation_width}")
    return max(1, (INT32_ELEMENTS - 1) // int(activation_width))


def _token_limit(max_tokens: int | None, activation_width: int | None) -> int | None:
    if activation_width is None:
        return max_tokens
    cap = int32_token_cap(activation_width)
    return cap if max_tokens is None else min(max_tokens, cap)


def _check_fits(length: int, activation_width: int | None) -> None:
    if activation_width is not None and length > int32_token_cap(activation_width):
        raise ValueError(f"one sequence of {length} tokens x {activation_width} activations is past 2^31 elements: "
                         "no batch can hold it (shorten it)")


def length_sorted_batches(lengths: Sequence[int], max_batch_size: int, max_tokens: int | None = None, *,
                          activation_width: int | None = None) -> list[list[int]]:
    """Group indices into batches of similar length, longest first (an out-of-memory shows on the first batch).

    A batch holds at most `max_batch_size` items and, when `max_tokens` is given, at most `max_tokens` padded tokens
    (items x longest length); an item longer than `max_tokens` gets a batch to itself. Every index appears once.
    `activation_width` (the model's widest activation per token) caps the padded tokens at `int32_token_cap`, so
    that no forward reaches 2^31 elements (mamba_ssm's int32 indexing).
    """
    if max_batch_size < 1:
        raise ValueError(f"max_batch_size must be >= 1, not {max_batch_size}")
    max_tokens = _token_limit(max_tokens, activation_width)
    lengths = np.asarray(lengths, dtype=np.int64)
    if len(lengths):
        _check_fits(int(lengths.max()), activation_width)
    order = np.argsort(-lengths, kind="stable")  # longest first, ties in input order
    batches: list[list[int]] = []
    current: list[int] = []
    longest = 0
    for index in order.tolist():
        length = int(lengths[index])
        if current:
            width = max(longest, length)
            too_many = len(current) >= max_batch_size
            too_wide = max_tokens is not None and width * (len(current) + 1) > max_tokens
            if too_many or too_wide:
                batches.append(current)
                current, longest = [], 0
        current.append(index)
        longest = max(longest, length)
    if current:
        batches.append(current)
    return batches


def pad_batch(encoded: Sequence[Any], pad_id: int, device: Any = None) -> dict[str, Any]:
    """Right-pad encoded pairs (objects with `input_ids` and `token_type_ids`) into tensors.

    Returns `input_ids` (B, L) long, `attention_mask` (B, L) long, `last_index` (B,) long (the last real token) and
    `token_type_ids` (B, L) long when the pairs have segment ids.
    """
    import torch

    if not encoded:
        raise ValueError("pad_batch needs at least one sequence")
    lengths = np.fromiter((len(item.input_ids) for item in encoded), dtype=np.int64, count=len(encoded))
    if lengths.min() < 1:
        raise ValueError("pad_batch got an empty sequence")
    batch_size, width = len(encoded), int(lengths.max())
    input_ids = np.full((batch_size, width), pad_id, dtype=np.int64)  # (B, L)
    attention_mask = (np.arange(width)[None, :] < lengths[:, None]).astype(np.int64)  # (B, L)
    with_types = encoded[0].token_type_ids is not None
    token_type_ids = np.zeros((batch_size, width), dtype=np.int64) if with_types else None
    for row, item in enumerate(encoded):
        input_ids[row, : lengths[row]] = item.input_ids
        if with_types:
            token_type_ids[row, : lengths[row]] = item.token_type_ids
    batch = {
        "input_ids": torch.from_numpy(input_ids),
        "attention_mask": torch.from_numpy(attention_mask),
        "last_index": torch.from_numpy(lengths - 1),
    }
    if with_types:
        batch["token_type_ids"] = torch.from_numpy(token_type_ids)
    if device is not None:
        batch = {key: to_device(value, device) for key, value in batch.items()}
    return batch


def pack_sequences(lengths: Sequence[int], token_budget: int, *,
                   activation_width: int | None = None) -> list[list[int]]:
    """Group indices into rows of at most `token_budget` tokens in all (longest first, next fit).

    A sequence longer than the budget gets a row of its own. Every index appears once. `activation_width` caps the
    budget at `int32_token_cap` (see `length_sorted_batches`).
    """
    if token_budget < 1:
        raise ValueError(f"token_budget must be >= 1, not {token_budget}")
    token_budget = _token_limit(token_budget, activation_width)
    lengths = np.asarray(lengths, dtype=np.int64)
    if len(lengths):
        _check_fits(int(lengths.max()), activation_width)
    order = np.argsort(-lengths, kind="stable")
    rows: list[list[int]] = []
    current: list[int] = []
    used = 0
    for index in order.tolist():
        length = int(lengths[index])
        if current and used + length > token_budget:
            rows.append(current)
            current, used = [], 0
        current.append(index)
        used += length
    if current:
        rows.append(current)
    return rows


class RowPacker:
    """Packed rows cut from pairs that arrive in pieces (`pack_sequences` over what is waiting).

    `add` takes a piece's keys and lengths; `rows(flush)` returns the rows to run now, longest first, as lists of
    keys. Without `flush` the last, part-full row waits for the next piece, so that rows stay full across pieces;
    the caller flushes when the device would otherwise wait (nothing queued on it) and at the end of the input.
    """

    def __init__(self, token_budget: int, *, activation_width: int | None = None) -> None:
        if token_budget < 1:
            raise ValueError(f"token_budget must be >= 1, not {token_budget}")
        self.token_budget = token_budget
        self.activation_width = activation_width
        self.keys: list[Any] = []
        self.lengths: list[int] = []

    @property
    def waiting(self) -> int:
        return len(self.keys)

    def add(self, keys: Sequence[Any], lengths: Sequence[int]) -> None:
        if len(keys) != len(lengths):
            raise ValueError(f"{len(keys)} keys for {len(lengths)} lengths")
        self.keys.extend(keys)
        self.lengths.extend(int(length) for length in lengths)

    def rows(self, flush: bool = False) -> list[list[Any]]:
        if not self.keys:
            return []
        rows = pack_sequences(self.lengths, self.token_budget, activation_width=self.activation_width)
        kept = [] if flush else rows.pop()  # pack_sequences's last row is the part-full one
        ready = [[self.keys[index] for index in row] for row in rows]
        self.keys, self.lengths = [self.keys[index] for index in kept], [self.lengths[index] for index in kept]
        return ready


def pack_batch(encoded: Sequence[Any], token_budget: int | None = None, device: Any = None) -> dict[str, Any]:
    """Concatenate sequences into one row without padding, for Mamba-2's `seq_idx` and varlen attention.

    Returns `input_ids` (1, T) long, `seq_idx` (1, T) int32 (which sequence each token belongs to), `cu_seqlens`
    (N+1,) int32 (sequence starts, then T), `position_ids` (1, T) long (restarting at 0 per sequence),
    `last_index` (N,) long (the position in the row of each sequence's last token), `token_type_ids` (1, T) long
    when the pairs have segment ids, `max_length` (a Python int, the longest sequence: kernels need it on the
    host, and reading it from a device tensor would synchronise) and `sequence_lengths` (a tuple of Python ints,
    for the same reason: the short SSD tiles the row from them without reading `seq_idx` back from the device).
    """
    import torch

    if not encoded:
        raise ValueError("pack_batch needs at least one sequence")
    lengths = np.fromiter((len(item.input_ids) for item in encoded), dtype=np.int64, count=len(encoded))
    if lengths.min() < 1:
        raise ValueError("pack_batch got an empty sequence")
    total = int(lengths.sum())
    if token_budget is not None and total > token_budget and len(encoded) > 1:
        raise ValueError(f"{total} tokens do not fit the token budget {token_budget}")
    cu_seqlens = np.zeros(len(encoded) + 1, dtype=np.int64)
    np.cumsum(lengths, out=cu_seqlens[1:])
    input_ids = np.fromiter((token for item in encoded for token in item.input_ids), dtype=np.int64, count=total)
    seq_idx = np.repeat(np.arange(len(encoded), dtype=np.int32), lengths)  # (T,)
    position_ids = np.arange(total, dtype=np.int64) - np.repeat(cu_seqlens[:-1], lengths)  # (T,)
    batch: dict[str, Any] = {
        "input_ids": torch.from_numpy(input_ids).unsqueeze(0),
        "seq_idx": torch.from_numpy(seq_idx).unsqueeze(0),
        "cu_seqlens": torch.from_numpy(cu_seqlens.astype(np.int32)),
        "position_ids": torch.from_numpy(position_ids).unsqueeze(0),
        "last_index": torch.from_numpy(cu_seqlens[1:] - 1),
    }
    if getattr(encoded[0], "token_type_ids", None) is not None:
        types = np.fromiter((t for item in encoded for t in item.token_type_ids), dtype=np.int64, count=total)
        batch["token_type_ids"] = torch.from_numpy(types).unsqueeze(0)
    if device is not None:
        batch = {key: to_device(value, device) for key, value in batch.items()}
    batch["max_length"] = int(lengths.max())
    batch["sequence_lengths"] = tuple(lengths.tolist())
    return batch


def scatter_scores(batches: Sequence[Sequence[int]], batch_scores: Sequence[Any], n: int) -> np.ndarray:
    """Put each batch's scores back at its items' input positions: a float32 array of length `n`."""
    scores = np.full(n, np.nan, dtype=np.float32)
    filled = np.zeros(n, dtype=bool)
    for indices, values in zip(batches, batch_scores, strict=True):
        values = np.asarray(values.detach().float().cpu() if hasattr(values, "detach") else values,
                            dtype=np.float32).reshape(-1)
        if len(values) != len(indices):
            raise ValueError(f"a batch of {len(indices)} items got {len(values)} scores")
        indices = np.asarray(indices, dtype=np.int64)
        if filled[indices].any():
            raise ValueError("an index appears in more than one batch")
        scores[indices] = values
        filled[indices] = True
    if not filled.all():
        raise ValueError(f"{int((~filled).sum())} of {n} items got no score")
    return scores
