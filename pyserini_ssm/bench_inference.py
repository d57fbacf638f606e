"""Inference measurements: the padded-random baseline, length-sorted batches and packed rows on the same
pre-tokenized pairs, `Reranker.predict` end to end, and one fixed length at the model's best setting.

Packed rows run the library's own paths (`ScoringModel` on `ops.batching.pack_batch` rows: Mamba-2 through
`seq_idx`, transformers through `models.attention`'s varlen attention), the code `Reranker.predict` and `train` run;
the bench has no fast path of its own. Scores are compared with the first method's.

This module imports no pyserini and no Java: it runs on the GPU machines.
"""

from __future__ import annotations

import logging
from typing import Any, Sequence

import numpy as np

from pyserini_ssm.bench_models import max_tokens_per_call, packing_mode
from pyserini_ssm.bench_records import Measurement, _base_record, _fill
from pyserini_ssm.bench_timing import _free_memory, _is_oom, time_call
from pyserini_ssm.bench_workloads import Workload, fixed_workload

logger = logging.getLogger(__name__)

METHODS = ("padded-random", "sorted", "packed")


def inference_groups(method: str, lengths: Sequence[int], batch_size: int, token_budget: int,
                     seed: int = 0, activation_width: int | None = None) -> list[list[int]]:
    """The forwards of one method; `activation_width` keeps each under 2^31 elements (see `int32_token_cap`)."""
    from pyserini_ssm.ops.batching import int32_token_cap, length_sorted_batches, pack_sequences

    if method == "padded-random":
        order = np.random.default_rng(seed).permutation(len(lengths)).tolist()
        cap = int32_token_cap(activation_width) if activation_width else None
        groups: list[list[int]] = [[]]
        longest = 0
        for index in order:
            width = max(longest, int(lengths[index]))
            full = len(groups[-1]) >= batch_size or (cap is not None and width * (len(groups[-1]) + 1) > cap)
            if groups[-1] and full:
                groups.append([])
                width = int(lengths[index])
            groups[-1].append(index)
            longest = width
        return [group for group in groups if group]
    if method == "sorted":
        return length_sorted_batches(lengths, batch_size, activation_width=activation_width)
    if method == "packed":
        return pack_sequences(lengths, token_budget, activation_width=activation_width)
    raise ValueError(f"unknown inference method {method!r}; expected one of {', '.join(METHODS)}")


def score_groups(reranker: Any, encoded: Sequence[Any], groups: Sequence[Sequence[int]], mode: str) -> np.ndarray:
    """Scores (input order) of `encoded` cut into `groups`: mode "padded" (padded batches) or "packed" (one packed
    row per group, through `ScoringModel`: Mamba-2 seq_idx or transformers varlen attention)."""
    import torch

    from pyserini_ssm.ops.batching import pack_batch, pad_batch, scatter_scores

    mode = {"seq_idx": "packed", "varlen": "packed"}.get(mode, mode)  # the packing modes' older names
    if mode not in ("padded", "packed"):
        raise ValueError(f"unknown mode {mode!r}; expected padded or packed")
    model = reranker.model
    model.eval()
    outputs = []
    with torch.inference_mode():
        for group in groups:
            items = [encoded[index] for index in group]
            batch = (pad_batch(items, reranker.pad_id, device=reranker.device) if mode == "padded"
                     else pack_batch(items, device=reranker.device))
            outputs.append(model(batch))
        flat = torch.cat(outputs).float().cpu()
    return scatter_scores(groups, torch.split(flat, [len(group) for group in groups]), len(encoded))


def _padded_tokens(lengths: Sequence[int], groups: Sequence[Sequence[int]], packed: bool) -> int:
    if packed:
        return int(sum(lengths))
    return int(sum(len(group) * max(lengths[index] for index in group) for group in groups))


def _compare(scores: np.ndarray, reference: np.ndarray | None) -> tuple[float | None, float | None]:
    if reference is None:
        return None, None
    difference = float(np.max(np.abs(scores.astype(np.float64) - reference)))
    scale = float(np.max(np.abs(reference))) or 1.0
    return difference, difference / scale


