"""Effectiveness with pytrec_eval (through ir_measures), following Pyserini's 2CR (two-click reproduction) conventions.

Pyserini scores with `trec_eval -c` plus, per collection:

| convention          | metrics (trec_eval options)                                                   |
| ------------------- | ----------------------------------------------------------------------------- |
| `trec-dl-passage`   | nDCG@10; MAP and R@1000 with `-l 2` (grades 2-3 relevant); DL21-23 MAP `-M 100` |
| `trec-dl-doc`       | nDCG@10; MAP `-M 100`; R@1000                                                  |
| `msmarco-dev`       | MRR@10 = recip_rank with `-M 10` (v1 passage; doc and v2: `-M 100`); R@1000    |
| `beir`              | nDCG@10, R@100, R@1000                                                         |
| `default` (`none`)  | nDCG@10, MAP, R@100, R@1000, relevance level 1, no depth                       |

`-c` averages over every judged query: queries of the run without judgments are dropped, judged queries missing
from the run count as 0 (so DL20 averages over its 54 judged queries whatever the run holds). `-M k` evaluates
each query's top k results only, in trec_eval's order (score descending, ties by docid descending).

Metric names: ir_measures' (`nDCG@10`, `P@10`, `R@100`, `RR@10`, `AP`, `AP(rel=2)`, `Judged@10`; the measure name
case-insensitive, so `ndcg@10` is nDCG@10) or trec_eval's (`ndcg_cut_10`, `ndcg_cut.10`, `P_10`, `recall_100`,
`recip_rank`, `map`, `num_rel`), or a trec_eval name with a cutoff (`recip_rank@10`, `recall@100`). ir_measures
parses each into one measure; anything else (a family such as `P` or `ndcg_cut`, a typo, a measure pytrec_eval
does not compute) is a UserError listing the valid forms. The convention then fills in what the name leaves open:
the relevance level of binary measures (P, R, RR, AP, ...; nDCG uses the grades) unless the name says `rel=`, and
its depth for RR (MS MARCO dev) and AP (DL doc, DL21-23) unless the name has a cutoff.

Result keys: a trec_eval name keeps pytrec_eval's key (`ndcg_cut_10`, `map`, `recall_1000`, `recip_rank`,
`recip_rank@10`); an ir_measures name gets its canonical form (`nDCG@10`, `AP(rel=2)`). Count measures (`num_q`,
`num_rel`, `num_ret`, `num_rel_ret`) are summed over the judged queries, as trec_eval prints them; under -c a judged
query missing from the run still counts its relevant documents in `num_rel` (trec_eval 9.0.8's summary counts
grades > 0 there whatever -l; this follows -l, as its per-query values do).
"""

from __future__ import annotations

import math
import os
import re
from dataclasses import dataclass, field
from typing import Any, Mapping, Sequence

from pyserini_ssm.errors import UserError

Run = Mapping[str, Mapping[str, float]]
Qrels = Mapping[str, Mapping[str, int]]

@dataclass(frozen=True)
class Convention:
    name: str
    metrics: tuple[str, ...]
    relevance_level: int = 1  # trec_eval -l for binary measures
    depths: Mapping[str, int] = field(default_factory=dict)  # ir_measures measure name -> trec_eval -M


CONVENTIONS = {
    "trec-dl-passage": Convention("trec-dl-passage", ("ndcg_cut_10", "map", "recall_1000"), relevance_level=2),
    "trec-dl-passage-v2": Convention(
        "trec-dl-passage-v2", ("ndcg_cut_10", "map", "recall_1000"), relevance_level=2, depths={"AP": 100}
    ),
    "trec-dl-doc": Convention("trec-dl-doc", ("ndcg_cut_10", "map", "recall_1000"), depths={"AP": 100}),
    "msmarco-dev": Convention("msmarco-dev", ("recip_rank", "recall_1000"), depths={"RR": 10}),
    "msmarco-dev-depth100": Convention("msmarco-dev-depth100", ("recip_rank", "recall_1000"), depths={"RR": 100}),
    "beir": Convention("beir", ("ndcg_cut_10", "recall_100", "recall_1000")),
    "default": Convention("default", ("ndcg_cut_10", "map", "recall_100", "recall_1000")),
}

