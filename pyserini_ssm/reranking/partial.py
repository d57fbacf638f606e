"""The partial file: append-only, resumable progress of one rank (`<output>.partial`), the fingerprint a resumed run
must match, and the final merge of every rank's partial file into the run (trec, msmarco or rank_llm)."""

from __future__ import annotations

import collections
import contextlib
import fcntl
import hashlib
import json
import logging
import os
import zlib
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterator, Sequence

from pyserini_ssm.distributed import DistributedContext
from pyserini_ssm.documents import doc_id_of_segment
from pyserini_ssm.errors import UserError
from pyserini_ssm.files import SPACE_ERRNOS, atomic_output, writing
from pyserini_ssm.runs import Hit

if TYPE_CHECKING:
    from pyserini_ssm.reranking.scoring import QueryCandidates, RerankQuery

logger = logging.getLogger("pyserini_ssm.reranking")  # the pipeline's one logger, as before it was a package


PARTIAL_FORMAT = "pyserini_ssm.rerank.partial"


PARTIAL_VERSION = 1


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


class BackgroundCommits:
    """`PartialRun.commit` in a background thread, in order: a group's write and fsync (one took 360 ms on an H200
    machine's disk, 2026-12-02) no longer hold the thread that queues the device's next rows.

    `commit` raises the error of an earlier commit that has failed; `drain` waits for every pending commit (raising
    the first error unless `raise_errors=False`). After a failed commit the later ones are dropped, not written: a
    good line after a torn one would make the file unreadable, where a torn last line is dropped on resume."""

    def __init__(self, partial: PartialRun):
        from concurrent.futures import ThreadPoolExecutor

        self._partial = partial
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="commit")
        self._pending: collections.deque = collections.deque()
        self._failed = False

    def commit(self, group: int, qids: Sequence[str], text: str, requests: str | None = None) -> None:
        while self._pending and self._pending[0].done():
            self._pending.popleft().result()
        self._pending.append(self._pool.submit(self._commit, group, list(qids), text, requests))

    def _commit(self, group: int, qids: list[str], text: str, requests: str | None) -> None:
        if self._failed:
            return
        try:
            self._partial.commit(group, qids, text, requests)
        except BaseException:
            self._failed = True
            raise

    def drain(self, raise_errors: bool = True) -> None:
        error = None
        while self._pending:
            future = self._pending.popleft()
            if future.exception() is not None and error is None:
                error = future.exception()
        self._pool.shutdown(wait=True)
        if error is not None and raise_errors:
            raise error


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


def _dtype_fingerprint(dtype: str | None, device: str | None) -> str | None:
    """The dtype a resumed run must share: None for the device's default (bf16 on CUDA, fp32 on CPU) whether or not
    it was given (`--dtype fp32` on CPU resumes a run started without it), else the explicit one."""
    if dtype is None:
        return None
    default = "bf16" if _device_type(device) == "cuda" else "fp32"
    return None if dtype == default else dtype


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


def _device_type(device: str | None) -> str:
    if device is not None:
        return device.split(":")[0]
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"
