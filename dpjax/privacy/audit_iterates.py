"""Statistics of the white-box audit over all iterates (``dpjax audit --kind iterates``).

In the spirit of Nasr, Hayes, Steinke, Balle, Tramèr, Jagielski, Carlini and
Terzis, "Tight auditing of differentially private machine learning", USENIX
Security 2023: the auditor sees every privatized gradient, not only the final
model, and measures the mechanism itself.

The experiment. m canaries, each in the training set by an independent fair
coin. Canary j's gradient lives on its own coordinate, which no other example
touches, with norm ≫ C, so after clipping it contributes exactly C there when it
is sampled. The auditor reads the released noisy sum (Σ clipped + N(0, σ²C²))/B
on each canary coordinate at each step and multiplies it by B/C; for canary j
at step t = 1..T it sees

    x_{j,t} = c·b_{j,t} + σ·z_{j,t},   z i.i.d. N(0, 1),

with b_{j,t} ~ Bernoulli(q) i.i.d. for an included canary and b = 0 for an
excluded one; c = 1 when clipping works. Each canary is an independent trial of
the one-example mechanism composed over T steps: the Poisson-subsampled
Gaussian with sampling rate q and noise multiplier σ/c. The traces must be the
privatized gradient sums themselves (normalised as above), not differences of
parameters under momentum, Adam or weight decay, and one phase (one σ, one q).

What the traces identify. With the claimed parameters of a typical run (ε = 1,
T = 300, q ≈ 0.13, σ ≈ 8.7) the per-step signal c is a tenth of the noise, so:

* σ is measured to ±0.5 % (95 %) from the m_out·T ≈ 150,000 pure-noise values
  of the excluded canaries (chi-square interval, σ̂² = mean of their x²).
* The mean contribution per step m₁ = q·c (mean of an included canary's
  entries) is measured to ≈ 17 % (one standard error, σ/√(m_in·T); t interval
  over the included canaries' trace means, so only the independence of the
  canaries is relied on, not that of the steps).
* The contribution size c = m₂/m₁, with m₂ = q·c² = E[x²_in] − σ², is NOT
  identified when c ≪ σ (m₂ = 0.13 against a standard error of 0.4); it is when
  clipping is off (c = 50: ĉ = 50 ± 1). q = m₁/c is then unidentified too.

The ε of the measured mechanism depends, at fixed σ, mostly on m₁: over T steps
the included canary's trace differs from an excluded one's by a mean shift T·m₁
against noise σ√T. For every q ≤ 1 and c with q·c = m₁, the subsampled Gaussian
(q, σ/c) has ε at least that of the Gaussian mechanism with sensitivity m₁
(the case q = 1, c = m₁), which is μ-GDP with

    μ = √T · m₁ / σ,    δ(ε) = Φ(−ε/μ + μ/2) − e^ε·Φ(−ε/μ − μ/2)

(Balle and Wang 2018; Dong, Roth and Su 2022). This "dilution" inequality is
checked numerically against the PLD accountant in the tests; at the quickstart
setting the two are 0.985 (Gaussian) and 0.999 (subsampled).

Outputs.

1. `estimate_mechanism`: σ̂, m̂₁, m̂₂, ĉ, q̂, each with a two-sided interval;
   the intervals for σ, m₁ and m₂ are simultaneous at `confidence` by Bonferroni
   (level (1 − confidence)/3 each), and those for c = m₂/m₁ ∈ [m₂⁻/m₁⁺, m₂⁺/m₁⁻]
   (and c ≥ m₁, since q ≤ 1) and q = m₁/c ∈ [m₁⁻/c⁺, min(1, m₁⁺/c⁻)] are their
   projections, so all five hold together with probability ≥ confidence.
   ĉ is the nominal 1 (clipping works) whenever the c interval contains 1,
   since the data cannot tell c near 1 apart; otherwise the moment estimate
   m̂₂/m̂₁. q̂ = m̂₁/ĉ.
2. `empirical_epsilon_estimate`: the accountant's ε at (q̂, σ̂/ĉ, T).
   `empirical_epsilon_lower_bound`: a one-sided lower confidence bound, ε of the
   end of the confidence region that makes ε smallest: σ at its upper bound σ⁺
   (chi-square, level 0.1·α), m₁ at its lower bound m₁⁻ (t, level 0.9·α), and
   c = m₁ (q = 1), the least-ε contribution at a given m₁ (always c ≥ m₁, since
   q ≤ 1): the Gaussian-mechanism value ε_G(√T·m₁⁻/σ⁺, δ) above. ε decreases in
   σ and increases in m₁, so with probability ≥ confidence (σ ≤ σ⁺ and
   m₁ ≥ m₁⁻) the bound is ≤ the ε of the true mechanism, whatever q and c are:
   an honest run is called a violation at rate ≤ 1 − confidence (3.3 % in 2000
   simulated runs; less than 5 % since the claimed ε, 0.999, exceeds the
   Gaussian value 0.985 at the true parameters). The fixed Bonferroni split
   α = 0.1α + 0.9α puts the error budget where the uncertainty is (σ⁺ costs
   +0.5 % at level 0.005). The t quantile relies on the central limit theorem
   over the included canaries (fine for tens of them). The bound does not use
   the c interval: in the usual regime it reaches down to m₁ anyway, and where
   c is identified (clip off) the bound is loose but huge (≈ 140 against the
   true ≈ 990).
3. `gaussian_dp_fit`, the model-free check in the spirit of Nasr et al.: per
   canary the score s_j = Σ_t x_{j,t}; μ̂ = (mean_in − mean_out)/sd_out,
   with a one-sided lower bound (difference of means at level 0.9·α, sd_out at
   its chi-square upper bound at level 0.1·α), and ε(μ, δ) from the GDP
   trade-off above.

Which is primary. The mechanism estimate (2) is primary: it uses the known
structure of the release (Gaussian noise independent across steps, one
Bernoulli(q) contribution per step) and all m·T numbers, its lower bound has a
stated coverage under that model, and the estimate evaluates the exact
accountant at the measured parameters, so it sees the heavy privacy-loss tail
of subsampling that a Gaussian fit cannot (clip off: ε̂ ≈ 990 where the GDP fit
gives ≈ 140). The GDP fit (3) assumes none of that structure — only that the
per-canary sums are about Gaussian with equal spread, which the central limit
theorem supports for many steps — and so serves as a cross-check; with the
sum as score its μ estimates the same √T·m₁/σ as the lower bound's Gaussian
corner, so in the honest regime the two agree.

Power (m = 1000, T = 300, quickstart ε = 1; `benchmarks/audit_iterates_simulation.py`).
Noise off, clip off and sampling at 2q are caught in every simulated run. σ × 0.67
moves the true ε to 1.57, but m₁ is known only to ≈ 11 % (one standard error at
that σ), so the lower bound exceeds the claimed 1 in 86 % of runs; no valid bound
can do much better with these m and T, since any (q, c) with the same q·c fits
the data. The per-parameter check (`claim_checks`: the claimed σ above the σ
interval) catches it in every run. More canaries or steps sharpen m₁ (standard
error σ/√(m_in·T)): with m = 4000 the bound catches σ × 0.67 in every run.

Everything is numpy/scipy plus `dpjax.privacy.accounting` (and dp_accounting's
PLD with a coarser grid where the default one would be slow: noise multiplier
< 1). No model code, no I/O.
"""