# What `--convention` accepts: short names, then every full name. None or "auto": guessed from the qrels name.
CONVENTION_ALIASES = {
    "dl": "trec-dl-passage",
    "dl-v2": "trec-dl-passage-v2",
    "dl-doc": "trec-dl-doc",
    "msmarco-dev": "msmarco-dev",
    "msmarco-dev-depth100": "msmarco-dev-depth100",
    "beir": "beir",
    "none": "default",
}
CONVENTION_CHOICES = ("auto", *CONVENTION_ALIASES, *(name for name in CONVENTIONS if name not in CONVENTION_ALIASES))


def convention_for(collection_hint: str | os.PathLike | None) -> Convention:
    """The 2CR convention for a qrels/topics name or file name (`dl19-passage`, `qrels.dl20-passage.txt`, NIST's
    `2019qrels-pass.txt`, MS MARCO's `qrels.dev.small.tsv`, ...); `default` when the name says nothing."""
    if collection_hint is None:
        return CONVENTIONS["default"]
    hint = os.path.basename(str(collection_hint)).lower()
    hint = re.sub(r"\.(gz|txt|tsv|trec)$", "", re.sub(r"\.(gz|txt|tsv|trec)$", "", hint))
    hint = re.sub(r"^(qrels|topics)\.", "", hint)
    # NIST's file names: 2019qrels-pass, 2020qrels-docs, 2021.qrels.pass.final, 2022.qrels.pass.withDupes, ...
    nist = re.match(r"^20(19|20|21|22|23)[.]?qrels[.-](pass|docs?)", hint)
    if nist:
        hint = f"dl{nist.group(1)}" + ("-doc" if nist.group(2).startswith("doc") else "")
    if re.fullmatch(r"(msmarco-)?(doc)?dev(\.small)?", hint):  # MS MARCO's qrels.dev.small.tsv, msmarco-docdev-qrels
        hint = "msmarco-doc-dev" if "doc" in hint else "msmarco-passage-dev"
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


def resolve_convention(convention: str | None, collection_hint: str | os.PathLike | None = None) -> Convention:
    """`--convention`: a short or full name (`dl`, `trec-dl-passage`, `none`, ...); None or `auto` guesses from
    `collection_hint` (the qrels name or file name)."""
    if convention is None or convention == "auto":
        return convention_for(collection_hint)
    name = CONVENTION_ALIASES.get(convention, convention)
    if name not in CONVENTIONS:
        raise UserError(f"unknown convention {convention!r}; choose one of {', '.join(CONVENTION_CHOICES)}")
    return CONVENTIONS[name]


VALID_METRIC_FORMS = (
    "ir_measures names (nDCG@10, P@10, R@100, RR@10, AP, AP@100, AP(rel=2), Judged@10, Rprec, Bpref, Success@10, "
    "NumRel, NumRet, NumQ; the name in any case) or trec_eval names (ndcg_cut_10, P_10, recall_100, recip_rank, map, "
    "map_cut_100, ndcg, bpref, Rprec, success_10, num_rel, num_ret, num_rel_ret, num_q), or a trec_eval name with "
    "a cutoff (recip_rank@10)"
)
# A trec_eval measure as pytrec_eval spells it: a name, optionally one parameter after '_' or '.'.
_TREC_SHAPE = re.compile(r"[A-Za-z][A-Za-z_]*?(?:[._](\d+(?:\.\d+)?))?")
_CUTOFF_SUFFIX = re.compile(r"(.+?)@(\d+)")
# Measures whose cutoff we apply by cutting the run in trec_eval's order (pytrec_eval has no RR@k; ir_measures'
# Judged@k breaks ties by docid ascending, trec_eval by docid descending).
_CUT_BY_US = ("RR", "Judged")


