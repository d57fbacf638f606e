"""What one reranking run depends on: `RerankConfig` (its fields are `rerank`'s flags, with their one default and
help text each), the cheap checks of its flags (before any model or index loads), the default topics of a prebuilt
index and the default output name."""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from pathlib import Path

from pyserini_ssm.bm25 import B, K1, SEARCH_THREADS, SEARCH_THREADS_HELP, check_bm25_parameters, parse_fields
from pyserini_ssm.cli_config import option
from pyserini_ssm.documents import DEFAULT_SENTENCE_WINDOW, DEFAULT_WORD_WINDOW, SegmentConfig
from pyserini_ssm.errors import UserError
from pyserini_ssm.files import check_output_path
from pyserini_ssm.first_stages import DEFAULT_ENCODER, FUSIONS, SEARCHING_STAGES, check_first_stage_flags


DEFAULT_OUTPUT_DIR = Path("runs")


DOC_MODES = ("passage", "firstp", "maxp")


SEGMENT_DEFAULT_WINDOWS = {"words": DEFAULT_WORD_WINDOW, "sentences": DEFAULT_SENTENCE_WINDOW}


DTYPES = ("bf16", "fp16", "fp32", "fp8")
OUTPUT_FORMATS = ("trec", "msmarco", "rank_llm")


