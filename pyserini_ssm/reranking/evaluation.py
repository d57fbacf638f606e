"""Judging a reranking: the qrels of its topics (read before the rerank, so a bad one fails first) and the metrics
of the first stage and of the reranked run side by side."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Sequence

from pyserini_ssm.documents import max_passage_run

if TYPE_CHECKING:
    from pyserini_ssm.reranking.config import RerankConfig
    from pyserini_ssm.reranking.scoring import RerankQuery


def _load_qrels_first(config: RerankConfig) -> LoadedQrels | None:
    """The qrels (--qrels, else those of a named --topics), read before the rerank: a bad one fails first."""
    name = _qrels_name(config)
    if not name:
        return None
    from pyserini_ssm.qrels import load_qrels

    return LoadedQrels(name, load_qrels(name, topics_dir=config.topics_dir))


def qrels_name_for_topics(topics: str) -> str | None:
    """The Pyserini qrels name that judges a Pyserini topics name, or None (a file, or no known qrels).

    The same name when it is a qrels name too (`dl19-passage`, `msmarco-passage-dev-subset`,
    `beir-v1.0.0-scifact-test`); else the name without its encoder suffix (`dl19-passage-unicoil`); else
    `<name>-passage` (`dl20` -> `dl20-passage`, as Pyserini's passage regressions pair them).
    """
    from pyserini_ssm.pyserini_names import QRELS_FILES, TOPIC_FILES

    if topics not in TOPIC_FILES:
        return None
    parts = topics.split("-")
    for end in range(len(parts), 0, -1):
        name = "-".join(parts[:end])
        if name in QRELS_FILES:
            return name
        if f"{name}-passage" in QRELS_FILES:
            return f"{name}-passage"
    return None


def _qrels_name(config: RerankConfig) -> str | None:
    """--qrels, else the qrels of a named --topics, else None (no metrics)."""
    if config.qrels:
        return config.qrels
    if not config.topics or Path(config.topics).exists():
        return None
    return qrels_name_for_topics(config.topics)


@dataclass(frozen=True)
class LoadedQrels:
    """Judgments read before the rerank (a bad --qrels fails first), and the name that picks the 2CR convention."""

    name: str
    judgments: dict[str, dict[str, int]]


def evaluate_before_after(queries: Sequence[RerankQuery], reranked: Path | dict[str, dict[str, float]],
                          qrels: "LoadedQrels | str", config: RerankConfig,
                          segments_are_hits: bool = False) -> dict[str, tuple[float, float]]:
    """metric -> (first stage, reranked), pytrec_eval with Pyserini's conventions, judged queries only.

    `reranked`: the reranked run (qid -> docid -> score) or a TREC run file. `qrels`: loaded, or a name/file.
    `segments_are_hits`: the first stage returned segments `D1#3`; it is judged as documents, each at its best
    segment (Pyserini's max-passage), as the reranked run is.
    """
    from pyserini_ssm.evaluation import evaluate
    from pyserini_ssm.runs import read_run, run_as_dict

    if not isinstance(qrels, LoadedQrels):
        from pyserini_ssm.qrels import load_qrels

        qrels = LoadedQrels(str(qrels), load_qrels(qrels, topics_dir=config.topics_dir))
    if not isinstance(reranked, dict):
        reranked = run_as_dict(read_run(reranked))
    hint = qrels.name  # picks the 2CR convention (DL: MAP/R@1000 at level 2, ...)
    qrels = qrels.judgments
    metrics = list(config.metrics) if config.metrics else None
    first_stage = {query.qid: query.hits for query in queries}
    if segments_are_hits:
        first_stage = max_passage_run(first_stage, hits=max(1, *(len(hits) for hits in first_stage.values())))
    before_run = {qid: {hit.docid: float(hit.score) for hit in hits} for qid, hits in first_stage.items()}
    before = evaluate(before_run, qrels, metrics, collection_hint=hint)
    after = evaluate(reranked, qrels, metrics, collection_hint=hint)
    return {name: (before[name], after[name]) for name in before}


def format_metrics(metrics: dict[str, tuple[float, float]]) -> str:
    """A small table: metric, first stage, reranked."""
    width = max([len("metric")] + [len(name) for name in metrics])
    lines = [f"{'metric':<{width}}  {'first stage':>11}  {'reranked':>8}"]
    lines += [f"{name:<{width}}  {before:>11.4f}  {after:>8.4f}" for name, (before, after) in metrics.items()]
    return "\n".join(lines)
