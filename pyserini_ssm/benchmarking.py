"""Speed and memory measurements of rerankers: inference (padded-random baseline, length-sorted, packed), fixed
lengths, sentence-transformers' `CrossEncoder.predict` as the peer baseline, and training steps.

Every measurement is a function returning `Measurement` records; `python -m pyserini_ssm.bench` only parses flags and
calls `run_bench`. Models get random weights at their full registry size (nothing is downloaded); inputs are token id
sequences whose lengths follow MS MARCO (the DL19 candidates tokenized through the model's template when a tokenizer
and the candidates file are given, else a log-normal with mean 89 tokens) or a fixed length.

This module holds the bench as a whole (`BenchConfig`, its checks, `run_bench`) and names every part of it, which
lives in a module of its own:

- `bench_workloads`: the pairs to score (`Workload`, MS MARCO or fixed lengths) and the synthetic tokenizer;
- `bench_models`: the models (registry or `llama-780m` architectures with random weights) and what they report;
- `bench_timing`: the machine, the median time and peak memory of a call, out-of-memory handling;
- `bench_records`: `Measurement`, the table and the JSON lines;
- `bench_inference`, `bench_crossencoder`, `bench_training`: the measurements;
- `bench_plots`: the figures and the efficiency table.

Fixed lengths (`--lengths 128,...,16384`) measure each model at its best setting: packed rows where it packs, the
largest batch (inference) or pairs per step (training) that fits, halved on CUDA out-of-memory, and capped so that
batch x length x the widest activation stays under 2^31 elements (mamba-ssm's Triton kernels index with int32).

These modules import no pyserini and no Java: they run on the GPU machines.
"""

from __future__ import annotations

import json
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

from pyserini_ssm.bench_crossencoder import crossencoder_from_reranker, measure_crossencoder
from pyserini_ssm.bench_inference import (
    METHODS, inference_groups, measure_fixed_length, measure_inference, measure_predict, score_groups,
)
from pyserini_ssm.bench_models import (
    BENCH_ARCHITECTURES, SAME_SIZE_LLAMA, attention_label, bench_spec, build_bench_reranker, count_parameters,
    max_tokens_per_call, packing_mode, ssd_kernels_of, widest_activation,
)
from pyserini_ssm.bench_plots import efficiency_table, plot_efficiency, plot_throughput, write_plots
from pyserini_ssm.bench_records import (
    Measurement, format_table, measurement_from_json, read_jsonl, write_jsonl,
)
from pyserini_ssm.bench_timing import Timing, _free_memory, _sync, machine_info, time_call
from pyserini_ssm.bench_training import (
    _disable_gradient_checkpointing, measure_fixed_length_training, measure_training, training_batches,
)
from pyserini_ssm.bench_workloads import (
    LOGNORMAL_SIGMA, MSMARCO_MEAN_TOKENS, Workload, fixed_workload, is_synthetic, lognormal_lengths,
    msmarco_workload, random_pairs, read_candidate_pairs, synthetic_texts, synthetic_tokenizer,
)
from pyserini_ssm.errors import UserError


@dataclass
class BenchConfig:
    models: list[str]
    scale: str = "full"
    device: str | None = None
    dtype: str | None = None  # bf16 on CUDA, fp32 on CPU by default; fp8: bf16 weights, FP8 Linear layers
    inference: bool = True
    training: bool = False
    crossencoder: bool = True  # for encoder models, with --inference
    lengths: list[str] = field(default_factory=lambda: ["msmarco", "128", "512", "1024", "2048"])
    pairs: int = 4096
    batch_size: int = 256
    token_budget: int = 32768
    fixed_tokens: int = 262144  # tokens per fixed-length measurement (pairs = fixed_tokens // length, >= 16)
    repeats: int = 3
    warmup: int = 1  # untimed runs before the repeats
    tokenizer: str | None = None
    candidates: str | None = None
    max_length: int = 512
    crossencoder_batch_size: int = 32
    train_groups: int = 16
    group_size: int = 8
    train_steps: int = 10
    train_tokens: int = 65536  # fixed-length training: tokens per step at most (pairs = this / length, >= 2)
    backend: str = "auto"
    seed: int = 0
    output: str | None = None


# ---------------------------------------------------------------------------------------------------------------
# The whole bench


def _fixed_lengths(lengths: Sequence[str]) -> list[int]:
    values = []
    for value in lengths:
        if value == "msmarco":
            continue
        try:
            number = int(value)
        except ValueError:
            raise UserError(f"unknown length {value!r} in --lengths (use msmarco or token counts such as 512)") \
                from None
        if number < 8:
            raise UserError(f"length {number} in --lengths is too short (at least 8 tokens)")
        values.append(number)
    return values


