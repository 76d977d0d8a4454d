"""One-run audit statistics (Steinke, Nasr and Jagielski 2023): p-value, ε bound, guessing."""

import math

import numpy as np
import pytest
import scipy.stats
from scipy.special import expit

from dpjax.privacy.audit import (
    AuditResult,
    audit_from_scores,
    audit_guesses,
    canary_inclusion,
    default_guess_counts,
    epsilon_lower_bound,
    p_value,
)

DELTA = 1e-5


def _p_value_appendix_d(m, r, v, eps, delta):
    """The paper's Appendix D listing, transcribed loop for loop, as an oracle."""
    q = 1 / (1 + math.exp(-eps))
    beta = scipy.stats.binom.sf(v - 1, r, q)
    alpha = 0.0
    total = 0.0
    for i in range(1, v + 1):
        total += scipy.stats.binom.pmf(v - i, r, q)
        if total > i * alpha:
            alpha = total / i
    return min(beta + alpha * delta * 2 * m, 1)


def _p_value_survival_form(m, r, v, eps, delta):
    """α = max_{1≤i≤v} (P[Bin ≥ v−i] − β)/i written with survival functions."""
    q = expit(eps)
    beta = scipy.stats.binom.sf(v - 1, r, q)
    i = np.arange(1, v + 1)
    alpha = np.max((scipy.stats.binom.sf(v - i - 1, r, q) - beta) / i)
    return min(1.0, beta + 2 * m * delta * alpha)


# --- canaries and guesses -------------------------------------------------------------------


def test_canary_inclusion_is_a_seeded_fair_coin():
    a = canary_inclusion(10_000, seed=3)
    assert a.dtype == np.bool_ and a.shape == (10_000,)
    np.testing.assert_array_equal(a, canary_inclusion(10_000, seed=3))
    assert not np.array_equal(a, canary_inclusion(10_000, seed=4))
    assert abs(a.mean() - 0.5) < 4 * 0.5 / math.sqrt(10_000)
    assert canary_inclusion(0, seed=0).shape == (0,)


def test_audit_guesses_top_and_bottom():
    scores = np.array([0.3, 5.0, -2.0, 1.0, 0.0, 4.0])
    r, g = audit_guesses(scores, k_plus=2, k_minus=1)
    assert r == 3
    np.testing.assert_array_equal(g, [0, 1, -1, 0, 0, 1])
    r, g = audit_guesses(scores, k_plus=0, k_minus=0)
    assert r == 0 and not g.any()
    r, g = audit_guesses(scores, k_plus=3, k_minus=3)
    assert r == 6 and np.all(g != 0)


def test_audit_guesses_ties_broken_by_index_not_by_anything_else():
    scores = np.zeros(6)
    _, g = audit_guesses(scores, k_plus=2, k_minus=2)
    np.testing.assert_array_equal(g, [-1, -1, 0, 0, 1, 1])


@pytest.mark.parametrize("k_plus,k_minus", [(-1, 0), (0, -1), (4, 3)])
def test_audit_guesses_rejects_bad_counts(k_plus, k_minus):
    with pytest.raises(ValueError):
        audit_guesses(np.arange(6.0), k_plus, k_minus)


def test_audit_guesses_rejects_nonfinite_scores():
    with pytest.raises(ValueError, match="finite"):
        audit_guesses(np.array([0.0, np.nan, 1.0]), 1)


# --- p-value ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "m,r,v,eps,delta",
    [
        (1000, 1000, 731, 1.0, 1e-5),
        (1000, 100, 97, 3.0, 1e-5),
        (5000, 5000, 5000, 7.0, 1e-5),
        (100, 100, 100, 3.5, 1e-5),
        (1000, 200, 120, 0.2, 1e-3),
        (50, 10, 10, 0.0, 0.01),
    ],
)
def test_p_value_matches_paper_listing_and_theorem_form(m, r, v, eps, delta):
    got = p_value(eps, delta, m, r, v)
    assert got == pytest.approx(_p_value_appendix_d(m, r, v, eps, delta), rel=1e-9, abs=1e-300)
    assert got == pytest.approx(_p_value_survival_form(m, r, v, eps, delta), rel=1e-6,
                                abs=1e-15)


def test_p_value_without_delta_is_the_binomial_tail():
    assert p_value(1.0, 0.0, 1000, 400, 300) == pytest.approx(
        scipy.stats.binom.sf(299, 400, expit(1.0)), rel=1e-12)
    # At ε = 0 the null is a fair coin per guess.
    assert p_value(0.0, 0.0, 10, 10, 10) == pytest.approx(2.0**-10)