@dataclass(frozen=True)
class RerankConfig:
    """Everything one reranking run depends on. The fields with `option(...)` metadata are the flags of `python -m
    pyserini_ssm.rerank` (`cli_config` builds them: each setting's default and help live here, once)."""

    model: str = field(metadata=option("registry name (e.g. mamba2-780m) or checkpoint folder"))
    index: str | None = field(default=None, metadata=option(
        "Lucene index folder or Pyserini prebuilt index name (BM25, document texts)"))
    topics: str | None = field(default=None, metadata=option(
        "topics name (e.g. dl19-passage) or file (TSV, TREC, JSONL; .gz ok); default for a prebuilt index: its "
        "evaluation topics (msmarco-v1-passage: dl19-passage, msmarco-v1-doc: dl19-doc, BEIR: the test split)"))
    run: str | None = field(default=None, metadata=option(
        "rerank this TREC run (texts fetched from --index, queries from --topics)"))
    candidates: str | None = field(default=None, metadata=option(
        'first-stage results with texts: rank_llm Requests (JSON list or JSONL of {"query": {"text", "qid"}, '
        '"candidates": [{"docid", "score", "doc": {...}}]}) or Pyserini\'s {"query", "hits": [{"docid", "content", '
        '"qid", "score"}]}; detected, .gz ok'))
    output: str | None = field(default=None, metadata=option(
        "run file (default: runs/run.<index>.<topics>.<first stage>.<model>.rerank<depth>.txt)"))
    hits: int = field(default=1000, metadata=option("first-stage hits per query"))
    rerank_depth: int = field(default=100, metadata=option(
        "rerank the top N candidates; the rest keep their first-stage order below"))
    batch_size: int = field(default=32, metadata=option("pairs per forward pass"))
    # Pairs handed to one `predict` call (whole queries): length sorting, packing and tokenization overlap work
    # across this many pairs, and it is the unit that a resumed run skips.
    group_pairs: int = field(default=4096, metadata=option(
        "pairs per scoring call, whole queries: length sorting and packing work across them; a resumed run skips "
        "finished groups"))
    max_length: int | None = field(default=None, metadata=option("tokens per pair (default: the model's)"))
    dtype: str | None = field(default=None, metadata=option(
        "default: the model's for the device; fp8: bf16 weights with FP8 Linear layers (CUDA, compute capability "
        ">= 8.9; scores change, see docs/BENCHMARKS.md)", choices=DTYPES))
    device: str | None = field(default=None, metadata=option(
        "cpu, cuda, cuda:1 ... (default: cuda when available; under torchrun, each rank takes its local GPU)"))
    backend: str = field(default="auto", metadata=option(
        "SSM implementation: auto (mamba-ssm kernels on CUDA when installed), or as the models module lists"))
    qrels: str | None = field(default=None, metadata=option(
        "qrels name or file: print metrics before and after reranking (default: the qrels of a named --topics)"))
    topics_dir: str | None = field(default=None, metadata=option(
        "folder holding Anserini topics/qrels files, for names offline"))
    skip_missing: bool = field(default=False, metadata=option(
        "leave out documents missing from the index or with empty text (warns) instead of stopping"))
    tag: str | None = field(default=None, metadata=option("run tag (default: the model's name)"))
    bm25_k1: float = field(default=K1, metadata=option("BM25 k1", flag="--k1", hidden_aliases=("--bm25-k1",)))
    bm25_b: float = field(default=B, metadata=option("BM25 b", flag="--b", hidden_aliases=("--bm25-b",)))
    threads: int = field(default=SEARCH_THREADS, metadata=option("BM25 (and dense) search threads",
                                                                 default_help=SEARCH_THREADS_HELP))
    # BM25 over several fields (None: the index's default, see lucene.py)
    fields: dict[str, float] | None = field(default=None, metadata=option(
        "BM25 over these fields, e.g. contents=1.0 title=1.0 (default: both of those for an index with a title "
        "field, as Pyserini's BEIR multifield runs; else contents)", nargs="+", metavar="FIELD=BOOST",
        parse=parse_fields))
    fetch_batch_size: int = 1000  # documents fetched from the index per call
    show_progress: bool = field(default=True, metadata=option("no progress bar", flag="--no-progress"))
    metrics: tuple[str, ...] | None = None  # None: evaluation's defaults for the collection
    # Document ranking: passage (each hit's text as it is) | firstp (the start of each document) | maxp (the best
    # of each document's overlapping segments). Segments: `segment_window` units every `segment_stride`; None takes
    # 150 words / 10 sentences, and half the window. Hits that are segments already (`D1#3`) are not cut again.
    doc_mode: str = field(default="passage", metadata=option(
        "passage: each candidate's text as it is; firstp: the start of each document, as much as --max-length "
        "holds; maxp: each document's best overlapping segment (candidates that are segments already, ids like "
        "D1#3, are not cut again)", choices=DOC_MODES))
    segment_unit: str = field(default="words", metadata=option("maxp: segments of words or sentences",
                                                               choices=tuple(SEGMENT_DEFAULT_WINDOWS)))
    segment_window: int | None = field(default=None, metadata=option(
        f"maxp: units per segment (default {DEFAULT_WORD_WINDOW} words, {DEFAULT_SENTENCE_WINDOW} sentences)"))
    segment_stride: int | None = field(default=None, metadata=option(
        f"maxp: a new segment every N units (default half the window: {DEFAULT_WORD_WINDOW // 2} words, "
        f"{DEFAULT_SENTENCE_WINDOW // 2} sentences)"))
    # The first stage when neither `run` nor `candidates` is given (see `first_stages.py`): bm25 over `index`;
    # dense over `dense_index` with `encoder` (texts from `index`); hybrid fuses both (`fusion`, `alpha`, `rrf_k`).
    first_stage: str = field(default="bm25", metadata=option(
        "bm25 over --index; dense: Pyserini's FaissSearcher over --dense-index; hybrid: both fused (--fusion); "
        "texts always come from --index", choices=SEARCHING_STAGES))
    encoder: str | None = field(default=None, metadata=option(
        f"dense query encoder, the one the dense index was built with (default {DEFAULT_ENCODER})"))
    dense_index: str | None = field(default=None, metadata=option(
        "dense index folder (python -m pyserini_ssm.dense_index) or Pyserini prebuilt dense index name"))
    fusion: str = field(default="interpolation", metadata=option(
        "hybrid: min-max normalised interpolation or reciprocal rank fusion", choices=FUSIONS))
    alpha: float = field(default=0.5, metadata=option("hybrid interpolation: weight of BM25"))
    rrf_k: int = field(default=60, metadata=option("hybrid rrf: the constant k"))
    output_format: str = field(default="trec", metadata=option(
        "trec; msmarco: qid<TAB>docid<TAB>rank; rank_llm: one Request per query (JSONL, a JSON list if --output "
        "ends in .json) with the reranked candidates, their texts and our scores, for a listwise reranker",
        choices=OUTPUT_FORMATS))

    @property
    def source(self) -> str:
        if self.candidates:
            return "candidates"
        if self.run:
            return "run"
        return "index" if self.first_stage == "bm25" else self.first_stage

    @property
    def stage_name(self) -> str:
        """The first stage's name in `first_stages.FIRST_STAGES`: candidates, run, or --first-stage."""
        return self.source if self.source in ("candidates", "run") else self.first_stage

    def segment_config(self) -> SegmentConfig:
        """The MaxP segmentation: window default per unit (150 words, 10 sentences), stride default half the window
        (75 words, 5 sentences: Dai & Callan's and Pyserini's segmented index's). UserError for bad values."""
        window = self.segment_window
        if window is None:
            window = SEGMENT_DEFAULT_WINDOWS.get(self.segment_unit, DEFAULT_WORD_WINDOW)
        stride = self.segment_stride if self.segment_stride is not None else max(1, window // 2)
        return SegmentConfig(self.segment_unit, window, stride)


def _check_positive(name: str, value: int) -> None:
    if not isinstance(value, int) or value < 1:
        raise UserError(f"{name} must be a positive integer, not {value!r}")



def model_label(model: str) -> str:
    """A short name for the model: the registry name, or a checkpoint folder's name; safe in file names and tags."""
    path = Path(model)
    label = path.name if path.name and (path.exists() or os.sep in model) else model
    return re.sub(r"[^A-Za-z0-9._+-]+", "_", label).strip("_") or "model"


def _source_label(config: RerankConfig) -> str:
    def stem(name: str) -> str:
        base = Path(name).name
        for suffix in (".gz", ".json", ".jsonl", ".txt", ".trec", ".tsv"):
            if base.endswith(suffix):
                base = base[: -len(suffix)]
        return base

    if config.source == "candidates":
        label = stem(config.candidates)
    elif config.source == "run":
        label = f"{stem(config.index or 'index')}.{stem(config.run)}"
    else:
        stage = "bm25" if config.source == "index" else config.source
        label = f"{stem(config.index or 'index')}.{stem(config.topics or 'topics')}.{stage}-top{config.hits}"
    return re.sub(r"[^A-Za-z0-9._+-]+", "_", label)


OUTPUT_SUFFIXES = {"trec": ".txt", "msmarco": ".tsv", "rank_llm": ".jsonl"}


def default_output(config: RerankConfig) -> Path:
    """runs/run.<index>.<topics>.<first stage>-top<hits>.<model>.rerank<depth>.txt (a run or candidates file names
    itself instead of the topics); .tsv for msmarco output, .jsonl for rank_llm."""
    suffix = OUTPUT_SUFFIXES.get(config.output_format, ".txt")
    return DEFAULT_OUTPUT_DIR / (f"run.{_source_label(config)}.{model_label(config.model)}"
                                 f".rerank{config.rerank_depth}{suffix}")


def default_topics_for_index(index: str) -> str | None:
    """The standard evaluation topics of a Pyserini prebuilt index name, or None (a folder, or no such convention):
    msmarco-v1-passage* -> dl19-passage, msmarco-v1-doc* -> dl19-doc, beir-v1.0.0-<corpus>.* -> its test split."""
    from pyserini_ssm.pyserini_names import TOPIC_FILES

    if Path(index).exists() or "/" in index or os.sep in index:
        return None
    if index.startswith("msmarco-v1-passage"):
        return "dl19-passage"
    if index.startswith("msmarco-v1-doc"):
        return "dl19-doc"
    if index.startswith("beir-v1.0.0-"):
        corpus = index[len("beir-v1.0.0-"):].split(".")[0]
        for name in (f"beir-v1.0.0-{corpus}-test", f"beir-v1.0.0-{corpus}"):
            if name in TOPIC_FILES:
                return name
    return None


def with_default_topics(config: RerankConfig) -> RerankConfig:
    """`config` with --topics filled in for a prebuilt index given without it (said on one line), so that the
    design card's `rerank --index msmarco-v1-passage --model mamba2-780m` runs as written."""
    if config.source == "candidates" or config.topics or not config.index:
        return config
    topics = default_topics_for_index(config.index)
    if topics is None:
        which = (f"the local index {config.index}" if Path(config.index).exists() or os.sep in config.index
                 else f"{config.index} (no standard evaluation topics are known for it)")
        raise UserError(f"--topics is needed with {which}: add --topics NAME_OR_FILE (a Pyserini name such as "
                        f"dl19-passage, or a TSV/TREC/JSONL file of the queries)")
    from dataclasses import replace

    return replace(config, topics=topics)


def _validate(config: RerankConfig) -> None:
    """Cheap checks of the flags, before any model or index is loaded."""
    _check_positive("--rerank-depth", config.rerank_depth)
    _check_positive("--batch-size", config.batch_size)
    _check_positive("--group-pairs", config.group_pairs)
    _check_positive("--hits", config.hits)
    _check_positive("fetch batch size", config.fetch_batch_size)
    if config.max_length is not None:
        _check_positive("--max-length", config.max_length)
    if config.doc_mode not in DOC_MODES:
        raise UserError(f"unknown --doc-mode {config.doc_mode!r}; choose {', '.join(DOC_MODES)}")
    for flag, value in (("--segment-window", config.segment_window), ("--segment-stride", config.segment_stride)):
        if value is not None:
            _check_positive(flag, value)
    config.segment_config()
    if config.run and config.candidates:
        raise UserError("give either --run or --candidates, not both")
    _check_positive("--threads", config.threads)
    if config.output_format not in OUTPUT_FORMATS:
        raise UserError(f"unknown --output-format {config.output_format!r}; choose {', '.join(OUTPUT_FORMATS)}")
    check_first_stage_flags(config.first_stage, config.dense_index, config.fusion, config.alpha, config.rrf_k)
    if config.first_stage != "bm25" and (config.run or config.candidates):
        raise UserError(f"--first-stage {config.first_stage} searches for candidates: it cannot be combined with "
                        f"--run or --candidates")
    if config.source != "candidates":
        if not config.index:
            raise UserError("give --index (with --topics) to search it, --run with --index and --topics to rerank a "
                            "run, or --candidates")
        if not config.topics and config.run:
            raise UserError("--topics is needed with --run: the query texts of the run (a Pyserini name or a file)")
        if config.source == "index":
            check_bm25_parameters(config.bm25_k1, config.bm25_b)
    for flag, value in (("--candidates", config.candidates), ("--run", config.run)):
        if value and not Path(value).is_file():
            raise UserError(f"{flag} file not found: {value}")


def _output_path(config: RerankConfig) -> Path:
    output = Path(config.output) if config.output else default_output(config)
    if not config.output:
        output.parent.mkdir(parents=True, exist_ok=True)
    return check_output_path(output)  # the folder must exist and be writable: the run is renamed into it