def validate(config: BenchConfig) -> None:
    if not config.models:
        raise UserError("no model to benchmark: give --models, e.g. mamba2-780m,llama-780m")
    if config.scale not in ("tiny", "full"):
        raise UserError(f"unknown scale {config.scale!r} (use tiny or full)")
    for name in config.models:
        if not Path(name).is_dir():
            bench_spec(name)  # raises with close matches
    _fixed_lengths(config.lengths)
    for name in ("pairs", "batch_size", "token_budget", "repeats", "fixed_tokens", "train_groups", "train_steps", "train_tokens",
                 "crossencoder_batch_size"):
        if getattr(config, name) < 1:
            raise UserError(f"--{name.replace('_', '-')} must be at least 1, not {getattr(config, name)}")
    if config.warmup < 0:
        raise UserError(f"--warmup must be at least 0, not {config.warmup}")
    if config.dtype == "fp8" and config.training:
        raise UserError("--dtype fp8 is for inference only (FP8 Linear layers have no backward here); measure "
                        "--training without it")
    if config.group_size < 2:
        raise UserError(f"--group-size must be at least 2 (LCE needs a positive and a negative), not "
                        f"{config.group_size}")
    if config.candidates and not Path(config.candidates).is_file():
        raise UserError(f"candidates file not found: {config.candidates}")
    if config.tokenizer and not Path(config.tokenizer).exists():
        raise UserError(f"tokenizer folder not found: {config.tokenizer}")
    if config.output:
        output = Path(config.output)
        if output.exists() and not output.is_dir():
            raise UserError(f"--output {output} is a file; give a folder")


