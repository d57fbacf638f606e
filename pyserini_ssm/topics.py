"""Topics (qid -> query text, in file order): Pyserini names resolved from a local folder, or files.

Pyserini names (`dl19-passage`, `dl20`, `msmarco-passage-dev-subset`, `beir-v1.0.0-scifact-test`, ...) map to the
Anserini file names Pyserini itself uses (`pyserini_names.TOPIC_FILES`). The file is read from the topics folder
(`--topics-dir`, else $PYSERINI_SSM_TOPICS_DIR) when it is there; otherwise Pyserini downloads it (needs internet).

File formats, recognised by content: `qid<TAB>query` (Anserini TsvString), TREC `<top>` topics (title field),
and JSON lines with `_id`/`text` (BEIR queries) or `qid`/`query`. Any of them may be gzipped (`.gz`).
"""

from __future__ import annotations

import difflib
import json
import os
import re
from pathlib import Path
from typing import Mapping

from pyserini_ssm.errors import UserError, first_line
from pyserini_ssm.pyserini_names import TOPIC_FILES
from pyserini_ssm.runs import is_token, read_numbered_lines

TOPICS_DIR_ENV = "PYSERINI_SSM_TOPICS_DIR"
PYSERINI_NAMES_VERSION = "1.6.0"  # the pyserini release pyserini_names.py was generated from

_FILE_SUFFIXES = (".txt", ".tsv", ".gz", ".jsonl", ".json", ".xml", ".tar")
# Java's String.trim() removes every character <= U+0020; Anserini's readers trim this way.
_JAVA_TRIM = "".join(chr(code) for code in range(0x21))


def topics_dir_from(topics_dir: str | os.PathLike | None) -> Path | None:
    """The local topics-and-qrels folder: the argument, else $PYSERINI_SSM_TOPICS_DIR, else None."""
    chosen = topics_dir if topics_dir is not None else os.environ.get(TOPICS_DIR_ENV) or None
    if chosen is None:
        return None
    path = Path(chosen)
    if not path.is_dir():
        source = "--topics-dir" if topics_dir is not None else f"${TOPICS_DIR_ENV}"
        raise UserError(f"topics folder not found: {path} (from {source}); point it at a folder of Anserini topic/qrels files")
    return path


def anserini_cache_dir() -> Path:
    """Where Anserini (under Pyserini) saves the topics and qrels it downloads: ~/.cache/pyserini/topics-and-qrels
    (Java's user.home; PYSERINI_CACHE does not move it)."""
    return Path.home() / ".cache" / "pyserini" / "topics-and-qrels"


def _installed_pyserini_differs() -> bool:
    try:
        from importlib.metadata import PackageNotFoundError, version
    except ImportError:  # pragma: no cover
        return False
    try:
        return version("pyserini") != PYSERINI_NAMES_VERSION
    except PackageNotFoundError:
        return False


def resolve_named_file(
    name_or_path: str | os.PathLike,
    table: Mapping[str, str],
    topics_dir: str | os.PathLike | None,
    kind: str,
) -> tuple[Path | None, str | None]:
    """(local file, None) when the file can be read here, or (None, Pyserini name) when Pyserini must fetch it.

    `kind` is "topics" or "qrels", used in messages. Unknown names and missing files are a UserError.
    """
    text = str(name_or_path)
    path = Path(text)
    if path.is_file():
        return path, None
    folder = topics_dir_from(topics_dir)
    if text in table:
        if folder is not None and (folder / table[text]).is_file():
            return folder / table[text], None
        cached = anserini_cache_dir() / table[text]
        if cached.is_file() and cached.stat().st_size > 0:  # downloaded earlier by Anserini: no JVM, no network
            return cached, None
        return None, text
    if folder is not None and "/" not in text and (folder / text).is_file():
        return folder / text, None
    looks_like_path = "/" in text or os.sep in text or path.suffix.lower() in _FILE_SUFFIXES or path.exists()
    if looks_like_path:
        if path.is_dir():
            raise UserError(f"{kind} path is a folder, not a file: {path}")
        raise UserError(f"{kind} file not found: {path}")
    if _installed_pyserini_differs():
        return None, text  # a newer pyserini may know names our table does not
    close = difflib.get_close_matches(text, list(table), n=5, cutoff=0.6)
    hint = f"; did you mean {', '.join(close)}?" if close else ""
    raise UserError(f"unknown {kind} name {text!r} (not a Pyserini {kind} name nor an existing file){hint}")


def error_summary(error: BaseException) -> str:
    """The exception's type and the first line of its message, at most 200 characters."""
    return f"{type(error).__name__}: {first_line(error)[:200]}"


def _offline_hint(name: str, file_name: str | None, folder: Path | None, kind: str) -> str:
    where = f"it is not in the topics folder {folder}" if folder else f"no --topics-dir (or ${TOPICS_DIR_ENV}) is set"
    wanted = f" (file {file_name})" if file_name else ""
    return (
        f"cannot load {kind} {name!r}{wanted}: {where}, and Pyserini could not download it (this needs internet); "
        f"give --topics-dir a folder of Anserini topics-and-qrels files, or a file path"
    )


ANSERINI_TOOLS_URL = "https://raw.githubusercontent.com/castorini/anserini-tools/master/topics-and-qrels/"


def require_download_host(name: str, file_name: str | None, topics_dir: str | os.PathLike | None, kind: str) -> None:
    """Before starting the JVM to download a topics/qrels file: fail at once (no JVM, no Java download messages)
    when the host Anserini downloads from cannot be reached."""
    from pyserini_ssm.hub import host_reachable

    if not host_reachable(ANSERINI_TOOLS_URL):
        message = _offline_hint(name, file_name, topics_dir_from(topics_dir), kind)
        raise UserError(f"{message} [{ANSERINI_TOOLS_URL.split('/')[2]} cannot be reached; Anserini's cache "
                        f"{anserini_cache_dir()} does not hold it either]")


