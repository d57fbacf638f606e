"""BM25's parameters and their valid range, checked before any JVM starts.

Its own module (stdlib only) because the first stage, `rerank` and `train`'s negative mining all check them, and
training code never imports the first stage (it runs where there is no Java).
"""

from __future__ import annotations

from pyserini_ssm.errors import UserError


def check_bm25_parameters(k1: float, b: float, prefix: str = "--") -> None:
    """BM25's valid range (k1 >= 0, 0 <= b <= 1), checked before the JVM: Lucene's BM25Similarity would throw an
    IllegalArgumentException from deep inside the search."""
    if not (k1 >= 0 and k1 != float("inf")):
        raise UserError(f"{prefix}k1 must be a finite number >= 0 (BM25 term saturation), got {k1:g}; Pyserini's "
                        "default is 0.9")
    if not 0 <= b <= 1:
        raise UserError(f"{prefix}b must be between 0 and 1 (BM25 length normalisation), got {b:g}; Pyserini's "
                        "default is 0.4")
