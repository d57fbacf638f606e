"""Long documents (MS MARCO document ranking): FirstP and MaxP inputs for a passage-length reranker.

FirstP feeds the reranker the start of the document, title first; the model's `max_length` truncation (the
template truncates the document field, never the query) decides how much of it is read, so FirstP is simply
`firstp_text(title, body)`; `max_words` can cut it earlier to save tokenization work on very long bodies.

MaxP (Dai & Callan, SIGIR 2019) splits each document into overlapping passages, scores every passage and keeps a
document's best passage score. Two segmentations are offered:

- `unit="words"` (default): windows of `window` words every `stride` words, 150/75 as Dai & Callan; the usual choice
  for a local collection or the full-document `msmarco-v1-doc` index.
- `unit="sentences"`: windows of `window` sentences every `stride` sentences, 10/5, the recipe that built
  Pyserini's `msmarco-v1-doc-segmented` index (that index used spaCy sentences; a regular-expression splitter
  here gives close but not byte-identical segments).

With the `msmarco-v1-doc-segmented` index the first stage already returns segments whose ids are
`<docid>#<n>`: do not segment again, score them and aggregate with `doc_id_of_segment` + `aggregate_max`, exactly
as Pyserini's `--max-passage` search option does.

All functions are pure; `maxp_scores` takes the scoring function as an argument (the reranker's batch scorer).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Callable, Iterable, Mapping, Sequence

from pyserini_ssm.errors import UserError
from pyserini_ssm.runs import Hit

DEFAULT_WORD_WINDOW = 150
DEFAULT_WORD_STRIDE = 75
DEFAULT_SENTENCE_WINDOW = 10
DEFAULT_SENTENCE_STRIDE = 5
SEGMENT_ID_DELIMITER = "#"

# A sentence ends at . ! or ? (optionally followed by closing quotes/brackets) before whitespace.
_SENTENCE_END = re.compile(r"(?:(?<=[.!?])|(?<=[.!?][\"')\]]))\s+")


@dataclass(frozen=True)
class SegmentConfig:
    """How MaxP cuts a document: `unit` words or sentences, `window` units per segment, a new one every `stride`."""

    unit: str = "words"
    window: int = DEFAULT_WORD_WINDOW
    stride: int = DEFAULT_WORD_STRIDE

    def __post_init__(self):
        if self.unit not in ("words", "sentences"):
            raise UserError(f"unknown segment unit {self.unit!r}; choose words or sentences")
        _check_window(self.window, self.stride)


def _check_window(window: int, stride: int) -> None:
    if window < 1 or stride < 1:
        raise UserError(f"segment window and stride must be positive, got window={window} stride={stride}")
    if stride > window:
        raise UserError(f"stride {stride} > window {window} would skip text between segments; use stride <= window")


SENTENCE_SEGMENTS = SegmentConfig("sentences", DEFAULT_SENTENCE_WINDOW, DEFAULT_SENTENCE_STRIDE)


def firstp_text(title: str | None, body: str, max_words: int | None = None) -> str:
    """Title then body, whitespace normalised; the first `max_words` words when given (None: all of it)."""
    words = ((title or "") + " " + body).split()
    if max_words is not None:
        if max_words < 1:
            raise UserError(f"max_words must be positive, got {max_words}")
        words = words[:max_words]
    return " ".join(words)


def split_sentences(text: str) -> list[str]:
    """Sentences of `text` (a regular-expression splitter at . ! ? followed by whitespace)."""
    return [sentence for sentence in (part.strip() for part in _SENTENCE_END.split(text.strip())) if sentence]


def _windows(units: Sequence[str], window: int, stride: int) -> list[list[str]]:
    """Windows starting every `stride` units; the last one reaches the end, no window lies inside an earlier one."""
    if len(units) <= window:
        return [list(units)] if units else []
    windows = []
    for start in range(0, len(units), stride):
        windows.append(list(units[start : start + window]))
        if start + window >= len(units):
            break
    return windows


def segment_document(
    text: str, window: int = DEFAULT_WORD_WINDOW, stride: int = DEFAULT_WORD_STRIDE, unit: str = "words"
) -> list[str]:
    """Overlapping segments of `text`: `window` words (or sentences) every `stride`. Empty text gives []."""
    _check_window(window, stride)
    if unit == "words":
        return [" ".join(words) for words in _windows(text.split(), window, stride)]
    if unit == "sentences":
        return [" ".join(sentences) for sentences in _windows(split_sentences(text), window, stride)]
    raise UserError(f"unknown segment unit {unit!r}; choose words or sentences")


def maxp_segments(
    title: str | None, body: str, config: SegmentConfig = SegmentConfig()
) -> list[str]:
    """MaxP inputs for one document: each segment of the body, prefixed with the title (as Dai & Callan do)."""
    segments = segment_document(body, config.window, config.stride, config.unit) or [""]
    prefix = " ".join((title or "").split())
    return [f"{prefix} {segment}".strip() if prefix else segment for segment in segments]


def doc_id_of_segment(segment_id: str, delimiter: str = SEGMENT_ID_DELIMITER) -> str:
    """`D123#4` -> `D123` (ids of Pyserini's segmented MS MARCO indexes); an id without the delimiter is kept."""
    return segment_id.split(delimiter, 1)[0]


def aggregate_max(doc_ids_of_segments: Sequence[str], scores: Sequence[float]) -> dict[str, float]:
    """Each document's best segment score, documents in order of first appearance."""
    if len(doc_ids_of_segments) != len(scores):
        raise UserError(f"{len(doc_ids_of_segments)} segment document ids but {len(scores)} scores")
    best: dict[str, float] = {}
    for doc_id, score in zip(doc_ids_of_segments, scores):
        score = float(score)
        if doc_id not in best or score > best[doc_id]:
            best[doc_id] = score
    return best


def best_segment_index(doc_ids_of_segments: Sequence[str], scores: Sequence[float]) -> dict[str, int]:
    """Position (in the given lists) of each document's best segment; the first one wins a tie."""
    best: dict[str, int] = {}
    for position, (doc_id, score) in enumerate(zip(doc_ids_of_segments, scores)):
        if doc_id not in best or score > scores[best[doc_id]]:
            best[doc_id] = position
    return best


def expand_documents(
    documents: Iterable[tuple[str, str | None, str]], config: SegmentConfig = SegmentConfig()
) -> tuple[list[str], list[str]]:
    """(doc_id, title, body) triples -> (segment texts, the doc id of each segment), for one batch of scoring."""
    texts: list[str] = []
    doc_ids: list[str] = []
    for doc_id, title, body in documents:
        segments = maxp_segments(title, body, config)
        texts.extend(segments)
        doc_ids.extend([doc_id] * len(segments))
    return texts, doc_ids


def maxp_scores(
    query: str,
    documents: Iterable[tuple[str, str | None, str]],
    score_pairs: Callable[[str, Sequence[str]], Sequence[float]],
    config: SegmentConfig = SegmentConfig(),
) -> dict[str, float]:
    """Score every segment of every document with `score_pairs(query, texts)`, keep each document's maximum."""
    texts, doc_ids = expand_documents(documents, config)
    scores = score_pairs(query, texts) if texts else []
    return aggregate_max(doc_ids, scores)


def max_passage_run(
    results: Mapping[str, Sequence[Hit]], hits: int = 1000, delimiter: str = SEGMENT_ID_DELIMITER
) -> dict[str, list[Hit]]:
    """A segment run (`D1#0`, `D1#3`, ...) -> a document run: each document at its best segment's score.

    Pyserini's `--max-passage --max-passage-hits N` semantics: walk each query's segments best first, keep the
    first (best) segment of each document, stop at `hits` documents.
    """
    if hits < 1:
        raise UserError(f"hits must be positive, got {hits}")
    documents: dict[str, list[Hit]] = {}
    for qid, segments in results.items():
        best: dict[str, float] = {}
        for segment in sorted(segments, key=lambda hit: -hit.score):  # stable: file order breaks score ties
            doc_id = doc_id_of_segment(segment.docid, delimiter)
            if doc_id not in best:
                best[doc_id] = segment.score
                if len(best) == hits:
                    break
        documents[qid] = [Hit(doc_id, score) for doc_id, score in best.items()]
    return documents
