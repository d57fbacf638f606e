"""A Lucene index as training data uses it: BM25 top-k docids per query and document texts by docid.

The first stage's side of `pyserini_ssm.training.data.DocumentIndex`. Training code never imports the first stage
(it runs on machines without Java); `python -m pyserini_ssm.train` wires this class in, and so may any caller that
mines negatives from a Lucene index.
"""

from __future__ import annotations

import os
from typing import Mapping, Sequence

from pyserini_ssm.first_stage.lucene import LuceneSearcher, bm25_search, fetch_texts, open_searcher


class LuceneDocuments:
    """A Lucene index folder or Pyserini prebuilt name; the searcher (and the JVM) opens on first use, so that
    building one validates nothing and starts nothing."""

    def __init__(self, index: str | os.PathLike):
        self.index = str(index)
        self._searcher: LuceneSearcher | None = None

    def __repr__(self) -> str:
        return f"LuceneDocuments({self.index!r})"

    def __str__(self) -> str:  # error messages name the index as the user gave it
        return self.index

    @property
    def searcher(self) -> LuceneSearcher:
        if self._searcher is None:
            self._searcher = open_searcher(self.index)
        return self._searcher

    def bm25_docids(self, queries: Mapping[str, str], *, hits: int, k1: float, b: float, threads: int,
                    remove_query: bool = False) -> dict[str, list[str]]:
        """qid -> the BM25 top-`hits` docids, best first (Anserini's -removeQuery drops a hit that is the query)."""
        runs = bm25_search(self.searcher, dict(queries), hits=hits, k1=k1, b=b, threads=threads, batch_size=1000,
                           remove_query=remove_query)
        return {qid: [hit.docid for hit in found] for qid, found in runs.items()}

    def texts(self, docids: Sequence[str]) -> dict[str, str]:
        """docid -> text; a docid missing from the index is a UserError naming it."""
        return fetch_texts(self.searcher, list(docids))
