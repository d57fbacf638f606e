"""Speed and memory measurements of rerankers: inference (padded-random baseline, length-sorted, packed), fixed
lengths, sentence-transformers' `CrossEncoder.predict` as the peer baseline, and training steps.

Every measurement is a function returning `Measurement` records; `python -m pyserini_ssm.bench` only parses flags and
calls `run_bench`. Models get random weights at their full registry size (nothing is downloaded); inputs are token id
sequences whose lengths follow MS MARCO (the DL19 candidates tokenized through the model's template when a tokenizer
and the candidates file are given, else a log-normal with mean 89 tokens) or a fixed length.

Without a real tokenizer the bench uses a synthetic word-level one (`synthetic_tokenizer`): each word "wN" is one
token, so synthetic texts have exactly the token lengths asked for and the end-to-end paths (`Reranker.predict`,
`CrossEncoder.predict`) can be timed on the same pairs as the pre-tokenized ones.

Packed rows run the library's own paths (`ScoringModel` on `ops.batching.pack_batch` rows: Mamba-2 through
`seq_idx`, transformers through `models.attention`'s varlen attention), the code `Reranker.predict` and `train`
run; the bench has no fast path of its own. Each record names the attention kernel that ran (`attention`).

Fixed lengths (`--lengths 128,...,16384`) measure each model at its best setting: packed rows where it packs, the
largest batch (inference) or pairs per step (training) that fits, halved on CUDA out-of-memory, and capped so that
batch x length x the widest activation stays under 2^31 elements (mamba-ssm's Triton kernels index with int32).
`plot_efficiency` draws throughput and peak memory against length.

This module imports no pyserini and no Java: it runs on the GPU machines.
"""

from __future__ import annotations

import datetime
import gc
import json
import logging
import math
import os
import platform
import resource
import statistics
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from pyserini_ssm.errors import UserError

logger = logging.getLogger(__name__)

MSMARCO_MEAN_TOKENS = 89  # mean template length of the DL19 top-100 pairs, GPT-NeoX tokenizer (docs/BENCHMARKS.md)
LOGNORMAL_SIGMA = 0.45
METHODS = ("padded-random", "sorted", "packed")

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


@dataclass
class Workload:
    """Pairs to score: token ids (always) and texts (when the end-to-end paths can run on them)."""

    name: str  # msmarco | msmarco-lognormal | "512"
    encoded: list[Any]  # templates.EncodedPair
    texts: list[tuple[str, str]] | None = None
    note: str = ""

    @property
    def lengths(self) -> list[int]:
        return [len(item.input_ids) for item in self.encoded]

    @property
    def tokens(self) -> int:
        return int(sum(self.lengths))


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
# Machine, timing, memory


