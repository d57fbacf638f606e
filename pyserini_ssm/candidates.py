"""Candidates JSON: first-stage hits with their text, as rank_llm and Pyserini's rerankers exchange them.

A JSON list (gzip allowed) of `{"query": str, "hits": [{"docid", "content", "qid", "score", ...}, ...]}`; extra keys
(`rank`, ...) are ignored. The query id comes from the hits (`qid`), or from a `qid` key beside `query`.

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


def _check_query(record: object, index: int, path: Path) -> CandidateQuery:
    where = f"{path}: query #{index}"
    if not isinstance(record, dict):
        raise UserError(f"{where}: expected an object with 'query' and 'hits'")
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


def iter_candidates(path: str | os.PathLike) -> Iterator[CandidateQuery]:
    """Stream a candidates JSON file one query at a time (validated; hits best first). Errors are UserErrors."""
    path = Path(path)
    seen: set[str] = set()
    try:
        with _open(path) as handle:
            for index, record in enumerate(_iter_json_list(handle, path)):
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
