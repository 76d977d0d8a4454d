"""White-box audit over all iterates: parameter estimates, ε estimate and lower bound, GDP fit.

The traces are simulated in numpy for the quickstart setting at ε = 1: N = 1437 training
examples plus the included canaries, expected batch 256, so q = 256/(N + m/2), T = 300,
δ = 1e-5, m = 1000 canaries, σ calibrated by the PLD accountant.
"""

import json
import math

import numpy as np
import pytest

from dpjax.privacy import accounting
from dpjax.privacy.audit_iterates import (
    audit_traces,
    empirical_epsilon_estimate,
    empirical_epsilon_lower_bound,
    estimate_mechanism,
    gaussian_dp_delta,
    gaussian_dp_epsilon,
    gaussian_dp_fit,
    simulate_traces,
)

DELTA = 1e-5
M = 1000
T = 300
Q = 256 / (1437 + M / 2)


@pytest.fixture(scope="module")
def sigma():
    return accounting.calibrate_noise_multiplier(1.0, DELTA, Q, T)


@pytest.fixture(scope="module")
def claimed(sigma):
    return accounting.epsilon([accounting.Phase(T, sigma, Q)], DELTA)


def _audit(sigma, seed, **truth):
    args = dict(noise_multiplier=sigma, sampling_rate=Q, contribution=1.0)
    args.update(truth)
    traces, inclusion = simulate_traces(M, T, seed=seed, **args)
    return audit_traces(traces, inclusion, claimed_noise_multiplier=sigma,
                        claimed_sampling_rate=Q, steps=T, delta=DELTA)


def _lower_bounds(sigma, seeds, **truth):
    """Lower bounds and σ upper ends (two-sided simultaneous interval) over seeds."""
    args = dict(noise_multiplier=sigma, sampling_rate=Q, contribution=1.0)
    args.update(truth)
    bounds, sigma_hi = [], []
    for seed in seeds:
        est = estimate_mechanism(*simulate_traces(M, T, seed=seed, **args))
        bounds.append(empirical_epsilon_lower_bound(est, DELTA))
        sigma_hi.append(est.noise_multiplier_interval[1])
    return np.array(bounds), np.array(sigma_hi)


# --- Gaussian DP ----------------------------------------------------------------------------------


def test_gaussian_dp_epsilon_is_the_gaussian_mechanism_of_the_accountant():
    # q = 1: the accountant's T-fold Gaussian mechanism is μ-GDP with μ = √T/σ.
    for steps, noise in [(1, 2.0), (300, 65.5), (10, 2.0)]:
        mu = math.sqrt(steps) / noise
        got = gaussian_dp_epsilon(mu, DELTA)
        assert gaussian_dp_delta(got, mu) == pytest.approx(DELTA, rel=1e-6)
        pld = accounting.epsilon([accounting.Phase(steps, noise, 1.0)], DELTA)
        assert got == pytest.approx(pld, rel=2e-4)
        assert got <= pld + 1e-9  # PLD is pessimistic
    assert gaussian_dp_epsilon(0.0, DELTA) == 0.0
    assert gaussian_dp_epsilon(-1.0, DELTA) == 0.0
    assert gaussian_dp_epsilon(math.inf, DELTA) == math.inf
    assert gaussian_dp_epsilon(1e-6, DELTA) == 0.0  # δ(0) < δ already
    big = gaussian_dp_epsilon(50.0, DELTA)
    assert math.isfinite(big) and big > 50.0 ** 2 / 2
    mus = [0.1, 0.3, 1.0, 3.0]
    assert np.all(np.diff([gaussian_dp_epsilon(mu, DELTA) for mu in mus]) > 0)


@pytest.mark.parametrize("steps,rate,noise", [
    (300, Q, 8.656), (300, 2 * Q, 8.656), (300, Q, 5.8), (1000, 0.01, 2.0), (30, 0.5, 4.0),
    (1, 0.05, 2.0),
])
def test_subsampled_gaussian_is_no_more_private_than_its_mean_shift(steps, rate, noise):
    """The lower bound's corner: at a fixed mean contribution q·c, q = 1 gives the least ε."""
    subsampled = accounting.epsilon([accounting.Phase(steps, noise, rate)], DELTA)
    gaussian = gaussian_dp_epsilon(math.sqrt(steps) * rate / noise, DELTA)
    assert subsampled >= gaussian * (1 + 1e-3)


