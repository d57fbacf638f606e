"""Check a JSON-lines corpus before Anserini indexes it: bad lines, truncated gzip data, duplicate docids.

Anserini reports a bad JSON line as a Java stack trace and drops the rest of the file ("no documents were indexed
(errors 0)"), a truncated gzip the same way, and it indexes a docid seen twice twice (a search then returns it twice
for one query, and trec_eval, `evaluate`, `fuse` and `rerank --run` reject that run). This scan, in Python and before
the JVM, says which file, line and byte is bad. With `skip_bad_lines` it keeps every valid line (a truncated gzip
keeps what came before the cut) and counts what it dropped. A docid seen again is always dropped, keeping its first
record, with a warning and a count: the one policy of every tool here (see docs/RELIABILITY.md).

Clean files are indexed as they are; only a file that needs a change is rewritten (plain JSON lines) into the
index's staging folder, which is removed after indexing.
"""

from __future__ import annotations

import gzip
import json
import logging
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

from pyserini_ssm.errors import UserError
from pyserini_ssm.files import writing

log = logging.getLogger(__name__)

# The id field of each collection's records.
ID_FIELDS = {"BeirFlatCollection": "_id", "BeirMultifieldCollection": "_id", "JsonCollection": "id"}


@dataclass
class CorpusScan:
    """What the scan found over all files: records kept, lines dropped as bad, records dropped as duplicates."""

    kept: int = 0
    bad_lines: int = 0
    duplicates: int = 0
    truncated_files: list[str] = field(default_factory=list)
    first_duplicate: str | None = None


def _is_gzip(path: Path) -> bool:
    with open(path, "rb") as probe:
        return probe.read(2) == b"\x1f\x8b"


def _starts_with_a_list(path: Path) -> bool:
    try:
        opener = gzip.open if _is_gzip(path) else open
        with opener(path, "rb") as handle:
            return handle.read(4096).lstrip().startswith(b"[")
    except (OSError, EOFError, zlib.error):
        return False


def check_corpus(files: list[Path], collection: str, staging: Path, *, skip_bad_lines: bool = False,
                 ) -> tuple[list[Path], CorpusScan]:
    """The files to hand to Anserini (the originals, or cleaned copies in `staging`) and what was found.

    A bad line (not UTF-8, not a JSON object, no id) or a truncated gzip is a UserError naming file, line and byte
    unless `skip_bad_lines`. Files holding one JSON list (JsonCollection allows it) are passed through as they are
    (Anserini parses them whole). Memory: the set of docids; a file is read twice only when it must be rewritten."""
    id_field = ID_FIELDS.get(collection)
    if id_field is None:
        return list(files), CorpusScan()
    scan = CorpusScan()
    seen: set[str] = set()
    result: list[Path] = []
    for number, path in enumerate(files):
        if _starts_with_a_list(path):
            result.append(path)
            continue
        dropped, complete_lines = _scan_file(path, id_field, seen, scan, skip_bad_lines)
        if not dropped and complete_lines is None:
            result.append(path)
            continue
        copy = staging / f"{number:05d}-{path.name.removesuffix('.gz')}"
        with writing(copy), open(copy, "wb") as out:
            for line_number, _, line in _binary_lines(path, complete_lines):
                if line_number not in dropped:
                    out.write(line if line.endswith(b"\n") else line + b"\n")
        result.append(copy)
    if scan.duplicates:
        log.warning("%d record(s) repeat a docid seen before (e.g. %r): kept the first of each, dropped the others",
                    scan.duplicates, scan.first_duplicate)
    if scan.bad_lines or scan.truncated_files:
        log.warning("--skip-bad-lines: dropped %d bad line(s)%s", scan.bad_lines,
                    f"; truncated gzip: {', '.join(scan.truncated_files)}" if scan.truncated_files else "")
    return result, scan


def _scan_file(path: Path, id_field: str, seen: set[str], scan: CorpusScan,
               skip_bad_lines: bool) -> tuple[set[int], int | None]:
    """(line numbers to drop, the number of complete lines when the gzip data is cut short, else None)."""
    dropped: set[int] = set()
    last_number, end_offset = 0, 0
    hint = "fix or remove it, or pass --skip-bad-lines to index the valid lines only"
    try:
        for number, offset, line in _binary_lines(path):
            last_number, end_offset = number, offset + len(line)
            if not line.strip():
                continue
            docid, problem = _parse(line, id_field)
            if problem is not None:
                if not skip_bad_lines:
                    raise UserError(f"{path}:{number} (byte {offset}): {problem}; {hint}")
                scan.bad_lines += 1
                dropped.add(number)
            elif docid in seen:
                scan.duplicates += 1
                scan.first_duplicate = scan.first_duplicate or docid
                dropped.add(number)
            else:
                seen.add(docid)
                scan.kept += 1
    except (EOFError, zlib.error, gzip.BadGzipFile) as error:
        what = "the gzip data ends early" if isinstance(error, EOFError) else f"damaged gzip data ({error})"
        if not skip_bad_lines:
            raise UserError(f"{path}: {what} after line {last_number} (byte {end_offset} of the uncompressed text): "
                            f"the file is truncated or damaged; copy it again, or pass --skip-bad-lines to index "
                            f"the {last_number} line(s) before it") from None
        scan.truncated_files.append(str(path))
        return dropped, last_number
    except OSError as error:
        raise UserError(f"{path}: cannot read ({error})") from None
    return dropped, None


def _binary_lines(path: Path, limit: int | None = None) -> Iterator[tuple[int, int, bytes]]:
    """(line number from 1, byte offset of the line in the uncompressed text, line bytes) of a file, gzip-aware;
    at most `limit` lines (a truncated gzip: read no further than the scan did).

    A gzip stream cut short raises EOFError (or zlib.error for damaged data) after the last complete line."""
    opener = gzip.open if _is_gzip(path) else open
    offset = 0
    with opener(path, "rb") as handle:
        try:
            for number, line in enumerate(handle, start=1):
                if limit is not None and number > limit:
                    return
                yield number, offset, line
                offset += len(line)
        except (EOFError, zlib.error, gzip.BadGzipFile):
            if limit is None:
                raise


def _parse(line: bytes, id_field: str) -> tuple[str | None, str | None]:
    """(docid, None) for a good record, (None, what is wrong) for a bad line."""
    try:
        text = line.decode("utf-8")
    except UnicodeDecodeError as error:
        return None, f"not valid UTF-8 ({error.reason} at column {error.start + 1})"
    try:
        record = json.loads(text)
    except json.JSONDecodeError as error:
        return None, f"not valid JSON ({error.msg} at column {error.colno})"
    if not isinstance(record, dict):
        return None, "not a JSON object"
    docid = record.get(id_field)
    if not isinstance(docid, (str, int)) or isinstance(docid, bool) or not str(docid).strip():
        return None, f"no {id_field!r} (a non-empty string) in the record"
    return str(docid), None
