"""Candidates files: first-stage hits with their text, as rank_llm and Pyserini's rerankers exchange them.

Two shapes, told apart by each record's keys (either may be a JSON list or JSON lines, gzipped or not):

- rank_llm's `Request` (`rank_llm.data`): `{"query": {"text": str, "qid": str|int}, "candidates": [{"docid",
  "score", "doc": {...}}, ...]}`. The document text is the doc's `contents`, else `text` or `segment` (after its
  `title` when there is one), else `body`.
- Pyserini's older shape: `{"query": str, "hits": [{"docid", "content", "qid", "score", ...}, ...]}`; the query id
  comes from the hits (`qid`), or from a `qid` key beside `query`.

Extra keys (`rank`, ...) are ignored.

`iter_candidates` streams the list one query at a time, so memory stays bounded by the largest query, not the file
(an MS MARCO dev file of 6,980 x 1,000 passages is gigabytes).
"""

from __future__ import annotations

import gzip
import io
import json
import math
import os
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Iterator

from pyserini_ssm.errors import UserError
from pyserini_ssm.runs import Hit, check_finite, is_token, warn_duplicates

_CHUNK = 1 << 20
_WHITESPACE = " \t\n\r"


@dataclass(slots=True)
class CandidateQuery:
    qid: str
    query: str
    hits: list[Hit]  # best first, each with `text`


def _open(path: Path) -> IO[str]:
    if not path.is_file():
        raise UserError(f"candidates file not found: {path}")
    with open(path, "rb") as probe:
        gzipped = probe.read(2) == b"\x1f\x8b"
    raw = gzip.open(path, "rb") if gzipped else open(path, "rb")
    return io.TextIOWrapper(raw, encoding="utf-8")


def _iter_json_list(handle: IO[str], path: Path) -> Iterator[object]:
    """Yield the elements of a top-level JSON list one by one, reading the text in chunks."""
    decoder = json.JSONDecoder()
    buffer = ""
    position = 0
    at_end = False

    def more() -> bool:
        nonlocal buffer, position, at_end
        if at_end:
            return False
        chunk = handle.read(max(_CHUNK, len(buffer)))  # doubling keeps re-parsing of a large element amortised
        if not chunk:
            at_end = True
            return False
        buffer = buffer[position:] + chunk
        position = 0
        return True

    def skip_whitespace() -> str | None:
        nonlocal position
        while True:
            while position < len(buffer) and buffer[position] in _WHITESPACE:
                position += 1
            if position < len(buffer):
                return buffer[position]
            if not more():
                return None

    if skip_whitespace() != "[":
        raise UserError(f"{path}: expected a JSON list of queries ('[' first)")
    position += 1
    expect_element = True
    first = True
    index = 0
    while True:
        char = skip_whitespace()
        if char is None:
            raise UserError(f"{path}: the JSON list ends early (missing ']'; is the file truncated?)")
        if char == "]" and (first or not expect_element):
            position += 1
            if skip_whitespace() is not None:
                raise UserError(f"{path}: unexpected text after the JSON list")
            return
        if not expect_element:
            if char != ",":
                raise UserError(f"{path}: expected ',' or ']' between queries, found {char!r}")
            position += 1
            expect_element = True
            continue
        while True:
            try:
                element, end = decoder.raw_decode(buffer, position)
                break
            except json.JSONDecodeError as error:
                if not more():
                    raise UserError(f"{path}: invalid JSON in query #{index} ({error.msg})") from None
        # A number at the end of the buffer may continue in the next chunk ("12" + "34").
        if end == len(buffer) and not isinstance(element, (dict, list, str)) and more():
            continue
        position = end
        first = False
        expect_element = False
        index += 1
        yield element


def _number(value: object) -> float | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    value = float(value)
    return None if math.isnan(value) else value


def _iter_json_lines(handle: IO[str], path: Path) -> Iterator[object]:
    """Yield the JSON value of each non-blank line (rank_llm's .jsonl: one Request a line)."""
    for number, line in enumerate(handle, start=1):
        if not line.strip():
            continue
        try:
            yield json.loads(line)
        except json.JSONDecodeError as error:
            raise UserError(f"{path}:{number}: invalid JSON ({error.msg}); a JSON-lines candidates file holds one "
                            f"object per line") from None