def machine_info(device: Any = None) -> dict[str, Any]:
    import torch

    info: dict[str, Any] = {
        "date": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
        "host": platform.node(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "cpu": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
    }
    for module in ("transformers", "sentence_transformers", "mamba_ssm", "causal_conv1d"):
        try:
            info[module] = __import__(module).__version__
        except Exception:  # absent or broken: say so rather than fail the bench
            info[module] = None
    if device is not None and torch.device(device).type == "cuda":
        index = torch.device(device).index or 0
        info["gpu"] = torch.cuda.get_device_name(index)
        info["gpu_memory_gb"] = round(torch.cuda.get_device_properties(index).total_memory / 2**30, 1)
    return info


def _sync(device: Any) -> None:
    import torch

    if torch.device(device).type == "cuda":
        torch.cuda.synchronize(device)


def _peak_rss_mb() -> float:
    # ru_maxrss is KiB on Linux; it cannot be reset, so on CPU it is the process's peak so far.
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def _memory_kind(device: Any) -> str:
    import torch

    return ("cuda max_memory_allocated" if torch.device(device).type == "cuda"
            else "process peak RSS so far (not resettable)")


@dataclass
class Timing:
    seconds: float  # median
    all_seconds: list[float]
    peak_memory_mb: float
    result: Any


def time_call(function: Callable[[], Any], device: Any, repeats: int = 3, warmup: int = 1) -> Timing:
    """Median wall time of `function()` over `repeats` runs after `warmup` runs, CUDA-synchronised; the peak GPU
    memory (reset before each run; the largest) or the process's peak RSS on CPU."""
    import torch

    from pyserini_ssm.models.attention import reset_kernel_record

    cuda = torch.device(device).type == "cuda"
    result = None
    reset_kernel_record()  # the record then names the kernels of this call alone (`attention_label`)
    for _ in range(warmup):
        result = function()
        _sync(device)
    times: list[float] = []
    peak = 0.0
    for _ in range(max(1, repeats)):
        if cuda:
            torch.cuda.reset_peak_memory_stats(device)
        _sync(device)
        start = time.perf_counter()
        result = function()
        _sync(device)
        times.append(time.perf_counter() - start)
        peak = max(peak, torch.cuda.max_memory_allocated(device) / 2**20 if cuda else _peak_rss_mb())
    return Timing(statistics.median(times), times, peak, result)


def _is_oom(error: BaseException) -> bool:
    import torch

    return isinstance(error, torch.cuda.OutOfMemoryError) or "out of memory" in str(error).lower()


def _free_memory(device: Any) -> None:
    import torch

    gc.collect()
    if torch.device(device).type == "cuda":
        torch.cuda.empty_cache()


def count_parameters(module: Any) -> int:
    return int(sum(parameter.numel() for parameter in module.parameters()))


# ---------------------------------------------------------------------------------------------------------------
# Tokenizers, lengths and texts


def synthetic_tokenizer(words: int = 4000) -> Any:
    """A word-level fast tokenizer: specials [PAD] [UNK] [CLS] [SEP] [MASK] </s>, then "w0".."w{words-1}", one token
    each (split on whitespace). Pairs get BERT's "[CLS] A [SEP] B [SEP]" with segment ids, so sentence-transformers'
    CrossEncoder can tokenize (query, document) itself. No beginning-of-sequence token."""
    from tokenizers import Tokenizer, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    specials = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "</s>"]
    vocab = {token: index for index, token in enumerate(specials)}
    for index in range(words):
        vocab[f"w{index}"] = len(vocab)
    backend = Tokenizer(models.WordLevel(vocab=vocab, unk_token="[UNK]"))
    backend.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    backend.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B:1 [SEP]:1",
        special_tokens=[("[CLS]", vocab["[CLS]"]), ("[SEP]", vocab["[SEP]"])])
    return PreTrainedTokenizerFast(tokenizer_object=backend, pad_token="[PAD]", unk_token="[UNK]", cls_token="[CLS]",
                                   sep_token="[SEP]", mask_token="[MASK]", eos_token="</s>",
                                   model_input_names=["input_ids", "token_type_ids", "attention_mask"])


def is_synthetic(tokenizer: Any) -> bool:
    vocab = tokenizer.get_vocab()
    return "w0" in vocab and "</s>" in vocab and len(vocab) < 100_000 and "[CLS]" in vocab and "the" not in vocab


def lognormal_lengths(count: int, mean: float = MSMARCO_MEAN_TOKENS, sigma: float = LOGNORMAL_SIGMA, *,
                      low: int = 8, high: int = 512, seed: int = 0) -> list[int]:
    """Pair lengths (tokens) from a log-normal with the given mean, clipped to [low, high]."""
    rng = np.random.default_rng(seed)
    mu = math.log(mean) - sigma**2 / 2
    lengths = np.clip(np.rint(rng.lognormal(mu, sigma, size=count)), low, high).astype(int)
    return lengths.tolist()


