"""A bench result: `Measurement` records, filled from a model and a timing, printed as a table and kept as JSON lines
(`bench.jsonl`, one record per line with the machine).

This module imports no pyserini and no Java: it runs on the GPU machines.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Sequence

from pyserini_ssm.bench_models import attention_label, count_parameters, ssd_kernels_of
from pyserini_ssm.bench_timing import Timing, _memory_kind
from pyserini_ssm.bench_workloads import Workload


@dataclass
class Measurement:
    """One measured configuration. Throughputs count real tokens (padding excluded); `padded_tokens` is what the
    model computed. `max_abs_diff`/`max_rel_error` compare the scores with the padded-random baseline's
    (relative to the largest baseline score's magnitude)."""

    benchmark: str  # inference | fixed-length | crossencoder | training | fixed-length-training
    model: str
    family: str
    method: str
    lengths: str  # msmarco (tokenized DL19), msmarco-lognormal (fallback), or a fixed length such as "512"
    device: str
    dtype: str
    pairs: int
    tokens: int
    padded_tokens: int | None = None
    batch_size: int | None = None
    token_budget: int | None = None
    seconds: float | None = None  # median over repeats
    pairs_per_s: float | None = None
    tokens_per_s: float | None = None
    peak_memory_mb: float | None = None
    memory: str = ""  # what peak_memory_mb is
    repeats: int = 0
    parameters: int | None = None
    max_abs_diff: float | None = None
    max_rel_error: float | None = None
    fp8_linears: int | None = None  # --dtype fp8: how many Linear layers ran in FP8 (models.fp8)
    fp8_quantizer: str | None = None  # --dtype fp8: the input quantiser that ran (triton or torch)
    first_loss: float | None = None  # training: loss of the first (warm-up) step and of the last
    last_loss: float | None = None
    attention: str = ""  # attention kernel(s) that ran: sdpa (padded), torch-varlen / flash-attn-4 / ... (packed)
    grad_checkpointing: bool = False  # training: activations recomputed in backward
    skipped: bool = False
    note: str = ""
    kernels: str = ""  # Mamba: the SSD kernels the last forward ran (MambaKernelBackbone.last_ssd_kernels)

    def to_json(self, machine: dict[str, Any]) -> str:
        return json.dumps({**asdict(self), "machine": machine}, sort_keys=False)


def _base_record(reranker: Any, benchmark: str, method: str, workload: Workload, **extra: Any) -> Measurement:
    fp8 = reranker.fp8  # models.fp8.Fp8Conversion under --dtype fp8, else None
    return Measurement(benchmark=benchmark, model=reranker.spec.name, family=reranker.spec.family, method=method,
                       lengths=workload.name, device=str(reranker.device), dtype=reranker.dtype_name,
                       pairs=len(workload.encoded), tokens=workload.tokens,
                       parameters=count_parameters(reranker.model),
                       fp8_linears=None if fp8 is None else len(fp8.converted),
                       fp8_quantizer=None if fp8 is None else fp8.quantizer, **extra)


def _fill(record: Measurement, timing: Timing, reranker: Any) -> Measurement:
    device = reranker.device
    record.attention = attention_label(reranker)
    record.kernels = ssd_kernels_of(reranker)
    record.seconds = round(timing.seconds, 6)
    record.pairs_per_s = round(record.pairs / timing.seconds, 2)
    record.tokens_per_s = round(record.tokens / timing.seconds, 1)
    record.peak_memory_mb = round(timing.peak_memory_mb, 1)
    record.memory = _memory_kind(device)
    return record


def format_table(records: Sequence[Measurement]) -> str:
    header = ("benchmark", "model", "method", "lengths", "dtype", "pairs", "batch", "pairs/s", "tokens/s", "peak MB",
              "rel.err", "attention", "note")
    rows = [header]
    for r in records:
        batch = r.batch_size if r.batch_size is not None else (f"{r.token_budget}t" if r.token_budget else "")
        rows.append((r.benchmark, r.model, r.method, r.lengths, r.dtype, str(r.pairs), str(batch),
                     "skipped" if r.skipped else f"{r.pairs_per_s:,.1f}",
                     "" if r.skipped else f"{r.tokens_per_s:,.0f}",
                     "" if r.peak_memory_mb is None else f"{r.peak_memory_mb:,.0f}",
                     "" if r.max_rel_error is None else f"{r.max_rel_error:.1e}", r.attention, r.note[:70]))
    widths = [max(len(str(row[i])) for row in rows) for i in range(len(header))]
    lines = ["  ".join(str(cell).ljust(width) for cell, width in zip(row, widths)).rstrip() for row in rows]
    lines.insert(1, "  ".join("-" * width for width in widths))
    return "\n".join(lines)


def write_jsonl(records: Sequence[Measurement], machine: dict[str, Any], path: str | os.PathLike) -> Path:
    from pyserini_ssm.files import atomic_output

    with atomic_output(path) as handle:
        for record in records:
            handle.write(record.to_json(machine) + "\n")
    return Path(path)


def read_jsonl(path: str | os.PathLike) -> list[dict[str, Any]]:
    with open(path, encoding="utf-8") as handle:
        return [json.loads(line) for line in handle if line.strip()]


def measurement_from_json(record: dict[str, Any]) -> Measurement:
    """A `Measurement` back from one `bench.jsonl` line (its `machine` field dropped)."""
    fields = Measurement.__dataclass_fields__
    return Measurement(**{key: value for key, value in record.items() if key in fields})
