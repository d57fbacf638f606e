"""Effectiveness with pytrec_eval, following Pyserini's 2CR (two-click reproduction) conventions exactly.

Pyserini scores with `trec_eval -c` plus, per collection:

| convention          | metrics (trec_eval options)                                                   |
| ------------------- | ----------------------------------------------------------------------------- |
| `trec-dl-passage`   | nDCG@10; MAP and R@1000 with `-l 2` (grades 2-3 relevant); DL21-23 MAP `-M 100` |
| `trec-dl-doc`       | nDCG@10; MAP `-M 100`; R@1000                                                  |
| `msmarco-dev`       | MRR@10 = recip_rank with `-M 10` (v1 passage; doc and v2: `-M 100`); R@1000    |
| `beir`              | nDCG@10, R@100, R@1000                                                         |
| `default`           | nDCG@10, MAP, R@100, R@1000                                                    |

`-c` averages over every judged query: queries of the run without judgments are dropped, judged queries missing
from the run count as 0 (so DL20 averages over its 54 judged queries whatever the run holds). `-M k` evaluates
each query's top k results only, in trec_eval's order (score descending, ties by docid descending).

Result keys are pytrec_eval measure names (`ndcg_cut_10`, `map`, `recall_1000`, `recip_rank`, ...). A metric may
carry an explicit depth, `recip_rank@10`, kept as its key.
"""

from __future__ import annotations

import math
import os
import re
from dataclasses import dataclass, field
from typing import Mapping, Sequence

from pyserini_ssm.errors import UserError

Run = Mapping[str, Mapping[str, float]]
Qrels = Mapping[str, Mapping[str, int]]

# Measures whose value does not depend on trec_eval's -l (they use the graded judgments themselves).
_GRADED_FAMILIES = ("ndcg", "ndcg_cut", "ndcg_rel", "Rndcg", "G", "binG")


@dataclass(frozen=True)
class Convention:
    name: str
    metrics: tuple[str, ...]
    relevance_level: int = 1  # trec_eval -l for binary measures
    depths: Mapping[str, int] = field(default_factory=dict)  # measure family -> trec_eval -M


CONVENTIONS = {
    "trec-dl-passage": Convention("trec-dl-passage", ("ndcg_cut_10", "map", "recall_1000"), relevance_level=2),
    "trec-dl-passage-v2": Convention(
        "trec-dl-passage-v2", ("ndcg_cut_10", "map", "recall_1000"), relevance_level=2, depths={"map": 100}
    ),
    "trec-dl-doc": Convention("trec-dl-doc", ("ndcg_cut_10", "map", "recall_1000"), depths={"map": 100}),
    "msmarco-dev": Convention("msmarco-dev", ("recip_rank", "recall_1000"), depths={"recip_rank": 10}),
    "msmarco-dev-depth100": Convention("msmarco-dev-depth100", ("recip_rank", "recall_1000"), depths={"recip_rank": 100}),
    "beir": Convention("beir", ("ndcg_cut_10", "recall_100", "recall_1000")),
    "default": Convention("default", ("ndcg_cut_10", "map", "recall_100", "recall_1000")),
}


def convention_for(collection_hint: str | os.PathLike | None) -> Convention:
    """The 2CR convention for a qrels/topics name or file name (`dl19-passage`, `qrels.dl20-passage.txt`, ...)."""
    if collection_hint is None:
        return CONVENTIONS["default"]
    hint = os.path.basename(str(collection_hint)).lower()
    hint = re.sub(r"\.(gz|txt|tsv|trec)$", "", re.sub(r"\.(gz|txt|tsv|trec)$", "", hint))
    hint = re.sub(r"^(qrels|topics)\.", "", hint)
    if re.search(r"(^|[^a-z0-9])dl(19|20|21|22|23)-doc", hint):
        return CONVENTIONS["trec-dl-doc"]
    if re.search(r"(^|[^a-z0-9])dl(21|22|23)($|[^0-9])", hint):
        return CONVENTIONS["trec-dl-passage-v2"]
    if re.search(r"(^|[^a-z0-9])dl(19|20)($|[^0-9])", hint):
        return CONVENTIONS["trec-dl-passage"]
    if "msmarco" in hint and "dev" in hint:
        if "doc" in hint or "v2" in hint:
            return CONVENTIONS["msmarco-dev-depth100"]
        return CONVENTIONS["msmarco-dev"]
    if hint.startswith("beir"):
        return CONVENTIONS["beir"]
    return CONVENTIONS["default"]


@dataclass(frozen=True)
class _Measure:
    key: str  # result key
    family: str  # pytrec_eval family ("ndcg_cut", "map", ...)
    pytrec_name: str  # what RelevanceEvaluator takes ("ndcg_cut.10")
    output_name: str  # what RelevanceEvaluator returns ("ndcg_cut_10")
    depth: int | None