def test_p_value_edge_cases():
    assert p_value(2.0, DELTA, 100, 0, 0) == 1.0
    assert p_value(2.0, DELTA, 100, 50, 0) == 1.0
    assert p_value(0.0, 0.5, 100, 100, 100) == 1.0  # δ term capped at 1
    with pytest.raises(ValueError):
        p_value(1.0, DELTA, 10, 11, 5)
    with pytest.raises(ValueError):
        p_value(1.0, DELTA, 10, 5, 6)
    with pytest.raises(ValueError):
        p_value(-0.1, DELTA, 10, 5, 5)
    with pytest.raises(ValueError):
        p_value(1.0, 1.5, 10, 5, 5)


def test_p_value_is_monotone_in_epsilon():
    eps = np.linspace(0.0, 20.0, 161)
    for m, r, v in [(100, 100, 100), (100, 10, 9), (1000, 1000, 600), (1000, 100, 95),
                    (1000, 500, 500), (1000, 200, 101), (2000, 50, 50)]:
        for delta in (0.0, 1e-5, 1e-3):
            ps = np.array([p_value(e, delta, m, r, v) for e in eps])
            assert np.all(np.diff(ps) >= -1e-12), (m, r, v, delta)


# --- ε lower bound ---------------------------------------------------------------------------


@pytest.mark.parametrize("m,ceiling", [(100, 3.49), (1000, 5.78), (5000, 7.28)])
def test_ceiling_all_canaries_guessed_right(m, ceiling):
    """Steinke et al. 2023: perfect guesses on 100 / 1000 / 5000 canaries cap the bound near
    3.5 / 5.8 / 7.3 at δ = 1e-5. Reproduced by r = v = m (every canary guessed), one test
    at 95% (no Bonferroni)."""
    assert epsilon_lower_bound(m, m, m, DELTA, 0.95) == pytest.approx(ceiling, abs=0.01)


def test_ceiling_grows_with_guesses_and_falls_with_delta_and_confidence():
    m = 1000
    by_r = [epsilon_lower_bound(m, r, r, DELTA) for r in (10, 100, 500, 1000)]
    assert by_r == sorted(by_r) and by_r[0] < by_r[-1]
    by_delta = [epsilon_lower_bound(m, m, m, d) for d in (1e-7, 1e-5, 1e-3)]
    assert by_delta == sorted(by_delta, reverse=True) and by_delta[0] > by_delta[-1]
    by_conf = [epsilon_lower_bound(m, m, m, DELTA, c) for c in (0.9, 0.95, 0.99)]
    assert by_conf == sorted(by_conf, reverse=True) and by_conf[0] > by_conf[-1]
    # Without δ the only limit is the binomial tail: sigmoid(ε)^m = 0.05.
    pure = epsilon_lower_bound(m, m, m, 0.0)
    p = 0.05 ** (1 / m)
    assert pure == pytest.approx(math.log(p / (1 - p)), abs=1e-4)
    assert pure > by_delta[0]


def test_chance_level_accuracy_gives_zero():
    assert epsilon_lower_bound(1000, 1000, 500, DELTA) == 0.0
    assert epsilon_lower_bound(1000, 1000, 520, DELTA) == 0.0  # z ≈ 1.26 < 1.645
    assert epsilon_lower_bound(1000, 1000, 300, DELTA) == 0.0
    assert epsilon_lower_bound(1000, 0, 0, DELTA) == 0.0
    assert epsilon_lower_bound(1000, 100, 0, DELTA) == 0.0


def test_bound_increases_with_correct_guesses():
    bounds = [epsilon_lower_bound(1000, 1000, v, DELTA) for v in range(500, 1001, 25)]
    assert np.all(np.diff(bounds) >= 0)
    positive = [b for b in bounds if b > 0]
    assert len(positive) >= 15 and np.all(np.diff(positive) > 0)


def test_bound_is_where_the_p_value_crosses_the_level():
    m, r, v = 1000, 1000, 800
    eps = epsilon_lower_bound(m, r, v, DELTA, 0.95)
    assert 0.5 < eps < math.log(0.8 / 0.2)
    assert p_value(eps, DELTA, m, r, v) <= 0.05
    assert p_value(eps + 1e-5, DELTA, m, r, v) > 0.05


def test_bound_rejects_bad_arguments():
    with pytest.raises(ValueError):
        epsilon_lower_bound(10, 5, 5, DELTA, confidence=1.0)
    with pytest.raises(ValueError):
        epsilon_lower_bound(10, 20, 5, DELTA)


# --- audit from scores -----------------------------------------------------------------------


def test_default_guess_counts():
    totals = [kp + km for kp, km in default_guess_counts(1000)]
    assert totals == [10, 20, 50, 100, 200, 500, 905, 1000]
    assert all(kp - km in (0, 1) for kp, km in default_guess_counts(1000))
    assert [kp + km for kp, km in default_guess_counts(100)] == [10, 20, 50, 70, 100]
    assert [kp + km for kp, km in default_guess_counts(5)] == [5]