from __future__ import annotations

import dataclasses
import logging
import math

import numpy as np
import scipy.optimize
import scipy.special
import scipy.stats
from dp_accounting import pld

from dpjax.privacy import accounting

__all__ = [
    "GdpFit",
    "MechanismEstimate",
    "audit_traces",
    "empirical_epsilon_estimate",
    "empirical_epsilon_lower_bound",
    "estimate_mechanism",
    "gaussian_dp_delta",
    "gaussian_dp_epsilon",
    "gaussian_dp_fit",
    "simulate_traces",
    "subsampled_gaussian_epsilon",
]

# Share of the one-sided error budget α spent on σ's upper bound (the rest goes to m₁'s
# lower bound, where the uncertainty is); fixed in advance, never chosen from the data.
SIGMA_ALPHA_SHARE = 0.1
# The contribution of a correctly clipped canary, in the trace's units (x normalised by B/C).
NOMINAL_CONTRIBUTION = 1.0
# Below this noise multiplier the default PLD grid (1e-4) gets slow (seconds to tens of
# seconds for T = 300); the estimate then uses a grid scaled to the size of ε.
_FINE_PLD_MIN_NOISE = 1.0
# |z| above which a model check (mean and lag-1 autocorrelation of the excluded traces) warns.
_MODEL_CHECK_Z = 4.5


