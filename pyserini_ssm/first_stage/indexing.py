"""Lucene indexing with Anserini's IndexCollection: the corpus format told from its first records (BEIR or
JsonCollection), the corpus checked (`first_stage.corpus`), the index built beside its folder and renamed into place,
Java's storage errors as one line.

Every function here that indexes starts the JVM (once per process) through `first_stage.anserini`.
"""

from __future__ import annotations

import errno
import gzip
import json
import os
import shutil
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Mapping

from pyserini_ssm.errors import UserError, first_line
from pyserini_ssm.files import check_output_folder, make_temporary_folder, storage_error_message
from pyserini_ssm.first_stage.anserini import anserini_classes
from pyserini_ssm.first_stage.corpus import CorpusScan, check_corpus

BEIR_FLAT = "BeirFlatCollection"
BEIR_MULTIFIELD = "BeirMultifieldCollection"
JSON_COLLECTION = "JsonCollection"
_DATA_SUFFIXES = (".json", ".jsonl", ".json.gz", ".jsonl.gz")


def _open_bytes(path: Path):
    with open(path, "rb") as probe:
        gzipped = probe.read(2) == b"\x1f\x8b"
    return gzip.open(path, "rt", encoding="utf-8") if gzipped else open(path, encoding="utf-8")


def _first_record(path: Path) -> dict | None:
    """The first JSON document of a JSON-lines file (or of a file holding a JSON list), None if not JSON."""
    head = ""
    try:
        with _open_bytes(path) as handle:
            while len(head) < (1 << 16):  # line by line: a truncated gzip still shows its intact first records
                line = handle.readline()
                if not line:
                    break
                head += line
    except (EOFError, zlib.error, UnicodeDecodeError):
        pass
    except OSError:
        return None
    text = head.lstrip()
    if text.startswith("["):
        text = text[1:].lstrip()
    if not text.startswith("{"):
        return None
    try:
        record, _ = json.JSONDecoder().raw_decode(text)
    except ValueError:
        first_record = text.split("\n", 1)[0]
        try:
            record = json.loads(first_record)
        except ValueError:
            return None
    return record if isinstance(record, dict) else None


def collection_of_record(record: Mapping) -> str | None:
    """BEIR (`_id`, `title`, `text`) -> BeirFlatCollection; Pyserini JSON (`id`, `contents`) -> JsonCollection."""
    if "_id" in record and "text" in record:
        return BEIR_FLAT
    if "id" in record and "contents" in record:
        return JSON_COLLECTION
    return None


def _data_files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_file() and p.name.endswith(_DATA_SUFFIXES))


def detect_collection(input_path: str | os.PathLike) -> tuple[str, list[Path]]:
    """(Anserini collection class, files to index) for a BEIR corpus, JsonCollection files, or a folder of either.

    The format comes from the first record of each file, never from the file name. A BEIR dataset folder (with
    `corpus.jsonl[.gz]` beside queries and qrels) indexes only its corpus, as BEIR's layout defines.
    """
    path = Path(input_path)
    if not path.exists():
        raise UserError(f"input not found: {path}")
    if path.is_file():
        files = [path]
    else:
        beir_corpus = [path / name for name in ("corpus.jsonl", "corpus.jsonl.gz") if (path / name).is_file()]
        files = beir_corpus[:1] or _data_files(path)
        if not files:
            raise UserError(f"{path}: no .json/.jsonl[.gz] files to index (give --collection for other formats)")
    kinds = {}
    for file in files:
        record = _first_record(file)
        kind = collection_of_record(record) if record is not None else None
        if kind is None:
            found = sorted(record)[:6] if record is not None else "no JSON object"
            raise UserError(
                f"{file}: cannot tell the corpus format from its first record ({found}); expected BEIR "
                "'_id','title','text' or Pyserini JsonCollection 'id','contents' (or pass --collection NAME)"
            )
        if kind == BEIR_FLAT and "title" not in record:
            raise UserError(f"{file}: a BEIR corpus record needs a 'title' field (it may be empty)")
        kinds[file] = kind
    if len(set(kinds.values())) > 1:
        raise UserError(f"{path}: mixes BEIR and JsonCollection files; index them separately")
    return next(iter(kinds.values())), files


@dataclass(frozen=True)
class IndexStats:
    index_dir: str
    collection: str
    indexed: int
    empty: int
    skipped: int
    errors: int
    duplicates: int = 0  # records dropped because their docid came earlier (the first is kept)
    bad_lines: int = 0  # lines dropped with --skip-bad-lines (bad JSON, no id, not UTF-8)
    truncated_files: tuple[str, ...] = ()  # gzip files cut short, indexed up to the cut (--skip-bad-lines)


