"""Statistics of the one-run privacy audit (Steinke, Nasr and Jagielski, 2023).

Reference: T. Steinke, M. Nasr, M. Jagielski, "Privacy Auditing with One (1)
Training Run", NeurIPS 2023, arXiv:2305.08846. Theorem 3 in the introduction
(Corollary 5.4 in Section 5), and the code listing of Appendix D.

The experiment. Pick m canaries and flip a fair coin S_j ∈ {−1, +1} for each
(`canary_inclusion`); train once on the data plus the canaries with S_j = +1.
From the trained model compute a score per canary (higher = more likely "in"),
and let the auditor guess T_j ∈ {−1, 0, +1} (`audit_guesses`): +1 for the k₊
highest scores, −1 for the k₋ lowest, 0 (abstain) for the rest. r = k₊ + k₋
guesses are made, v of them correct (T_j = S_j).

The test. If training is (ε, δ)-DP then, with p = e^ε / (1 + e^ε) = sigmoid(ε)
and f(x) = P[Bin(r, p) ≥ x],

    P[W ≥ v] ≤ f(v) + 2·m·δ · max_{1≤i≤m} (f(v − i) − f(v)) / i.

For i ≥ v, f(v − i) = 1 and (1 − f(v))/i decreases in i, so the maximum is
attained with i ≤ v; this is exactly the quantity `p_value_DP_audit` of the
paper's Appendix D computes:

    β = f(v),   α = max_{1≤i≤v} (f(v − i) − β)/i = max_i (Σ_{j=1}^{i} P[Bin(r,p) = v − j]) / i,
    p-value(ε) = min(1, β + 2·m·δ·α).

This is the formula of docs/methods.md ("Auditing"), unchanged. α is accumulated as a running
sum of binomial probabilities (as Appendix D does) rather than as a difference
of two survival functions, so it does not cancel catastrophically when β is
close to 1; β uses `scipy.stats.binom.sf`, accurate for large r.

Rejecting "(ε, δ)-DP" when p-value(ε) ≤ 1 − confidence is a test of level
1 − confidence. The p-value *increases* with ε (a weaker claim is harder to
reject; verified numerically, and not relied upon, see `epsilon_lower_bound`).
Since (ε, δ)-DP implies (ε', δ)-DP for every ε' ≥ ε, a rejection at ε also
rejects every smaller ε, and the reported bound (`epsilon_lower_bound`) is the
largest such ε: the probability that the reported value exceeds the mechanism's
true ε is at most 1 − confidence.

The ceiling. Even perfect guesses cannot certify more than m and δ allow: all m
canaries guessed (r = v = m, half "in" and half "out" via k₊ + k₋ = m) at
δ = 1e-5 and 95% confidence give ε ≥ 3.49 / 5.78 / 7.28 for m = 100 / 1000 /
5000 (Steinke et al. 2023 report "near 3.5 / 5.8 / 7.3"). Guessing fewer canaries lowers the
ceiling (r = v = 100 out of m = 1000: 3.47), as does a Bonferroni correction
over several guess counts (r = v = m = 1000 at level 0.05/8: 5.19).

Everything here is pure numpy/scipy: no model code, no I/O.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence

import numpy as np
import scipy.special
import scipy.stats

__all__ = [
    "AuditResult",
    "audit_from_scores",
    "audit_guesses",
    "canary_inclusion",
    "default_guess_counts",
    "epsilon_lower_bound",
    "p_value",
]

# Domain separator for `np.random.default_rng([seed, _CANARY_STREAM])`, so that
# the canary coins never share random bits with batch sampling seeded alike.
_CANARY_STREAM = 0x4341

# Search interval for ε. p = sigmoid(50) is 1 − 2e-22 in exact arithmetic and 1.0 in
# float64, so nothing above 50 can be told apart numerically.
EPS_MAX = 50.0
# Step of the upward scan that brackets the first crossing before bisection, and the
# width at which bisection stops (the bound is reported to within this, rounded down).
_SCAN_STEP = 0.5
_TOLERANCE = 1e-6


def canary_inclusion(num_canaries: int, seed: int) -> np.ndarray:
    """Independent fair coins S_j, one per canary: True = "in" (trained on).

    The coins must be independent of everything the auditor later uses to guess
    except through the trained model; they come from their own seeded stream.

    Args:
      num_canaries: m ≥ 0.
      seed: non-negative integer seed.

    Returns:
      bool array of shape (m,).
    """
    if num_canaries < 0:
        raise ValueError(f"num_canaries is {num_canaries}; need num_canaries >= 0")
    rng = np.random.default_rng([int(seed), _CANARY_STREAM])
    return rng.integers(0, 2, size=int(num_canaries)).astype(bool)


def audit_guesses(scores: np.ndarray, k_plus: int, k_minus: int = 0) -> tuple[int, np.ndarray]:
    """Guess "in" (+1) for the k₊ highest scores, "out" (−1) for the k₋ lowest, abstain (0) else.

    Ties are broken by canary index (stable sort), which depends on the scores and
    the public canary order only, never on the coins, so the guesses remain a
    function of the trained model as the theorem requires.

    Args:
      scores: shape (m,), finite; higher means "more likely included".
      k_plus: number of "in" guesses, k₊ ≥ 0.
      k_minus: number of "out" guesses, k₋ ≥ 0, with k₊ + k₋ ≤ m.

    Returns:
      (r, guesses): r = k₊ + k₋ the number of non-abstentions, and an int8 array of
      shape (m,) with values in {−1, 0, +1}.
    """
    scores = np.asarray(scores, dtype=np.float64)
    if scores.ndim != 1:
        raise ValueError(f"scores has shape {scores.shape}; need a 1-D array")
    if not np.all(np.isfinite(scores)):
        raise ValueError("scores contain NaN or inf; every canary needs a finite score")
    m = scores.shape[0]
    if k_plus < 0 or k_minus < 0 or k_plus + k_minus > m:
        raise ValueError(
            f"k_plus={k_plus}, k_minus={k_minus} with m={m}; need k_plus, k_minus >= 0 and "
            "k_plus + k_minus <= m"
        )
    order = np.argsort(scores, kind="stable")  # ascending
    guesses = np.zeros(m, dtype=np.int8)
    if k_minus:
        guesses[order[:k_minus]] = -1
    if k_plus:
        guesses[order[m - k_plus:]] = 1
    return int(k_plus + k_minus), guesses


def _check_counts(m: int, r: int, v: int) -> None:
    if not (0 <= v <= r <= m):
        raise ValueError(f"need 0 <= num_correct <= num_guesses <= num_canaries, got v={v}, "
                         f"r={r}, m={m}")


def _check_delta(delta: float) -> None:
    if not (math.isfinite(delta) and 0.0 <= delta <= 1.0):
        raise ValueError(f"delta is {delta!r}; need 0 <= delta <= 1")


def p_value(
    epsilon: float, delta: float, num_canaries: int, num_guesses: int, num_correct: int
) -> float:
    """p-value of v correct guesses out of r, m canaries, under the null "(ε, δ)-DP".

    Steinke, Nasr and Jagielski (2023), Theorem 3 / Corollary 5.4 and Appendix D's
    ``p_value_DP_audit``: with p = e^ε/(1 + e^ε),

        β = P[Bin(r, p) ≥ v],
        α = max_{1≤i≤v} (P[Bin(r, p) ≥ v − i] − β) / i,
        p-value = min(1, β + 2·m·δ·α).

    (The theorem takes the max over 1 ≤ i ≤ m; terms with i > v are no larger than
    the i = v term, so the two agree.) α is computed as the running sum of
    P[Bin(r, p) = v − j], j = 1..i, over i, which avoids cancellation.

    Monotone non-decreasing in ε (checked numerically over a grid of m, r, v, δ in
    the tests; `epsilon_lower_bound` does not rely on it). With v = 0 or r = 0 the
    p-value is 1.

    Args:
      epsilon: ε ≥ 0 of the null hypothesis.
      delta: δ ∈ [0, 1] of the null hypothesis.
      num_canaries: m, the number of canaries (each in with probability 1/2).
      num_guesses: r, the number of non-abstaining guesses.
      num_correct: v, the number of correct guesses.
    """
    m, r, v = int(num_canaries), int(num_guesses), int(num_correct)
    _check_counts(m, r, v)
    _check_delta(delta)
    if not (epsilon >= 0.0):
        raise ValueError(f"epsilon is {epsilon!r}; need epsilon >= 0")
    if v == 0:
        return 1.0
    p = float(scipy.special.expit(epsilon))
    beta = float(scipy.stats.binom.sf(v - 1, r, p))
    if delta == 0.0:
        return min(1.0, beta)
    i = np.arange(1, v + 1)
    mass = np.cumsum(scipy.stats.binom.pmf(v - i, r, p))  # P[v − i ≤ Bin < v]
    alpha = float(np.max(mass / i))
    return min(1.0, beta + 2.0 * m * delta * alpha)


def epsilon_lower_bound(
    num_canaries: int,
    num_guesses: int,
    num_correct: int,
    delta: float,
    confidence: float = 0.95,
) -> float:
    """Largest ε ∈ [0, 50] with p-value(ε) ≤ 1 − confidence; 0.0 when even ε = 0 is not rejected.

    Appendix D's ``get_eps_audit``, made robust: instead of assuming monotonicity
    outright, it scans ε upward in steps of 0.5 from 0 to bracket the *first* ε
    where the p-value exceeds the level, then bisects that bracket to width 1e-6. The
    result ε̂ is thus the end of the initial interval [0, ε̂] on which every ε is
    rejected (up to the scan step), which is what soundness needs: if the true
    privacy parameter ε₀ ≤ ε̂ then the null at ε₀ was rejected, an event of
    probability ≤ 1 − confidence. When the p-value is monotone (as it is everywhere
    we checked) this is exactly "the largest ε with p-value ≤ 1 − confidence".

    Returns the low end of the final bracket (conservative). If the p-value stays
    below the level up to ε = 50 (not reachable with δ > 0 and realistic m), 50.0.

    Args:
      num_canaries: m.
      num_guesses: r.
      num_correct: v.
      delta: δ of the DP claim being audited.
      confidence: 1 − significance level, in (0, 1).
    """
    m, r, v = int(num_canaries), int(num_guesses), int(num_correct)
    _check_counts(m, r, v)
    _check_delta(delta)
    if not (0.0 < confidence < 1.0):
        raise ValueError(f"confidence is {confidence!r}; need 0 < confidence < 1")
    level = 1.0 - confidence

    def rejected(eps: float) -> bool:
        return p_value(eps, delta, m, r, v) <= level

    if v == 0 or not rejected(0.0):
        return 0.0
    lo = 0.0
    hi = None
    while lo < EPS_MAX:
        nxt = min(lo + _SCAN_STEP, EPS_MAX)
        if not rejected(nxt):
            hi = nxt
            break
        lo = nxt
    if hi is None:
        return EPS_MAX
    while hi - lo > _TOLERANCE:
        mid = 0.5 * (lo + hi)
        if rejected(mid):
            lo = mid
        else:
            hi = mid
    return lo


@dataclasses.dataclass(frozen=True)
class AuditResult:
    """Outcome of `audit_from_scores`: the best bound over the guess counts tried.

    Attributes:
      epsilon_lower_bound: the reported ε̂ (already Bonferroni-corrected); 0.0 if
        no guess count rejected even ε = 0.
      k_plus: "in" guesses of the best guess count.
      k_minus: "out" guesses of the best guess count.
      num_guesses: r = k_plus + k_minus of the best guess count.
      num_correct: v for the best guess count.
      num_canaries: m.
      confidence: the overall (family-wise) confidence.
      tried: one (k, bound) per guess count tried, k = (k_plus, k_minus), in order.
    """

    epsilon_lower_bound: float
    k_plus: int
    k_minus: int
    num_guesses: int
    num_correct: int
    num_canaries: int
    confidence: float
    tried: tuple[tuple[tuple[int, int], float], ...]


def default_guess_counts(num_canaries: int) -> tuple[tuple[int, int], ...]:
    """Default (k₊, k₋) pairs, fixed by m alone (never by the scores or the coins).

    Totals k: the 1-2-5 grid 10, 20, 50, 100, 200, 500, 1000, 2000, … below m, then
    m − ⌈3√m⌉ and m. Each k is split symmetrically, k₊ = ⌈k/2⌉ top and k₋ = ⌊k/2⌋
    bottom. For m = 1000 that is 10, 20, 50, 100, 200, 500, 905, 1000 (K = 8).

    Why symmetric. Half the canaries are "in", so guessing only "in" caps the
    correct guesses at about m/2 and the ceiling at that of m/2 canaries (m = 1000:
    5.09 instead of 5.78). Splitting k between the two tails uses both tails of the
    score distribution, which for a white-box canary (a Gaussian shift of the
    score) are equally informative. For a one-sided signal (e.g. black-box loss
    differences) pass explicit pairs such as (k, 0).

    Why m − ⌈3√m⌉. The number of "in" canaries is Bin(m, 1/2), not m/2, so even
    perfectly separating scores get a symmetric split of all m canaries slightly
    wrong; k = m − ⌈3√m⌉ is the largest symmetric guess that perfect scores get
    entirely right with probability ≈ 99.7% (|#in − m/2| ≤ 1.5√m), which keeps
    the noise-off sanity check close to the ceiling.
    """
    m = int(num_canaries)
    totals: list[int] = []
    base = 10
    while base < m:
        totals.extend(k for k in (base, 2 * base, 5 * base) if k < m)
        base *= 10
    near_all = m - math.ceil(3.0 * math.sqrt(m))
    if near_all > m // 2:  # only where it adds something the grid lacks
        totals.append(near_all)
    if m >= 1:
        totals.append(m)
    totals = sorted(set(totals))
    return tuple((k - k // 2, k // 2) for k in totals)


def _as_pair(k: int | tuple[int, int]) -> tuple[int, int]:
    if isinstance(k, tuple | list):
        if len(k) != 2:
            raise ValueError(f"guess count {k!r}; need an int k or a pair (k_plus, k_minus)")
        return int(k[0]), int(k[1])
    k = int(k)
    return k - k // 2, k // 2


def audit_from_scores(
    scores: np.ndarray,
    inclusion: np.ndarray,
    delta: float,
    confidence: float = 0.95,
    guess_counts: Sequence[int | tuple[int, int]] | None = None,
) -> AuditResult:
    """One-run audit: try several guess counts, Bonferroni-corrected, report the best bound.

    For each guess count (k₊, k₋) the auditor guesses with `audit_guesses`, counts
    the correct guesses v, and computes `epsilon_lower_bound` at confidence
    1 − (1 − confidence)/K, K the number of guess counts tried. By the union bound
    the probability that *any* of the K bounds exceeds the true ε is at most
    1 − confidence, so reporting the maximum is valid at the stated confidence.
    The guess counts must be fixed before looking at the scores (the default
    depends on m only).

    Args:
      scores: shape (m,), higher = more likely "in".
      inclusion: bool shape (m,), the coins from `canary_inclusion`.
      delta: δ of the DP claim being audited.
      confidence: family-wise confidence, in (0, 1).
      guess_counts: ints k (split symmetrically, k₊ = ⌈k/2⌉, k₋ = ⌊k/2⌋) or explicit
        (k₊, k₋) pairs; default `default_guess_counts(m)`. Counts with k₊ + k₋ > m are
        dropped before the correction.
    """
    scores = np.asarray(scores, dtype=np.float64)
    inclusion = np.asarray(inclusion)
    if inclusion.shape != scores.shape or scores.ndim != 1:
        raise ValueError(f"scores {scores.shape} and inclusion {inclusion.shape} must be 1-D "
                         "arrays of the same length")
    if inclusion.dtype != np.bool_:
        if not np.all((inclusion == 0) | (inclusion == 1)):
            raise ValueError("inclusion must be boolean (or 0/1)")
        inclusion = inclusion.astype(bool)
    if not (0.0 < confidence < 1.0):
        raise ValueError(f"confidence is {confidence!r}; need 0 < confidence < 1")
    m = scores.shape[0]
    if guess_counts is None:
        pairs = list(default_guess_counts(m))
    else:
        pairs = [_as_pair(k) for k in guess_counts]
        for kp, km in pairs:
            if kp < 0 or km < 0:
                raise ValueError(f"guess count ({kp}, {km}) is negative")
        pairs = [(kp, km) for kp, km in pairs if 0 < kp + km <= m]
    if not pairs:
        raise ValueError(f"no usable guess count for m={m} canaries")
    per_test_confidence = 1.0 - (1.0 - confidence) / len(pairs)
    truth = np.where(inclusion, 1, -1).astype(np.int8)

    tried = []
    best = None
    for kp, km in pairs:
        r, guesses = audit_guesses(scores, kp, km)
        v = int(np.sum(guesses == truth))
        bound = epsilon_lower_bound(m, r, v, delta, per_test_confidence)
        tried.append(((kp, km), bound))
        if best is None or bound > best[0]:
            best = (bound, kp, km, r, v)
    bound, kp, km, r, v = best
    return AuditResult(
        epsilon_lower_bound=bound,
        k_plus=kp,
        k_minus=km,
        num_guesses=r,
        num_correct=v,
        num_canaries=m,
        confidence=confidence,
        tried=tuple(tried),
    )