# --- Gaussian differential privacy --------------------------------------------------------------


def gaussian_dp_delta(epsilon: float, mu: float) -> float:
    """δ(ε) of μ-GDP: Φ(−ε/μ + μ/2) − e^ε·Φ(−ε/μ − μ/2) (the second term in log space)."""
    if mu <= 0.0:
        return 0.0
    if math.isinf(mu):
        return 1.0
    first = scipy.special.ndtr(-epsilon / mu + mu / 2.0)
    second = math.exp(epsilon + scipy.special.log_ndtr(-epsilon / mu - mu / 2.0))
    return float(max(first - second, 0.0))


def gaussian_dp_epsilon(mu: float, delta: float) -> float:
    """Smallest ε with δ(ε) ≤ δ for μ-GDP; 0 for μ ≤ 0, inf for μ = inf.

    This is the exact ε of the Gaussian mechanism with sensitivity/noise = μ
    (Balle and Wang 2018), and of T compositions of it with μ = √T·sensitivity/σ.
    """
    if not (0.0 < delta < 1.0):
        raise ValueError(f"delta is {delta!r}; need 0 < delta < 1")
    if math.isnan(mu):
        raise ValueError("mu is NaN")
    if mu <= 0.0:
        return 0.0
    if math.isinf(mu):
        return math.inf
    if gaussian_dp_delta(0.0, mu) <= delta:
        return 0.0
    hi = max(1.0, mu * mu / 2.0 + 8.0 * mu)
    while gaussian_dp_delta(hi, mu) > delta:
        hi *= 2.0
    return float(scipy.optimize.brentq(lambda e: gaussian_dp_delta(e, mu) - delta, 0.0, hi,
                                       xtol=1e-12, rtol=1e-12))


# --- the mechanism's parameters ------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class MechanismEstimate:
    """Measured parameters of the per-canary mechanism, in units of C.

    Intervals are two-sided and simultaneous at `confidence` (Bonferroni over σ, m₁, m₂;
    c and q are projections). `None` in an interval end means unbounded.

    Attributes:
      noise_multiplier: σ̂ = √(mean of x² over the excluded canaries' entries).
      noise_multiplier_interval: chi-square interval with m_out·T degrees of freedom.
      mean_contribution: m̂₁ = q·c estimated by the mean of the included canaries' entries.
      mean_contribution_interval: t interval over the included canaries' trace means.
      second_moment: m̂₂ = q·c² estimated by mean(x²_in) − mean(x²_out).
      second_moment_interval: normal interval, standard error over canaries.
      contribution: ĉ used for the estimate: 1 if the interval contains 1 and m̂₁ ≤ 1, else
        the moment estimate clipped to the interval; at least m̂₁ (so that q̂ ≤ 1).
      contribution_moment: m̂₂/m̂₁, or None when m̂₁ ≤ 0 or m̂₂ ≤ 0.
      contribution_interval: [m₂⁻/m₁⁺, m₂⁺/m₁⁻], at least m₁⁻ (q ≤ 1).
      sampling_rate: q̂ = m̂₁/ĉ, in [0, 1].
      sampling_rate_interval: [m₁⁻/c⁺, min(1, m₁⁺/c⁻)].
      noise_multiplier_upper: σ⁺, one-sided at level 0.1·(1 − confidence), for the ε bound.
      mean_contribution_lower: m₁⁻, one-sided at level 0.9·(1 − confidence), for the ε bound.
      steps: T.
      num_included, num_excluded: canary counts.
      confidence: the confidence level used.
      warnings: model checks that failed (excluded traces not mean-zero, or correlated over
        steps; empty contribution region).
      excluded_mean_z: z of the mean of the excluded canaries' trace means (N(0, 1) under the
        model).
      excluded_lag1_z: z of the lag-1 autocorrelation of the excluded traces (N(0, 1) under
        the model; None for T = 1).
    """

    noise_multiplier: float
    noise_multiplier_interval: tuple[float, float]
    mean_contribution: float
    mean_contribution_interval: tuple[float, float]
    second_moment: float
    second_moment_interval: tuple[float, float]
    contribution: float
    contribution_moment: float | None
    contribution_interval: tuple[float, float | None]
    sampling_rate: float
    sampling_rate_interval: tuple[float, float]
    noise_multiplier_upper: float
    mean_contribution_lower: float
    steps: int
    num_included: int
    num_excluded: int
    confidence: float
    warnings: tuple[str, ...]
    excluded_mean_z: float | None
    excluded_lag1_z: float | None