def run_bench(config: BenchConfig, log: Callable[[str], None] = print) -> tuple[list[Measurement], dict[str, Any]]:
    """Every requested measurement for every model, one model in memory at a time. Writes `bench.jsonl`,
    `throughput.png` and (with fixed lengths) `efficiency_throughput.png` and `efficiency_memory.png` into
    `config.output` when given (the JSON lines after each model, so a later failure keeps
    what was measured)."""
    import torch

    from pyserini_ssm.models.reranker import resolve_device

    validate(config)
    device = resolve_device(config.device)
    machine = machine_info(device)
    fixed = _fixed_lengths(config.lengths)
    output = Path(config.output) if config.output else None
    if output is not None:
        output.mkdir(parents=True, exist_ok=True)
    records: list[Measurement] = []
    log(f"machine: {json.dumps(machine)}")
    for name in config.models:
        started = time.perf_counter()
        reranker = build_bench_reranker(name, scale=config.scale, tokenizer=config.tokenizer, device=device,
                                        dtype=config.dtype, backend=config.backend, max_length=config.max_length,
                                        seed=config.seed)
        _sync(device)
        log(f"{name}: {reranker.spec.family}, {count_parameters(reranker.model) / 1e6:.1f}M parameters, built in "
            f"{time.perf_counter() - started:.1f} s on {device}")
        if reranker.fp8 is not None:
            log(f"  {reranker.fp8.summary()}")
        workload = None
        if "msmarco" in config.lengths and (config.inference or config.training):
            workload = msmarco_workload(reranker.encoder, config.pairs, candidates=config.candidates,
                                        seed=config.seed)
            log(f"  MS MARCO lengths: {workload.name}, {len(workload.encoded)} pairs, mean "
                f"{workload.tokens / len(workload.encoded):.1f} tokens ({workload.note})")
        if config.inference:
            if "msmarco" in config.lengths:
                records += _logged(log, measure_inference(reranker, workload, batch_size=config.batch_size,
                                                          token_budget=config.token_budget, repeats=config.repeats,
                                                          warmup=config.warmup, seed=config.seed))
                from pyserini_ssm.models.families import family_adapter

                crossencoder_baseline = family_adapter(reranker.spec.family).crossencoder_baseline
                if crossencoder_baseline and config.crossencoder and reranker.fp8 is not None:
                    log("  CrossEncoder baseline skipped: it loads the bf16 weights, which an fp8 model no longer "
                        "holds (measure it with --dtype bf16)")
                elif crossencoder_baseline and config.crossencoder:
                    records += _logged(log, _crossencoder_records(reranker, workload, config))
            for length in fixed:
                if length > reranker.max_length:
                    log(f"  length {length} > max length {reranker.max_length}: skipped (raise --max-length)")
                    continue
                pairs = max(16, config.fixed_tokens // length)
                records += _logged(log, [measure_fixed_length(reranker, length, pairs=pairs,
                                                              batch_size=config.batch_size,
                                                              token_budget=max(config.token_budget, length),
                                                              repeats=config.repeats, warmup=config.warmup,
                                                              seed=config.seed)])
        if config.training:
            reranker.model.float()  # fp32 master weights; autocast gives bf16 compute on CUDA
            reranker.dtype = torch.float32
            if "msmarco" in config.lengths:
                for packed in (False, True):
                    records += _logged(log, [measure_training(reranker, workload, packed=packed,
                                                              groups_per_step=config.train_groups,
                                                              group_size=config.group_size,
                                                              steps=config.train_steps)])
            for length in fixed:
                if length > reranker.max_length:
                    log(f"  length {length} > max length {reranker.max_length}: skipped (raise --max-length)")
                    continue
                records += _logged(log, [measure_fixed_length_training(
                    reranker, length, max_pairs=config.train_groups * config.group_size,
                    max_tokens=config.train_tokens, group_size=config.group_size,
                    steps=config.train_steps, warmup=1, seed=config.seed)])
        del reranker
        _free_memory(device)
        if output is not None:  # after each model: a later failure (or time limit) keeps what was measured
            write_jsonl(records, machine, output / "bench.jsonl")
    if output is not None:
        write_plots(records, machine, output)
    return records, machine


def _crossencoder_records(reranker: Any, workload: Workload, config: BenchConfig) -> list[Measurement]:
    import torch

    records = []
    with tempfile.TemporaryDirectory(prefix="bench-crossencoder-") as folder:
        dtypes = [torch.float32] + ([reranker.dtype] if reranker.dtype != torch.float32 else [])
        for dtype in dtypes:
            label = "crossencoder" if dtype == torch.float32 else "crossencoder-" + (
                "bf16" if dtype == torch.bfloat16 else "fp16")
            # The dtype is always explicit: without one, transformers loads the checkpoint's own dtype, which is the
            # reranker's (bf16), and the "fp32" baseline would silently run in bf16.
            crossencoder = crossencoder_from_reranker(reranker, Path(folder) / label, dtype=dtype)
            records.append(measure_crossencoder(reranker, workload, crossencoder=crossencoder,
                                                batch_size=config.crossencoder_batch_size, repeats=config.repeats,
                                                warmup=config.warmup, label=label))
            del crossencoder
            _free_memory(reranker.device)
    return records


def _logged(log: Callable[[str], None], records: list[Measurement]) -> list[Measurement]:
    for r in records:
        if r.skipped:
            log(f"  {r.benchmark:<12} {r.method:<16} {r.lengths:<17} skipped: {r.note}")
        else:
            error = "" if r.max_rel_error is None else f", rel.err {r.max_rel_error:.1e}"
            log(f"  {r.benchmark:<12} {r.method:<16} {r.lengths:<17} {r.pairs_per_s:>10,.1f} pairs/s "
                f"{r.tokens_per_s:>12,.0f} tok/s  peak {r.peak_memory_mb:,.0f} MB{error}  [{r.attention}]"
                f"{' batch ' + str(r.batch_size) if r.batch_size else ''}"
                f"{' row ' + str(r.token_budget) if r.token_budget else ''}"
                f"{' +ckpt' if r.grad_checkpointing else ''}")
    sys.stdout.flush()
    return records


__all__ = ["Measurement", "Workload", "BenchConfig", "run_bench", "measure_inference", "measure_predict",
           "measure_fixed_length", "measure_fixed_length_training", "measure_crossencoder", "measure_training",
           "crossencoder_from_reranker", "build_bench_reranker", "bench_spec", "synthetic_tokenizer",
           "msmarco_workload", "fixed_workload", "lognormal_lengths", "score_groups", "inference_groups",
           "packing_mode", "attention_label", "max_tokens_per_call", "widest_activation", "machine_info",
           "format_table", "write_jsonl", "read_jsonl", "plot_throughput", "plot_efficiency", "efficiency_table",
           "measurement_from_json", "write_plots", "time_call",
           "SAME_SIZE_LLAMA",
           # the parts' other names, importable from here as before the split
           "METHODS", "BENCH_ARCHITECTURES", "MSMARCO_MEAN_TOKENS", "LOGNORMAL_SIGMA", "Timing", "count_parameters",
           "is_synthetic", "random_pairs", "read_candidate_pairs", "synthetic_texts", "ssd_kernels_of",
           "training_batches", "_disable_gradient_checkpointing", "_crossencoder_records", "validate"]