@dataclass(frozen=True)
class Metric:
    """One requested metric: its result key, the ir_measures measure computed (relevance level set), and the depth
    each query's ranking is cut to first (trec_eval -M; None: the whole ranking)."""

    key: str
    measure: Any
    depth: int | None
    spec: str = ""  # the name as written

    @property
    def is_count(self) -> bool:
        """Summed over queries (num_rel, num_ret, num_q), as trec_eval reports them, not averaged."""
        from ir_measures.measures.base import SumAgg

        return isinstance(self.measure.aggregator(), SumAgg)

    def describe(self) -> str:
        """What is computed, every parameter shown: `P(rel=2)@10`, `AP(rel=1)`, `RR(rel=1) on the top 10`."""
        measure = self.measure
        params = ",".join(f"{name}={value!r}" for name, value in measure.params.items() if name != measure.AT_PARAM)
        text = measure.NAME + (f"({params})" if params else "")
        if measure.AT_PARAM in measure.params:
            text += f"@{measure.params[measure.AT_PARAM]}"
        return text + ("" if self.depth is None else f" on the top {self.depth}")


def _unknown(spec: str, why: str = "") -> UserError:
    return UserError(f"unknown metric {spec!r}{': ' + why if why else ''}; valid: {VALID_METRIC_FORMS}")


def _ir_measures_name(text: str) -> tuple[Any, str] | None:
    """`nDCG@10`, `ndcg@10`, `AP(rel=2)`, `MAP`: ir_measures' syntax, the measure name in any case -> (measure, the
    text with the name in ir_measures' case); None if the leading name is no ir_measures measure."""
    import ir_measures

    match = re.match(r"[^\W\d]\w*", text)
    if match is None:
        return None
    registry = ir_measures.measures.registry
    name = match.group(0)
    if name not in registry:
        folded: dict[str, str] = {}
        for registered, registered_measure in registry.items():  # ndcg -> nDCG (its NAME), not the alias NDCG
            if registered.lower() not in folded or registered == registered_measure.NAME:
                folded[registered.lower()] = registered
        if name.lower() not in folded:
            return None
        name = folded[name.lower()]
    spelled = name + text[match.end():]
    try:
        return ir_measures.parse_measure(spelled), re.sub(r"\s+", "", spelled)
    except Exception:  # ValueError, NameError, SyntaxError, RecursionError: ir_measures' parser on odd text
        return None


def _trec_measures(text: str) -> list[Any] | None:
    """The measures a trec_eval name stands for (several for a family like `P`), None if it is none."""
    import ir_measures
    import pytrec_eval

    if not _TREC_SHAPE.fullmatch(text) or text in pytrec_eval.supported_nicknames:
        return None
    try:
        return list(ir_measures.parse_trec_measure(text))
    except Exception:  # ValueError for unknown or unsupported names
        return None


def _without_cutoff(measure: Any) -> Any:
    return type(measure)(**{name: value for name, value in measure.params.items() if name != "cutoff"})


def parse_metric(spec: str, convention: Convention, relevance_level: int | None = None) -> Metric:
    """One metric name -> the one computation it stands for under `convention` (see the module docstring)."""
    import ir_measures

    if not isinstance(spec, str) or not spec.strip():
        raise _unknown(str(spec), "empty")
    text = spec.strip()
    level = convention.relevance_level if relevance_level is None else relevance_level
    from_trec = False
    measure = None
    key = text
    trec = _trec_measures(text)
    if trec is not None:
        if len(trec) != 1:
            examples = ", ".join(str(m) for m in trec[:3])
            raise UserError(f"metric {spec!r} names {len(trec)} measures ({examples}, ...), not one: give the cutoff, "
                            f"e.g. {text}_10 or {trec[0].NAME}@10")
        measure, from_trec = trec[0], True
        key = re.sub(r"^([A-Za-z_]+)\.", r"\1_", text)  # ndcg_cut.10 -> ndcg_cut_10, as pytrec_eval names it
    if measure is None:
        parsed = _ir_measures_name(text)
        if parsed is not None:
            measure, key = parsed  # the key keeps the parameters as written: AP(rel=1) stays apart from AP
    if measure is None:
        cut = _CUTOFF_SUFFIX.fullmatch(text)
        family = _trec_measures(cut.group(1)) if cut else None
        if family and len({m.NAME for m in family}) == 1 and "cutoff" in family[0].SUPPORTED_PARAMS:
            base = family[0]
            if len(family) == 1 and "cutoff" in base.params:
                raise _unknown(spec, f"{cut.group(1)} has a cutoff already")
            measure, from_trec = base(cutoff=int(cut.group(2))), True
            key = re.sub(r"^([A-Za-z_]+)\.", r"\1_", text)
    if measure is None:
        raise _unknown(spec)
    supported = measure.SUPPORTED_PARAMS
    if "cutoff" in supported and supported["cutoff"].required and "cutoff" not in measure.params:
        raise UserError(f"metric {spec!r} needs a cutoff, e.g. {measure.NAME}@10")
    try:
        measure.validate_params()
    except AssertionError as error:
        raise _unknown(spec, str(error)) from None
    params = measure.params
    for name in ("cutoff", "rel"):
        value = params.get(name)
        if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
            raise _unknown(spec, f"{name} must be a positive integer, got {value!r}")

    # The convention's relevance level, where the name leaves it open (a trec_eval name always does: -l).
    if "rel" in supported and (from_trec or "rel" not in params):
        if measure.NAME != "NumRet" or "rel" in params:  # NumRet(rel=k) is num_rel_ret; NumRet is num_ret
            measure = measure(rel=level)
    depth = None
    if measure.NAME in _CUT_BY_US and "cutoff" in measure.params:
        depth, measure = measure.params["cutoff"], _without_cutoff(measure)
    elif "cutoff" not in measure.params and measure.NAME in convention.depths:
        depth = convention.depths[measure.NAME]
    if measure.NAME not in ("Judged", "NumRel", "NumQ") and not ir_measures.pytrec_eval.supports(measure):
        raise _unknown(spec, f"pytrec_eval does not compute {measure}")
    return Metric(key=key, measure=measure, depth=depth, spec=text)