def _check_inputs(traces, inclusion, confidence):
    traces = np.asarray(traces, dtype=np.float64)
    if traces.ndim != 2 or traces.shape[1] < 1:
        raise ValueError(f"traces has shape {traces.shape}; need (num_canaries, steps), steps >= 1")
    if not np.all(np.isfinite(traces)):
        raise ValueError("traces contain NaN or inf")
    inclusion = np.asarray(inclusion)
    if inclusion.shape != (traces.shape[0],):
        raise ValueError(f"inclusion has shape {inclusion.shape}; need ({traces.shape[0]},), one "
                         "coin per canary")
    if inclusion.dtype != np.bool_:
        if not np.all((inclusion == 0) | (inclusion == 1)):
            raise ValueError("inclusion must be boolean (or 0/1)")
        inclusion = inclusion.astype(bool)
    if not (0.0 < confidence < 1.0):
        raise ValueError(f"confidence is {confidence!r}; need 0 < confidence < 1")
    m_in = int(inclusion.sum())
    m_out = int(inclusion.size - m_in)
    if m_in < 2 or m_out < 2:
        raise ValueError(f"{m_in} included and {m_out} excluded canaries; need at least 2 of each")
    return traces, inclusion


def _chi2_sigma(sum_sq: float, dof: int, level: float) -> float:
    """σ such that sum_sq/σ² is the `level` quantile of χ²(dof) (σ⁺ for small level)."""
    if sum_sq == 0.0:
        return 0.0
    return math.sqrt(sum_sq / scipy.stats.chi2.ppf(level, dof))


