"""A document collection in JSON lines, BEIR's corpus (`_id`, `title`, `text`) or Anserini's JsonCollection (`id`,
`contents`): the one rule for a record's text, and the one corpus reader (`train`'s BEIR folders, the dense index).

A BEIR record's text is "title text", or the text alone when the title is empty: what Pyserini's flat BEIR indexes
hold. A Lucene index stores each record raw, and `raw_document_text` reads the text back from it with the same
rule, so a document has one text wherever it comes from: a corpus file (training's positives, the dense encoder) or
an index (BM25 candidates, training's mined negatives).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Iterator, Mapping

from pyserini_ssm.errors import UserError
from pyserini_ssm.runs import read_numbered_lines

# A BEIR dataset folder's corpus; a folder without one is read as JSON-lines files of documents.
CORPUS_FILES = ("corpus.jsonl", "corpus.jsonl.gz")


def beir_text(title: Any, text: str) -> str:
    """A BEIR record's text: "title text", or the text alone when there is no title (empty, missing, not a string)."""
    return f"{title} {text}" if isinstance(title, str) and title else text


def record_text(record: Mapping[str, Any]) -> str | None:
    """The text of a collection record: JsonCollection `contents`, else BEIR `title` and `text`; None for neither."""
    if isinstance(record.get("contents"), str):
        return record["contents"]
    if isinstance(record.get("text"), str):
        return beir_text(record.get("title"), record["text"])
    return None


def raw_document_text(raw: str) -> str:
    """The reranking text of a document stored raw (Anserini keeps each JSON record as it was read): the record's
    text (`record_text`), else the raw text itself (plain-text collections, or JSON without those fields)."""
    if raw.lstrip().startswith("{"):
        try:
            record = json.loads(raw)
        except ValueError:
            return raw
        if isinstance(record, dict):
            text = record_text(record)
            if text is not None:
                return text
    return raw


def corpus_files(path: str | os.PathLike) -> list[Path]:
    """The files of a corpus: the file itself; a BEIR folder's `corpus.jsonl[.gz]`; else a folder's JSON-lines files."""
    path = Path(path)
    if path.is_dir():
        files = [path / name for name in CORPUS_FILES if (path / name).is_file()][:1]
        files = files or sorted(p for p in path.iterdir() if p.name.endswith((".jsonl", ".jsonl.gz", ".json")))
        if not files:
            raise UserError(f"{path}: no corpus.jsonl or *.jsonl files to read")
        return files
    if path.is_file():
        return [path]
    raise UserError(f"corpus not found: {path}")


def iter_corpus(path: str | os.PathLike) -> Iterator[tuple[str, str]]:
    """(docid, text) of every record of a BEIR corpus or JsonCollection JSON-lines file (.gz too), or of a folder
    of them (`corpus_files`), in file order. A line that is not such a record is a UserError naming file and line;
    so are bad UTF-8 and damaged gzip data."""
    for file in corpus_files(path):
        for number, line in read_numbered_lines(file):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as error:
                raise UserError(f"{file}:{number}: not a JSON object ({error.msg})") from None
            if isinstance(record, dict) and "_id" in record:
                yield str(record["_id"]), beir_text(record.get("title"), str(record.get("text") or ""))
            elif isinstance(record, dict) and "id" in record and isinstance(record.get("contents"), str):
                yield str(record["id"]), record["contents"]
            else:
                raise UserError(f"{file}:{number}: expected BEIR fields _id/title/text or JsonCollection "
                                "id/contents")
