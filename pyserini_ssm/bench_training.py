"""Training measurements: pairs/s of LCE steps (forward, backward, AdamW) with padded batches or packed rows, and
one fixed length at the model's best setting (the largest pairs per step that fits, then gradient checkpointing).

This module imports no pyserini and no Java: it runs on the GPU machines.
"""

from __future__ import annotations

import logging
import statistics
import time
from typing import Any, Callable

import numpy as np

from pyserini_ssm.bench_models import attention_label, max_tokens_per_call, packing_mode, ssd_kernels_of
from pyserini_ssm.bench_records import Measurement, _base_record
from pyserini_ssm.bench_timing import _free_memory, _is_oom, _memory_kind, _peak_rss_mb, _sync
from pyserini_ssm.bench_workloads import Workload, fixed_workload

logger = logging.getLogger(__name__)


def training_batches(reranker: Any, workload: Workload, *, groups_per_step: int, group_size: int, steps: int,
                     mode: str) -> list[dict[str, Any]]:
    """Model inputs (mode "padded" or "packed": one row per step) of `steps` steps, each `groups_per_step` groups of `group_size` consecutive pairs (pair order:
    group by group, positive first), built ahead of time (tokenization and batching are not timed)."""
    from pyserini_ssm.ops.batching import pack_batch, pad_batch

    per_step = groups_per_step * group_size
    encoded = workload.encoded
    batches = []
    for step in range(steps):
        items = [encoded[(step * per_step + offset) % len(encoded)] for offset in range(per_step)]
        batches.append(pad_batch(items, reranker.pad_id, device=reranker.device) if mode == "padded"
                       else pack_batch(items, device=reranker.device))
    return batches


def _loss_function() -> Callable[[Any], Any]:
    try:
        from pyserini_ssm.training.losses import localized_contrastive_loss

        return localized_contrastive_loss
    except ImportError:  # the training package is not there: the same LCE, inline
        import torch.nn.functional as F

        def lce(scores: Any) -> Any:
            import torch

            return F.cross_entropy(scores.float(), torch.zeros(scores.shape[0], dtype=torch.long,
                                                              device=scores.device))

        return lce


def measure_training(reranker: Any, workload: Workload, *, packed: bool, groups_per_step: int = 16,
                     group_size: int = 8, steps: int = 10, warmup: int = 2, lr: float = 2e-5,
                     dropout: bool = True, grad_checkpointing: bool = False, benchmark: str = "training",
                     raise_oom: bool = False) -> Measurement:
    """Pairs/s of LCE training steps (forward, backward, AdamW) on fp32 master weights with bf16 autocast on CUDA
    (fp32 on CPU): padded batches, or one packed row per step (Mamba-2 seq_idx / transformers varlen, through
    `ScoringModel` as in `train`). The reranker's weights must be fp32; they are changed by the steps.
    `dropout=False` keeps every dropout off (deterministic steps, to compare padded with packed). A CUDA
    out-of-memory gives a skipped record, or is raised with `raise_oom`."""
    import contextlib

    import torch

    model = reranker.model
    method = "train-packed" if packed else "train-padded"
    cuda = reranker.device.type == "cuda"
    note = ""
    if packed:
        mode, why = packing_mode(reranker, torch.bfloat16 if cuda else None)
        if mode is None:
            return _base_record(reranker, benchmark, method, workload, skipped=True, note=why)
        note = why
    mode = "packed" if packed else "padded"
    batches = training_batches(reranker, workload, groups_per_step=groups_per_step, group_size=group_size,
                               steps=warmup + steps, mode=mode)
    per_step = groups_per_step * group_size
    record = _base_record(reranker, benchmark, method, workload, batch_size=per_step, repeats=steps, note=note,
                          grad_checkpointing=grad_checkpointing)
    record.pairs = per_step
    step_lengths = [[len(workload.encoded[(s * per_step + o) % len(workload.encoded)].input_ids)
                     for o in range(per_step)] for s in range(warmup + steps)]
    record.tokens = int(np.mean([sum(lengths) for lengths in step_lengths[warmup:]]))
    record.padded_tokens = int(np.mean([len(lengths) * max(lengths) if mode == "padded" else sum(lengths)
                                        for lengths in step_lengths[warmup:]]))
    record.dtype = "bf16-autocast" if cuda else "fp32"
    loss_function = _loss_function()
    from pyserini_ssm.training.optimization import fused_adamw_applies

    trainable = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(trainable, lr=lr, weight_decay=0.01, fused=fused_adamw_applies(trainable))
    autocast = (lambda: torch.autocast("cuda", dtype=torch.bfloat16)) if cuda else contextlib.nullcontext
    if grad_checkpointing:
        from pyserini_ssm.training.trainable import enable_gradient_checkpointing

        record.grad_checkpointing = enable_gradient_checkpointing(model)
    model.train(dropout)
    times: list[float] = []
    losses: list[float] = []
    from pyserini_ssm.models.attention import reset_kernel_record

    reset_kernel_record()
    try:
        if cuda:
            torch.cuda.reset_peak_memory_stats(reranker.device)
        for step, batch in enumerate(batches):
            _sync(reranker.device)
            start = time.perf_counter()
            with autocast():
                scores = model(batch)  # (G * n,)
            loss = loss_function(scores.view(groups_per_step, group_size))  # (G, n) -> scalar
            loss.backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            losses.append(float(loss.detach()))  # synchronises
            _sync(reranker.device)
            if step >= warmup:
                times.append(time.perf_counter() - start)
    except Exception as error:
        if not _is_oom(error):
            raise
        del optimizer, batches
        _free_memory(reranker.device)
        if raise_oom:
            raise
        record.skipped, record.note = True, f"CUDA out of memory with {per_step} pairs per step; lower --train-groups"
        return record
    finally:
        model.eval()
        if grad_checkpointing:
            _disable_gradient_checkpointing(model)
    seconds = statistics.median(times)
    record.seconds = round(seconds, 6)
    record.pairs_per_s = round(per_step / seconds, 2)
    record.tokens_per_s = round(record.tokens / seconds, 1)
    record.peak_memory_mb = round(torch.cuda.max_memory_allocated(reranker.device) / 2**20 if cuda
                                  else _peak_rss_mb(), 1)
    record.memory = _memory_kind(reranker.device) + " (weights, AdamW states, activations)"
    record.attention = attention_label(reranker)
    record.first_loss, record.last_loss = losses[0], losses[-1]
    record.kernels = ssd_kernels_of(reranker)
    record.note = (note + "; " if note else "") + f"loss {losses[0]:.4f} -> {losses[-1]:.4f}; " \
                                                   f"{groups_per_step} groups x {group_size} per step" + \
                  ("; gradient checkpointing" if record.grad_checkpointing else "")
    del optimizer
    _free_memory(reranker.device)
    return record