def estimate_mechanism(traces, inclusion, confidence: float = 0.95) -> MechanismEstimate:
    """Estimate σ, q·c, q·c², c and q from the canary traces, with simultaneous intervals.

    Args:
      traces: (m, T) array, x_{j,t} as described in the module docstring (units of C).
      inclusion: bool (m,), True for the canaries that were in the training set.
      confidence: simultaneous confidence of the intervals, in (0, 1).
    """
    traces, inclusion = _check_inputs(traces, inclusion, confidence)
    alpha = 1.0 - confidence
    x_in, x_out = traces[inclusion], traces[~inclusion]
    m_in, m_out = x_in.shape[0], x_out.shape[0]
    steps = traces.shape[1]
    level = alpha / 3.0  # Bonferroni over σ, m₁, m₂ (two-sided: level/2 a side)

    # σ from the excluded canaries: Σx²/σ² ~ χ²(m_out·T).
    dof = m_out * steps
    sum_sq = float(np.sum(x_out * x_out))
    sigma = math.sqrt(sum_sq / dof)
    sigma_int = (_chi2_sigma(sum_sq, dof, 1.0 - level / 2.0), _chi2_sigma(sum_sq, dof, level / 2.0))
    sigma_up = _chi2_sigma(sum_sq, dof, SIGMA_ALPHA_SHARE * alpha)

    # m₁ = q·c: the included canaries' trace means are i.i.d. with mean m₁.
    y_in = x_in.mean(axis=1)
    m1 = float(y_in.mean())
    se1 = float(y_in.std(ddof=1)) / math.sqrt(m_in)
    t_two = scipy.stats.t.ppf(1.0 - level / 2.0, m_in - 1)
    m1_int = (m1 - t_two * se1, m1 + t_two * se1)
    m1_low = m1 - scipy.stats.t.ppf(1.0 - (1.0 - SIGMA_ALPHA_SHARE) * alpha, m_in - 1) * se1

    # m₂ = q·c² = E[x²_in] − E[x²_out], per-canary mean squares.
    w_in = (x_in * x_in).mean(axis=1)
    w_out = (x_out * x_out).mean(axis=1)
    m2 = float(w_in.mean() - w_out.mean())
    se2 = math.sqrt(float(w_in.var(ddof=1)) / m_in + float(w_out.var(ddof=1)) / m_out)
    z_two = scipy.stats.norm.ppf(1.0 - level / 2.0)
    m2_int = (m2 - z_two * se2, m2 + z_two * se2)

    warnings = []
    # c = m₂/m₁ ≥ m₁ (q ≤ 1).
    c_lo = m2_int[0] / m1_int[1] if (m2_int[0] > 0 and m1_int[1] > 0) else 0.0
    c_lo = max(c_lo, m1_int[0], 0.0)
    c_hi = m2_int[1] / m1_int[0] if (m1_int[0] > 0 and m2_int[1] > 0) else None
    if c_hi is not None and c_hi < c_lo:
        warnings.append(f"empty contribution region (m2 upper {m2_int[1]:.4g} < m1 lower² "
                        f"{max(m1_int[0], 0) ** 2:.4g}): the traces do not fit the model")
        c_hi = c_lo
    c_mom = m2 / m1 if (m1 > 0 and m2 > 0) else None
    nominal_fits = (c_lo <= NOMINAL_CONTRIBUTION and m1 <= NOMINAL_CONTRIBUTION
                    and (c_hi is None or NOMINAL_CONTRIBUTION <= c_hi))
    if nominal_fits:
        c_hat = NOMINAL_CONTRIBUTION
    else:
        c_hat = c_mom if c_mom is not None else c_lo
        c_hat = min(max(c_hat, c_lo), c_hi if c_hi is not None else math.inf)
    c_hat = max(c_hat, m1, 0.0)  # q̂ = m̂₁/ĉ ≤ 1
    q_hat = min(max(m1 / c_hat, 0.0), 1.0) if c_hat > 0 else 0.0
    q_lo = max(m1_int[0], 0.0) / c_hi if c_hi else 0.0
    q_hi = min(1.0, m1_int[1] / c_lo) if c_lo > 0 else 1.0
    q_hi = max(q_hi, 0.0)

    # Model checks on the excluded traces (pure noise under the model).
    y_out = x_out.mean(axis=1)
    sd_y_out = float(y_out.std(ddof=1))
    mean_z = float(y_out.mean() / (sd_y_out / math.sqrt(m_out))) if sd_y_out > 0 else None
    lag1_z = None
    if steps >= 2 and sum_sq > 0:
        r1 = float(np.sum(x_out[:, 1:] * x_out[:, :-1])) / sum_sq
        lag1_z = r1 * math.sqrt(m_out * (steps - 1))
    if mean_z is not None and abs(mean_z) > _MODEL_CHECK_Z:
        warnings.append(f"excluded canaries' traces are not mean-zero (z = {mean_z:.1f}): "
                        "something else touches the canary coordinates")
    if lag1_z is not None and abs(lag1_z) > _MODEL_CHECK_Z:
        warnings.append(f"excluded canaries' noise is correlated across steps (lag-1 z = "
                        f"{lag1_z:.1f}): the noise is not fresh each step")

    return MechanismEstimate(
        noise_multiplier=sigma,
        noise_multiplier_interval=sigma_int,
        mean_contribution=m1,
        mean_contribution_interval=m1_int,
        second_moment=m2,
        second_moment_interval=m2_int,
        contribution=float(c_hat),
        contribution_moment=c_mom,
        contribution_interval=(float(c_lo), None if c_hi is None else float(c_hi)),
        sampling_rate=float(q_hat),
        sampling_rate_interval=(float(q_lo), float(q_hi)),
        noise_multiplier_upper=sigma_up,
        mean_contribution_lower=float(m1_low),
        steps=steps,
        num_included=m_in,
        num_excluded=m_out,
        confidence=confidence,
        warnings=tuple(warnings),
        excluded_mean_z=mean_z,
        excluded_lag1_z=lag1_z,
    )


# --- ε of the measured mechanism ----------------------------------------------------------------