@pytest.mark.parametrize("m,gap", [(100, 0.4), (1000, 0.15), (5000, 0.15)])
def test_perfect_scores_reach_the_bonferroni_ceiling(m, gap):
    """Noise off: the audit must report (nearly) the Bonferroni-corrected ceiling. It loses
    `gap` at most to guessing m − ⌈3√m⌉ rather than all m (70 of 100 costs 0.37)."""
    inclusion = canary_inclusion(m, seed=0)
    scores = inclusion + 0.1 * np.random.default_rng(1).random(m)
    result = audit_from_scores(scores, inclusion, DELTA)
    assert isinstance(result, AuditResult)
    counts = default_guess_counts(m)
    assert len(result.tried) == len(counts)
    level = 1 - 0.05 / len(counts)
    # The largest all-correct symmetric guess is m − ⌈3√m⌉ (k = m misses by |#in − m/2|).
    k = m - math.ceil(3 * math.sqrt(m))
    assert result.num_guesses == result.num_correct == k
    assert result.k_plus + result.k_minus == k
    assert result.epsilon_lower_bound == pytest.approx(
        epsilon_lower_bound(m, k, k, DELTA, level), abs=1e-5)
    ceiling_bonferroni = epsilon_lower_bound(m, m, m, DELTA, level)
    assert ceiling_bonferroni - gap < result.epsilon_lower_bound <= ceiling_bonferroni
    assert result.epsilon_lower_bound < epsilon_lower_bound(m, m, m, DELTA, 0.95)
    assert result.epsilon_lower_bound == max(b for _, b in result.tried)


def test_random_scores_give_about_zero():
    m = 1000
    inclusion = canary_inclusion(m, seed=5)
    scores = np.random.default_rng(6).normal(size=m)
    result = audit_from_scores(scores, inclusion, DELTA)
    assert result.epsilon_lower_bound < 0.3


def test_false_positive_rate_respects_confidence():
    """Scores independent of the coins: a non-zero bound is a false claim (the mechanism
    is 0-DP). It may happen in at most 1 − confidence of runs; Bonferroni over the K
    guess counts keeps the family-wise rate there (≈ 2.4% measured over 3000 seeds)."""
    m = 1000
    false_claims = 0
    for seed in range(200):
        inclusion = canary_inclusion(m, seed)
        scores = np.random.default_rng([seed, 9]).normal(size=m)
        false_claims += audit_from_scores(scores, inclusion, DELTA).epsilon_lower_bound > 0
    assert false_claims / 200 <= 0.05


def test_sound_and_useful_on_randomized_response():
    """Randomized response at ε₀ = 1 is (1, 0)-DP and exactly the worst case of the
    theorem: the audit must exceed ε₀ in at most 5% of runs, yet find most of it."""
    m, eps0 = 200, 1.0
    bounds = []
    for seed in range(200):
        inclusion = canary_inclusion(m, seed)
        rng = np.random.default_rng([seed, 7])
        truth = np.where(inclusion, 1.0, -1.0)
        reported = truth * np.where(rng.random(m) < expit(eps0), 1.0, -1.0)
        scores = reported + 0.01 * rng.random(m)  # tie-breaking independent of the coins
        bounds.append(audit_from_scores(scores, inclusion, DELTA).epsilon_lower_bound)
    bounds = np.array(bounds)
    assert np.mean(bounds > eps0) <= 0.05
    assert np.median(bounds) > 0.4


def test_guess_counts_as_ints_and_pairs():
    m = 400
    inclusion = canary_inclusion(m, seed=2)
    scores = inclusion + 0.1 * np.random.default_rng(3).random(m)
    one_sided = audit_from_scores(scores, inclusion, DELTA, guess_counts=[(100, 0)])
    assert (one_sided.k_plus, one_sided.k_minus) == (100, 0)
    assert one_sided.num_correct == 100
    assert one_sided.epsilon_lower_bound == pytest.approx(
        epsilon_lower_bound(m, 100, 100, DELTA, 0.95), abs=1e-5)
    split = audit_from_scores(scores, inclusion, DELTA, guess_counts=[101, 10_000])
    assert (split.k_plus, split.k_minus) == (51, 50)
    assert split.tried == (((51, 50), split.epsilon_lower_bound),)  # 10 000 > m dropped


def test_audit_from_scores_rejects_bad_inputs():
    with pytest.raises(ValueError):
        audit_from_scores(np.zeros(5), np.zeros(4, bool), DELTA)
    with pytest.raises(ValueError):
        audit_from_scores(np.zeros(5), np.full(5, 2), DELTA)
    with pytest.raises(ValueError):
        audit_from_scores(np.zeros(5), np.zeros(5, bool), DELTA, guess_counts=[100])