def _disable_gradient_checkpointing(model: Any) -> None:
    for module in model.modules():
        # transformers >= 5 renamed it activation_checkpointing_disable (the old name warns)
        disable = getattr(module, "activation_checkpointing_disable", None) or getattr(
            module, "gradient_checkpointing_disable", None)
        if disable is not None and getattr(module, "is_gradient_checkpointing", False):
            disable()


def measure_fixed_length_training(reranker: Any, length: int, *, max_pairs: int = 128, max_tokens: int = 65536,
                                  group_size: int = 8, steps: int = 2, warmup: int = 1,
                                  seed: int = 0) -> Measurement:
    """Training pairs/s at one fixed length at the model's best setting: packed rows where it packs on CUDA, the largest
    pairs per step that fits — from min(`max_pairs`, `max_tokens` / length, the int32 cap / length), halved on CUDA
    out-of-memory down to 2 pairs (one LCE group of 2), then once more with gradient checkpointing."""
    import torch

    cuda = reranker.device.type == "cuda"
    packed = cuda and packing_mode(reranker, torch.bfloat16)[0] is not None
    cap = max_tokens_per_call(reranker.model)
    pairs = max(2, min(max_pairs, max_tokens // length, cap // length))
    checkpointing = False
    while True:
        size = min(group_size, pairs)
        groups = max(1, pairs // size)
        workload = fixed_workload(reranker.encoder, length, groups * size * (warmup + steps), seed=seed)
        try:
            record = measure_training(reranker, workload, packed=packed, groups_per_step=groups, group_size=size,
                                      steps=steps, warmup=warmup, grad_checkpointing=checkpointing,
                                      benchmark="fixed-length-training", raise_oom=cuda)
            record.lengths = str(length)
            return record
        except Exception as error:
            if not _is_oom(error):
                raise
            _free_memory(reranker.device)
            if groups * size > 2:
                logger.warning("%s: training out of memory at length %d, %d pairs per step: halving",
                               reranker.spec.name, length, groups * size)
                pairs = max(2, groups * size // 2)
            elif not checkpointing:
                checkpointing = True
            else:
                record = _base_record(reranker, "fixed-length-training", "train-packed" if packed else
                                      "train-padded", workload, skipped=True,
                                      note=f"CUDA out of memory at length {length} with 2 pairs per step, even "
                                           f"with gradient checkpointing")
                return record
