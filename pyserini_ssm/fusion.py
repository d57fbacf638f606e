"""Fusing ranked lists: reciprocal rank fusion and (normalised) score interpolation, with Pyserini's conventions.

Pure Python, so that it is testable without Java or pandas; `tests/test_fusion.py` checks it against
`pyserini.fusion` on the same files. The conventions are Pyserini's (`pyserini/fusion/_base.py` and
`TrecRun.merge` in `pyserini/trectools/_base.py`):

- a run is read best first; a document's rank is its 1-based position in its query's list;
- RRF gives each document 1 / (rrf_k + rank) per run, rrf_k = 60 (Cormack et al., SIGIR 2009);
- scores are rescored (RRF, min-max normalised, scaled) over everything a run holds for the query, *then* only the
  first `depth` entries of each run's list take part (None = all);
- a document missing from a run gets nothing from it (a sum over the runs that hold it);
- the fused list is sorted by (score descending, docid ascending) and cut at `k` (None = the union of all
  documents); min-max normalisation maps a query whose scores are all equal to 1.0;
- scores must be finite (an infinite one would make a whole query NaN): a UserError names it.

Input runs are `dict[qid, list[Hit]]` (best first, as `pyserini_ssm.runs.read_run` returns) or
`dict[qid, dict[docid, score]]` (ordered here by score descending, docid ascending). Output is
`dict[qid, list[Hit]]`, ready for `pyserini_ssm.runs.write_run`.
"""

from __future__ import annotations

import math
from typing import Mapping, Sequence, Union

from pyserini_ssm.errors import UserError
from pyserini_ssm.runs import Hit

RankedLists = Mapping[str, Sequence[Hit]]
ScoreDict = Mapping[str, Mapping[str, float]]
AnyRun = Union[RankedLists, ScoreDict]

DEFAULT_RRF_K = 60


def as_ranked_lists(run: AnyRun) -> dict[str, list[tuple[str, float]]]:
    """(docid, score) lists per query, best first. A list keeps its order; a score dict is sorted (-score, docid)."""
    ranked: dict[str, list[tuple[str, float]]] = {}
    for qid, hits in run.items():
        if isinstance(hits, Mapping):
            ranked[qid] = sorted(((docid, float(score)) for docid, score in hits.items()), key=lambda p: (-p[1], p[0]))
        else:
            ranked[qid] = [(hit.docid, float(hit.score)) for hit in hits]
    return ranked


def min_max_normalize(scores: Sequence[float]) -> list[float]:
    """(s - min) / (max - min); all-equal scores map to 1.0, as Pyserini's RescoreMethod.NORMALIZE does."""
    if not scores:
        return []
    low, high = min(scores), max(scores)
    if high == low:
        return [1.0] * len(scores)
    if not math.isfinite(high - low):  # e.g. -1e308 and 1e308: halve first, or inf / inf writes nan
        return [(score / 2 - low / 2) / (high / 2 - low / 2) for score in scores]
    return [(score - low) / (high - low) for score in scores]


def _merge_sum(
    rescored_runs: Sequence[dict[str, list[tuple[str, float]]]], depth: int | None, k: int | None
) -> dict[str, list[Hit]]:
    """Sum each document's scores over the runs (first `depth` of each), sort (-score, docid), keep `k`."""
    _check_cutoff("depth", depth)
    _check_cutoff("k", k)
    fused: dict[str, list[Hit]] = {}
    qids = list(dict.fromkeys(qid for run in rescored_runs for qid in run))
    for qid in qids:
        totals: dict[str, float] = {}
        for run in rescored_runs:
            for docid, score in run.get(qid, [])[:depth]:
                # First occurrence wins the insertion slot; adding in run order reproduces pandas' groupby sum.
                totals[docid] = totals[docid] + score if docid in totals else score
        ordered = sorted(totals.items(), key=lambda pair: (-pair[1], pair[0]))[:k]
        fused[qid] = [Hit(docid, score) for docid, score in ordered]
    return fused


def _check_cutoff(name: str, value: int | None) -> None:
    if value is not None and value < 1:
        raise UserError(f"{name} must be a positive number of documents (or None for all), got {value}")


def _check_runs(runs: Sequence[AnyRun], at_least: int = 2) -> list[dict[str, list[tuple[str, float]]]]:
    if len(runs) < at_least:
        raise UserError(f"fusion needs at least {at_least} runs, got {len(runs)}")
    ranked = [as_ranked_lists(run) for run in runs]
    for number, run in enumerate(ranked, start=1):  # read_run rejects these with a line number; dicts come here
        for qid, hits in run.items():
            for docid, score in hits:
                if not math.isfinite(score):
                    raise UserError(f"run {number}, query {qid!r}, document {docid!r}: score {score!r} is not "
                                    "finite; fusion needs finite scores")
    return ranked


def reciprocal_rank_fusion(
    runs: Sequence[AnyRun], *, rrf_k: int = DEFAULT_RRF_K, depth: int | None = None, k: int | None = None
) -> dict[str, list[Hit]]:
    """RRF: score(d) = sum over runs of 1 / (rrf_k + rank of d in that run), ranks 1-based, as Pyserini."""
    if rrf_k < 0:
        raise UserError(f"rrf_k must be non-negative, got {rrf_k}")
    rescored = [
        {qid: [(docid, 1.0 / (rrf_k + rank)) for rank, (docid, _) in enumerate(hits, start=1)] for qid, hits in run.items()}
        for run in _check_runs(runs)
    ]
    return _merge_sum(rescored, depth, k)


def score_interpolation(
    runs: Sequence[AnyRun],
    weights: Sequence[float] | None = None,
    *,
    normalize: bool = True,
    depth: int | None = None,
    k: int | None = None,
) -> dict[str, list[Hit]]:
    """score(d) = sum_i weights[i] * s_i(d), s_i min-max normalised per query when `normalize` (missing d: 0).

    Pyserini's methods are special cases: `interpolation` = two runs, weights (alpha, 1 - alpha), normalize=False;
    `normalize` = weights all 1, normalize=True; `average` = weights all 1/n, normalize=False.
    """
    ranked = _check_runs(runs)
    if weights is None:
        weights = [1.0 / len(ranked)] * len(ranked)
    if len(weights) != len(ranked):
        raise UserError(f"got {len(weights)} weights for {len(ranked)} runs: give one weight per run")
    rescored = []
    for run, weight in zip(ranked, weights):
        rescored_run = {}
        for qid, hits in run.items():
            scores = [score for _, score in hits]
            if normalize:
                scores = min_max_normalize(scores)
            rescored_run[qid] = [(docid, score * weight) for (docid, _), score in zip(hits, scores)]
        rescored.append(rescored_run)
    return _merge_sum(rescored, depth, k)


def interpolate(
    first: AnyRun,
    second: AnyRun,
    alpha: float = 0.5,
    *,
    normalize: bool = True,
    depth: int | None = None,
    k: int | None = None,
) -> dict[str, list[Hit]]:
    """alpha * first + (1 - alpha) * second, each min-max normalised per query unless normalize=False."""
    if not 0.0 <= alpha <= 1.0:
        raise UserError(f"alpha must be in [0, 1], got {alpha}")
    return score_interpolation([first, second], [alpha, 1.0 - alpha], normalize=normalize, depth=depth, k=k)