def parse_metric(spec: str, convention: Convention) -> _Measure:
    """`ndcg_cut_10`, `ndcg_cut.10`, `map`, `recip_rank@10`, `P_5` -> a measure pytrec_eval can compute."""
    import pytrec_eval

    supported = pytrec_eval.supported_measures
    text = spec.strip()
    depth: int | None = None
    if "@" in text:
        text, _, depth_text = text.partition("@")
        if not depth_text.isdigit() or int(depth_text) < 1:
            raise UserError(f"metric {spec!r}: the depth after '@' must be a positive integer")
        depth = int(depth_text)
    text = text.replace(".", "_")
    if text in supported:
        family, parameter = text, None
    else:
        family, _, parameter = text.rpartition("_")
        if family not in supported or not parameter.isdigit():
            known = "ndcg_cut_10, map, recall_1000, recip_rank, P_10, map_cut_100, ..."
            raise UserError(f"unknown metric {spec!r} (pytrec_eval measure names: {known}; optional depth: recip_rank@10)")
    output_name = family if parameter is None else f"{family}_{parameter}"
    if depth is None:
        depth = convention.depths.get(family)
        key = output_name
    else:
        key = f"{output_name}@{depth}"
    pytrec_name = family if parameter is None else f"{family}.{parameter}"
    return _Measure(key=key, family=family, pytrec_name=pytrec_name, output_name=output_name, depth=depth)


def cut_run(run: Run, depth: int) -> dict[str, dict[str, float]]:
    """Each query's top `depth` results in trec_eval's order (score descending, then docid descending), as -M does."""
    cut: dict[str, dict[str, float]] = {}
    for qid, scores in run.items():
        if len(scores) <= depth:
            cut[qid] = dict(scores)
            continue
        ranked = sorted(scores.items(), key=lambda item: (item[1], item[0]), reverse=True)[:depth]
        cut[qid] = dict(ranked)
    return cut


class Evaluation(dict):
    """Mean of each metric over the judged queries (a dict: metric -> value), with the details as attributes.

    `per_query` maps qid -> metric -> value (filled when asked for), `num_queries` is the number averaged over,
    `convention` the 2CR convention used, `relevance_level` the -l applied to binary measures.
    """

    def __init__(self, means, per_query, num_queries, convention, relevance_level):
        super().__init__(means)
        self.per_query: dict[str, dict[str, float]] = per_query
        self.num_queries: int = num_queries
        self.convention: str = convention
        self.relevance_level: int = relevance_level


def evaluate(
    run: Run,
    qrels: Qrels,
    metrics: Sequence[str] | None = None,
    *,
    collection_hint: str | os.PathLike | None = None,
    per_query: bool = False,
    relevance_level: int | None = None,
) -> Evaluation:
    """Score `run` (qid -> docid -> score) against `qrels` the way Pyserini's 2CR pages do.

    `collection_hint` (a qrels/topics name or file name) picks the convention and its default metrics;
    `relevance_level` overrides its trec_eval -l for binary measures (MAP, recall, MRR, P).
    """
    import pytrec_eval

    convention = convention_for(collection_hint)
    level = convention.relevance_level if relevance_level is None else int(relevance_level)
    if level < 1:
        raise UserError(f"relevance level must be >= 1, got {level}")
    measures = [parse_metric(spec, convention) for spec in (metrics or convention.metrics)]
    if not measures:
        raise UserError("no metrics to compute")
    keys = [measure.key for measure in measures]
    if len(set(keys)) != len(keys):
        raise UserError(f"a metric is asked for twice: {keys}")

    clean_qrels = {str(qid): {str(d): int(g) for d, g in judged.items()} for qid, judged in qrels.items()}
    if not clean_qrels:
        raise UserError("the qrels hold no judgments")
    judged_run = {str(qid): {str(d): float(s) for d, s in scores.items()} for qid, scores in run.items()}
    judged_run = {qid: scores for qid, scores in judged_run.items() if qid in clean_qrels}
    if not judged_run:
        sample_run = ", ".join(list(map(str, run))[:3])
        sample_qrels = ", ".join(list(clean_qrels)[:3])
        raise UserError(
            f"the run and the qrels have no query in common (run: {sample_run}, ...; qrels: {sample_qrels}, ...); "
            "are they for the same topics?"
        )
    for qid, scores in judged_run.items():
        bad = next((d for d, s in scores.items() if math.isnan(s)), None)
        if bad is not None:
            raise UserError(f"score of document {bad!r} for query {qid!r} is not a number")

    # Empty rankings for judged queries the run lacks: trec_eval -c counts them (as 0 for these measures).
    missing = {qid: {} for qid in clean_qrels if qid not in judged_run}
    values: dict[str, dict[str, float]] = {qid: {} for qid in clean_qrels}
    groups: dict[tuple[int, int | None], list[_Measure]] = {}
    for measure in measures:
        measure_level = 1 if measure.family in _GRADED_FAMILIES else level
        groups.setdefault((measure_level, measure.depth), []).append(measure)
    for (measure_level, depth), group in groups.items():
        evaluator = pytrec_eval.RelevanceEvaluator(
            clean_qrels, {m.pytrec_name for m in group}, relevance_level=measure_level
        )
        ranked = judged_run if depth is None else cut_run(judged_run, depth)
        results = evaluator.evaluate({**ranked, **missing})
        for qid in clean_qrels:
            per_measure = results.get(qid, {})
            for measure in group:
                values[qid][measure.key] = float(per_measure.get(measure.output_name, 0.0))

    qids = sorted(values)
    means = {key: math.fsum(values[qid][key] for qid in qids) / len(qids) for key in keys}
    return Evaluation(
        means,
        per_query=values if per_query else {},
        num_queries=len(qids),
        convention=convention.name,
        relevance_level=level,
    )
