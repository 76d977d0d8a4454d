"""Privacy accounting for DP-SGD through Google's `dp_accounting`.

One training phase of DP-SGD with Poisson sampling is `steps` compositions of
the subsampled Gaussian mechanism: each step includes every example with
probability `sampling_rate` (q) and adds N(0, σ²C²) to the sum of per-example
gradients clipped to L2 norm C. Its privacy loss under add/remove-one
neighbouring is what `PoissonSampledDpEvent(q, GaussianDpEvent(σ))` composed
`steps` times describes (Abadi et al. 2016; Mironov 2017 for RDP; Koskela et
al. 2020 and Doroshenko et al. 2022 for privacy loss distributions).

Several phases with different σ or q (DP-RandP's Phase II and III) compose
with `ComposedDpEvent`. The accountant is never handed a recomputed schedule:
callers pass the `Phase` records the sampler produced (see `sampling.py`).

PLD is the default: it is tighter than RDP (e.g. ε = 2.877 against 3.142 for
σ = 1, q = 256/50000, 10,000 steps, δ = 1e-5) and is used both to calibrate σ
and to report ε, so the two agree.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import math
from collections.abc import Sequence

import dp_accounting
from dp_accounting import pld, rdp

from dpjax import validate
from dpjax.errors import ConfigError

ACCOUNTANTS = ("pld", "rdp")
# Discretisation of the PLD accountant: 1e-4 reproduces the reference values of
# docs/methods.md (e.g. ε = 2.877 for σ = 1, q = 256/50000, 10,000 steps, δ = 1e-5)
# to three decimals and costs well under a second per call for ε up to about 10.
PLD_DISCRETIZATION = 1e-4
# Above this ε (estimated by RDP first, in milliseconds) the PLD grid widens in
# proportion, PLD_DISCRETIZATION · ε_RDP / PLD_FINE_UP_TO: the cost of a PLD call
# grows with the range of the privacy loss, i.e. with ε, so a fixed grid takes
# minutes and gigabytes at ε in the hundreds (σ ≈ 0.1); the scaled grid keeps it
# near a second at a relative precision of about 1e-5. A coarser grid is still a
# pessimistic estimate: ε never comes out below the true value.
PLD_FINE_UP_TO = 10.0
# PLD's cost also grows with the number of steps an example takes part in
# (Σ q·steps: 200 for the CIFAR-10 recipe at ε = 8); past this many, where PLD
# takes minutes (27 s at 1.8e6), ε comes from RDP (an upper bound) with a warning.
PLD_MAX_PARTICIPATIONS = 1e5
# Relative tolerance of the σ calibration: ε at the calibrated σ is within
# this fraction below the target (calibration never overshoots ε).
CALIBRATION_TOL = 1e-3
# The calibration's range of σ. A target ε above MAX_TARGET_EPSILON is no
# guarantee worth calibrating for (set the noise multiplier directly); below
# MIN_NOISE_MULTIPLIER the calibration stops and returns the smallest σ tried
# whose ε reaches the target.
MAX_TARGET_EPSILON = 1000.0
MAX_NOISE_MULTIPLIER = 4096.0
MIN_NOISE_MULTIPLIER = 1e-3

log = logging.getLogger("dpjax")

# RDP warns loudly about non-converging series for σ ≤ 1 at large q; the
# result is still an upper bound, so keep the log readable.
logging.getLogger("absl").setLevel(logging.ERROR)


@dataclasses.dataclass(frozen=True)
class Phase:
    """A run of DP-SGD steps with one noise multiplier and one sampling rate.

    Attributes:
      steps: number of noisy steps actually taken (each one releases a noisy
        gradient, whatever the realised batch size, including empty batches).
      noise_multiplier: σ, the noise standard deviation divided by clip_norm.
      sampling_rate: q, the probability that an example joins a step's batch.
      name: label used in summaries ("phase2", ...).
    """

    steps: int
    noise_multiplier: float
    sampling_rate: float
    name: str = "dpsgd"

    def __post_init__(self):
        validate.non_negative_int("steps", self.steps)
        validate.non_negative_finite("noise_multiplier", self.noise_multiplier)
        validate.probability("sampling_rate", self.sampling_rate, allow_one=True)

    def dp_event(self) -> dp_accounting.DpEvent:
        """The `DpEvent` describing this phase (Poisson-subsampled Gaussian)."""
        return dp_accounting.SelfComposedDpEvent(
            dp_accounting.PoissonSampledDpEvent(
                self.sampling_rate, dp_accounting.GaussianDpEvent(self.noise_multiplier)
            ),
            self.steps,
        )


def dp_event(phases: Sequence[Phase]) -> dp_accounting.DpEvent:
    """The composition of all phases, in order."""
    return dp_accounting.ComposedDpEvent([p.dp_event() for p in phases if p.steps > 0])


def _check_accountant(accountant: str) -> None:
    validate.one_of("privacy.accountant", accountant, ACCOUNTANTS)


def epsilon(phases: Sequence[Phase], delta: float, accountant: str = "pld",
            extra_events: Sequence[dp_accounting.DpEvent] = ()) -> float:
    """ε spent by the phases (and `extra_events`, e.g. a DP count of the labels) at δ.

    Add/remove-one neighbouring; everything is composed by the accountant.
    Returns 0.0 when nothing private ran and `inf` when σ = 0 for any step.
    """
    validate.probability("delta", delta)
    _check_accountant(accountant)
    phases = [p for p in phases if p.steps > 0]
    if not phases and not extra_events:
        return 0.0
    if any(p.noise_multiplier == 0 for p in phases):
        return math.inf
    key = tuple((p.steps, p.noise_multiplier, p.sampling_rate) for p in phases)
    return _cached_epsilon(key, delta, accountant, tuple(extra_events))


def _event(key, extra) -> dp_accounting.DpEvent:
    return dp_accounting.ComposedDpEvent(list(extra) + [Phase(s, z, q).dp_event()
                                                        for s, z, q in key])


def pld_grid(rough_epsilon: float) -> float:
    """The PLD discretisation interval for an ε of about `rough_epsilon` (see PLD_FINE_UP_TO)."""
    return PLD_DISCRETIZATION * max(1.0, rough_epsilon / PLD_FINE_UP_TO)


@functools.lru_cache(maxsize=4096)
def _cached_epsilon(key, delta: float, accountant: str, extra=()) -> float:
    try:
        rdp_acc = rdp.RdpAccountant()
        if rdp_acc.supports(_event(key, extra)):
            rdp_acc.compose(_event(key, extra))
            rough = float(rdp_acc.get_epsilon(delta))
        elif accountant == "rdp":
            raise ConfigError("privacy.accountant=rdp cannot account for this run's releases: "
                              "set privacy.accountant=pld.")
        else:
            rough = PLD_FINE_UP_TO
        if accountant == "rdp" or math.isinf(rough):
            return rough
        participations = sum(q * steps for steps, _, q in key)
        if participations > PLD_MAX_PARTICIPATIONS:
            log.warning("ε from RDP, not PLD: each example takes part in %.3g steps on "
                        "average, past the %.0g at which PLD takes minutes; RDP's ε is an "
                        "upper bound of PLD's.", participations, PLD_MAX_PARTICIPATIONS)
            return rough
        pld_acc = pld.PLDAccountant(value_discretization_interval=pld_grid(rough))
        pld_acc.compose(_event(key, extra))
        return float(pld_acc.get_epsilon(delta))
    except (ValueError, OverflowError, MemoryError):
        # Tiny σ: the privacy loss distribution is too wide to represent; the
        # guarantee is vacuous, so report it as such rather than crash.
        return math.inf


def calibrate_noise_multiplier(
    target_epsilon: float,
    delta: float,
    sampling_rate: float,
    steps: int,
    accountant: str = "pld",
    fixed_phases: Sequence[Phase] = (),
    extra_events: Sequence[dp_accounting.DpEvent] = (),
) -> float:
    """Smallest σ (to `CALIBRATION_TOL`) whose ε after `steps` steps is ≤ target.

    With `fixed_phases`, those phases (with their own σ, e.g. a DP linear
    probe) come first and σ is calibrated for the remaining `steps` so that
    the composition of all of them reaches the target.

    RDP (milliseconds per call) brackets σ; with PLD, a few PLD calls then
    narrow the bracket by interpolating log ε against log σ (Illinois
    method), so a calibration takes seconds whatever the target.

    Raises:
      ConfigError: the target is above MAX_TARGET_EPSILON or not reachable
        (ε would exceed it even at σ = MAX_NOISE_MULTIPLIER), or an argument
        is out of range.
    """
    validate.in_range("privacy.target_epsilon", target_epsilon, 0.0, MAX_TARGET_EPSILON,
                      low_open=True, fix="an ε that large is no guarantee; set "
                      "privacy.noise_multiplier instead to train with a given σ")
    validate.probability("delta", delta)
    validate.probability("sampling_rate", sampling_rate, allow_one=True)
    validate.positive_int("steps", steps)
    _check_accountant(accountant)
    fixed = tuple((p.steps, p.noise_multiplier, p.sampling_rate) for p in fixed_phases
                  if p.steps > 0)
    return _cached_calibration(float(target_epsilon), delta, sampling_rate, int(steps),
                               accountant, fixed, tuple(extra_events))


@functools.lru_cache(maxsize=256)
def _cached_calibration(target_epsilon, delta, sampling_rate, steps, accountant,
                        fixed=(), extra=()) -> float:
    def eps_at(sigma: float, acc: str) -> float:
        return _cached_epsilon(fixed + ((steps, sigma, sampling_rate),), delta, acc, extra)

    if eps_at(MAX_NOISE_MULTIPLIER, accountant) > target_epsilon:
        raise ConfigError(
            f"Expected privacy.target_epsilon={target_epsilon:g} to be reachable: ε exceeds it "
            f"even at σ = {MAX_NOISE_MULTIPLIER:g} with {steps} steps at sampling_rate="
            f"{sampling_rate:.4g} and delta={delta:g}: use fewer steps, a smaller batch_size "
            "or a larger target_epsilon.")
    # RDP's σ: a cheap bracket. PLD's ε is below RDP's, so its σ is at or below.
    lo, hi = _bracket(lambda s: eps_at(s, "rdp"), target_epsilon)
    hi = _illinois(lambda s: eps_at(s, "rdp"), target_epsilon, lo, hi)
    if accountant == "rdp":
        return hi
    while eps_at(hi, accountant) > target_epsilon:  # PLD above RDP: rare, step up
        hi = min(1.25 * hi, MAX_NOISE_MULTIPLIER)
    lo, factor = hi, 0.9
    while eps_at(lo, accountant) <= target_epsilon:  # PLD's σ is below RDP's: step down
        if lo <= MIN_NOISE_MULTIPLIER:
            return lo
        hi, lo, factor = lo, max(lo * factor, MIN_NOISE_MULTIPLIER), factor * factor
    return _illinois(lambda s: eps_at(s, accountant), target_epsilon, lo, hi)


def _bracket(eps_at, target: float) -> tuple[float, float]:
    """(lo, hi) with eps_at(lo) > target ≥ eps_at(hi), hi ≤ MAX_NOISE_MULTIPLIER; lo = hi
    when even MIN_NOISE_MULTIPLIER reaches the target."""
    hi = 1.0
    while eps_at(hi) > target:
        hi = min(2.0 * hi, MAX_NOISE_MULTIPLIER)
    lo = hi / 2.0
    while eps_at(lo) <= target:
        if lo <= MIN_NOISE_MULTIPLIER:
            return lo, lo
        hi, lo = lo, max(lo / 2.0, MIN_NOISE_MULTIPLIER)
    return lo, hi


def _illinois(eps_at, target: float, lo: float, hi: float) -> float:
    """The smallest σ in [lo, hi] (to CALIBRATION_TOL) with eps_at(σ) ≤ target.

    Regula falsi on f(log σ) = log ε − log target with the Illinois
    modification; falls back to bisection where ε is not finite. Keeps
    eps_at(lo) > target ≥ eps_at(hi) throughout, and returns hi.
    """
    if lo >= hi:
        return hi

    def f(sigma: float) -> float:
        e = eps_at(sigma)
        return math.log(e / target) if 0 < e < math.inf else (math.inf if e > 0 else -math.inf)

    f_lo, f_hi = f(lo), f(hi)
    side = 0
    for _ in range(100):  # converges in a handful; the cap only guards odd ε curves
        if (hi - lo) / hi <= CALIBRATION_TOL:
            break
        x_lo, x_hi = math.log(lo), math.log(hi)
        if math.isfinite(f_lo) and math.isfinite(f_hi) and f_lo != f_hi:
            x = x_lo - f_lo * (x_hi - x_lo) / (f_hi - f_lo)
            x = min(max(x, x_lo + 1e-3 * (x_hi - x_lo)), x_hi - 1e-3 * (x_hi - x_lo))
        else:
            x = 0.5 * (x_lo + x_hi)
        sigma = math.exp(x)
        f_mid = f(sigma)
        if f_mid > 0:
            lo, f_lo = sigma, f_mid
            if side == -1:
                f_hi *= 0.5
            side = -1
        else:
            hi, f_hi = sigma, f_mid
            if side == 1:
                f_lo *= 0.5
            side = 1
    return hi