def document_text(doc: object) -> str | None:
    """The text to rerank of a rank_llm candidate's `doc`: `contents`, else `text`/`segment` after the `title`,
    else `body`; None when there is none."""
    if isinstance(doc, str):
        return doc
    if not isinstance(doc, dict):
        return None
    if isinstance(doc.get("contents"), str):
        return doc["contents"]
    for key in ("text", "segment", "body"):
        if isinstance(doc.get(key), str):
            title = doc.get("title")
            return f"{title} {doc[key]}" if isinstance(title, str) and title.strip() else doc[key]
    return None


def _usable_id(value: object) -> bool:
    return not isinstance(value, bool) and isinstance(value, (str, int)) and is_token(str(value))


def _check_request(record: dict, index: int, path: Path) -> CandidateQuery:
    """A rank_llm `Request` record."""
    where = f"{path}: query #{index}"
    query, candidates = record["query"], record["candidates"]
    if not isinstance(query, dict) or not isinstance(query.get("text"), str) or not query["text"].strip():
        raise UserError(f"{where}: 'query' must be an object with a non-empty 'text' (and a 'qid')")
    if not _usable_id(query.get("qid")):
        raise UserError(f"{where}: query 'qid' {query.get('qid')!r} is not a usable query id (a string or integer, "
                        f"no spaces)")
    if not isinstance(candidates, list):
        raise UserError(f"{where}: 'candidates' must be a list")
    qid = str(query["qid"])
    parsed: list[Hit] = []
    seen: set[str] = set()
    for hit_index, candidate in enumerate(candidates):
        hit_where = f"{where} candidate #{hit_index}"
        if not isinstance(candidate, dict):
            raise UserError(f"{hit_where}: expected an object with 'docid', 'score', 'doc'")
        for key in ("docid", "score", "doc"):
            if key not in candidate:
                raise UserError(f"{hit_where}: missing key {key!r}")
        if not _usable_id(candidate["docid"]):
            raise UserError(f"{hit_where}: docid {candidate['docid']!r} is not a usable id (a string or integer, "
                            f"no spaces)")
        docid = str(candidate["docid"])
        text = document_text(candidate["doc"])
        if text is None or not text.strip():
            raise UserError(f"{hit_where}: document {docid!r} has no text (its 'doc' needs 'contents', 'text' or "
                            f"'segment')")
        score = _number(candidate["score"])
        if score is None:
            raise UserError(f"{hit_where}: score {candidate['score']!r} is not a number")
        if docid in seen:
            raise UserError(f"{hit_where}: document {docid!r} appears twice for query {qid!r}")
        seen.add(docid)
        parsed.append(Hit(docid=docid, score=score, text=text))
    parsed.sort(key=lambda h: -h.score)  # stable: the file's order breaks ties
    return CandidateQuery(qid=qid, query=query["text"], hits=parsed)