def resolve_metrics(
    specs: Sequence[str] | None, convention: Convention, relevance_level: int | None = None
) -> list[Metric]:
    """Each name -> its computation; the convention's metrics when `specs` is empty. Rejects repeats (also two names
    of one computation, such as `nDCG@10` and `ndcg_cut_10`)."""
    if relevance_level is not None and (isinstance(relevance_level, bool) or int(relevance_level) < 1):
        raise UserError(f"relevance level must be >= 1, got {relevance_level}")
    metrics = [parse_metric(spec, convention, relevance_level) for spec in (specs or convention.metrics)]
    seen: dict[tuple[str, int | None], str] = {}
    for metric in metrics:
        computation = (str(metric.measure), metric.depth)
        if computation in seen:
            raise UserError(f"a metric is asked for twice: {seen[computation]!r} and {metric.spec!r} are both "
                            f"{metric.describe()}; keep one")
        seen[computation] = metric.spec
    keys = [metric.key for metric in metrics]
    if len(set(keys)) != len(keys):
        raise UserError(f"a metric is asked for twice: {keys}")
    return metrics


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
    """Each metric over the judged queries (a dict: metric -> value; the mean, or the sum for count measures), with
    the details as attributes.

    `per_query` maps qid -> metric -> value (filled when asked for), `num_queries` is the number averaged over,
    `convention` the 2CR convention used, `relevance_level` the -l applied to binary measures, `metrics` the
    `Metric` behind each key (what was computed).
    """

    def __init__(self, means, per_query, num_queries, convention, relevance_level, metrics=()):
        super().__init__(means)
        self.per_query: dict[str, dict[str, float]] = per_query
        self.num_queries: int = num_queries
        self.convention: str = convention
        self.relevance_level: int = relevance_level
        self.metrics: dict[str, Metric] = {metric.key: metric for metric in metrics}

    def describe(self) -> str:
        """The metrics line: convention, relevance level, queries, and each metric whose name hides what it is."""
        text = f"{self.convention} convention, relevance level {self.relevance_level}, {self.num_queries} judged queries"
        hidden = [f"{key} = {metric.describe()}" for key, metric in self.metrics.items() if key != metric.describe()]
        return text + ("; " + ", ".join(hidden) if hidden else "")


def aggregate(metric: Metric, values: Sequence[float]) -> float:
    """The summary of one metric's per-query values: their sum for count measures (trec_eval), else their mean.
    fsum is correctly rounded: the same value whatever the order of the queries."""
    total = math.fsum(values)
    return total if metric.is_count else total / len(values)