def subsampled_gaussian_epsilon(steps: int, noise: float, rate: float, delta: float,
                                accountant: str = "pld") -> tuple[float, str]:
    """ε of T steps of the Poisson-subsampled Gaussian, and which accountant computed it.

    `accounting.epsilon`, except that for PLD with noise < 1 (large ε, slow on the default
    grid) the grid is 1e-4·ε_RDP; 0 for rate 0, inf for noise 0.
    """
    if rate <= 0.0:
        return 0.0, accountant
    if noise <= 0.0:
        return math.inf, accountant
    phase = accounting.Phase(int(steps), float(noise), float(min(rate, 1.0)))
    if accountant != "pld" or noise >= _FINE_PLD_MIN_NOISE:
        return accounting.epsilon([phase], delta, accountant), accountant
    # Small noise: ε is large and the default grid slow (17 s at σ = 0.17, T = 300); scale the
    # grid to ε's size (RDP's ε, an upper bound): relative error ~2e-4, well under a second.
    rough = accounting.epsilon([phase], delta, "rdp")
    if math.isinf(rough):
        return math.inf, "rdp"
    grid = max(accounting.PLD_DISCRETIZATION, 1e-4 * rough)
    acc = pld.PLDAccountant(value_discretization_interval=grid)
    try:
        acc.compose(accounting.dp_event([phase]))
        return float(acc.get_epsilon(delta)), f"pld (grid {grid:.2g})"
    except (ValueError, OverflowError, MemoryError):
        return rough, "rdp (PLD failed)"


def empirical_epsilon_estimate(estimate: MechanismEstimate, delta: float,
                               accountant: str = "pld") -> float:
    """ε of the measured mechanism: the accountant at (q̂, σ̂/ĉ, T); inf when σ̂ = 0."""
    return _estimate_with_method(estimate, delta, accountant)[0]


def _estimate_with_method(estimate, delta, accountant):
    if estimate.sampling_rate <= 0.0:
        return 0.0, accountant
    if estimate.noise_multiplier == 0.0:
        return math.inf, accountant
    noise = estimate.noise_multiplier / estimate.contribution
    with _quiet():
        return subsampled_gaussian_epsilon(estimate.steps, noise, estimate.sampling_rate, delta,
                                           accountant)


def _lower_bound_mu(estimate: MechanismEstimate) -> float:
    m1, sigma = estimate.mean_contribution_lower, estimate.noise_multiplier_upper
    if m1 <= 0.0:
        return 0.0
    if sigma == 0.0:
        return math.inf
    return math.sqrt(estimate.steps) * m1 / sigma


def empirical_epsilon_lower_bound(estimate: MechanismEstimate, delta: float) -> float:
    """One-sided lower confidence bound (level `estimate.confidence`) on the mechanism's ε.

    ε_G(√T·m₁⁻/σ⁺, δ): the Gaussian-mechanism corner of the confidence region
    {σ ≤ σ⁺, m₁ ≥ m₁⁻}, where (q = 1, c = m₁) makes ε smallest; see the module
    docstring. inf when σ⁺ = 0 (noise off) and m₁⁻ > 0; 0 when m₁⁻ ≤ 0.
    """
    return gaussian_dp_epsilon(_lower_bound_mu(estimate), delta)


class _quiet:
    """Silence dp_accounting's absl/root warnings for the duration of a call."""

    def __enter__(self):
        self._level = logging.root.manager.disable
        logging.disable(logging.WARNING)

    def __exit__(self, *exc):
        logging.disable(self._level)


# --- model-free Gaussian-DP fit ------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class GdpFit:
    """Gaussian-DP fit of the per-canary scores s_j = Σ_t x_{j,t}.

    Attributes:
      mu: μ̂ = (mean_in − mean_out)/sd_out (inf when sd_out = 0 and the means differ).
      mu_lower: one-sided lower bound at the fit's confidence (difference of means at level
        0.9·α with a t quantile, sd_out at its chi-square upper bound at level 0.1·α).
      epsilon: ε(μ̂, δ) from the GDP trade-off.
      epsilon_lower: ε(μ_lower, δ).
    """

    mu: float
    mu_lower: float
    epsilon: float
    epsilon_lower: float


