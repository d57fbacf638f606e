"""BM25's parameters: their one default (Pyserini's), their valid range checked before any JVM starts, the search
threads, and `--fields` parsing.

Its own module (stdlib only) because the first stage, `rerank`, `search` and `train`'s negative mining all use them,
and training code never imports the first stage (it runs where there is no Java).
"""

from __future__ import annotations

import os
from typing import Iterable

from pyserini_ssm.errors import UserError

# Pyserini's and Anserini's BM25 defaults (`LuceneSearcher.set_bm25`): every default in this package is these.
K1 = 0.9
B = 0.4
# BM25 search threads by default, for `rerank`, `search` and `train`'s mining alike: Lucene's batch search scales to
# about 16 threads; the results do not depend on the number.
SEARCH_THREADS = max(1, min(16, os.cpu_count() or 1))
SEARCH_THREADS_HELP = f"{SEARCH_THREADS}, the cores up to 16"


def check_bm25_parameters(k1: float, b: float, prefix: str = "--") -> None:
    """BM25's valid range (k1 >= 0, 0 <= b <= 1), checked before the JVM: Lucene's BM25Similarity would throw an
    IllegalArgumentException from deep inside the search."""
    if not (k1 >= 0 and k1 != float("inf")):
        raise UserError(f"{prefix}k1 must be a finite number >= 0 (BM25 term saturation), got {k1:g}; Pyserini's "
                        f"default is {K1:g}")
    if not 0 <= b <= 1:
        raise UserError(f"{prefix}b must be between 0 and 1 (BM25 length normalisation), got {b:g}; Pyserini's "
                        f"default is {B:g}")


def parse_fields(specs: Iterable[str] | None) -> dict[str, float] | None:
    """`["contents=1.0", "title=1.0"]` (Pyserini's `--fields`) -> {"contents": 1.0, "title": 1.0}; None for none."""
    fields: dict[str, float] = {}
    for spec in specs or ():
        name, sep, boost = spec.partition("=")
        try:
            value = float(boost) if sep else 1.0
        except ValueError:
            value = float("nan")
        if not name or value != value or value <= 0 or value == float("inf"):
            raise UserError(f"--fields {spec!r}: expected FIELD=BOOST with a positive boost, e.g. contents=1.0 "
                            "title=1.0")
        fields[name] = value
    return fields or None