def synthetic_texts(lengths: Sequence[int], encoder: Any, *, query_words: int = 6, queries: int | None = None,
                    seed: int = 0) -> list[tuple[str, str]]:
    """(query, document) texts of synthetic words whose templated length is exactly each length (the synthetic
    tokenizer gives one token per word). Queries repeat every 100 pairs, as when reranking a top-100."""
    rng = np.random.default_rng(seed)
    words = len([token for token in encoder.tokenizer.get_vocab() if token.startswith("w")])
    fixed = encoder.fixed_length
    pairs: list[tuple[str, str]] = []
    query = ""
    for index, length in enumerate(lengths):
        if index % 100 == 0 or queries == 0:
            query = " ".join(f"w{word}" for word in rng.integers(0, words, size=query_words))
        document_words = max(1, int(length) - fixed - query_words)
        document = " ".join(f"w{word}" for word in rng.integers(0, words, size=document_words))
        pairs.append((query, document))
    return pairs


def read_candidate_pairs(path: str | os.PathLike, count: int) -> list[tuple[str, str]]:
    """The first `count` (query, passage) pairs of a candidates file, cycling when it holds fewer."""
    from pyserini_ssm.candidates import read_candidates

    pairs = [(query.query, hit.text) for query in read_candidates(path) for hit in query.hits if hit.text]
    if not pairs:
        raise UserError(f"candidates file {path} holds no passages with text")
    return [pairs[index % len(pairs)] for index in range(count)]


def msmarco_workload(encoder: Any, count: int, *, candidates: str | None, seed: int = 0) -> Workload:
    """MS MARCO-length pairs: the candidates file tokenized through `encoder` (real lengths) when given and the
    tokenizer is a real one; else log-normal lengths with mean 89 tokens (synthetic texts of exactly those lengths)."""
    if candidates and not is_synthetic(encoder.tokenizer):
        texts = read_candidate_pairs(candidates, count)
        encoded = encoder.encode_many(texts)
        return Workload("msmarco", encoded, texts, f"real lengths: {Path(candidates).name} tokenized through the "
                                                    f"template ({getattr(encoder.tokenizer, 'name_or_path', '')})")
    lengths = lognormal_lengths(count, low=max(encoder.fixed_length + 8, 8), high=encoder.max_length, seed=seed)
    why = "no --candidates" if not candidates else "no real --tokenizer"
    note = f"fallback ({why}): log-normal lengths, mean {MSMARCO_MEAN_TOKENS} tokens, sigma {LOGNORMAL_SIGMA}"
    if is_synthetic(encoder.tokenizer):
        texts = synthetic_texts(lengths, encoder, seed=seed)
        return Workload("msmarco-lognormal", encoder.encode_many(texts), texts, note + ", synthetic words")
    return Workload("msmarco-lognormal", random_pairs(encoder, lengths, seed=seed), None,
                    note + ", random token ids (no texts: Reranker.predict and CrossEncoder are not timed)")