def _check_query(record: object, index: int, path: Path) -> CandidateQuery:
    where = f"{path}: query #{index}"
    if isinstance(record, dict) and "candidates" in record and "hits" not in record and "query" in record:
        return _check_request(record, index, path)
    if not isinstance(record, dict):
        raise UserError(f"{where}: expected an object with 'query' and 'candidates' (rank_llm) or 'query' and "
                        f"'hits' (Pyserini)")
    if "query" in record and "hits" not in record and "candidates" not in record:
        raise UserError(f"{where}: missing key 'candidates' (rank_llm) or 'hits' (Pyserini)")
    for key in ("query", "hits"):
        if key not in record:
            raise UserError(f"{where}: missing key {key!r}")
    query, hits = record["query"], record["hits"]
    if not isinstance(query, str) or not query.strip():
        raise UserError(f"{where}: 'query' must be a non-empty string")
    if not isinstance(hits, list):
        raise UserError(f"{where}: 'hits' must be a list")
    qid = record.get("qid")
    qid = None if qid is None else str(qid)
    if qid is not None and (isinstance(record.get("qid"), (bool, float, list, dict)) or not is_token(qid)):
        raise UserError(f"{where}: 'qid' {record.get('qid')!r} is not a usable query id")
    parsed: list[Hit] = []
    seen: set[str] = set()
    duplicates, repeated = 0, None
    for hit_index, hit in enumerate(hits):
        hit_where = f"{where} hit #{hit_index}"
        if not isinstance(hit, dict):
            raise UserError(f"{hit_where}: expected an object with 'docid', 'content', 'qid', 'score'")
        for key in ("docid", "content", "qid", "score"):
            if key not in hit:
                raise UserError(f"{hit_where}: missing key {key!r}")
        hit_qid, docid, content = hit["qid"], hit["docid"], hit["content"]
        for key, value in (("qid", hit_qid), ("docid", docid)):
            if isinstance(value, bool) or not isinstance(value, (str, int)) or not is_token(str(value)):
                raise UserError(f"{hit_where}: {key} {value!r} is not a usable id (a string or integer, no spaces)")
        hit_qid, docid = str(hit_qid), str(docid)
        if qid is None:
            qid = hit_qid
        elif hit_qid != qid:
            raise UserError(f"{hit_where}: qid {hit_qid!r} differs from the query's qid {qid!r}")
        if not isinstance(content, str) or not content.strip():
            raise UserError(f"{hit_where}: document {docid!r} has empty text ('content')")
        score = _number(hit["score"])
        if score is None:
            raise UserError(f"{hit_where}: score {hit['score']!r} is not a number")
        check_finite(score, hit_where)
        if docid in seen:  # the one policy (runs.warn_duplicates): keep the first
            duplicates += 1
            repeated = repeated or docid
            continue
        seen.add(docid)
        parsed.append(Hit(docid=docid, score=score, text=content))
    if qid is None:
        raise UserError(f"{where}: no query id (no hits and no 'qid' key)")
    if duplicates:
        warn_duplicates(where, duplicates, (qid, repeated))
    parsed.sort(key=lambda h: -h.score)  # stable: the file's order breaks ties
    return CandidateQuery(qid=qid, query=query, hits=parsed)


def _records(handle: IO[str], path: Path) -> Iterator[object]:
    """A JSON list's elements, or JSON lines' values, told apart by the first character ('[' or '{')."""
    first = ""
    while True:
        char = handle.read(1)
        if not char:
            break
        if char not in _WHITESPACE:
            first = char
            break
    if first == "{":
        rest = _Prepended(first, handle)
        yield from _iter_json_lines(rest, path)
        return
    if first != "[":
        raise UserError(f"{path}: expected a JSON list of queries ('[' first) or JSON lines (one query object a "
                        f"line, '{{' first)" if first else f"{path}: the candidates file is empty")
    yield from _iter_json_list(_Prepended(first, handle), path)


class _Prepended:
    """A text handle with some already-read text put back in front (read() and line iteration)."""

    def __init__(self, head: str, handle: IO[str]):
        self.head = head
        self.handle = handle

    def read(self, size: int = -1) -> str:
        head, self.head = self.head, ""
        if size is None or size < 0:
            return head + self.handle.read()
        return head + self.handle.read(size - len(head)) if size > len(head) else head

    def __iter__(self) -> Iterator[str]:
        head, self.head = self.head, ""
        if head:
            yield head + self.handle.readline()
        yield from self.handle


def iter_candidates(path: str | os.PathLike) -> Iterator[CandidateQuery]:
    """Stream a candidates file (JSON list or JSON lines; rank_llm Requests or Pyserini's `hits` shape) one query at
    a time (validated; hits best first). Errors are UserErrors."""
    path = Path(path)
    seen: set[str] = set()
    try:
        with _open(path) as handle:
            for index, record in enumerate(_records(handle, path)):
                candidate = _check_query(record, index, path)
                if candidate.qid in seen:
                    raise UserError(f"{path}: query #{index}: query id {candidate.qid!r} appears twice")
                seen.add(candidate.qid)
                yield candidate
    except UnicodeDecodeError as error:
        raise UserError(f"{path}: not valid UTF-8 text ({error.reason})") from None
    except (OSError, EOFError, zlib.error) as error:
        raise UserError(f"{path}: cannot read ({error})") from None
    except RecursionError:
        raise UserError(f"{path}: JSON nested too deeply") from None


def read_candidates(path: str | os.PathLike) -> list[CandidateQuery]:
    """All queries of a candidates JSON file (see `iter_candidates` to stream)."""
    candidates = list(iter_candidates(path))
    if not candidates:
        raise UserError(f"{path}: the candidates file holds no queries")
    return candidates
