"""Paired significance tests over per-query metric values, as IR papers report them.

Every function takes two equally long sequences of per-query values for the same queries in the same order
(`run`, `baseline`), and is pure: no files, no global random state.

- `paired_t_test`: Student's paired t-test, two-sided (scipy.stats.ttest_rel when scipy is installed, else the same
  statistic with the t distribution computed here).
- `paired_randomization_test`: Fisher's randomization (permutation) test as Smucker, Allan and Carterette (CIKM 2007)
  describe it for IR: under the null hypothesis the two systems' scores for a query are exchangeable, so each
  per-query difference's sign is flipped at random; the p-value is the share of flips whose |mean difference| is at
  least the observed one. Exact (all 2^n flips) for small n, seeded Monte-Carlo otherwise.
- `bonferroni`: corrects p-values for the number of comparisons.
- `win_tie_loss`: per-query counts.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

import numpy as np

from pyserini_ssm.errors import UserError

# Per-query metric values that differ by less than this are the same value written twice (float noise), a tie.
TIE_TOLERANCE = 1e-9
# Largest n for which the randomization test enumerates all 2^n sign flips instead of sampling.
EXACT_PERMUTATION_MAX_QUERIES = 20


@dataclass(frozen=True)
class TestResult:
    """Outcome of a paired test: the statistic (t, or the observed mean difference) and the two-sided p-value."""

    statistic: float
    p_value: float
    mean_difference: float
    n: int


@dataclass(frozen=True)
class WinTieLoss:
    wins: int
    ties: int
    losses: int

    def __str__(self) -> str:
        return f"{self.wins}/{self.ties}/{self.losses}"


def _paired_differences(run: Sequence[float], baseline: Sequence[float], at_least: int = 2) -> np.ndarray:
    run_values = np.asarray(run, dtype=np.float64)
    baseline_values = np.asarray(baseline, dtype=np.float64)
    if run_values.shape != baseline_values.shape or run_values.ndim != 1:
        raise UserError(
            f"paired test needs two equally long lists of per-query values, got {run_values.shape} and "
            f"{baseline_values.shape}"
        )
    if run_values.size < at_least:
        raise UserError(f"paired test needs at least {at_least} queries, got {run_values.size}")
    return run_values - baseline_values


def student_t_two_sided_p(t: float, degrees_of_freedom: int) -> float:
    """Two-sided p-value P(|T| >= |t|) for Student's t, through the regularized incomplete beta function.

    P(|T| >= |t|) = I_x(df/2, 1/2) with x = df / (df + t^2). Used when scipy is absent; tested against scipy.
    """
    if math.isinf(t):
        return 0.0
    x = degrees_of_freedom / (degrees_of_freedom + t * t)
    return _regularized_incomplete_beta(degrees_of_freedom / 2.0, 0.5, x)


def _regularized_incomplete_beta(a: float, b: float, x: float) -> float:
    """I_x(a, b) by the continued fraction of Numerical Recipes (modified Lentz), accurate to ~1e-14."""
    if x <= 0.0:
        return 0.0
    if x >= 1.0:
        return 1.0
    log_front = math.lgamma(a + b) - math.lgamma(a) - math.lgamma(b) + a * math.log(x) + b * math.log1p(-x)
    if x > (a + 1.0) / (a + b + 2.0):  # the continued fraction converges fast only below this point
        return 1.0 - _regularized_incomplete_beta(b, a, 1.0 - x)
    tiny = 1e-300
    c, d = 1.0, 1.0 - (a + b) * x / (a + 1.0)
    d = 1.0 / (d if abs(d) > tiny else tiny)
    fraction = d
    for m in range(1, 10_000):
        numerator = m * (b - m) * x / ((a + 2 * m - 1) * (a + 2 * m))
        for step in (numerator, -(a + m) * (a + b + m) * x / ((a + 2 * m) * (a + 2 * m + 1))):
            d = 1.0 + step * d
            d = 1.0 / (d if abs(d) > tiny else tiny)
            c = 1.0 + step / c
            c = c if abs(c) > tiny else tiny
            fraction *= c * d
        if abs(c * d - 1.0) < 1e-15:
            break
    return math.exp(log_front) * fraction / a


def paired_t_test(run: Sequence[float], baseline: Sequence[float]) -> TestResult:
    """Two-sided paired t-test of `run` against `baseline` (same queries, same order).

    When every difference is the same (zero variance, up to float noise) the t statistic is undefined:
    identical runs give t = 0, p = 1; a constant nonzero shift gives t = +/-inf, p = 0 (scipy's limits).
    """
    differences = _paired_differences(run, baseline)
    n = differences.size
    mean = float(differences.mean())
    spread = float(differences.std(ddof=1))
    if spread <= TIE_TOLERANCE:  # all differences equal up to float noise (e.g. 0.4 - 0.3 vs 0.6 - 0.5)
        if abs(mean) <= TIE_TOLERANCE:
            return TestResult(0.0, 1.0, 0.0, n)
        return TestResult(math.copysign(math.inf, mean), 0.0, mean, n)
    try:
        from scipy import stats
    except ImportError:
        stats = None
    if stats is not None:
        result = stats.ttest_rel(np.asarray(run, dtype=np.float64), np.asarray(baseline, dtype=np.float64))
        return TestResult(float(result.statistic), float(result.pvalue), mean, n)
    t = mean / (spread / math.sqrt(n))
    return TestResult(t, student_t_two_sided_p(t, n - 1), mean, n)


def paired_randomization_test(
    run: Sequence[float],
    baseline: Sequence[float],
    *,
    trials: int = 100_000,
    seed: int = 0,
    exact: bool | None = None,
) -> TestResult:
    """Two-sided paired randomization test (Smucker et al. 2007): p = share of sign flips with |mean| >= observed.

    `exact=None` enumerates all 2^n flips when n <= 20 and samples `trials` flips (seeded) otherwise; the observed
    assignment is one of the 2^n flips, so an exact p is never below 2 / 2^n (the observed flip and its mirror).
    """
    differences = _paired_differences(run, baseline)
    n = differences.size
    observed = abs(float(differences.mean()))
    # Means equal to the observed one up to float noise count as "at least as extreme".
    threshold = observed - 1e-12 * max(1.0, observed)
    if exact is None:
        exact = n <= EXACT_PERMUTATION_MAX_QUERIES
    if exact:
        if n > 26:
            raise UserError(f"an exact randomization test over {n} queries needs 2^{n} flips; use exact=False")
        flips = ((np.arange(2**n)[:, None] >> np.arange(n)[None, :]) & 1) * 2 - 1  # (2^n, n) of +/-1
        means = np.abs(flips @ differences) / n
        p_value = float(np.count_nonzero(means >= threshold)) / flips.shape[0]
    else:
        if trials < 1:
            raise UserError(f"trials must be positive, got {trials}")
        generator = np.random.default_rng(seed)
        extreme = 0
        chunk = max(1, min(trials, 2_000_000 // max(n, 1)))  # bound memory at ~16 MB of flips per step
        done = 0
        while done < trials:
            size = min(chunk, trials - done)
            signs = generator.integers(0, 2, size=(size, n), dtype=np.int8) * 2 - 1  # (size, n)
            means = np.abs(signs @ differences) / n
            extreme += int(np.count_nonzero(means >= threshold))
            done += size
        p_value = extreme / trials
    return TestResult(float(differences.mean()), p_value, float(differences.mean()), n)


def bonferroni(p_values: Sequence[float], comparisons: int | None = None) -> list[float]:
    """Bonferroni-adjusted p-values: min(1, p * m), m = `comparisons` (default: how many p-values are given)."""
    m = len(p_values) if comparisons is None else comparisons
    if m < 1:
        raise UserError(f"the number of comparisons must be positive, got {m}")
    return [min(1.0, p * m) for p in p_values]


def win_tie_loss(run: Sequence[float], baseline: Sequence[float], tolerance: float = TIE_TOLERANCE) -> WinTieLoss:
    """Per-query counts of `run` better than / equal to / worse than `baseline` (|difference| <= tolerance ties)."""
    differences = _paired_differences(run, baseline, at_least=0)
    wins = int(np.count_nonzero(differences > tolerance))
    losses = int(np.count_nonzero(differences < -tolerance))
    return WinTieLoss(wins, int(differences.size) - wins - losses, losses)
