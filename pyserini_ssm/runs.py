"""TREC run files: `qid Q0 docid rank score tag`, read into ranked hit lists and written Pyserini's way."""

from __future__ import annotations

import logging
import math
import os
import re
import zlib
from dataclasses import dataclass
from typing import Iterator, Mapping, Sequence

from pyserini_ssm.errors import UserError
from pyserini_ssm.files import atomic_output, open_text

log = logging.getLogger(__name__)


def warn_duplicates(where: str, count: int, example: tuple[str, str] | None) -> None:
    """The one policy for a docid repeated within a query (index, search, run and candidate readers): keep its
    first entry, drop the others, and say how many were dropped."""
    if count:
        log.warning("%s: %d repeated (query, document) entr%s dropped, keeping the first of each (e.g. document %r "
                    "of query %r)", where, count, "y" if count == 1 else "ies", example[1], example[0])


@dataclass(slots=True)
class Hit:
    """One ranked document for a query; `text` is filled when the document text is needed (reranking)."""

    docid: str
    score: float
    text: str | None = None


def read_numbered_lines(path: str | os.PathLike) -> Iterator[tuple[int, str]]:
    """(line number from 1, line without its newline) of a text file, gzip-aware.

    Undecodable bytes and corrupt gzip data become a UserError naming the file (and line), never a traceback.
    """
    line_number = 0
    try:
        with open_text(path) as handle:
            for line_number, line in enumerate(handle, start=1):
                yield line_number, line.rstrip("\r\n")
    except UnicodeDecodeError as error:
        raise UserError(f"{path}:{line_number + 1}: not valid UTF-8 text ({error.reason})") from None
    except (OSError, EOFError, zlib.error) as error:
        raise UserError(f"{path}: cannot read ({error})") from None


_COLUMN = re.compile(r"[^ \t\n\r\f\v]+")


def split_columns(line: str) -> list[str]:
    """Columns separated by ASCII whitespace, as trec_eval reads them (other Unicode spaces stay inside a column)."""
    return _COLUMN.findall(line)


# What C's atof (trec_eval) and Python's float agree on: ASCII decimal numbers. Python alone also takes `1_000`
# (atof: 1) and non-ASCII digits (atof: 0), which would silently differ from trec_eval.
_DECIMAL = re.compile(r"[+-]?(?:[0-9]+\.?[0-9]*|\.[0-9]+)(?:[eE][+-]?[0-9]+)?|[+-]?(?:inf|infinity)", re.IGNORECASE)


def parse_score(text: str) -> float | None:
    """A float, or None for text that is not an ASCII decimal number (NaN included). Infinite values pass: see
    `check_finite`."""
    if not _DECIMAL.fullmatch(text):
        return None
    return float(text)


def check_finite(score: float, where: str) -> None:
    """Reject an infinite score: min-max normalisation and interpolation turn one into NaN for a whole query, and
    trec_eval's order among several is arbitrary. `where` names the file and line (or query and document)."""
    if not math.isfinite(score):
        raise UserError(f"{where}: score {score!r} is not finite; runs need finite scores (replace it, e.g. by a "
                        "large finite value, or drop the line)")


def read_run(path: str | os.PathLike) -> dict[str, list[Hit]]:
    """Read a TREC run (6 whitespace-separated columns; .gz too) into qid -> hits, best first.

    Hits are ordered by score (highest first), ties by the file's rank column. Queries keep file order.
    Raises UserError naming file:line for a malformed line. A (qid, docid) pair seen again keeps its first line,
    with a warning and a count (`warn_duplicates`).
    """
    ranked: dict[str, list[tuple[float, int, Hit]]] = {}
    seen: dict[str, set[str]] = {}
    duplicates, example = 0, None
    for line_number, line in read_numbered_lines(path):
        fields = split_columns(line)
        if not fields:
            continue
        where = f"{path}:{line_number}"
        if len(fields) != 6:
            raise UserError(
                f"{where}: a TREC run line has 6 columns 'qid Q0 docid rank score tag', found {len(fields)}: {line[:200]!r}"
            )
        qid, _, docid, rank_text, score_text, _tag = fields
        try:
            rank = int(rank_text)
        except ValueError:
            raise UserError(f"{where}: rank {rank_text!r} is not an integer") from None
        score = parse_score(score_text)
        if score is None:
            raise UserError(f"{where}: score {score_text!r} is not a number")
        check_finite(score, where)
        docids = seen.setdefault(qid, set())
        if docid in docids:
            duplicates += 1
            example = example or (qid, docid)
            continue
        docids.add(docid)
        ranked.setdefault(qid, []).append((-score, rank, Hit(docid, score)))
    if not ranked:
        raise UserError(f"{path}: the run file holds no results")
    warn_duplicates(str(path), duplicates, example)
    results: dict[str, list[Hit]] = {}
    for qid, entries in ranked.items():
        entries.sort(key=lambda entry: (entry[0], entry[1]))
        results[qid] = [hit for _, _, hit in entries]
    return results


def is_token(value: str) -> bool:
    """True for a non-empty string without ASCII whitespace: what a TREC column can hold."""
    return bool(_COLUMN.fullmatch(value))


def _check_token(kind: str, value: str) -> None:
    if not is_token(value):
        raise UserError(f"{kind} {value!r} cannot be written to a TREC run (empty or holds whitespace)")


SCORE_DECIMALS = 6  # what format_run_lines writes, as Pyserini's TrecWriter does


def written_score(score: float) -> float:
    """The score as a run file holds it (6 decimals), so that ordering by it agrees with ordering the written text."""
    return float(f"{float(score):.{SCORE_DECIMALS}f}")


def ranking_key(hit: Hit) -> tuple[float, str]:
    """The one ranking rule of every tool here (Pyserini's TREC writer): score as written descending, ties by docid
    ascending. Two scores equal in the file are equal here, so reading a run back and re-sorting keeps its order."""
    return (-written_score(hit.score), hit.docid)


def sorted_hits(hits: Sequence[Hit]) -> list[Hit]:
    """Hits in `ranking_key` order: score as written descending, ties by docid ascending."""
    return sorted(hits, key=ranking_key)


def format_run_lines(qid: str, hits: Sequence[Hit], tag: str) -> list[str]:
    """TREC lines (each ending in a newline) for one query, in `ranking_key` order with ranks 1..n.

    Scores are written with 6 decimals, as Pyserini's TrecWriter does.
    """
    _check_token("query id", qid)
    _check_token("run tag", tag)
    lines = []
    for rank, hit in enumerate(sorted_hits(hits), start=1):
        _check_token("document id", hit.docid)
        if not math.isfinite(hit.score):  # never write nan/inf: no reader here (nor trec_eval's order) copes with it
            raise UserError(f"query {qid!r}, document {hit.docid!r}: score {hit.score!r} is not finite and cannot "
                            "be written to a run")
        lines.append(f"{qid} Q0 {hit.docid} {rank} {hit.score:.6f} {tag}\n")
    return lines


def write_run(results: Mapping[str, Sequence[Hit]], path: str | os.PathLike, tag: str) -> None:
    """Write a TREC run atomically (temporary file, then rename): queries in mapping order, hits Pyserini's way."""
    _check_token("run tag", tag)
    with atomic_output(path) as handle:
        for qid, hits in results.items():
            handle.writelines(format_run_lines(str(qid), hits, tag))


def run_as_dict(results: Mapping[str, Sequence[Hit]]) -> dict[str, dict[str, float]]:
    """qid -> docid -> score, the shape pytrec_eval takes."""
    return {str(qid): {hit.docid: float(hit.score) for hit in hits} for qid, hits in results.items()}
