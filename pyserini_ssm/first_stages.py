"""The first stages `rerank` starts from, behind one interface: a name -> each query's candidates, and their texts.

    bm25        BM25 over the Lucene `--index` (Pyserini's defaults: k1 0.9, b 0.4; multifield BEIR: contents + title)
    dense       Pyserini's FaissSearcher over `--dense-index`, queries encoded by `--encoder` (first_stage/dense.py)
    hybrid      both, fused by `fusion.py` (min-max interpolation with `--alpha` as BM25's weight, or RRF)
    run         a TREC run read earlier (`--run`)
    candidates  a candidates file, which carries its own queries and texts (`--candidates`, `candidates.py`)

A `FirstStage` answers `search(topics) -> {qid: [Hit]}` (best first, ties by docid, in the stage's query order; the
hits may carry no text) and `texts([(qid, docids), ...]) -> one {docid: text} per request, in turn`, lazily: the
reranking asks for the texts of a few groups at a time, so memory holds ids and scores only. The stages that rank
documents of the Lucene index read the texts from it (`LuceneTexts`); a candidates file is read again.
`open_first_stage(name, settings)` opens one (the indexes, the encoder: what fails on a missing index fails here,
before the search); `check_first_stage_flags` checks the flags before anything is opened. A new first stage is a
class with these two methods and an entry in `_OPENERS`.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Mapping, Protocol, Sequence

from pyserini_ssm.bm25 import B, K1, SEARCH_THREADS
from pyserini_ssm.errors import UserError
from pyserini_ssm.runs import Hit

SEARCHING_STAGES = ("bm25", "dense", "hybrid")  # `--first-stage`: they search for the candidates
FIRST_STAGES = SEARCHING_STAGES + ("run", "candidates")  # and the two that read them from a file
FUSIONS = ("interpolation", "rrf")
DEFAULT_ENCODER = "sentence-transformers/all-MiniLM-L6-v2"
TextRequest = tuple[str, Sequence[str]]  # (qid, the docids whose texts are wanted)


class FirstStage(Protocol):
    name: str

    def search(self, topics: Mapping[str, str]) -> dict[str, list[Hit]]: ...

    def texts(self, requests: Iterable[TextRequest]) -> Iterator[dict[str, str]]: ...


@dataclass
class LuceneTexts:
    """Texts from the Lucene index: one batched fetch per `window` documents; a docid missing from the index (or
    with empty text) is a UserError, or left out (warned) with `skip_missing`."""

    searcher: Any  # first_stage.lucene.LuceneSearcher
    window: int = 1000
    skip_missing: bool = False

    def texts(self, requests: Iterable[TextRequest]) -> Iterator[dict[str, str]]:
        pending: list[TextRequest] = []
        docs = 0
        for request in requests:
            pending.append(request)
            docs += len(request[1])
            if docs >= self.window:
                yield from self._fetch(pending)
                pending, docs = [], 0
        if pending:
            yield from self._fetch(pending)

    def _fetch(self, requests: list[TextRequest]) -> Iterator[dict[str, str]]:
        from pyserini_ssm.first_stage.lucene import fetch_texts

        docids = list(dict.fromkeys(docid for _, wanted in requests for docid in wanted))
        try:
            found = fetch_texts(self.searcher, docids, skip_missing=self.skip_missing)
        except UserError as error:
            raise UserError(f"{error} (pass --skip-missing to leave such documents out)") from None
        for _, wanted in requests:
            yield {docid: found[docid] for docid in wanted if docid in found}


class _TextsFromTheIndex:
    """The `texts` of a stage that ranks documents of the Lucene index (its `documents`)."""

    name: str
    documents: LuceneTexts | None

    def texts(self, requests: Iterable[TextRequest]) -> Iterator[dict[str, str]]:
        if self.documents is None:
            raise UserError(f"the {self.name} first stage needs --index for the document texts")
        return self.documents.texts(requests)


def _every_topic(results: Mapping[str, list[Hit]], topics: Mapping[str, str]) -> dict[str, list[Hit]]:
    """A searching stage answers every topic, in topics order (a query with no hit has an empty list)."""
    return {qid: list(results.get(qid, [])) for qid in topics}


@dataclass
class BM25Stage(_TextsFromTheIndex):
    searcher: Any  # first_stage.lucene.LuceneSearcher
    hits: int = 1000
    k1: float = K1
    b: float = B
    threads: int = SEARCH_THREADS
    fields: dict[str, float] | None = None  # None: the index's default (contents, or contents + title)
    remove_query: bool = False  # BEIR: drop a hit whose docid is the query id, as Pyserini does
    documents: LuceneTexts | None = None
    name: str = "bm25"

    def search(self, topics: Mapping[str, str]) -> dict[str, list[Hit]]:
        from pyserini_ssm.first_stage.lucene import bm25_search

        fields = self.fields if self.fields is not None else self.searcher.default_fields()
        return _every_topic(bm25_search(self.searcher, topics, hits=self.hits, k1=self.k1, b=self.b,
                                        threads=self.threads, remove_query=self.remove_query, fields=fields), topics)


@dataclass
class DenseStage(_TextsFromTheIndex):
    searcher: Any  # pyserini.search.faiss.FaissSearcher
    encoder: Any  # first_stage.dense.SentenceEncoder
    hits: int = 1000
    threads: int = SEARCH_THREADS
    documents: LuceneTexts | None = None
    name: str = "dense"

    def search(self, topics: Mapping[str, str]) -> dict[str, list[Hit]]:
        from pyserini_ssm.first_stage.dense import dense_search

        return _every_topic(dense_search(self.searcher, self.encoder, topics, hits=self.hits, threads=self.threads),
                            topics)


@dataclass
class HybridStage(_TextsFromTheIndex):
    sparse: BM25Stage
    dense: DenseStage
    fusion: str = "interpolation"
    alpha: float = 0.5
    rrf_k: int = 60
    hits: int = 1000
    documents: LuceneTexts | None = None
    name: str = "hybrid"

    def search(self, topics: Mapping[str, str]) -> dict[str, list[Hit]]:
        from pyserini_ssm.first_stage.dense import hybrid_results

        fused = hybrid_results(self.sparse.search(topics), self.dense.search(topics), method=self.fusion,
                               alpha=self.alpha, rrf_k=self.rrf_k, k=self.hits)
        return _every_topic(fused, topics)


@dataclass
class RunFileStage(_TextsFromTheIndex):
    run: dict[str, list[Hit]]  # runs.read_run
    documents: LuceneTexts | None = None
    name: str = "run"

    def search(self, topics: Mapping[str, str]) -> dict[str, list[Hit]]:
        """The run's queries that `topics` has, in the run's order (the order a reranked run keeps)."""
        return {qid: hits for qid, hits in self.run.items() if qid in topics}


@dataclass
class CandidatesFileStage:
    """A candidates file: its own queries (`topics()`), hits and texts. `search` keeps ids and scores only; `texts`
    reads the file again, once, in step with the requests (which follow the file's query order)."""

    path: str
    name: str = "candidates"
    # The file's queries (qid, query, hits without texts), when read already; else read on first use.
    queries: list[Any] | None = field(default=None, repr=False)

    def _read(self) -> list[Any]:
        if self.queries is None:
            from pyserini_ssm.candidates import iter_candidates

            self.queries = []
            for query in iter_candidates(self.path):
                query.hits = [Hit(hit.docid, hit.score) for hit in query.hits]
                self.queries.append(query)
            if not self.queries:
                raise UserError(f"{self.path}: the candidates file holds no queries")
        return self.queries

    def topics(self) -> dict[str, str]:
        return {query.qid: query.query for query in self._read()}

    def search(self, topics: Mapping[str, str]) -> dict[str, list[Hit]]:
        return {query.qid: list(query.hits) for query in self._read() if query.qid in topics}

    def texts(self, requests: Iterable[TextRequest]) -> Iterator[dict[str, str]]:
        from pyserini_ssm.candidates import iter_candidates

        wanted = iter(requests)
        request = next(wanted, None)
        position = -1
        for candidate in iter_candidates(self.path):
            if request is None:
                return
            position += 1
            qid, docids = request
            if candidate.qid != qid:
                continue
            texts = {hit.docid: hit.text for hit in candidate.hits}
            if any(docid not in texts for docid in docids):
                raise UserError(f"{self.path} changed while reranking (query {qid} at #{position} no longer has "
                                f"the same candidates): rerun to start over from the new file")
            yield {docid: texts[docid] for docid in docids}
            request = next(wanted, None)
        if request is not None:
            raise UserError(f"{self.path} changed while reranking (query {request[0]} is gone, or out of order): "
                            f"rerun to start over from the new file")


def check_first_stage_flags(first_stage: str, dense_index: str | None, fusion: str, alpha: float,
                            rrf_k: int) -> None:
    """Cheap checks, before any index or model is opened."""
    if first_stage not in SEARCHING_STAGES:
        raise UserError(f"unknown --first-stage {first_stage!r}; choose {', '.join(SEARCHING_STAGES)}")
    if first_stage in ("dense", "hybrid") and not dense_index:
        raise UserError(f"--first-stage {first_stage} needs --dense-index (a folder written by "
                        f"`python -m pyserini_ssm.dense_index`, or a Pyserini prebuilt dense index name) and "
                        f"--index for the document texts")
    if first_stage == "bm25" and dense_index:
        raise UserError("--dense-index is for --first-stage dense or hybrid")
    if dense_index and (Path(dense_index).exists() or os.sep in dense_index or "/" in dense_index):
        folder = Path(dense_index)
        if not folder.is_dir():
            raise UserError(f"--dense-index folder not found: {dense_index}")
        if not (folder / "index").is_file() or not (folder / "docid").is_file():
            raise UserError(f"--dense-index {dense_index} is not a dense index folder (needs the files 'index' and "
                            f"'docid', as `python -m pyserini_ssm.dense_index` writes)")
    if fusion not in FUSIONS:
        raise UserError(f"unknown --fusion {fusion!r}; choose {', '.join(FUSIONS)}")
    if not 0.0 <= alpha <= 1.0:
        raise UserError(f"--alpha must be in [0, 1], got {alpha}")
    if rrf_k < 1:
        raise UserError(f"--rrf-k must be a positive integer, got {rrf_k}")


def open_dense_stage(dense_index: str, encoder: str | None, *, hits: int = 1000,
                     threads: int = SEARCH_THREADS) -> DenseStage:
    """The query encoder (quietly loaded) and Pyserini's FaissSearcher over a dense index folder or prebuilt name."""
    from pyserini_ssm.console import quiet_loading
    from pyserini_ssm.first_stage import dense

    model = encoder or DEFAULT_ENCODER
    if dense.resolve_model_path(model) == model and not Path(model).is_dir():
        from pyserini_ssm.hub import require_available

        require_available(model, "dense encoder")
    with quiet_loading():
        query_encoder = dense.SentenceEncoder(dense.EncoderConfig(model=model))
    return DenseStage(dense.open_faiss_searcher(dense_index, query_encoder), query_encoder, hits, threads)


# ---------------------------------------------------------------------------------------------------------------
# name -> stage. `settings` is a `reranking.RerankConfig` (or anything with its first-stage fields).


def _lucene(settings: Any) -> tuple[Any, LuceneTexts]:
    from pyserini_ssm.first_stage.lucene import open_searcher

    searcher = open_searcher(settings.index)
    return searcher, LuceneTexts(searcher, settings.fetch_batch_size, settings.skip_missing)


def _open_bm25(settings: Any, run: Any) -> BM25Stage:
    from pyserini_ssm.topics import is_beir_topics

    searcher, documents = _lucene(settings)
    return BM25Stage(searcher, settings.hits, settings.bm25_k1, settings.bm25_b, settings.threads, settings.fields,
                     remove_query=is_beir_topics(settings.topics), documents=documents)


def _open_dense(settings: Any, run: Any) -> DenseStage:
    _, documents = _lucene(settings)
    stage = open_dense_stage(settings.dense_index, settings.encoder, hits=settings.hits, threads=settings.threads)
    stage.documents = documents
    return stage


def _open_hybrid(settings: Any, run: Any) -> HybridStage:
    sparse = _open_bm25(settings, run)
    dense = open_dense_stage(settings.dense_index, settings.encoder, hits=settings.hits, threads=settings.threads)
    return HybridStage(sparse, dense, settings.fusion, settings.alpha, settings.rrf_k, settings.hits,
                       documents=sparse.documents)


def _open_run(settings: Any, run: Any) -> RunFileStage:
    if run is None:
        from pyserini_ssm.runs import read_run

        run = read_run(settings.run)
    return RunFileStage(run, documents=_lucene(settings)[1])


def _open_candidates(settings: Any, run: Any) -> CandidatesFileStage:
    return CandidatesFileStage(settings.candidates)


_OPENERS: dict[str, Callable[[Any, Any], FirstStage]] = {
    "bm25": _open_bm25, "dense": _open_dense, "hybrid": _open_hybrid, "run": _open_run,
    "candidates": _open_candidates,
}
assert tuple(_OPENERS) == FIRST_STAGES


def open_first_stage(name: str, settings: Any, *, run: dict[str, list[Hit]] | None = None) -> FirstStage:
    """The first stage `name` (one of FIRST_STAGES) over `settings`' indexes and files, opened (not yet searched).
    `run`: the `--run` file's hits when read already (they were checked against the topics)."""
    if name not in _OPENERS:
        raise UserError(f"unknown first stage {name!r}; choose {', '.join(FIRST_STAGES)}")
    return _OPENERS[name](settings, run)
