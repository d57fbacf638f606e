"""Scoring: how a query's first-stage hits become model inputs (passage, FirstP, MaxP: `DocumentMode`), how groups
of queries are planned and scored, and how the model's scores merge back into one ranking per query.

Scores: the top `depth` candidates get the model's score, rounded to the 6 decimals the run file holds (and ordered
by that rounded score, ties by docid, as `runs.format_run_lines` writes them). The candidates below the depth keep
their first-stage order underneath: the j-th of them (from 0) gets `lowest reranked score - (j + 1)`, so every
tool that sorts a run by score keeps them in that order and below every reranked document.

Document ranking (`doc_mode`, see `DocumentMode`): `firstp` reads the start of each document (the model's max length
truncates it); `maxp` scores overlapping segments of each document (or the first stage's segments `D1#3`) and gives
each document its best segment's score. The run then lists documents.
"""

from __future__ import annotations

import logging
import math
import re
from dataclasses import dataclass
from typing import Any, Callable, Iterable, Iterator, Protocol, Sequence

from pyserini_ssm.documents import (
    SegmentConfig,
    aggregate_max,
    doc_id_of_segment,
    expand_documents,
    firstp_text,
    max_passage_run,
)
from pyserini_ssm.errors import UserError
from pyserini_ssm.reranking.config import DOC_MODES, _check_positive
from pyserini_ssm.runs import Hit, ranking_key, written_score

logger = logging.getLogger("pyserini_ssm.reranking")  # the pipeline's one logger, as before it was a package


SCORE_DECIMALS = 6  # what runs.format_run_lines writes; scores are rounded to it before ordering


# Ids of a segmented collection (Pyserini's msmarco-v1-doc-segmented): `<docid>#<segment number>`.
_SEGMENT_ID = re.compile(r".+#[0-9]+")


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