def _check_scores(run: Mapping[str, Mapping[str, float]]) -> None:
    for qid, scores in run.items():
        bad = next(((d, s) for d, s in scores.items() if not math.isfinite(s)), None)
        if bad is not None:
            what = "not a number" if math.isnan(bad[1]) else "infinite (runs need finite scores)"
            raise UserError(f"score of document {bad[0]!r} for query {qid!r} is {what}")


def _compute(group: Sequence[Metric], qrels: dict[str, dict[str, int]], ranked: dict[str, dict[str, float]],
             values: dict[str, dict[str, float]]) -> None:
    """Per-query values of `group` (metrics of one depth) on `ranked` into `values` (judged qid -> key -> value).

    ir_measures runs pytrec_eval (and its own Judged); a judged query without results gets the measure's default
    (0), as trec_eval -c counts it. num_rel and num_q do not depend on the ranking: they come from the qrels (every
    judged query counts, and ir_measures' pytrec_eval provider accepts num_rel at level 1 only).
    """
    import ir_measures

    by_provider: dict[str, list[Metric]] = {}
    for metric in group:
        name = metric.measure.NAME
        if name == "NumRel":
            level = metric.measure["rel"]
            for qid, judged in qrels.items():
                values[qid][metric.key] = float(sum(1 for grade in judged.values() if grade >= level))
        elif name == "NumQ":
            for qid in qrels:
                values[qid][metric.key] = 1.0
        else:
            by_provider.setdefault("judged" if name == "Judged" else "pytrec_eval", []).append(metric)
    for provider_name, metrics in by_provider.items():
        provider = getattr(ir_measures, provider_name)
        keys_of: dict[Any, list[str]] = {}
        for metric in metrics:
            keys_of.setdefault(metric.measure, []).append(metric.key)
        # Judged divides by the ranking's length: an empty ranking has no value (the default 0 below).
        run = ranked if provider_name == "pytrec_eval" else {q: r for q, r in ranked.items() if r}
        evaluator = provider.evaluator(list(keys_of), qrels)
        for result in evaluator.iter_calc(run):
            if result.query_id in values:
                for key in keys_of[result.measure]:
                    values[result.query_id][key] = float(result.value)
        for qid in qrels:
            for metric in metrics:
                values[qid].setdefault(metric.key, float(metric.measure.DEFAULT))


def evaluate(
    run: Run,
    qrels: Qrels,
    metrics: Sequence[str] | None = None,
    *,
    collection_hint: str | os.PathLike | None = None,
    per_query: bool = False,
    relevance_level: int | None = None,
    convention: str | None = None,
) -> Evaluation:
    """Score `run` (qid -> docid -> score) against `qrels` the way Pyserini's 2CR pages do.

    `convention` (`dl`, `msmarco-dev`, `beir`, `none`, a full name; None or `auto`: guessed from
    `collection_hint`, a qrels/topics name or file name) picks the default metrics, the relevance level and the
    depths; `relevance_level` overrides its trec_eval -l for binary measures (MAP, recall, MRR, P).
    """
    chosen = resolve_convention(convention, collection_hint)
    resolved = resolve_metrics(metrics, chosen, relevance_level)
    level = chosen.relevance_level if relevance_level is None else int(relevance_level)

    clean_qrels = {str(qid): {str(d): int(g) for d, g in judged.items()} for qid, judged in qrels.items()}
    clean_qrels = {qid: judged for qid, judged in clean_qrels.items() if judged}
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
    _check_scores(judged_run)

    values: dict[str, dict[str, float]] = {qid: {} for qid in clean_qrels}
    groups: dict[int | None, list[Metric]] = {}
    for metric in resolved:
        groups.setdefault(metric.depth, []).append(metric)
    for depth, group in groups.items():
        ranked = judged_run if depth is None else cut_run(judged_run, depth)
        _compute(group, clean_qrels, ranked, values)

    qids = sorted(values)
    means = {metric.key: aggregate(metric, [values[qid][metric.key] for qid in qids]) for metric in resolved}
    if per_query:  # in the order the metrics were asked for
        values = {qid: {metric.key: values[qid][metric.key] for metric in resolved} for qid in qids}
    return Evaluation(
        means,
        per_query=values if per_query else {},
        num_queries=len(qids),
        convention=chosen.name,
        relevance_level=level,
        metrics=resolved,
    )