def gaussian_dp_fit(traces, inclusion, delta: float, confidence: float = 0.95) -> GdpFit:
    """Fit μ-GDP to the in/out distributions of the per-canary sums and convert to ε at δ.

    Model-free in the sense that it ignores the per-step structure; it is exact only
    if the scores are Gaussian with equal spread (about so for many steps).
    """
    traces, inclusion = _check_inputs(traces, inclusion, confidence)
    alpha = 1.0 - confidence
    scores = traces.sum(axis=1)
    s_in, s_out = scores[inclusion], scores[~inclusion]
    m_in, m_out = s_in.size, s_out.size
    diff = float(s_in.mean() - s_out.mean())
    sd_out = float(s_out.std(ddof=1))
    se = math.sqrt(float(s_in.var(ddof=1)) / m_in + sd_out ** 2 / m_out)
    t_q = scipy.stats.t.ppf(1.0 - (1.0 - SIGMA_ALPHA_SHARE) * alpha, min(m_in, m_out) - 1)
    diff_lo = diff - t_q * se
    sd_hi = sd_out * math.sqrt((m_out - 1) / scipy.stats.chi2.ppf(SIGMA_ALPHA_SHARE * alpha,
                                                                   m_out - 1))

    def ratio(num, den):
        if num <= 0.0:
            return 0.0
        return math.inf if den == 0.0 else num / den

    mu, mu_lo = ratio(diff, sd_out), ratio(diff_lo, sd_hi)
    return GdpFit(mu=mu, mu_lower=mu_lo, epsilon=gaussian_dp_epsilon(mu, delta),
                  epsilon_lower=gaussian_dp_epsilon(mu_lo, delta))


# --- simulation ---------------------------------------------------------------------------------