def measure_inference(reranker: Any, workload: Workload, *, methods: Sequence[str] = METHODS, batch_size: int = 256,
                      token_budget: int = 32768, repeats: int = 3, warmup: int = 1, seed: int = 0,
                      end_to_end: bool = True) -> list[Measurement]:
    """Each method on the same pre-tokenized pairs (tokenization excluded), then `Reranker.predict` end to end on
    their texts (tokenization included) when the workload has texts. Scores are compared with the first method's."""
    records: list[Measurement] = []
    lengths = workload.lengths
    reference: np.ndarray | None = None
    for method in methods:
        if method == "packed":
            mode, why = packing_mode(reranker)
            if mode is None:
                records.append(_base_record(reranker, "inference", method, workload, skipped=True, note=why))
                continue
        else:
            mode, why = "padded", ""
        groups = inference_groups(method, lengths, batch_size, token_budget, seed,
                                  activation_width=getattr(reranker, "activation_width", None))
        record = _base_record(reranker, "inference", method, workload,
                              batch_size=None if method == "packed" else batch_size,
                              token_budget=token_budget if method == "packed" else None,
                              padded_tokens=_padded_tokens(lengths, groups, method == "packed"),
                              repeats=repeats, note=why)
        mode = "packed" if method == "packed" else "padded"
        try:
            timing = time_call(lambda: score_groups(reranker, workload.encoded, groups, mode), reranker.device,
                               repeats, warmup)
        except Exception as error:
            if not _is_oom(error):
                raise
            _free_memory(reranker.device)
            record.skipped, record.note = True, f"CUDA out of memory ({method}); lower --batch-size/--token-budget"
            records.append(record)
            continue
        scores = np.asarray(timing.result, dtype=np.float64)
        record.max_abs_diff, record.max_rel_error = _compare(scores, reference)
        if reference is None:
            reference = scores
        records.append(_fill(record, timing, reranker))
    if end_to_end and workload.texts is not None:
        records.append(measure_predict(reranker, workload, batch_size=batch_size, token_budget=token_budget,
                                       repeats=repeats, warmup=warmup, reference=reference))
    return records


def measure_predict(reranker: Any, workload: Workload, *, batch_size: int, token_budget: int | None = None,
                    repeats: int = 3, warmup: int = 1, reference: np.ndarray | None = None) -> Measurement:
    """`Reranker.predict` on the workload's texts: tokenization (background thread), sorting/packing, scoring."""
    texts = workload.texts
    record = _base_record(reranker, "inference", "predict", workload, batch_size=batch_size,
                          token_budget=token_budget if reranker.pack else None, repeats=repeats,
                          note="end to end: tokenization included")
    timing = time_call(lambda: reranker.predict(texts, batch_size=batch_size,
                                                max_tokens=token_budget if reranker.pack else None),
                       reranker.device, repeats, warmup)
    record.max_abs_diff, record.max_rel_error = _compare(np.asarray(timing.result, dtype=np.float64), reference)
    return _fill(record, timing, reranker)


def measure_fixed_length(reranker: Any, length: int, *, pairs: int, batch_size: int = 256,
                         token_budget: int = 32768, repeats: int = 3, warmup: int = 1, seed: int = 0,
                         method: str | None = None) -> Measurement:
    """Pairs/s at one fixed length at the model's best setting: packed rows (`method` "packed", the default where
    the model packs on CUDA) of `token_budget` tokens, else padded batches of `batch_size` pairs (no padding at a fixed
    length); the tokens of one call capped by `max_tokens_per_call`, and halved on CUDA out-of-memory until it
    fits."""
    if method is None:  # packed on CUDA; on the CPU packing is the per-sequence reference, slower than padding
        method = "packed" if packing_mode(reranker)[0] is not None and reranker.device.type == "cuda" else "padded"
    if method == "packed" and packing_mode(reranker)[0] is None:
        raise ValueError(f"{reranker.spec.name} cannot pack here: {packing_mode(reranker)[1]}")
    workload = fixed_workload(reranker.encoder, length, pairs, seed=seed)
    lengths = workload.lengths
    cap = max_tokens_per_call(reranker.model)
    per_call = max(1, min(batch_size if method == "padded" else max(1, token_budget // length), pairs,
                          max(1, cap // length)))  # pairs per batch or per packed row
    note = "" if per_call * length < cap else f"capped at {cap:,} tokens per call (int32 indexing)"
    while True:
        groups = [list(range(start, min(start + per_call, pairs))) for start in range(0, pairs, per_call)]
        record = _base_record(reranker, "fixed-length", method, workload,
                              batch_size=per_call if method == "padded" else None,
                              token_budget=per_call * length if method == "packed" else None,
                              padded_tokens=_padded_tokens(lengths, groups, method == "packed"), repeats=repeats,
                              note=note)
        try:
            timing = time_call(lambda: score_groups(reranker, workload.encoded, groups, method), reranker.device,
                               repeats, warmup)
            return _fill(record, timing, reranker)
        except Exception as error:
            if not _is_oom(error):
                raise
            _free_memory(reranker.device)
            if per_call == 1:
                record.skipped, record.note = True, f"CUDA out of memory at length {length} with one pair"
                return record
            logger.warning("%s: out of memory at length %d, %d pairs per call: halving", reranker.spec.name,
                           length, per_call)
            per_call //= 2