def random_pairs(encoder: Any, lengths: Sequence[int], *, seed: int = 0) -> list[Any]:
    """Encoded pairs of random token ids with the given lengths (segment ids half and half when the model has them)."""
    from pyserini_ssm.models.templates import EncodedPair

    rng = np.random.default_rng(seed)
    vocab = len(encoder.tokenizer)
    low = 1000 if vocab > 2000 else 10
    pairs = []
    for length in lengths:
        ids = rng.integers(low, vocab, size=int(length)).tolist()
        types = [0] * (length // 2) + [1] * (length - length // 2) if encoder.use_token_types else None
        pairs.append(EncodedPair(ids, types))
    return pairs


def fixed_workload(encoder: Any, length: int, count: int, *, seed: int = 0) -> Workload:
    """`count` pairs of exactly `length` tokens: random ids (a real tokenizer) or synthetic texts."""
    if is_synthetic(encoder.tokenizer):
        texts = synthetic_texts([length] * count, encoder, seed=seed)
        return Workload(str(length), encoder.encode_many(texts), texts)
    return Workload(str(length), random_pairs(encoder, [length] * count, seed=seed), None, "random token ids")


# ---------------------------------------------------------------------------------------------------------------
# Models


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


# ---------------------------------------------------------------------------------------------------------------
# Inference


def packing_mode(reranker: Any, compute_dtype: Any = None) -> tuple[str | None, str]:
    """How this model packs on its device: "seq_idx" (Mamba-2), "varlen" (transformers), or None and why
    (`models.scoring.packing_support`, what `Reranker.predict` and `train` ask too)."""
    from pyserini_ssm.models.scoring import packing_support

    return packing_support(reranker.model, reranker.device, compute_dtype or reranker.dtype)


def attention_label(reranker: Any) -> str:
    """The attention kernels recorded since the last `reset_kernel_record()`; "none (SSM)" for Mamba."""
    from pyserini_ssm.models.attention import kernels_used

    if reranker.spec.family in ("mamba1", "mamba2"):
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


def _base_record(reranker: Any, benchmark: str, method: str, workload: Workload, **extra: Any) -> Measurement:
    fp8 = reranker.fp8  # models.fp8.Fp8Conversion under --dtype fp8, else None
    return Measurement(benchmark=benchmark, model=reranker.spec.name, family=reranker.spec.family, method=method,
                       lengths=workload.name, device=str(reranker.device), dtype=reranker.dtype_name,
                       pairs=len(workload.encoded), tokens=workload.tokens,
                       parameters=count_parameters(reranker.model),
                       fp8_linears=None if fp8 is None else len(fp8.converted),
                       fp8_quantizer=None if fp8 is None else fp8.quantizer, **extra)


def ssd_kernels_of(reranker: Any) -> str:
    """What the Mamba kernel backbone's last forward ran ("" for other models and backends)."""
    backbone = getattr(getattr(reranker.model, "backbone", None), "model", None)
    return getattr(backbone, "last_ssd_kernels", None) or ""


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


# ---------------------------------------------------------------------------------------------------------------
# sentence-transformers CrossEncoder, the peer baseline for encoders


def crossencoder_from_reranker(reranker: Any, folder: str | os.PathLike, dtype: Any = None) -> Any:
    """A sentence-transformers `CrossEncoder` (num_labels=1) on the same backbone weights, through a saved Hugging
    Face folder. Its classification head is its own (BERT's pooler + classifier), so scores are not comparable;
    throughput is."""
    folder = Path(folder)
    reranker.model.backbone.save_pretrained(str(folder), safe_serialization=True)
    reranker.tokenizer.save_pretrained(str(folder))
    return _crossencoder(str(folder), reranker, dtype)


def _crossencoder(path: str, reranker: Any, dtype: Any = None) -> Any:
    from sentence_transformers import CrossEncoder

    attempts = [{"dtype": dtype}, {"torch_dtype": dtype}] if dtype is not None else [{}]
    last_error: Exception | None = None
    for kwargs in attempts:
        try:
            return CrossEncoder(path, num_labels=1, max_length=reranker.max_length, device=str(reranker.device),
                                model_kwargs=kwargs)
        except TypeError as error:  # the dtype keyword changed name across transformers versions
            last_error = error
    raise last_error  # type: ignore[misc]


def measure_crossencoder(reranker: Any, workload: Workload, *, crossencoder: Any = None, batch_size: int = 32,
                         repeats: int = 3, warmup: int = 1, label: str = "crossencoder") -> Measurement:
    """`CrossEncoder.predict` (tokenization included) on the workload's texts."""
    import torch

    if workload.texts is None:
        return _base_record(reranker, "crossencoder", label, workload, skipped=True,
                            note="no texts for this workload (a real tokenizer without --candidates)")
    texts = [list(pair) for pair in workload.texts]
    record = _base_record(reranker, "crossencoder", label, workload, batch_size=batch_size, repeats=repeats,
                          note="sentence-transformers CrossEncoder.predict, end to end")
    record.parameters = count_parameters(crossencoder.model)
    record.dtype = {torch.bfloat16: "bf16", torch.float16: "fp16", torch.float32: "fp32"}.get(
        next(crossencoder.model.parameters()).dtype, "?")
    timing = time_call(lambda: crossencoder.predict(texts, batch_size=batch_size, show_progress_bar=False,
                                                    convert_to_numpy=True), reranker.device, repeats, warmup)
    return _fill(record, timing, reranker)


# ---------------------------------------------------------------------------------------------------------------
# Training


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
    from pyserini_ssm.training.loop import fused_adamw_applies

    trainable = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(trainable, lr=lr, weight_decay=0.01, fused=fused_adamw_applies(trainable))
    autocast = (lambda: torch.autocast("cuda", dtype=torch.bfloat16)) if cuda else contextlib.nullcontext
    if grad_checkpointing:
        from pyserini_ssm.training.loop import enable_gradient_checkpointing

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


# ---------------------------------------------------------------------------------------------------------------
# Output


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


FAMILY_COLOURS = {"mamba1": "tab:orange", "mamba2": "tab:red", "decoder": "tab:blue", "encoder": "tab:green"}


def plot_throughput(records: Sequence[Measurement], path: str | os.PathLike, title: str = "") -> Path | None:
    """Inference pairs/s against pair length, one line per model coloured by family: the fixed lengths as a line,
    MS MARCO lengths as markers at their mean length (hollow: padded-random baseline, filled: best method)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from pyserini_ssm.files import atomic_output

    usable = [r for r in records if not r.skipped and r.pairs_per_s]
    models = list(dict.fromkeys(r.model for r in usable if r.benchmark in ("inference", "fixed-length")))
    if not models:
        return None
    figure, axis = plt.subplots(figsize=(7.5, 4.8))
    for model in models:
        mine = [r for r in usable if r.model == model]
        family = mine[0].family
        colour = FAMILY_COLOURS.get(family, "tab:gray")
        fixed = sorted((int(r.lengths), r.pairs_per_s) for r in mine if r.benchmark == "fixed-length")
        label = f"{model} ({family})"
        if fixed:
            axis.plot([x for x, _ in fixed], [y for _, y in fixed], marker="o", color=colour, label=label)
            label = None
        msmarco = [r for r in mine if r.benchmark == "inference" and r.lengths.startswith("msmarco")]
        if msmarco:
            mean_length = msmarco[0].tokens / msmarco[0].pairs
            baseline = [r for r in msmarco if r.method == "padded-random"]
            best = max((r for r in msmarco if r.method != "padded-random"), key=lambda r: r.pairs_per_s,
                       default=None)
            if baseline:
                axis.scatter([mean_length], [baseline[0].pairs_per_s], facecolors="none", edgecolors=colour, s=60,
                             label=label)
                label = None
            if best is not None:
                axis.scatter([mean_length], [best.pairs_per_s], color=colour, marker="*", s=120, label=label)
    axis.set_xscale("log", base=2)
    axis.set_yscale("log")
    axis.set_xlabel("pair length (tokens); MS MARCO at its mean: o padded-random, * best")
    axis.set_ylabel("inference pairs/s")
    axis.set_title(title or "reranker inference throughput")
    axis.grid(True, which="both", alpha=0.3)
    axis.legend(fontsize=8)
    figure.tight_layout()
    with atomic_output(path, "wb") as handle:
        figure.savefig(handle, format="png", dpi=120)
    plt.close(figure)
    return Path(path)


def measurement_from_json(record: dict[str, Any]) -> Measurement:
    """A `Measurement` back from one `bench.jsonl` line (its `machine` field dropped)."""
    fields = Measurement.__dataclass_fields__
    return Measurement(**{key: value for key, value in record.items() if key in fields})


def efficiency_table(records: Sequence[Measurement]) -> str:
    """The efficiency figure as a Markdown table: per fixed length and model, inference and training pairs/s with
    peak memory (GiB), the method (packed/padded), pairs per step and the attention kernel; one line per length."""
    wanted = ("fixed-length", "fixed-length-training")
    usable = [r for r in records if r.benchmark in wanted]
    models = list(dict.fromkeys(r.model for r in usable))
    lengths = sorted({int(r.lengths) for r in usable})
    by_key = {(r.benchmark, r.model, int(r.lengths)): r for r in usable}

    def cell(record: Measurement | None, training: bool) -> str:
        if record is None:
            return "—"
        if record.skipped:
            return f"skipped ({record.note[:40]})"
        memory = f"{record.peak_memory_mb / 1024:.1f} GiB" if record.peak_memory_mb is not None else "?"
        extra = f", {record.pairs}/step" if training else ""
        extra += ", ckpt" if record.grad_checkpointing else ""
        method = record.method.replace("train-", "")
        return f"{record.pairs_per_s:,.1f} ({memory}; {method}{extra})"

    header = ["length"] + [f"{model} {kind}" for model in models for kind in ("inference", "training")]
    lines = ["| " + " | ".join(header) + " |", "| " + " | ".join(["---:"] * len(header)) + " |"]
    for length in lengths:
        row = [f"{length:,}"]
        for model in models:
            row.append(cell(by_key.get(("fixed-length", model, length)), False))
            row.append(cell(by_key.get(("fixed-length-training", model, length)), True))
        lines.append("| " + " | ".join(row) + " |")
    kernels = sorted({f"{r.model}: {r.attention}" for r in usable if r.attention and not r.skipped})
    return "\n".join(lines) + ("\n\nattention kernels: " + "; ".join(kernels) if kernels else "")


def plot_efficiency(records: Sequence[Measurement], throughput_path: str | os.PathLike,
                    memory_path: str | os.PathLike, title: str = "") -> list[Path]:
    """The efficiency figure: pairs/s (log) against the fixed length (log 2), inference and training side by
    side, one line per model coloured by family; and the same for peak memory. Nothing without fixed lengths."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from pyserini_ssm.files import atomic_output

    panels = (("fixed-length", "inference"), ("fixed-length-training", "training"))
    usable = [r for r in records if not r.skipped and r.pairs_per_s and r.benchmark in dict(panels)]
    if not usable:
        return []
    models = list(dict.fromkeys(r.model for r in usable))
    written = []
    for path, value, label, log_y in ((throughput_path, "pairs_per_s", "pairs/s", True),
                                      (memory_path, "peak_memory_mb", "peak memory (GiB)", False)):
        figure, axes = plt.subplots(1, 2, figsize=(11, 4.5))
        for axis, (benchmark, name) in zip(axes, panels):
            for model in models:
                mine = sorted((int(r.lengths), r) for r in usable if r.model == model and r.benchmark == benchmark)
                if not mine:
                    continue
                ys = [getattr(r, value) / (1024 if value == "peak_memory_mb" else 1) for _, r in mine]
                family = mine[0][1].family
                axis.plot([x for x, _ in mine], ys, marker="o", color=FAMILY_COLOURS.get(family, "tab:gray"),
                          label=f"{model} ({mine[0][1].method})")
            axis.set_xscale("log", base=2)
            if log_y:
                axis.set_yscale("log")
            axis.set_xlabel("pair length (tokens)")
            axis.set_ylabel(f"{name} {label}")
            axis.set_title(name)
            axis.grid(True, which="both", alpha=0.3)
            axis.legend(fontsize=8)
        figure.suptitle(f"{title}: {label} vs length (each model at its best setting)" if title else label)
        figure.tight_layout()
        with atomic_output(path, "wb") as handle:
            figure.savefig(handle, format="png", dpi=120)
        plt.close(figure)
        written.append(Path(path))
    return written


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
                if reranker.spec.family == "encoder" and config.crossencoder and reranker.fp8 is not None:
                    log("  CrossEncoder baseline skipped: it loads the bf16 weights, which an fp8 model no longer "
                        "holds (measure it with --dtype bf16)")
                elif reranker.spec.family == "encoder" and config.crossencoder:
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


def write_plots(records: Sequence[Measurement], machine: dict[str, Any], output: Path) -> None:
    """throughput.png, efficiency_throughput.png and efficiency_memory.png (the last two with fixed lengths)."""
    where = machine.get("gpu") or machine["cpu"]
    plot_throughput(records, output / "throughput.png", title=f"{where}, {records[0].dtype if records else ''}")
    plot_efficiency(records, output / "efficiency_throughput.png", output / "efficiency_memory.png", title=where)


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
           "SAME_SIZE_LLAMA"]
