"""The reranking pipeline: first-stage candidates in, one TREC run out, streaming, resumable and shardable.

Three sources of candidates: BM25 over a Lucene index (`index` + `topics`), an existing TREC run (`run` + `topics`,
texts fetched from `index`), or a candidates JSON file with the texts inside (`candidates`).

How a run is produced (see docs/RERANKING.md):

1. The inputs are read and checked; the model is loaded. Nothing is written before this succeeds.
2. Queries are cut into *groups* of consecutive queries, planned from the candidate counts alone (a group fills about
   one batch; with the default depth 100 >= batch size, a group is one query). A group is the unit of scoring and of
   commit, and its composition never depends on which process scores it or on what was finished before a crash, so
   its scores are bitwise the same in a 1-process run, a torchrun run and a resumed run.
3. Groups are sharded across torchrun ranks by their pair count (`distributed.shard_by_cost`). Each rank streams
   its groups: fetch texts for a window of groups, score a group, append its TREC lines to the rank's partial file
   (flush + fsync), repeat. Memory is bounded by the fetch window and the batch, not the run.
4. When every rank is done (barrier), rank 0 concatenates the groups in input order into the final run through an
   atomic rename, and removes the partial files. The final run is byte-identical however the work was split.

Scores: the top `depth` candidates get the model's score, rounded to the 6 decimals the run file holds (and ordered
by that rounded score, ties by docid, as `runs.format_run_lines` writes them). The candidates below the depth keep
their first-stage order underneath: the j-th of them (from 0) gets `lowest reranked score - (j + 1)`, so every
tool that sorts a run by score keeps them in that order and below every reranked document.

Document ranking (`doc_mode`, see `DocumentMode`): `firstp` reads the start of each document (the model's max length
truncates it); `maxp` scores overlapping segments of each document (or the first stage's segments `D1#3`) and gives
each document its best segment's score. The run then lists documents.
"""

from __future__ import annotations

import collections
import contextlib
import fcntl
import hashlib
import json
import logging
import math
import os
import queue
import re
import sys
import threading
import time
import zlib
from dataclasses import dataclass
from glob import escape as glob_escape
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Protocol, Sequence

from pyserini_ssm.distributed import (
    DistributedContext,
    barrier,
    device_for_rank,
    init_from_env,
    shard_by_cost,
    shutdown,
    sum_over_ranks,
)
from pyserini_ssm.documents import (
    DEFAULT_SENTENCE_WINDOW,
    DEFAULT_WORD_WINDOW,
    SegmentConfig,
    aggregate_max,
    doc_id_of_segment,
    expand_documents,
    firstp_text,
    max_passage_run,
)
from pyserini_ssm.errors import UserError
from pyserini_ssm.files import SPACE_ERRNOS, atomic_output, check_output_path, writing
from pyserini_ssm.runs import Hit, format_run_lines, ranking_key, written_score

logger = logging.getLogger(__name__)

SCORE_DECIMALS = 6  # what runs.format_run_lines writes; scores are rounded to it before ordering
PARTIAL_FORMAT = "pyserini_ssm.rerank.partial"
PARTIAL_VERSION = 1
DEFAULT_OUTPUT_DIR = Path("runs")
DOC_MODES = ("passage", "firstp", "maxp")
SEGMENT_DEFAULT_WINDOWS = {"words": DEFAULT_WORD_WINDOW, "sentences": DEFAULT_SENTENCE_WINDOW}
# Ids of a segmented collection (Pyserini's msmarco-v1-doc-segmented): `<docid>#<segment number>`.
_SEGMENT_ID = re.compile(r".+#[0-9]+")


# --------------------------------------------------------------------------------------------------------------------
# Plain types


class QueryCandidates(Protocol):
    """What the pipeline needs of a query: `candidates.CandidateQuery` and `RerankQuery` both fit."""

    qid: str
    query: str
    hits: list[Hit]


@dataclass
class RerankQuery:
    """A query with its first-stage hits, best first (texts filled for the ones that get reranked)."""

    qid: str
    query: str
    hits: list[Hit]