def simulate_traces(num_canaries: int, steps: int, noise_multiplier: float, sampling_rate: float,
                    contribution: float = NOMINAL_CONTRIBUTION,
                    seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Traces of the model in the module docstring, for tests and calibration of the audit.

    Returns (traces (m, T) float64, inclusion (m,) bool): each canary in by a fair coin,
    x = contribution·Bernoulli(sampling_rate) (included only) + noise_multiplier·N(0, 1).
    """
    rng = np.random.default_rng(seed)
    inclusion = rng.integers(0, 2, size=num_canaries).astype(bool)
    traces = rng.standard_normal((num_canaries, steps))
    traces *= noise_multiplier
    sampled = rng.random((num_canaries, steps)) < sampling_rate
    traces += contribution * (sampled & inclusion[:, None])
    return traces, inclusion


# --- the audit -----------------------------------------------------------------------------------


def _json_number(value):
    """Finite floats as floats, ±inf as the strings "inf"/"-inf", None as None."""
    if value is None:
        return None
    value = float(value)
    if math.isnan(value):
        return None
    if math.isinf(value):
        return "inf" if value > 0 else "-inf"
    return value


def _interval(pair):
    return [_json_number(v) for v in pair]


def _check(claimed: float, interval) -> str:
    lo, hi = interval
    if claimed < lo:
        return "above claim"
    if hi is not None and claimed > hi:
        return "below claim"
    return "consistent"


def audit_traces(
    traces,
    inclusion,
    *,
    claimed_noise_multiplier: float,
    claimed_sampling_rate: float,
    steps: int,
    delta: float,
    accountant: str = "pld",
    confidence: float = 0.95,
) -> dict:
    """White-box audit of all iterates: measured mechanism against the claimed one.

    Args:
      traces: (m, T) array, canary j's privatized gradient coordinate at step t times B/C.
      inclusion: bool (m,), the canaries' coins (True = trained on).
      claimed_noise_multiplier: σ the accountant was told.
      claimed_sampling_rate: q the accountant was told.
      steps: T, the number of noisy steps the accountant was told; must equal traces.shape[1].
      delta: δ of the claim.
      accountant: "pld" (default) or "rdp", for the theoretical ε and the estimate (the lower
        bound is the Gaussian mechanism's exact ε and needs no accountant).
      confidence: confidence of the intervals and of the lower bound.

    Returns:
      A JSON-friendly dict. Infinite values are the string "inf"; undefined ones None.
      Keys: theoretical_epsilon, empirical_epsilon_estimate, empirical_epsilon_lower_bound,
      consistent_with_claim (lower bound ≤ theoretical ε), estimate_accountant,
      lower_bound_corner, noise_multiplier, sampling_rate, contribution, mean_contribution,
      second_moment (each {"estimate", "interval"}; intervals simultaneous at `confidence`),
      claim_checks ("consistent" / "above claim" / "below claim" per parameter), gdp_fit,
      model_checks, warnings, and the inputs (steps, delta, confidence, accountant, claimed,
      num_canaries, num_included, num_excluded).
    """
    traces = np.asarray(traces, dtype=np.float64)
    if traces.ndim != 2:
        raise ValueError(f"traces has shape {traces.shape}; need (num_canaries, steps)")
    if not (isinstance(steps, int | np.integer) and steps == traces.shape[1]):
        raise ValueError(f"steps={steps!r} but traces cover {traces.shape[1]} steps; the audit "
                         "needs the trace of every noisy step")
    if not (0.0 < delta < 1.0):
        raise ValueError(f"delta is {delta!r}; need 0 < delta < 1")
    if accountant not in accounting.ACCOUNTANTS:
        raise ValueError(f"accountant is {accountant!r}; need one of {accounting.ACCOUNTANTS}")
    est = estimate_mechanism(traces, inclusion, confidence)
    with _quiet():
        theoretical = accounting.epsilon(
            [accounting.Phase(int(steps), float(claimed_noise_multiplier),
                              float(claimed_sampling_rate))], delta, accountant)
    estimate, method = _estimate_with_method(est, delta, accountant)
    mu_lb = _lower_bound_mu(est)
    lower = gaussian_dp_epsilon(mu_lb, delta)
    fit = gaussian_dp_fit(traces, inclusion, delta, confidence)
    c_int = est.contribution_interval
    return {
        "theoretical_epsilon": _json_number(theoretical),
        "empirical_epsilon_estimate": _json_number(estimate),
        "empirical_epsilon_lower_bound": _json_number(lower),
        "consistent_with_claim": bool(lower <= theoretical),
        "estimate_accountant": method,
        "lower_bound_corner": {
            "noise_multiplier_upper": _json_number(est.noise_multiplier_upper),
            "mean_contribution_lower": _json_number(est.mean_contribution_lower),
            "mu": _json_number(mu_lb),
            "note": "Gaussian mechanism (q = 1, c = m1): the confidence region's least-ε corner",
        },
        "noise_multiplier": {"estimate": _json_number(est.noise_multiplier),
                             "interval": _interval(est.noise_multiplier_interval)},
        "sampling_rate": {"estimate": _json_number(est.sampling_rate),
                          "interval": _interval(est.sampling_rate_interval)},
        "contribution": {"estimate": _json_number(est.contribution),
                         "moment_estimate": _json_number(est.contribution_moment),
                         "interval": [_json_number(c_int[0]),
                                      "inf" if c_int[1] is None else _json_number(c_int[1])]},
        "mean_contribution": {"estimate": _json_number(est.mean_contribution),
                              "interval": _interval(est.mean_contribution_interval)},
        "second_moment": {"estimate": _json_number(est.second_moment),
                          "interval": _interval(est.second_moment_interval)},
        "claim_checks": {
            "noise_multiplier": _check(claimed_noise_multiplier, est.noise_multiplier_interval),
            "mean_contribution": _check(claimed_sampling_rate * NOMINAL_CONTRIBUTION,
                                        est.mean_contribution_interval),
            "contribution": _check(NOMINAL_CONTRIBUTION, c_int),
        },
        "gdp_fit": {
            "score": "sum of the trace over steps",
            "mu": _json_number(fit.mu),
            "mu_lower": _json_number(fit.mu_lower),
            "epsilon": _json_number(fit.epsilon),
            "epsilon_lower": _json_number(fit.epsilon_lower),
        },
        "model_checks": {"excluded_mean_z": _json_number(est.excluded_mean_z),
                         "excluded_lag1_autocorrelation_z": _json_number(est.excluded_lag1_z)},
        "warnings": list(est.warnings),
        "claimed": {"noise_multiplier": float(claimed_noise_multiplier),
                    "sampling_rate": float(claimed_sampling_rate)},
        "steps": int(steps),
        "delta": float(delta),
        "confidence": float(confidence),
        "accountant": accountant,
        "num_canaries": int(traces.shape[0]),
        "num_included": est.num_included,
        "num_excluded": est.num_excluded,
    }