# --- the quickstart scenarios ---------------------------------------------------------------------


def test_honest_run_is_consistent_and_estimated(sigma, claimed):
    r = _audit(sigma, seed=11)
    json.dumps(r, allow_nan=False)
    assert r["theoretical_epsilon"] == pytest.approx(claimed)
    assert r["consistent_with_claim"] is True
    assert r["empirical_epsilon_lower_bound"] <= claimed
    assert 0.5 * claimed <= r["empirical_epsilon_estimate"] <= 2 * claimed
    lo, hi = r["noise_multiplier"]["interval"]
    assert lo <= sigma <= hi and hi / lo < 1.01
    assert r["claim_checks"] == {"noise_multiplier": "consistent",
                                 "mean_contribution": "consistent", "contribution": "consistent"}
    assert r["contribution"]["estimate"] == 1.0  # c is not identified at c/σ ≈ 0.1: nominal
    q_lo, q_hi = r["sampling_rate"]["interval"]
    assert q_lo <= Q <= q_hi
    assert r["warnings"] == []
    gdp = r["gdp_fit"]
    assert gdp["epsilon_lower"] <= claimed and gdp["epsilon"] < 2 * claimed
    assert r["num_included"] + r["num_excluded"] == M


def test_honest_lower_bound_rarely_exceeds_the_claim(sigma, claimed):
    """Validity: the false-violation rate is ≤ 5 % (4 % over 2000 seeds in the benchmark)."""
    bounds, _ = _lower_bounds(sigma, range(100, 160))
    assert np.mean(bounds > claimed) <= 0.1
    true_gaussian = gaussian_dp_epsilon(math.sqrt(T) * Q / sigma, DELTA)  # what the bound targets
    assert np.mean(bounds > true_gaussian) <= 0.1
    assert np.median(bounds) > 0.4 * claimed  # and not vacuous


def test_smaller_noise_than_claimed_is_caught(sigma, claimed):
    r = _audit(sigma, seed=12, noise_multiplier=0.67 * sigma)
    assert r["consistent_with_claim"] is False
    assert r["empirical_epsilon_lower_bound"] > claimed
    assert r["empirical_epsilon_estimate"] > 1.2 * claimed
    assert r["claim_checks"]["noise_multiplier"] == "below claim"
    assert r["noise_multiplier"]["estimate"] == pytest.approx(0.67 * sigma, rel=0.01)


def test_smaller_noise_power_is_limited_by_the_mean_contribution(sigma, claimed):
    """True ε 1.57 against 1: the bound catches it in ~86 % of runs (m₁ known to ±11 %)."""
    bounds, sigma_hi = _lower_bounds(sigma, range(200, 240), noise_multiplier=0.67 * sigma)
    assert np.mean(bounds > claimed) >= 0.7
    assert np.all(sigma_hi < sigma)  # the claim check ("below claim") catches every run


def test_doubled_sampling_rate_is_caught(sigma, claimed):
    r = _audit(sigma, seed=13, sampling_rate=2 * Q)
    assert r["consistent_with_claim"] is False
    assert r["empirical_epsilon_lower_bound"] > claimed
    assert r["empirical_epsilon_estimate"] > 1.5 * claimed
    assert r["claim_checks"]["mean_contribution"] == "above claim"
    assert r["claim_checks"]["noise_multiplier"] == "consistent"
    q_lo, q_hi = r["sampling_rate"]["interval"]
    assert q_lo <= 2 * Q <= q_hi


def test_clipping_off_is_caught_and_the_contribution_measured(sigma, claimed):
    r = _audit(sigma, seed=14, contribution=50.0)
    json.dumps(r, allow_nan=False)
    assert r["consistent_with_claim"] is False
    assert r["empirical_epsilon_lower_bound"] > 50 * claimed
    assert r["empirical_epsilon_estimate"] > r["empirical_epsilon_lower_bound"]
    c_lo, c_hi = r["contribution"]["interval"]
    assert c_lo <= 50.0 <= c_hi and c_hi / c_lo < 1.2
    assert r["contribution"]["estimate"] == pytest.approx(50.0, rel=0.05)
    assert r["sampling_rate"]["estimate"] == pytest.approx(Q, rel=0.1)
    assert r["claim_checks"]["contribution"] == "above claim"
    assert r["gdp_fit"]["epsilon_lower"] > 50 * claimed


