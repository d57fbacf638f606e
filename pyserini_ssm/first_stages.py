"""The first stages `rerank` can start from: a name -> ranked candidates per query (texts come from the Lucene index).

    bm25     BM25 over the Lucene `--index` (Pyserini's defaults: k1 0.9, b 0.4; multifield BEIR: contents + title)
    dense    Pyserini's FaissSearcher over `--dense-index`, queries encoded by `--encoder` (first_stage/dense.py)
    hybrid   both, fused by `fusion.py` (min-max interpolation with `--alpha` as BM25's weight, or RRF)

and behind the same `search(topics) -> {qid: [Hit]}`: `RunFileStage` (a TREC run read earlier). A candidates file
carries its own texts and needs no stage (`candidates.py`). Every stage returns hits best first, ties by docid; texts
are fetched later, a few groups at a time, from the Lucene index (`reranking.sources._IndexTexts`).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Protocol

from pyserini_ssm.errors import UserError
from pyserini_ssm.runs import Hit

FIRST_STAGES = ("bm25", "dense", "hybrid")
FUSIONS = ("interpolation", "rrf")
DEFAULT_ENCODER = "sentence-transformers/all-MiniLM-L6-v2"


class FirstStage(Protocol):
    def search(self, topics: Mapping[str, str]) -> dict[str, list[Hit]]: ...


@dataclass
class BM25Stage:
    searcher: Any  # first_stage.lucene.LuceneSearcher
    hits: int = 1000
    k1: float = 0.9
    b: float = 0.4
    threads: int = 1
    fields: dict[str, float] | None = None  # None: the index's default (contents, or contents + title)
    remove_query: bool = False  # BEIR: drop a hit whose docid is the query id, as Pyserini does

    def search(self, topics: Mapping[str, str]) -> dict[str, list[Hit]]:
        from pyserini_ssm.first_stage.lucene import bm25_search

        fields = self.fields if self.fields is not None else self.searcher.default_fields()
        return bm25_search(self.searcher, topics, hits=self.hits, k1=self.k1, b=self.b, threads=self.threads,
                           remove_query=self.remove_query, fields=fields)


@dataclass
class DenseStage:
    searcher: Any  # pyserini.search.faiss.FaissSearcher
    encoder: Any  # first_stage.dense.SentenceEncoder
    hits: int = 1000
    threads: int = 1

    def search(self, topics: Mapping[str, str]) -> dict[str, list[Hit]]:
        from pyserini_ssm.first_stage.dense import dense_search

        return dense_search(self.searcher, self.encoder, topics, hits=self.hits, threads=self.threads)


@dataclass
class HybridStage:
    sparse: FirstStage
    dense: FirstStage
    fusion: str = "interpolation"
    alpha: float = 0.5
    rrf_k: int = 60
    hits: int = 1000

    def search(self, topics: Mapping[str, str]) -> dict[str, list[Hit]]:
        from pyserini_ssm.first_stage.dense import hybrid_results

        return hybrid_results(self.sparse.search(topics), self.dense.search(topics), method=self.fusion,
                              alpha=self.alpha, rrf_k=self.rrf_k, k=self.hits)


@dataclass
class RunFileStage:
    run: dict[str, list[Hit]]  # runs.read_run

    def search(self, topics: Mapping[str, str]) -> dict[str, list[Hit]]:
        """The run's queries that `topics` has, in the run's order (the order a reranked run keeps)."""
        return {qid: hits for qid, hits in self.run.items() if qid in topics}


def check_first_stage_flags(first_stage: str, dense_index: str | None, fusion: str, alpha: float,
                            rrf_k: int) -> None:
    """Cheap checks, before any index or model is opened."""
    if first_stage not in FIRST_STAGES:
        raise UserError(f"unknown --first-stage {first_stage!r}; choose {', '.join(FIRST_STAGES)}")
    if first_stage in ("dense", "hybrid") and not dense_index:
        raise UserError(f"--first-stage {first_stage} needs --dense-index (a folder written by "
                        f"`python -m pyserini_ssm.dense_index`, or a Pyserini prebuilt dense index name) and "
                        f"--index for the document texts")
    if first_stage == "bm25" and dense_index:
        raise UserError("--dense-index is for --first-stage dense or hybrid")
    if fusion not in FUSIONS:
        raise UserError(f"unknown --fusion {fusion!r}; choose {', '.join(FUSIONS)}")
    if not 0.0 <= alpha <= 1.0:
        raise UserError(f"--alpha must be in [0, 1], got {alpha}")
    if rrf_k < 1:
        raise UserError(f"--rrf-k must be a positive integer, got {rrf_k}")


def open_dense_stage(dense_index: str, encoder: str | None, *, hits: int = 1000, threads: int = 1) -> DenseStage:
    """The query encoder (quietly loaded) and Pyserini's FaissSearcher over a dense index folder or prebuilt name."""
    from pyserini_ssm.console import quiet_loading
    from pyserini_ssm.first_stage import dense

    model = encoder or DEFAULT_ENCODER
    if dense.resolve_model_path(model) == model and not Path(model).is_dir():
        from pyserini_ssm.hub import require_available

        require_available(model, "dense encoder")
    with quiet_loading():
        query_encoder = dense.SentenceEncoder(dense.EncoderConfig(model=encoder or DEFAULT_ENCODER))
    return DenseStage(dense.open_faiss_searcher(dense_index, query_encoder), query_encoder, hits, threads)


def run_first_stage(config: Any, searcher: Any, dense_stage: DenseStage | None,
                    topics: Mapping[str, str]) -> dict[str, list[Hit]]:
    """Search `topics` with the stage `config.first_stage` names (a `reranking.RerankConfig`)."""
    from pyserini_ssm.topics import is_beir_topics

    bm25 = BM25Stage(searcher, config.hits, config.bm25_k1, config.bm25_b, config.threads, config.fields,
                     remove_query=is_beir_topics(config.topics))
    if config.first_stage == "bm25":
        return bm25.search(topics)
    if dense_stage is None:
        raise UserError(f"--first-stage {config.first_stage} needs --dense-index")
    dense_stage.hits = config.hits
    if config.first_stage == "dense":
        return dense_stage.search(topics)
    return HybridStage(bm25, dense_stage, config.fusion, config.alpha, config.rrf_k, config.hits).search(topics)