def is_beir_topics(topics: str | os.PathLike) -> bool:
    """BEIR topics by Pyserini name (`beir-v1.0.0-...`) or Anserini file name (`topics.beir-v1.0.0-...`): their
    runs drop a hit whose docid is the query id, as Pyserini's BEIR runs do."""
    name = Path(topics).name
    return name.startswith("beir-") or name.startswith("topics.beir-")


def load_topics(name_or_path: str | os.PathLike, topics_dir: str | os.PathLike | None = None) -> dict[str, str]:
    """qid -> query text, in file order, for a Pyserini topics name or a topics file."""
    path, pyserini_name = resolve_named_file(name_or_path, TOPIC_FILES, topics_dir, "topics")
    if path is not None:
        return read_topics_file(path)
    require_download_host(pyserini_name, TOPIC_FILES.get(pyserini_name), topics_dir, "topics")
    from pyserini_ssm.first_stage import lucene  # lazily: starts the JVM

    try:
        topics = lucene.pyserini_topics(pyserini_name)
    except UserError:
        raise
    except Exception as error:  # Pyserini raises ValueError, JavaException, IOError, ... when offline
        folder = topics_dir_from(topics_dir)
        message = _offline_hint(pyserini_name, TOPIC_FILES.get(pyserini_name), folder, "topics")
        raise UserError(f"{message} [{error_summary(error)}]") from None
    if not topics:
        raise UserError(f"topics {pyserini_name!r} from Pyserini are empty")
    return topics


def read_topics_file(path: str | os.PathLike) -> dict[str, str]:
    """Read a topics file, choosing the format from its first non-blank line."""
    lines = list(read_numbered_lines(path))
    first = next((line.strip(_JAVA_TRIM) for _, line in lines if line.strip(_JAVA_TRIM)), None)
    if first is None:
        raise UserError(f"{path}: the topics file is empty")
    if first.startswith("<top"):
        topics = _parse_trec_topics(path, lines)
    elif first.startswith("{"):
        topics = _parse_jsonl_topics(path, lines)
    else:
        topics = _parse_tsv_topics(path, lines)
    if not topics:
        raise UserError(f"{path}: no topics found")
    return topics


def _add_topic(topics: dict[str, str], qid: str, query: str, where: str) -> None:
    if not is_token(qid):
        raise UserError(f"{where}: query id {qid!r} is empty or holds whitespace")
    if not query.strip():
        raise UserError(f"{where}: query {qid!r} has empty text")
    if qid in topics:
        raise UserError(f"{where}: query id {qid!r} appears twice")
    topics[qid] = query


def _parse_tsv_topics(path, lines: list[tuple[int, str]]) -> dict[str, str]:
    # Anserini's TsvString reader: trim the line, split on tabs, qid = field 0, query = field 1 trimmed.
    topics: dict[str, str] = {}
    for line_number, original in lines:
        line = original.strip(_JAVA_TRIM)
        if not line:
            continue
        fields = line.split("\t")
        where = f"{path}:{line_number}"
        if len(fields) < 2 and "\t" in original:
            raise UserError(f"{where}: query {fields[0]!r} has empty text")
        if len(fields) < 2:
            raise UserError(f"{where}: expected 'qid<TAB>query', found no tab: {line[:200]!r}")
        _add_topic(topics, fields[0], fields[1].strip(_JAVA_TRIM), where)
    return topics


def _parse_jsonl_topics(path, lines: list[tuple[int, str]]) -> dict[str, str]:
    topics: dict[str, str] = {}
    for line_number, line in lines:
        if not line.strip():
            continue
        where = f"{path}:{line_number}"
        try:
            record = json.loads(line)
        except ValueError as error:
            raise UserError(f"{where}: not a JSON object ({error})") from None
        if not isinstance(record, dict):
            raise UserError(f"{where}: expected a JSON object with '_id' and 'text' (or 'qid' and 'query')")
        qid = record.get("_id", record.get("qid"))
        query = record.get("text", record.get("query"))
        if isinstance(qid, bool) or not isinstance(qid, (str, int)) or not isinstance(query, str):
            raise UserError(f"{where}: expected a JSON object with '_id' and 'text' (or 'qid' and 'query') strings")
        _add_topic(topics, str(qid), query, where)
    return topics


def _after_label(text: str) -> str:
    """TREC fields read `<num> Number: 301` or `<num>301</num>`: the value follows the first ':' or else '>'."""
    cut = text.find(":")
    if cut == -1:
        cut = text.find(">")
    return text[cut + 1 :]


def _parse_trec_topics(path, lines: list[tuple[int, str]]) -> dict[str, str]:
    # TREC ad hoc topics (as Anserini's TrecTopicReader): the query is the <title> field.
    topics: dict[str, str] = {}
    qid: str | None = None
    start_line = 0
    index = 0
    while index < len(lines):
        line_number, line = lines[index]
        if line.startswith("<top"):
            qid, start_line = None, line_number
        elif line.startswith("<num>"):
            qid = re.sub(r"</num>", "", _after_label(line)).strip()
        elif line.startswith("<title>"):
            title = _after_label(line).replace("</title>", "").strip()
            if not title and index + 1 < len(lines):
                index += 1
                title = _after_label(lines[index][1]).replace("</title>", "").strip()
            if qid is None:
                raise UserError(f"{path}:{line_number}: <title> before <num> in the topic starting at line {start_line}")
            _add_topic(topics, qid, title, f"{path}:{line_number}")
        index += 1
    return topics