@dataclass(frozen=True)
class RerankConfig:
    """Everything one reranking run depends on; `python -m pyserini_ssm.rerank` fills it from its flags."""

    model: str
    index: str | None = None  # Lucene index folder or Pyserini prebuilt name (BM25 search, and texts for `run`)
    topics: str | None = None  # topics name or file (with `index` alone, or with `run`)
    run: str | None = None  # rerank this TREC run instead of searching
    candidates: str | None = None  # JSON list of {"query", "hits": [{"docid", "content", "qid", "score"}]}
    output: str | None = None  # default: runs/run.<source>.<model>.rerank<depth>.txt
    hits: int = 1000  # BM25 depth (index mode only)
    rerank_depth: int = 100
    batch_size: int = 32
    # Pairs handed to one `predict` call (whole queries): length sorting, packing and tokenization overlap work
    # across this many pairs, and it is the unit that a resumed run skips.
    group_pairs: int = 4096
    max_length: int | None = None
    dtype: str | None = None  # bf16 | fp16 | fp32 | fp8 (bf16 weights, FP8 Linear layers); None: the model's default
    device: str | None = None
    backend: str = "auto"
    qrels: str | None = None
    topics_dir: str | None = None
    skip_missing: bool = False  # drop documents missing from the index (or with empty text) instead of failing
    tag: str | None = None  # run tag; default: the model's name
    bm25_k1: float = 0.9
    bm25_b: float = 0.4
    threads: int = 1  # BM25 search threads
    fields: dict[str, float] | None = None  # BM25 over several fields (None: the index's default, see lucene.py)
    fetch_batch_size: int = 1000  # documents fetched from the index per call
    show_progress: bool = True
    metrics: tuple[str, ...] | None = None  # None: evaluation's defaults for the collection
    # Document ranking: passage (each hit's text as it is) | firstp (the start of each document) | maxp (the best
    # of each document's overlapping segments). Segments: `segment_window` units every `segment_stride`; None takes
    # 150 words / 10 sentences, and half the window. Hits that are segments already (`D1#3`) are not cut again.
    doc_mode: str = "passage"
    segment_unit: str = "words"  # words | sentences
    segment_window: int | None = None
    segment_stride: int | None = None
    # The first stage when neither `run` nor `candidates` is given (see `first_stages.py`): bm25 over `index`;
    # dense over `dense_index` with `encoder` (texts from `index`); hybrid fuses both (`fusion`, `alpha`, `rrf_k`).
    first_stage: str = "bm25"
    encoder: str | None = None  # dense query encoder (default all-MiniLM-L6-v2); must be the index's
    dense_index: str | None = None
    fusion: str = "interpolation"  # hybrid: interpolation (min-max normalised) | rrf
    alpha: float = 0.5  # hybrid interpolation: weight of BM25
    rrf_k: int = 60
    output_format: str = "trec"  # trec | msmarco (qid<TAB>docid<TAB>rank) | rank_llm (Request JSONL)

    @property
    def source(self) -> str:
        if self.candidates:
            return "candidates"
        if self.run:
            return "run"
        return "index" if self.first_stage == "bm25" else self.first_stage

    def segment_config(self) -> SegmentConfig:
        """The MaxP segmentation: window default per unit (150 words, 10 sentences), stride default half the window
        (75 words, 5 sentences: Dai & Callan's and Pyserini's segmented index's). UserError for bad values."""
        window = self.segment_window
        if window is None:
            window = SEGMENT_DEFAULT_WINDOWS.get(self.segment_unit, DEFAULT_WORD_WINDOW)
        stride = self.segment_stride if self.segment_stride is not None else max(1, window // 2)
        return SegmentConfig(self.segment_unit, window, stride)


@dataclass(frozen=True)
class DocumentMode:
    """How the reranked hits of a query become the model's inputs and how their scores become document scores.

    - `passage`: each hit's text, one score per hit.
    - `firstp`: `documents.firstp_text(None, text)` (whitespace normalised); the model's max length keeps the start.
    - `maxp`, `presegmented=False`: each hit (a whole document) is cut into `segments`; its score is the maximum over
      its segments (`documents.expand_documents`, `documents.aggregate_max`).
    - `maxp`, `presegmented=True`: the hits are segments `<docid>#<n>` (a segmented index); segments are taken best
      first until `depth` distinct documents, scored, and aggregated per document (`documents.doc_id_of_segment`);
      the remaining segments become a document list below (`documents.max_passage_run`) without the reranked ones.
    """

    mode: str = "passage"
    segments: SegmentConfig = SegmentConfig()
    presegmented: bool = False

    def __post_init__(self):
        if self.mode not in DOC_MODES:
            raise UserError(f"unknown document mode {self.mode!r}; choose {', '.join(DOC_MODES)}")

    @property
    def segments_are_hits(self) -> bool:
        """Whether the scored hits are the first stage's segments `<docid>#<n>` (maxp over a segmented index)."""
        return self.mode == "maxp" and self.presegmented

    @property
    def cuts_documents(self) -> bool:
        """Whether each reranked hit turns into several model inputs (so the plan counts documents, not pairs)."""
        return self.mode == "maxp" and not self.presegmented

    def fingerprint(self) -> dict[str, Any] | None:
        """What a resumed run must share; None for `passage` (partial files of earlier versions stay valid)."""
        if self.mode == "passage":
            return None
        if self.mode == "firstp":
            return {"mode": "firstp"}
        if self.presegmented:
            return {"mode": "maxp", "segments": "first-stage segment ids"}
        return {"mode": "maxp", "unit": self.segments.unit, "window": self.segments.window,
                "stride": self.segments.stride}


PASSAGE_MODE = DocumentMode()


@dataclass
class RerankOutcome:
    """What `run_rerank` did. `metrics` (metric -> (first stage, reranked)) only on rank 0 when qrels are known."""

    output: Path
    queries: int
    pairs_scored: int  # by this process in this invocation (resumed work excluded)
    resumed_groups: int
    skipped_documents: int
    metrics: dict[str, tuple[float, float]] | None = None
    tag: str = ""
    # The scoring phase, from a barrier once every process has its model and queries to a barrier after the last
    # group: the throughput of the job itself, without start-up (Python, model loading) and the final merge.
    scoring_seconds: float = 0.0
    pairs_scored_all_ranks: int = 0

    @property
    def pairs_per_second(self) -> float:
        return self.pairs_scored_all_ranks / self.scoring_seconds if self.scoring_seconds > 0 else 0.0


# --------------------------------------------------------------------------------------------------------------------
# Scores


def round_score(score: float) -> float:
    """The score as the run file will hold it, so that ordering by it agrees with ordering by the written text."""
    return written_score(score)


def merge_reranked(reranked: Sequence[Hit], scores: Sequence[float], tail: Sequence[Hit]) -> list[Hit]:
    """Final ranking of one query: `reranked` hits scored by the model, then `tail` in first-stage order below.

    Reranked hits get their rounded model score, ordered (-score, docid). The j-th tail hit gets
    `min(reranked scores) - (j + 1)` (`-(j + 1)` when nothing was reranked), so that its first-stage order survives
    any sort by score, ties included.
    """
    if len(reranked) != len(scores):
        raise ValueError(f"{len(reranked)} hits but {len(scores)} scores")
    ranked = [Hit(hit.docid, round_score(score)) for hit, score in zip(reranked, scores)]
    ranked.sort(key=ranking_key)  # the one ranking rule, shared with Reranker.rerank and the run writer
    floor = ranked[-1].score if ranked else 0.0
    ranked.extend(Hit(hit.docid, round_score(floor - (offset + 1))) for offset, hit in enumerate(tail))
    return ranked


def rerank_head_size(hits: Sequence[Hit], depth: int, segments_are_hits: bool = False) -> int:
    """How many leading hits get scored: `depth` of them; with segments as hits (`D1#3`), the segments (best first)
    up to `depth` distinct documents."""
    if not segments_are_hits:
        return min(depth, len(hits))
    documents: set[str] = set()
    for position, hit in enumerate(hits):
        document = doc_id_of_segment(hit.docid)
        if document not in documents:
            if len(documents) == depth:
                return position
            documents.add(document)
    return len(hits)


def split_for_rerank(hits: Sequence[Hit], depth: int,
                     doc_mode: DocumentMode = PASSAGE_MODE) -> tuple[list[Hit], list[Hit]]:
    """(hits to score, the tail kept in first-stage order below them).

    With segments as hits (`maxp`, presegmented) the tail is a document list: each remaining document at its best
    remaining segment (Pyserini's max-passage), documents already reranked left out.
    """
    head = rerank_head_size(hits, depth, doc_mode.segments_are_hits)
    reranked, rest = list(hits[:head]), list(hits[head:])
    if not doc_mode.segments_are_hits or not rest:
        return reranked, rest
    reranked_documents = {doc_id_of_segment(hit.docid) for hit in reranked}
    documents = max_passage_run({"": rest}, hits=len(rest))[""]
    return reranked, [hit for hit in documents if hit.docid not in reranked_documents]


def detect_segment_ids(queries: Iterable[QueryCandidates]) -> bool:
    """Whether the first-stage hits are segments `<docid>#<n>` (all of them) rather than whole documents (none)."""
    segment, document = None, None
    for query in queries:
        for hit in query.hits:
            if _SEGMENT_ID.fullmatch(hit.docid):
                segment = segment or hit.docid
            else:
                document = document or hit.docid
            if segment and document:
                raise UserError(f"the candidates mix segment ids like {segment!r} (<docid>#<n>, a segmented index) "
                                f"with document ids like {document!r}: --doc-mode maxp needs all segments or all "
                                f"whole documents")
    return segment is not None


def _check_texts(query: QueryCandidates, reranked: list[Hit], skip_missing: bool,
                 on_skip: Callable[[str, str, str], None]) -> list[Hit]:
    """Reranked hits that have text; a hit without text is an error naming it, or dropped with `skip_missing`."""
    kept = []
    for hit in reranked:
        if hit.text is None or not hit.text.strip():
            reason = "is missing from the index" if hit.text is None else "has empty text"
            if not skip_missing:
                raise UserError(
                    f"document {hit.docid!r} (query {query.qid}) {reason}: check that the candidates match the "
                    f"collection, or pass --skip-missing to leave such documents out"
                )
            on_skip(query.qid, hit.docid, reason)
            continue
        kept.append(hit)
    return kept


# --------------------------------------------------------------------------------------------------------------------
# Groups: the unit of scoring and of commit


def plan_groups(pair_counts: Sequence[int], batch_size: int) -> list[range]:
    """Cut queries (by index) into runs of consecutive queries holding at most `batch_size` pairs together.

    A query with `batch_size` pairs or more is a group of its own. The plan depends only on the counts, so every
    process (and every resumed run) cuts the same groups.
    """
    groups: list[range] = []
    start, pairs = 0, 0
    for index, count in enumerate(pair_counts):
        if index > start and pairs + count > batch_size:
            groups.append(range(start, index))
            start, pairs = index, 0
        pairs += count
    if start < len(pair_counts):
        groups.append(range(start, len(pair_counts)))
    return groups


class _Scorer(Protocol):
    def predict(self, pairs: list[tuple[str, str]], batch_size: int = 32, show_progress: bool = False) -> Any: ...


def model_inputs(hits: Sequence[Hit], doc_mode: DocumentMode = PASSAGE_MODE) -> tuple[list[str], list[str]]:
    """(texts the model scores, the document id each score counts for) for one query's reranked hits."""
    if doc_mode.mode == "passage":
        return [hit.text for hit in hits], [hit.docid for hit in hits]
    if doc_mode.mode == "firstp":
        return [firstp_text(None, hit.text) for hit in hits], [hit.docid for hit in hits]
    if doc_mode.presegmented:
        return [hit.text for hit in hits], [doc_id_of_segment(hit.docid) for hit in hits]
    return expand_documents(((hit.docid, None, hit.text) for hit in hits), doc_mode.segments)


def score_group(reranker: _Scorer, queries: Sequence[QueryCandidates], reranked: Sequence[Sequence[Hit]],
                tails: Sequence[Sequence[Hit]], batch_size: int,
                doc_mode: DocumentMode = PASSAGE_MODE) -> list[list[Hit]]:
    """Score one group's pairs (every segment of every document, in maxp) in one `predict` call and merge each
    query's scores back (input order)."""
    inputs, pairs = group_pairs(queries, reranked, doc_mode)
    scores = reranker.predict(pairs, batch_size=batch_size) if pairs else []
    return merge_group_scores(queries, reranked, tails, inputs, scores, doc_mode)


def group_pairs(queries: Sequence[QueryCandidates], reranked: Sequence[Sequence[Hit]],
                doc_mode: DocumentMode) -> tuple[list[tuple[list[str], list[str]]], list[tuple[str, str]]]:
    """(each query's `model_inputs`, the group's (query, text) pairs in order) for one group."""
    inputs = [model_inputs(hits, doc_mode) for hits in reranked]
    pairs = [(query.query, text) for query, (texts, _) in zip(queries, inputs) for text in texts]
    return inputs, pairs


def merge_group_scores(queries: Sequence[QueryCandidates], reranked: Sequence[Sequence[Hit]],
                       tails: Sequence[Sequence[Hit]], inputs: Sequence[tuple[list[str], list[str]]],
                       scores: Sequence[float], doc_mode: DocumentMode) -> list[list[Hit]]:
    """Each query's final hits from the group's scores (in `group_pairs` order): reranked head, then the tail."""
    if not all(math.isfinite(float(score)) for score in scores):
        bad = next(q.qid for q, hits in zip(queries, reranked) if hits)
        raise UserError(f"the model returned a non-finite score (NaN or inf) near query {bad}: fp16 overflows in "
                        f"some models; use --dtype bf16 or fp32")
    results, position = [], 0
    for hits, (texts, documents), tail in zip(reranked, inputs, tails):
        query_scores = [float(s) for s in scores[position:position + len(texts)]]
        position += len(texts)
        if doc_mode.mode == "maxp":
            best = aggregate_max(documents, query_scores)
            results.append(merge_reranked([Hit(document, 0.0) for document in best], list(best.values()), tail))
        else:
            results.append(merge_reranked(hits, query_scores, tail))
    return results


def _streams(reranker: Any) -> bool:
    return getattr(reranker, "predict_stream", None) is not None


def scores_in_turn(reranker: _Scorer, pair_lists: Iterable[list[tuple[str, str]]],
                   batch_size: int, progress: Any = None) -> Iterator[Any]:
    """Scores of each list of pairs in turn: through `predict_stream` when the reranker has it (tokenizing the next
    list while this one is scored; `progress`, a tqdm bar, advances by the pairs of each batch), else one `predict`
    call per list."""
    if _streams(reranker):
        if progress is not None:
            return reranker.predict_stream(pair_lists, batch_size=batch_size, progress=progress)
        return reranker.predict_stream(pair_lists, batch_size=batch_size)
    return (reranker.predict(pairs, batch_size=batch_size) if pairs else [] for pairs in pair_lists)


def prefetched(items: Iterable[Any], ahead: int = 1) -> Iterator[Any]:
    """`items` in order, produced by a background thread that runs up to `ahead` items ahead of the consumer.

    `run_rerank` reads each group's texts (from the Lucene index: one JNI call per document; or from the candidates
    file) through it, so the reading overlaps the scoring of the group before instead of leaving the GPU idle. An
    exception raised while producing reaches the consumer at that item. When the consumer stops early, the producer
    stops after its current item and the source is closed in the producer's thread. The thread detaches itself
    from the JVM when it ends (pyjnius attaches any thread that calls Java; a thread that ends attached leaks).
    """
    buffer: queue.Queue = queue.Queue(maxsize=max(1, ahead))
    stop = threading.Event()
    end = object()

    def hand_over(entry: tuple[bool, Any]) -> bool:
        while not stop.is_set():
            try:
                buffer.put(entry, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def produce() -> None:
        source = iter(items)
        try:
            for item in source:
                if not hand_over((True, item)):
                    return
            hand_over((True, end))
        except BaseException as error:  # noqa: BLE001 (handed to the consumer, which raises it)
            hand_over((False, error))
        finally:
            close = getattr(source, "close", None)
            if close is not None:
                close()
            jnius = sys.modules.get("jnius")
            if jnius is not None:
                jnius.detach()

    producer = threading.Thread(target=produce, name="prefetch-texts", daemon=True)
    producer.start()
    try:
        while True:
            produced, item = buffer.get()
            if not produced:
                raise item
            if item is end:
                return
            yield item
    finally:
        stop.set()
        producer.join()


def rerank_candidates(reranker: _Scorer, queries: Iterable[QueryCandidates], *, depth: int = 100,
                      batch_size: int = 32, skip_missing: bool = False, group_pairs: int = 4096,
                      doc_mode: DocumentMode = PASSAGE_MODE) -> Iterator[tuple[str, list[Hit]]]:
    """Rerank queries whose top-`depth` hits carry their text; yields (qid, final hits) per query, lazily.

    The same scoring as `run_rerank` (groups planned greedily as queries arrive), without files: the Python API for
    a stream of candidates. Hits below `depth` need no text and keep their first-stage order underneath.
    `doc_mode`: FirstP/MaxP document ranking (`DocumentMode`); a stream cannot be looked at ahead, so say
    `presegmented=True` when the hits are segments `D1#3` (`run_rerank` detects it with `detect_segment_ids`).
    """
    _check_positive("rerank depth", depth)
    _check_positive("batch size", batch_size)

    def skipped(qid: str, docid: str, reason: str) -> None:
        logger.warning("skipping document %s of query %s: it %s", docid, qid, reason)

    group: list[tuple[QueryCandidates, list[Hit], list[Hit]]] = []
    pairs = 0

    def flush() -> Iterator[tuple[str, list[Hit]]]:
        results = score_group(reranker, [q for q, _, _ in group], [r for _, r, _ in group], [t for _, _, t in group],
                              batch_size, doc_mode)
        for (query, _, _), hits in zip(group, results):
            yield query.qid, hits

    for query in queries:
        reranked, tail = split_for_rerank(query.hits, depth, doc_mode)
        cost = len(reranked)  # the planned head, before documents without text are skipped
        reranked = _check_texts(query, reranked, skip_missing, skipped)
        if group and pairs + cost > max(group_pairs, batch_size):
            yield from flush()
            group, pairs = [], 0
        group.append((query, reranked, tail))
        pairs += cost
    if group:
        yield from flush()


def _check_positive(name: str, value: int) -> None:
    if not isinstance(value, int) or value < 1:
        raise UserError(f"{name} must be a positive integer, not {value!r}")


# --------------------------------------------------------------------------------------------------------------------
# The partial file: append-only progress of one rank


class PartialRun:
    """`<output>.partial` (or `<output>.rank<r>-of-<n>.partial`): a header line, then one JSON line per finished group.

    Header: {"format", "version", "fingerprint"}. Group line: {"group": g, "qids": [...], "text": TREC lines, "crc":
    crc32 of text}. Each line is written with one write, flushed and fsynced before the next group starts. After a
    kill -9 the last line can be torn (no newline, bad JSON or a wrong crc): it is detected, dropped and cut off
    before appending. A bad line anywhere else means the file was damaged otherwise: UserError.
    """

    def __init__(self, path: Path, handle: Any, done: dict[int, int]):
        self.path = path
        self._handle = handle
        self.done = done  # group -> byte offset of its line

    @classmethod
    def open(cls, path: Path, fingerprint: dict[str, Any]) -> "PartialRun":
        """Open for appending, creating it with a header; resume from its finished groups when the header matches."""
        path = Path(path)
        handle = open(path, "a+b")
        try:
            fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            handle.close()
            raise UserError(f"{path} is in use by another reranking process (same --output): wait for it to finish "
                            f"or choose another --output") from None
        try:
            header, done, valid_end = _scan_partial(path)
            if header is not None and header.get("fingerprint") != _json_roundtrip(fingerprint):
                raise UserError(_mismatch_message(path, header.get("fingerprint"), fingerprint))
            handle.truncate(valid_end if header is not None else 0)
            if header is None:
                line = json.dumps({"format": PARTIAL_FORMAT, "version": PARTIAL_VERSION, "fingerprint": fingerprint},
                                  sort_keys=True)
                _append_line(handle, line)
                done = {}
        except BaseException:
            handle.close()
            raise
        return cls(path, handle, done)

    def commit(self, group: int, qids: Sequence[str], text: str, requests: str | None = None) -> None:
        """Append one finished group: its TREC lines, and with `--output-format rank_llm` its Request JSON lines."""
        offset = self._handle.seek(0, os.SEEK_END)
        record = {"group": group, "qids": list(qids), "text": text, "crc": zlib.crc32(text.encode("utf-8"))}
        if requests is not None:
            record["requests"] = requests
            record["requests_crc"] = zlib.crc32(requests.encode("utf-8"))
        _append_line(self._handle, json.dumps(record, ensure_ascii=False))
        self.done[group] = offset

    def close(self) -> None:
        # Every committed line was flushed and fsynced: what a failed write (a full disk) left in the buffer is a
        # torn last line, which resuming drops. Closing must not replace that write's one-line error.
        with contextlib.suppress(OSError):
            self._handle.close()


def _append_line(handle: Any, line: str) -> None:
    with writing(handle.name, SPACE_ERRNOS):  # a full disk: one line (a torn last line is dropped on resume)
        handle.write(line.encode("utf-8") + b"\n")
        handle.flush()
        os.fsync(handle.fileno())


def _json_roundtrip(value: Any) -> Any:
    return json.loads(json.dumps(value, sort_keys=True))


def _parse_record(raw: bytes) -> dict[str, Any] | None:
    if not raw.endswith(b"\n"):
        return None
    try:
        record = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError):
        return None
    return record if isinstance(record, dict) else None


def _valid_group_record(record: dict[str, Any]) -> bool:
    if "requests" in record and (not isinstance(record["requests"], str)
                                 or record.get("requests_crc") != zlib.crc32(record["requests"].encode("utf-8"))):
        return False
    return (isinstance(record.get("group"), int) and isinstance(record.get("text"), str)
            and isinstance(record.get("qids"), list) and record.get("crc") == zlib.crc32(record["text"].encode("utf-8")))


def _scan_partial(path: Path) -> tuple[dict[str, Any] | None, dict[int, int], int]:
    """(header or None, group -> offset, byte length of the valid prefix). A torn last line is left out."""
    done: dict[int, int] = {}
    header = None
    offset = 0
    with open(path, "rb") as handle:
        lines = list(_lines_with_offsets(handle))
    for number, (start, raw) in enumerate(lines, start=1):
        is_last = number == len(lines)
        record = _parse_record(raw)
        if header is None:
            if record is None or record.get("format") != PARTIAL_FORMAT:
                if is_last and record is None:  # a header torn while being written: start over
                    return None, {}, 0
                raise UserError(f"{path} is not a reranking progress file (line 1): delete it, or choose another "
                                f"--output")
            if record.get("version") != PARTIAL_VERSION:
                raise UserError(f"{path} was written by another version of pyserini_ssm: delete it to start over")
            header = record
        elif record is None or not _valid_group_record(record):
            if is_last:
                logger.warning("%s: ignoring the torn last line left by an interrupted run", path)
                break
            raise UserError(f"{path}:{number}: damaged progress line (not the last one, so not an interrupted "
                            f"write): delete the file to start over")
        else:
            done.setdefault(record["group"], start)
        offset = start + len(raw)
    return header, done, offset


def _lines_with_offsets(handle: Any) -> Iterator[tuple[int, bytes]]:
    offset = 0
    for raw in handle:
        yield offset, raw
        offset += len(raw)


def _mismatch_message(path: Path, stored: Any, wanted: dict[str, Any]) -> str:
    wanted = _json_roundtrip(wanted)
    stored = stored if isinstance(stored, dict) else {}
    differing = sorted(key for key in set(stored) | set(wanted) if stored.get(key) != wanted.get(key))
    return (f"{path} holds the progress of a reranking with other settings (different {', '.join(differing)}): "
            f"delete it to start over, or choose another --output")


def _read_group_texts(path: Path, offsets: dict[int, int]) -> Iterator[tuple[int, str]]:
    with open(path, "rb") as handle:
        for group, offset in offsets.items():
            handle.seek(offset)
            record = json.loads(handle.readline().decode("utf-8"))
            yield group, record["text"]


def partial_path(output: Path, context: DistributedContext) -> Path:
    if context.world_size == 1:
        return output.with_name(output.name + ".partial")
    return output.with_name(f"{output.name}.rank{context.rank}-of-{context.world_size}.partial")


OUTPUT_FORMATS = ("trec", "msmarco", "rank_llm")


def merge_partials(output: Path, partials: Sequence[Path], group_count: int, output_format: str = "trec",
                   collect_run: bool = False) -> dict[str, dict[str, float]] | None:
    """Write the final run: every group's lines, in group (= input) order, read back from the partial files.

    `output_format`: trec (as scored), msmarco (`qid<TAB>docid<TAB>rank`) or rank_llm (the Request of each query:
    a JSON list when the output name ends in `.json`, else one JSON object a line). `collect_run`: also return the
    run (qid -> docid -> score) for evaluation, read from the TREC lines.
    """
    where: dict[int, tuple[Path, int]] = {}
    for path in partials:
        _, done, _ = _scan_partial(path)
        for group, offset in done.items():
            where.setdefault(group, (path, offset))
    missing = [group for group in range(group_count) if group not in where]
    if missing:
        raise RuntimeError(f"groups {missing[:10]} are in no partial file; cannot merge")
    handles: dict[Path, Any] = {}
    run: dict[str, dict[str, float]] | None = {} if collect_run else None
    as_json_list = output_format == "rank_llm" and output.name.endswith(".json")
    try:
        with atomic_output(output) as out:
            if as_json_list:
                out.write("[")
            first = True
            for group in range(group_count):
                path, offset = where[group]
                if path not in handles:
                    handles[path] = open(path, "rb")
                handle = handles[path]
                handle.seek(offset)
                record = json.loads(handle.readline().decode("utf-8"))
                text = record["text"]
                if run is not None:
                    for line in text.splitlines():
                        qid, _, docid, _, score, _ = line.split()
                        run.setdefault(qid, {})[docid] = float(score)
                if output_format == "trec":
                    out.write(text)
                elif output_format == "msmarco":
                    out.write("".join(f"{qid}\t{docid}\t{rank}\n" for qid, _, docid, rank, _, _ in
                                      (line.split() for line in text.splitlines())))
                else:
                    lines = record.get("requests")
                    if lines is None:
                        raise RuntimeError(f"{path}: group {group} has no rank_llm requests")
                    if as_json_list:
                        for line in lines.splitlines():
                            out.write(("\n" if first else ",\n") + line)
                            first = False
                    else:
                        out.write(lines)
            if as_json_list:
                out.write("\n]\n")
    finally:
        for handle in handles.values():
            handle.close()
    return run


def rank_llm_request_line(query: QueryCandidates, ranked: Sequence[Hit], reranked: Sequence[Hit],
                          below: int) -> str:
    """One query as rank_llm's `Request` JSON line: `{"query": {"text", "qid"}, "candidates": [{"docid", "score",
    "doc": {"contents"}}]}` with the reranked candidates in their new order and our scores (those below the depth,
    whose texts are not loaded, are left out: a listwise reranker takes the top of the list)."""
    ranked_ids = {hit.docid for hit in ranked}
    texts: dict[str, str] = {}
    for hit in reranked:  # maxp over segments `D1#3`: a document gets its best first-stage segment's text
        docid = hit.docid if hit.docid in ranked_ids else doc_id_of_segment(hit.docid)
        texts.setdefault(docid, hit.text or "")
    head = ranked[:len(ranked) - below] if below else ranked
    candidates = [{"docid": hit.docid, "score": hit.score, "doc": {"contents": texts.get(hit.docid, "")}}
                  for hit in head]
    return json.dumps({"query": {"text": query.query, "qid": query.qid}, "candidates": candidates},
                      ensure_ascii=False) + "\n"


# --------------------------------------------------------------------------------------------------------------------
# Inputs


@dataclass
class _Inputs:
    """What the input files hold, read before anything expensive: topics (qid -> text) for a first stage or a run,
    the run's hits, or the candidates (ids and scores only; the texts are read again per group)."""

    topics: dict[str, str] | None = None
    run: dict[str, list[Hit]] | None = None
    candidates: list[RerankQuery] | None = None
    digest: str | None = None


def _read_inputs(config: RerankConfig) -> _Inputs:
    """Parse the topics, run or candidates file (all of it) so that a malformed one fails before the model loads."""
    if config.source == "candidates":
        from pyserini_ssm.candidates import iter_candidates

        maxp = config.doc_mode == "maxp"
        digest = _InputDigest()
        queries = []
        for candidate in iter_candidates(config.candidates):
            query = RerankQuery(str(candidate.qid), candidate.query, list(candidate.hits))
            # The digest covers the texts of every hit that may be scored. In maxp the hits may be segments,
            # whose head runs past `depth` (up to `depth` distinct documents).
            digest.add(query, rerank_head_size(query.hits, config.rerank_depth, segments_are_hits=maxp),
                       with_texts=True)
            queries.append(RerankQuery(query.qid, query.query, [Hit(h.docid, h.score) for h in query.hits]))
        if not queries:
            raise UserError(f"{config.candidates}: the candidates file holds no queries")
        return _Inputs(candidates=queries, digest=digest.hexdigest())

    from pyserini_ssm.topics import load_topics

    run = None
    if config.source == "run":
        from pyserini_ssm.runs import read_run

        run = read_run(config.run)  # the file first: it is the user's, the topics may need the JVM
    topics = load_topics(config.topics, topics_dir=config.topics_dir)
    if run is not None:
        unknown = [qid for qid in run if qid not in topics]
        if unknown:
            raise UserError(f"query {unknown[0]!r} of run {config.run} is not in topics {config.topics} "
                            f"({len(unknown)} such queries): give the topics the run was made from")
    return _Inputs(topics=topics, run=run)


def _check_precision(config: RerankConfig) -> None:
    """`--dtype fp8` needs a CUDA GPU of compute capability >= 8.9: a flag error, said before the model is looked for."""
    if config.dtype == "fp8":
        from pyserini_ssm.models.reranker import resolve_device, resolve_precision

        resolve_precision(config.dtype, resolve_device(config.device))


def _check_model_available(model: str) -> None:
    """Before loading: a folder exists, or a registry model's weights can be had (offline: they are cached)."""
    path = Path(model).expanduser()
    if path.is_dir():
        return
    from pyserini_ssm.models.registry import REGISTRY, get_spec

    if model in REGISTRY:
        from pyserini_ssm.hub import require_registry_model

        spec = REGISTRY[model]
        require_registry_model(spec.checkpoint, spec.tokenizer, spec.name)
        return
    if path.is_file() and path.suffix.lower() == ".gguf":
        return  # a GGUF checkpoint (models.gguf checks its header when it loads)
    if path.exists():
        raise UserError(f"{path} is a file; --model takes a registry name, a checkpoint folder or a .gguf file")
    if os.sep in model and (model.startswith((".", "~", os.sep)) or model.count("/") > 1):
        raise UserError(f"checkpoint folder not found: {path}")
    get_spec(model)  # raises with the close matches


@dataclass
class _FirstStage:
    """The opened first stage (Lucene searcher for texts and BM25, dense searcher and encoder) before it runs."""

    searcher: Any = None
    dense: Any = None  # first_stages.DenseStage


def _open_first_stage(config: RerankConfig, inputs: _Inputs) -> _FirstStage:
    """Open the Lucene index (texts; BM25) and the dense index: a prebuilt index missing offline fails here."""
    if config.source == "candidates":
        return _FirstStage()
    from pyserini_ssm.first_stage.lucene import open_searcher

    searcher = open_searcher(config.index)
    dense = None
    if config.source in ("dense", "hybrid"):
        from pyserini_ssm.first_stages import open_dense_stage

        dense = open_dense_stage(config.dense_index, config.encoder, threads=config.threads)
    return _FirstStage(searcher, dense)


def _load_queries(config: RerankConfig, inputs: _Inputs,
                  first_stage: _FirstStage) -> tuple[list[RerankQuery], "_TextSource", str]:
    """(queries with their first-stage hits but no texts, where the texts come from, digest of the inputs).

    Texts are left out so that memory holds ids and scores only; `_TextSource.hydrate` brings them back for a few
    groups at a time (from the index, or by reading the candidates file again).
    """
    if config.source == "candidates":
        return inputs.candidates, _CandidateTexts(config.candidates), inputs.digest

    from pyserini_ssm.first_stages import RunFileStage, run_first_stage

    topics, searcher = inputs.topics, first_stage.searcher
    if config.source == "run":
        queries = [RerankQuery(qid, topics[qid], hits) for qid, hits in RunFileStage(inputs.run).search(topics).items()]
    else:
        results = run_first_stage(config, searcher, first_stage.dense, topics)
        queries = [RerankQuery(qid, topics[qid], results.get(qid, [])) for qid in topics]
    digest = _InputDigest()
    for query in queries:
        digest.add(query, config.rerank_depth, with_texts=False)
    return queries, _IndexTexts(searcher, config.fetch_batch_size, config.skip_missing), digest.hexdigest()


def _load_qrels_first(config: RerankConfig) -> LoadedQrels | None:
    """The qrels (--qrels, else those of a named --topics), read before the rerank: a bad one fails first."""
    name = _qrels_name(config)
    if not name:
        return None
    from pyserini_ssm.qrels import load_qrels

    return LoadedQrels(name, load_qrels(name, topics_dir=config.topics_dir))


def _check_writable(output: Path) -> None:
    """The run is written beside `output` and renamed onto it: the folder must be writable (the file need not be)."""
    parent = output.parent if str(output.parent) else Path(".")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise UserError(f"cannot write to the output folder {parent} (read-only or no permission): choose another "
                        f"--output")


def _dtype_fingerprint(dtype: str | None, device: str | None) -> str | None:
    """The dtype a resumed run must share: None for the device's default (bf16 on CUDA, fp32 on CPU) whether or not
    it was given (`--dtype fp32` on CPU resumes a run started without it), else the explicit one."""
    if dtype is None:
        return None
    default = "bf16" if _device_type(device) == "cuda" else "fp32"
    return None if dtype == default else dtype


def _check_queries_fit(reranker: Any, queries: Sequence[RerankQuery]) -> None:
    """Fail before any scoring when a query cannot fit --max-length (the encoder raises a UserError naming it)."""
    encoder = getattr(reranker, "encoder", None) or getattr(reranker, "pair_encoder", None)
    query_ids = getattr(encoder, "query_ids", None)
    if query_ids is None:
        return
    for query in queries:
        try:
            query_ids(query.query)
        except UserError as error:
            raise UserError(f"query {query.qid}: {error}") from None


class _InputDigest:
    """Digest of everything the run depends on in the inputs: qids, query texts, first-stage ranking (and the
    texts of the reranked hits when they come with the input)."""

    def __init__(self) -> None:
        self._digest = hashlib.sha256()

    def add(self, query: RerankQuery, head: int, with_texts: bool) -> None:
        self._digest.update(f"q\0{query.qid}\0{query.query}\0{len(query.hits)}\n".encode("utf-8"))
        for position, hit in enumerate(query.hits):
            self._digest.update(f"{hit.docid}\0{hit.score!r}\n".encode("utf-8"))
            if with_texts and position < head:
                self._digest.update(f"{hit.text}\n".encode("utf-8"))

    def hexdigest(self) -> str:
        return self._digest.hexdigest()


def _model_fingerprint(model: str) -> dict[str, Any]:
    """The model argument, and for a local folder the name, size and mtime of its files (a retrained checkpoint
    in the same folder must not resume from the old one's scores)."""
    path = Path(model)
    if not path.is_dir():
        return {"name": model}
    files = sorted(
        (str(item.relative_to(path)), item.stat().st_size, item.stat().st_mtime_ns)
        for item in path.rglob("*") if item.is_file()
    )
    return {"path": str(path.resolve()), "files": hashlib.sha256(repr(files).encode()).hexdigest()}


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


def _say_default_topics(original: RerankConfig, config: RerankConfig) -> None:
    """One line when --topics was filled in (said once the inputs are known good, so an error stays alone)."""
    if original.topics is None and config.topics is not None:
        qrels = config.qrels or qrels_name_for_topics(config.topics)
        logger.info("no --topics: using %s, the standard evaluation topics of %s (qrels %s)", config.topics,
                    config.index, qrels or "none")


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
    from pyserini_ssm.first_stages import check_first_stage_flags

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
            from pyserini_ssm.first_stage.lucene import check_bm25_parameters

            check_bm25_parameters(config.bm25_k1, config.bm25_b)
    for flag, value in (("--candidates", config.candidates), ("--run", config.run)):
        if value and not Path(value).is_file():
            raise UserError(f"{flag} file not found: {value}")


def qrels_name_for_topics(topics: str) -> str | None:
    """The Pyserini qrels name that judges a Pyserini topics name, or None (a file, or no known qrels).

    The same name when it is a qrels name too (`dl19-passage`, `msmarco-passage-dev-subset`,
    `beir-v1.0.0-scifact-test`); else the name without its encoder suffix (`dl19-passage-unicoil`); else
    `<name>-passage` (`dl20` -> `dl20-passage`, as Pyserini's passage regressions pair them).
    """
    from pyserini_ssm.pyserini_names import QRELS_FILES, TOPIC_FILES

    if topics not in TOPIC_FILES:
        return None
    parts = topics.split("-")
    for end in range(len(parts), 0, -1):
        name = "-".join(parts[:end])
        if name in QRELS_FILES:
            return name
        if f"{name}-passage" in QRELS_FILES:
            return f"{name}-passage"
    return None


def _qrels_name(config: RerankConfig) -> str | None:
    """--qrels, else the qrels of a named --topics, else None (no metrics)."""
    if config.qrels:
        return config.qrels
    if not config.topics or Path(config.topics).exists():
        return None
    return qrels_name_for_topics(config.topics)


# --------------------------------------------------------------------------------------------------------------------
# The pipeline


@dataclass
class _Group:
    index: int
    queries: list[RerankQuery]
    heads: list[int]  # per query, how many leading hits are scored (and need their text)

    @property
    def pairs(self) -> int:
        """The planning and sharding cost: scored hits (documents in maxp over whole documents)."""
        return sum(self.heads)


class _TextSource(Protocol):
    def hydrate(self, groups: Iterable[_Group]) -> Iterator[_Group]: ...


def _with_texts(query: RerankQuery, head: int, texts: Any) -> RerankQuery:
    top = [Hit(hit.docid, hit.score, texts.get(hit.docid)) for hit in query.hits[:head]]
    return RerankQuery(query.qid, query.query, top + list(query.hits[head:]))


class _IndexTexts:
    """Fills in the texts of the scored hits from the index, one batched fetch per window of groups."""

    def __init__(self, searcher: Any, window: int, skip_missing: bool):
        self.searcher = searcher
        self.window = window
        self.skip_missing = skip_missing

    def hydrate(self, groups: Iterable[_Group]) -> Iterator[_Group]:
        pending: list[_Group] = []
        docs = 0
        for group in groups:
            pending.append(group)
            docs += group.pairs
            if docs >= self.window:
                yield from self._fetch(pending)
                pending, docs = [], 0
        if pending:
            yield from self._fetch(pending)

    def _fetch(self, groups: list[_Group]) -> Iterator[_Group]:
        from pyserini_ssm.first_stage.lucene import fetch_texts

        docids = list(dict.fromkeys(hit.docid for g in groups for q, head in zip(g.queries, g.heads)
                                    for hit in q.hits[:head]))
        try:
            texts = fetch_texts(self.searcher, docids, skip_missing=self.skip_missing)
        except UserError as error:
            raise UserError(f"{error} (pass --skip-missing to leave such documents out)") from None
        for group in groups:
            yield _Group(group.index, [_with_texts(q, head, texts) for q, head in zip(group.queries, group.heads)],
                         group.heads)


class _CandidateTexts:
    """Reads the candidates file again, keeping the texts of the wanted groups' queries only (one group at a time)."""

    def __init__(self, path: str):
        self.path = path

    def hydrate(self, groups: Iterable[_Group]) -> Iterator[_Group]:
        from pyserini_ssm.candidates import iter_candidates

        wanted = iter(groups)
        group = next(wanted, None)
        collected: list[RerankQuery] = []
        position = -1
        for candidate in iter_candidates(self.path):
            if group is None:
                return
            position += 1
            first = group.queries[0]
            if not collected and candidate.qid != first.qid:
                continue
            expected = group.queries[len(collected)]
            if candidate.qid != expected.qid or len(candidate.hits) != len(expected.hits):
                raise UserError(f"{self.path} changed while reranking (query {expected.qid} expected at #{position}, "
                                f"found {candidate.qid}): rerun to start over from the new file")
            head = group.heads[len(collected)]
            texts = {hit.docid: hit.text for hit in candidate.hits[:head]}
            collected.append(_with_texts(expected, head, texts))
            if len(collected) == len(group.queries):
                yield _Group(group.index, collected, group.heads)
                group, collected = next(wanted, None), []
        if group is not None:
            raise UserError(f"{self.path} changed while reranking (query {group.queries[0].qid} is gone): rerun to "
                            f"start over from the new file")


def _progress(total: int, initial: int, enabled: bool, context: DistributedContext, unit: str = "pair"):
    from tqdm import tqdm

    description = "reranking" if not context.is_distributed else f"reranking (rank 0 of {context.world_size})"
    return tqdm(total=total, initial=initial, unit=unit, unit_scale=True, desc=description, file=sys.stderr,
                disable=not (enabled and context.is_main), mininterval=1.0, smoothing=0.1, dynamic_ncols=True)


def load_reranker(config: RerankConfig, device: str | None):
    """The model, loaded quietly (no hub retries or "Loading weights" bars; see `console.quiet_loading`)."""
    from pyserini_ssm.console import quiet_loading, silence_truncation_warning
    from pyserini_ssm.models.reranker import Reranker

    silence_truncation_warning()
    with quiet_loading(bars=_will_download(config.model)):
        return Reranker.from_pretrained(config.model, device=device, dtype=config.dtype,
                                        max_length=config.max_length, backend=config.backend)


def _will_download(model: str) -> bool:
    """Whether loading `model` downloads from the hub (a registry name not in the HF cache, the hub reachable)."""
    from pyserini_ssm.models.registry import REGISTRY

    if Path(model).expanduser().is_dir() or model not in REGISTRY:
        return False
    from pyserini_ssm.hub import cached_snapshot, hub_offline

    return cached_snapshot(REGISTRY[model].checkpoint) is None and not hub_offline()


def _device_type(device: str | None) -> str:
    if device is not None:
        return device.split(":")[0]
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def run_rerank(config: RerankConfig, *, reranker: Any = None,
               context: DistributedContext | None = None) -> RerankOutcome:
    """Rerank per `config` into one TREC run; resumes from a matching partial file; torchrun-aware.

    `reranker`: an already loaded model (tests, notebooks); by default it is loaded from `config.model`.
    Returns on every rank; only rank 0 writes the final run and computes metrics.
    """
    _validate(config)
    original, config = config, with_default_topics(config)
    _output_path(config)
    # Every input is read and checked before anything expensive (torch, the hub, the model, the JVM for a first
    # stage of minutes): qrels, topics, a run or a candidates file; then whether the model can be had at all.
    qrels = _load_qrels_first(config)
    inputs = _read_inputs(config)
    if reranker is None:
        _check_precision(config)
        _check_model_available(config.model)
    own_context = context is None
    if context is None:
        context = init_from_env(_device_type(config.device))
    try:
        return _run(config, reranker, context, qrels, inputs, announce=lambda: _say_default_topics(original, config))
    finally:
        if own_context:
            shutdown(context)


def _output_path(config: RerankConfig) -> Path:
    output = Path(config.output) if config.output else default_output(config)
    if not config.output:
        output.parent.mkdir(parents=True, exist_ok=True)
    check_output_path(output)
    _check_writable(output)
    return output


def _run(config: RerankConfig, reranker: Any, context: DistributedContext, qrels: "LoadedQrels | None",
         inputs: "_Inputs", announce: Callable[[], None] = lambda: None) -> RerankOutcome:
    output = _output_path(config)
    depth = config.rerank_depth
    tag = config.tag or model_label(config.model)
    first_stage = _open_first_stage(config, inputs)
    announce()
    if reranker is None:
        reranker = load_reranker(config, device_for_rank(config.device, context))
    queries, texts, input_digest = _load_queries(config, inputs, first_stage)
    if not queries:
        raise UserError("no queries to rerank")
    _check_queries_fit(reranker, queries)

    doc_mode = _document_mode(config, queries)
    # The plan needs no text: heads count the scored hits (segments of a segmented index, documents in maxp over
    # whole documents, whose segment counts would need the texts), so every rank and every resume cuts the same.
    heads = [rerank_head_size(query.hits, depth, doc_mode.segments_are_hits) for query in queries]
    plan = plan_groups(heads, max(config.group_pairs, config.batch_size))
    groups = [_Group(index, [queries[i] for i in members], [heads[i] for i in members])
              for index, members in enumerate(plan)]
    shards = shard_by_cost([group.pairs for group in groups], context.world_size)
    mine = [groups[index] for index in shards[context.rank]]

    fingerprint = {
        "model": _model_fingerprint(config.model),
        "rerank_depth": depth,
        "batch_size": config.batch_size,
        "group_pairs": config.group_pairs,
        "max_length": config.max_length,
        "dtype": _dtype_fingerprint(config.dtype, device_for_rank(config.device, context)),
        "backend": config.backend,
        "device_type": _device_type(device_for_rank(config.device, context)),
        "tag": tag,
        "source": config.source,
        "index": config.index if config.source != "candidates" else None,
        "inputs": input_digest,
        "groups": len(groups),
        "rank": context.rank,
        "world_size": context.world_size,
    }
    if doc_mode.fingerprint() is not None:
        fingerprint["doc_mode"] = doc_mode.fingerprint()
    if config.output_format != "trec":  # absent for trec: partial files of earlier versions stay valid
        fingerprint["output_format"] = config.output_format
    if config.source in ("dense", "hybrid"):
        fingerprint["first_stage"] = {"dense_index": config.dense_index, "encoder": config.encoder,
                                      "fusion": config.fusion if config.source == "hybrid" else None,
                                      "alpha": config.alpha, "rrf_k": config.rrf_k}
    own_partial = partial_path(output, context)
    if context.is_main:
        current = {partial_path(output, DistributedContext(rank, context.world_size)).name
                   for rank in range(context.world_size)}
        stale = sorted(p.name for p in output.parent.glob(f"{glob_escape(output.name)}*.partial")
                       if p.name not in current)
        if stale:
            logger.warning("ignoring progress files of a run with another number of processes: %s (delete them)",
                           ", ".join(stale))
    partial = PartialRun.open(own_partial, fingerprint)
    resumed = sum(1 for group in mine if group.index in partial.done)
    if resumed:
        logger.info("resuming: %d of %d groups already done in %s", resumed, len(mine), partial.path)
    todo = [group for group in mine if group.index not in partial.done]

    skipped = [0]

    def on_skip(qid: str, docid: str, reason: str) -> None:
        if not skipped[0] and reason != "is missing from the index":  # fetch_texts already warned about those
            logger.warning("skipping document %s of query %s: it %s (--skip-missing)", docid, qid, reason)
        skipped[0] += 1

    scored_pairs = 0
    barrier(context)
    scoring_started = time.perf_counter()
    total_pairs = sum(group.pairs for group in mine)
    done_pairs = total_pairs - sum(group.pairs for group in todo)
    try:
        unit = "doc" if doc_mode.cuts_documents else "pair"
        # Groups are prepared ahead of scoring, their texts read in a background thread (`prefetched`) and tokenized
        # in another (`scores_in_turn`): `prepared` holds what each scored group needs for merging, in order. A bad
        # input found while preparing a group is queued behind the groups before it, so they are still committed
        # before the error stops the run.
        prepared: collections.deque = collections.deque()

        def pair_lists() -> Iterator[list[tuple[str, str]]]:
            try:
                for group in texts.hydrate(todo):
                    splits = [split_for_rerank(q.hits, depth, doc_mode) for q in group.queries]
                    reranked = [_check_texts(q, head, config.skip_missing, on_skip)
                                for q, (head, _) in zip(group.queries, splits)]
                    inputs, pairs = group_pairs(group.queries, reranked, doc_mode)
                    prepared.append((group, reranked, [tail for _, tail in splits], inputs, len(pairs)))
                    yield pairs
            except UserError as error:
                prepared.append(error)
                yield []

        texts_ahead = prefetched(pair_lists())
        with contextlib.closing(texts_ahead), _progress(total_pairs, done_pairs, config.show_progress, context,
                                                        unit) as bar:
            # The bar moves with the pairs scored, batch by batch (`predict_stream` advances it); in maxp over whole
            # documents it counts documents, one group at a time.
            per_batch = bar if not doc_mode.cuts_documents else None
            for scores in scores_in_turn(reranker, texts_ahead, config.batch_size, progress=per_batch):
                item = prepared.popleft()
                if isinstance(item, UserError):
                    raise item
                group, reranked, tails, inputs, pairs = item
                results = merge_group_scores(group.queries, reranked, tails, inputs, scores, doc_mode)
                text = "".join(line for query, hits in zip(group.queries, results)
                               for line in format_run_lines(query.qid, hits, tag))
                requests = None
                if config.output_format == "rank_llm":
                    requests = "".join(rank_llm_request_line(query, hits, head, len(tail))
                                       for query, hits, head, tail in zip(group.queries, results, reranked, tails))
                partial.commit(group.index, [query.qid for query in group.queries], text, requests)
                scored_pairs += pairs
                bar.update(group.pairs - (pairs if per_batch is not None and _streams(reranker) else 0))
    except UserError as error:
        # Finished groups stay in the partial file: fixing the input and rerunning resumes from them. A file with
        # nothing finished is removed, so a bad input leaves no trace.
        if not partial.done:
            partial.close()
            with contextlib.suppress(FileNotFoundError):
                os.unlink(partial.path)
            raise
        finished = sum(len(group.queries) for group in mine if group.index in partial.done)
        raise UserError(f"{error} (the {finished} queries finished so far are kept in {partial.path}: rerun the "
                        f"same command to resume)") from None
    finally:
        partial.close()
    if skipped[0]:
        logger.warning("skipped %d documents missing from the index or without text (--skip-missing)", skipped[0])

    barrier(context)
    outcome = RerankOutcome(output, len(queries), scored_pairs, resumed, skipped[0], tag=tag,
                            scoring_seconds=time.perf_counter() - scoring_started,
                            pairs_scored_all_ranks=sum_over_ranks(context, scored_pairs))
    if context.is_main:
        partials = [partial_path(output, DistributedContext(rank, context.world_size))
                    for rank in range(context.world_size)]
        reranked_run = merge_partials(output, partials, len(groups), config.output_format,
                                      collect_run=qrels is not None)
        for path in partials:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(path)
        if qrels is not None:
            outcome.metrics = evaluate_before_after(queries, reranked_run, qrels, config,
                                                    segments_are_hits=doc_mode.segments_are_hits)
    return outcome


def _document_mode(config: RerankConfig, queries: Sequence[RerankQuery]) -> DocumentMode:
    segments = config.segment_config()
    presegmented = config.doc_mode == "maxp" and detect_segment_ids(queries)
    if presegmented:
        logger.info("maxp: the candidates are segments already (ids like %s): scoring them, best per document",
                    next(hit.docid for query in queries for hit in query.hits))
    return DocumentMode(config.doc_mode, segments, presegmented)


@dataclass(frozen=True)
class LoadedQrels:
    """Judgments read before the rerank (a bad --qrels fails first), and the name that picks the 2CR convention."""

    name: str
    judgments: dict[str, dict[str, int]]


def evaluate_before_after(queries: Sequence[RerankQuery], reranked: Path | dict[str, dict[str, float]],
                          qrels: "LoadedQrels | str", config: RerankConfig,
                          segments_are_hits: bool = False) -> dict[str, tuple[float, float]]:
    """metric -> (first stage, reranked), pytrec_eval with Pyserini's conventions, judged queries only.

    `reranked`: the reranked run (qid -> docid -> score) or a TREC run file. `qrels`: loaded, or a name/file.
    `segments_are_hits`: the first stage returned segments `D1#3`; it is judged as documents, each at its best
    segment (Pyserini's max-passage), as the reranked run is.
    """
    from pyserini_ssm.evaluation import evaluate
    from pyserini_ssm.runs import read_run, run_as_dict

    if not isinstance(qrels, LoadedQrels):
        from pyserini_ssm.qrels import load_qrels

        qrels = LoadedQrels(str(qrels), load_qrels(qrels, topics_dir=config.topics_dir))
    if not isinstance(reranked, dict):
        reranked = run_as_dict(read_run(reranked))
    hint = qrels.name  # picks the 2CR convention (DL: MAP/R@1000 at level 2, ...)
    qrels = qrels.judgments
    metrics = list(config.metrics) if config.metrics else None
    first_stage = {query.qid: query.hits for query in queries}
    if segments_are_hits:
        first_stage = max_passage_run(first_stage, hits=max(1, *(len(hits) for hits in first_stage.values())))
    before_run = {qid: {hit.docid: float(hit.score) for hit in hits} for qid, hits in first_stage.items()}
    before = evaluate(before_run, qrels, metrics, collection_hint=hint)
    after = evaluate(reranked, qrels, metrics, collection_hint=hint)
    return {name: (before[name], after[name]) for name in before}


def format_metrics(metrics: dict[str, tuple[float, float]]) -> str:
    """A small table: metric, first stage, reranked."""
    width = max([len("metric")] + [len(name) for name in metrics])
    lines = [f"{'metric':<{width}}  {'first stage':>11}  {'reranked':>8}"]
    lines += [f"{name:<{width}}  {before:>11.4f}  {after:>8.4f}" for name, (before, after) in metrics.items()]
    return "\n".join(lines)