def build_index(
    input_path: str | os.PathLike,
    index_dir: str | os.PathLike,
    collection: str | None = None,
    threads: int = 1,
    *,
    multifield: bool = False,
    extra_args: Iterable[str] = (),
    skip_bad_lines: bool = False,
) -> IndexStats:
    """Build a Lucene index (positions, docvectors, raw documents stored) with Anserini's IndexCollection.

    `collection=None` detects BEIR (indexed as BeirFlatCollection: title and text together, like Pyserini's
    "flat" BEIR indexes) or JsonCollection from the data; any other Anserini collection class can be named.
    `multifield` indexes a BEIR corpus as Pyserini's "multifield" BEIR indexes are (BeirMultifieldCollection with
    `-fields title`: title and text in fields of their own; search them with `fields=MULTIFIELD_FIELDS`).
    The index is built in a temporary folder beside `index_dir` and renamed into place when complete.
    Detected corpora are checked first (`first_stage.corpus`): a bad line or a truncated gzip is a UserError naming
    file, line and byte (with `skip_bad_lines`: dropped and counted); a repeated docid keeps its first record.
    """
    index_dir = Path(index_dir)
    parent = index_dir.parent if str(index_dir.parent) else Path(".")
    if not parent.is_dir():
        raise UserError(f"index parent folder does not exist: {parent} (create it first)")
    if index_dir.exists() and (not index_dir.is_dir() or any(index_dir.iterdir())):
        raise UserError(f"index folder already exists and is not empty: {index_dir} (remove it or choose another)")
    if threads < 1:
        raise UserError(f"--threads must be >= 1, got {threads}")
    check_output_folder(parent, "--index")
    source = Path(input_path)
    staging = make_temporary_folder(parent, f".{index_dir.name}.")  # the umask's mode, as the finished index has
    try:
        if multifield and collection not in (None, BEIR_MULTIFIELD):
            raise UserError(f"--multifield indexes a BEIR corpus as {BEIR_MULTIFIELD}; it cannot be combined with "
                            f"--collection {collection}")
        if collection is None or multifield:
            collection, files = detect_collection(source)
            if multifield:
                if collection != BEIR_FLAT:
                    raise UserError(f"{source}: --multifield needs a BEIR corpus ('_id', 'title', 'text'), "
                                    f"found {collection} records")
                collection = BEIR_MULTIFIELD
                extra_args = ["-fields", "title", *extra_args]
            # Anserini reads every file of its input folder: link the chosen files (or their cleaned copies) into a
            # folder of their own.
            input_folder = staging / "input"
            input_folder.mkdir()
            files, scan = check_corpus(files, collection, input_folder, skip_bad_lines=skip_bad_lines)
            for number, file in enumerate(files):
                if file.parent != input_folder:
                    (input_folder / f"{number:05d}-{file.name}").symlink_to(file.resolve())
        else:
            if not source.exists():
                raise UserError(f"input not found: {source}")
            input_folder = source
            scan = CorpusScan()
        building = staging / "index"
        stats = _run_index_collection(collection, input_folder, building, threads, list(extra_args))
        if stats.errors and scan.kept:  # every line was checked: an error now is Anserini's (a full disk, ...)
            raise UserError(f"Anserini failed on {stats.errors} of {scan.kept} documents from {source} (see its log "
                            f"above; a full disk?); no index was written to {index_dir}")
        if stats.indexed == 0:
            raise UserError(
                f"no documents were indexed from {source} as {collection} "
                f"(empty {stats.empty}, skipped {stats.skipped}, errors {stats.errors}); check the input format"
            )
        if index_dir.exists():
            index_dir.rmdir()
        os.replace(building, index_dir)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return IndexStats(str(index_dir), collection, stats.indexed, stats.empty, stats.skipped, stats.errors,
                      scan.duplicates, scan.bad_lines, tuple(scan.truncated_files))


# What Java's IOException says for the storage failures `files.writing` names (Lucene writes its own files).
_JAVA_STORAGE_TEXTS = {"No space left on device": errno.ENOSPC, "Disk quota exceeded": errno.EDQUOT,
                       "File too large": errno.EFBIG, "Read-only file system": errno.EROFS,
                       "Permission denied": errno.EACCES, "AccessDeniedException": errno.EACCES}


def java_storage_error(error: BaseException, path: Path) -> str | None:
    """One line for a Java IOException of a full disk, a quota or a read-only folder (else None), naming `path`."""
    text = str(error)
    for fragment, code in _JAVA_STORAGE_TEXTS.items():
        if fragment in text:
            return storage_error_message(OSError(code, os.strerror(code)), path)
    return None


def _run_index_collection(collection: str, input_folder: Path, index_dir: Path, threads: int, extra: list[str]):
    autoclass = anserini_classes()
    from jnius import JavaException

    args = autoclass("io.anserini.index.IndexCollection$Args")()
    parser = autoclass("org.kohsuke.args4j.CmdLineParser")(args)
    argv = [
        "-collection", collection,
        "-input", str(input_folder),
        "-index", str(index_dir),
        "-generator", "DefaultLuceneDocumentGenerator",
        "-threads", str(threads),
        "-storePositions", "-storeDocvectors", "-storeRaw",
        "-quiet",
    ] + extra  # fmt: skip
    java_argv = autoclass("java.util.ArrayList")()
    for arg in argv:
        java_argv.add(arg)
    try:
        parser.parseArgument(java_argv)
        indexer = autoclass("io.anserini.index.IndexCollection")(args)
        indexer.run()
    except JavaException as error:
        message = java_storage_error(error, index_dir)
        raise UserError(message or f"Anserini could not index {input_folder} as {collection}: "
                        f"{first_line(error)}") from None
    counters = indexer.getCounters()
    return IndexStats(
        str(index_dir),
        collection,
        int(counters.indexed.get()),
        int(counters.empty.get()),
        int(counters.skipped.get()),
        int(counters.errors.get()),
    )
