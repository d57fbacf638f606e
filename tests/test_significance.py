import math

import pytest

from pyserini_ssm.errors import UserError
from pyserini_ssm.significance import (
    bonferroni,
    paired_randomization_test,
    paired_t_test,
    student_t_two_sided_p,
    win_tie_loss,
)


def test_t_test_known_answer_three_queries():
    # differences 1, 2, 3: mean 2, sd 1, se 1/sqrt(3), t = 2 sqrt(3); for df = 2, P(|T| > t) = 1 - t / sqrt(t^2 + 2)
    result = paired_t_test([2.0, 4.0, 6.0], [1.0, 2.0, 3.0])
    t = 2 * math.sqrt(3)
    assert result.statistic == pytest.approx(t, rel=1e-12)
    assert result.p_value == pytest.approx(1 - t / math.sqrt(t * t + 2), rel=1e-10)  # 0.0741799...
    assert result.p_value == pytest.approx(0.0741799, abs=1e-7)
    assert result.mean_difference == pytest.approx(2.0)
    assert result.n == 3


def test_t_test_known_answer_two_queries_is_cauchy():
    # differences 1, 3: t = 2 with df = 1 (Cauchy): p = 1 - (2 / pi) atan(2)
    result = paired_t_test([1.0, 3.0], [0.0, 0.0])
    assert result.statistic == pytest.approx(2.0)
    assert result.p_value == pytest.approx(1 - 2 / math.pi * math.atan(2.0), rel=1e-10)


def test_t_test_sign_follows_run_minus_baseline():
    assert paired_t_test([1.0, 2.0, 3.5], [2.0, 4.0, 6.0]).statistic < 0


def test_own_t_distribution_matches_closed_forms_and_scipy():
    for t in (0.0, 0.5, 2.0, 3.4641016, 10.0):
        assert student_t_two_sided_p(t, 1) == pytest.approx(1 - 2 / math.pi * math.atan(t), abs=1e-12)
        assert student_t_two_sided_p(t, 2) == pytest.approx(1 - t / math.sqrt(t * t + 2), abs=1e-12)
    stats = pytest.importorskip("scipy.stats")
    for df in (3, 10, 42, 299):
        for t in (0.1, 1.0, 1.96, 2.7, 6.0):
            assert student_t_two_sided_p(t, df) == pytest.approx(2 * stats.t.sf(t, df), rel=1e-9, abs=1e-15)


def test_t_test_degenerate_variance():
    same = paired_t_test([0.3, 0.5, 0.7], [0.3, 0.5, 0.7])
    assert (same.statistic, same.p_value) == (0.0, 1.0)
    shifted = paired_t_test([0.4, 0.6, 0.8], [0.3, 0.5, 0.7])
    assert shifted.p_value == 0.0 and shifted.statistic == math.inf


def test_exact_randomization_known_answers():
    # differences 1, 2, 3: of the 8 sign flips only (+,+,+) and (-,-,-) reach |sum| >= 6
    assert paired_randomization_test([1.0, 2.0, 3.0], [0.0, 0.0, 0.0]).p_value == pytest.approx(2 / 8)
    # differences 0.3, -0.1, 0.2 (sum 0.4): flips give sums +-0.6, +-0.4, +-0.2, 0, 0; four reach |sum| >= 0.4.
    # 0.3 - 0.1 + 0.2 is not 0.4 in floating point: the tolerance must still count the observed flip.
    result = paired_randomization_test([0.5, 0.4, 0.6], [0.2, 0.5, 0.4])
    assert result.p_value == pytest.approx(4 / 8)
    assert result.mean_difference == pytest.approx(0.4 / 3)


def test_sampled_randomization_is_seeded_and_close_to_exact():
    run = [0.61, 0.40, 0.75, 0.52, 0.33, 0.90, 0.47, 0.58, 0.66, 0.71, 0.29, 0.50]
    baseline = [0.55, 0.42, 0.60, 0.50, 0.35, 0.70, 0.40, 0.58, 0.60, 0.52, 0.30, 0.45]
    exact = paired_randomization_test(run, baseline, exact=True).p_value
    first = paired_randomization_test(run, baseline, exact=False, trials=20_000, seed=7).p_value
    again = paired_randomization_test(run, baseline, exact=False, trials=20_000, seed=7).p_value
    assert first == again
    assert first == pytest.approx(exact, abs=0.01)  # sampling error sd ~ sqrt(p(1-p)/20000) < 0.004
    assert 0.0 < exact < 0.05  # 10 of 12 queries improve


def test_bonferroni():
    assert bonferroni([0.01, 0.02, 0.5]) == pytest.approx([0.03, 0.06, 1.0])
    assert bonferroni([0.01], comparisons=4) == pytest.approx([0.04])
    with pytest.raises(UserError):
        bonferroni([])


def test_win_tie_loss():
    counts = win_tie_loss([0.5, 0.3, 0.2, 0.1 + 0.2], [0.4, 0.3, 0.25, 0.3])
    assert (counts.wins, counts.ties, counts.losses) == (1, 2, 1)
    assert str(counts) == "1/2/1"


def test_mismatched_lengths_are_user_errors():
    with pytest.raises(UserError, match="equally long"):
        paired_t_test([0.1, 0.2], [0.1, 0.2, 0.3])
    with pytest.raises(UserError, match="at least 2"):
        paired_randomization_test([0.1], [0.2])