def test_noise_off_is_infinite(sigma):
    r = _audit(sigma, seed=15, noise_multiplier=0.0)
    json.dumps(r, allow_nan=False)
    assert r["empirical_epsilon_lower_bound"] == "inf"
    assert r["empirical_epsilon_estimate"] == "inf"
    assert r["gdp_fit"]["epsilon"] == "inf"
    assert r["consistent_with_claim"] is False
    assert r["noise_multiplier"]["estimate"] == 0.0
    assert r["contribution"]["estimate"] == pytest.approx(1.0)  # exact without noise
    assert r["claim_checks"]["noise_multiplier"] == "below claim"


# --- small inputs, model checks, validation -------------------------------------------------------


@pytest.mark.parametrize("m,steps,contribution", [
    (6, 1, 1.0), (20, 10, 1.0), (20, 10, 50.0), (50, 3, 50.0), (10, 300, 1.0),
])
def test_small_inputs_do_not_crash(sigma, m, steps, contribution):
    traces, inclusion = simulate_traces(m, steps, sigma, Q, contribution, seed=3)
    inclusion[:2], inclusion[2:4] = True, False  # at least two of each
    r = audit_traces(traces, inclusion, claimed_noise_multiplier=sigma, claimed_sampling_rate=Q,
                     steps=steps, delta=DELTA)
    json.dumps(r, allow_nan=False)
    lb, est = r["empirical_epsilon_lower_bound"], r["empirical_epsilon_estimate"]
    assert isinstance(lb, float) and lb >= 0
    assert isinstance(est, float) and est >= 0
    assert 0.0 <= r["sampling_rate"]["estimate"] <= 1.0


def test_model_checks_flag_reused_noise_and_a_biased_coordinate(sigma):
    traces, inclusion = simulate_traces(200, 50, sigma, Q, seed=4)
    reused = traces.copy()
    reused[~inclusion] = reused[~inclusion][:, :1]  # the same noise every step
    est = estimate_mechanism(reused, inclusion)
    assert any("correlated across steps" in w for w in est.warnings)
    biased = traces + 0.5 * sigma
    est = estimate_mechanism(biased, inclusion)
    assert any("not mean-zero" in w for w in est.warnings)
    assert estimate_mechanism(traces, inclusion).warnings == ()


def test_estimate_functions_agree_with_the_audit(sigma):
    traces, inclusion = simulate_traces(M, T, sigma, 2 * Q, seed=5)
    r = audit_traces(traces, inclusion, claimed_noise_multiplier=sigma, claimed_sampling_rate=Q,
                     steps=T, delta=DELTA, accountant="rdp")
    est = estimate_mechanism(traces, inclusion)
    assert r["empirical_epsilon_estimate"] == empirical_epsilon_estimate(est, DELTA, "rdp")
    assert r["empirical_epsilon_lower_bound"] == empirical_epsilon_lower_bound(est, DELTA)
    assert r["gdp_fit"]["mu"] == gaussian_dp_fit(traces, inclusion, DELTA).mu
    assert r["theoretical_epsilon"] == pytest.approx(
        accounting.epsilon([accounting.Phase(T, sigma, Q)], DELTA, "rdp"))


def test_invalid_inputs_are_refused(sigma):
    traces, inclusion = simulate_traces(20, 10, sigma, Q, seed=6)
    kw = dict(claimed_noise_multiplier=sigma, claimed_sampling_rate=Q, delta=DELTA)
    with pytest.raises(ValueError, match="steps"):
        audit_traces(traces, inclusion, steps=11, **kw)
    with pytest.raises(ValueError, match="inclusion"):
        audit_traces(traces, inclusion[:-1], steps=10, **kw)
    with pytest.raises(ValueError, match="at least 2"):
        audit_traces(traces, np.ones(20, bool), steps=10, **kw)
    bad = traces.copy()
    bad[0, 0] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        audit_traces(bad, inclusion, steps=10, **kw)
    with pytest.raises(ValueError, match="accountant"):
        audit_traces(traces, inclusion, steps=10, accountant="moments", **kw)
