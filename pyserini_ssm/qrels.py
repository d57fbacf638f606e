"""Relevance judgments (qid -> docid -> grade): Pyserini names resolved like topics, or files.

Formats: TREC qrels `qid iter docid rel` (iter is usually 0 or Q0), and BEIR's TSV with the header
`query-id<TAB>corpus-id<TAB>score`. Both may be gzipped.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

from pyserini_ssm.errors import UserError
from pyserini_ssm.pyserini_names import QRELS_FILES
from pyserini_ssm.runs import read_numbered_lines, split_columns
from pyserini_ssm.topics import (_offline_hint, error_summary, require_download_host, resolve_named_file,
                                  topics_dir_from)

BEIR_HEADER = ("query-id", "corpus-id", "score")


def load_qrels(name_or_path: str | os.PathLike, topics_dir: str | os.PathLike | None = None) -> dict[str, dict[str, int]]:
    """qid -> docid -> relevance grade, for a Pyserini qrels name (`dl19-passage`, ...) or a qrels file."""
    path, pyserini_name = resolve_named_file(name_or_path, QRELS_FILES, topics_dir, "qrels")
    if path is None:
        require_download_host(pyserini_name, QRELS_FILES.get(pyserini_name), topics_dir, "qrels")
        from pyserini_ssm.first_stage import lucene  # lazily: starts the JVM

        try:
            path = Path(lucene.pyserini_qrels_file(pyserini_name))
        except UserError:
            raise
        except Exception as error:  # FileNotFoundError, JavaException (download failed), ...
            folder = topics_dir_from(topics_dir)
            message = _offline_hint(pyserini_name, QRELS_FILES.get(pyserini_name), folder, "qrels")
            raise UserError(f"{message} [{error_summary(error)}]") from None
    return read_qrels_file(path)


def _parse_grade(text: str, where: str) -> int:
    # ASCII digits only: Python's int also reads `1_0` (10) and non-ASCII digits, which trec_eval's atol reads as 1
    # and 0.
    if not re.fullmatch(r"[+-]?[0-9]+", text):
        raise UserError(f"{where}: relevance {text!r} is not an integer")
    return int(text)


def read_qrels_file(path: str | os.PathLike) -> dict[str, dict[str, int]]:
    """Read TREC qrels (4 columns) or BEIR qrels TSV (3 columns after a `query-id corpus-id score` header)."""
    qrels: dict[str, dict[str, int]] = {}
    beir = None
    for line_number, line in read_numbered_lines(path):
        fields = split_columns(line)
        if not fields:
            continue
        where = f"{path}:{line_number}"
        if beir is None:
            beir = tuple(fields) == BEIR_HEADER
            if beir:
                continue
        if beir:
            if len(fields) != 3:
                raise UserError(f"{where}: a BEIR qrels line has 3 columns 'query-id corpus-id score', found {len(fields)}")
            qid, docid, grade_text = fields
        else:
            if len(fields) != 4:
                raise UserError(
                    f"{where}: a TREC qrels line has 4 columns 'qid iter docid rel', found {len(fields)}: {line[:200]!r}"
                )
            qid, _, docid, grade_text = fields
        grade = _parse_grade(grade_text, where)
        judged = qrels.setdefault(qid, {})
        if docid in judged:
            raise UserError(f"{where}: document {docid!r} is judged twice for query {qid!r}")
        judged[docid] = grade
    if not qrels:
        raise UserError(f"{path}: the qrels file holds no judgments")
    return qrels
