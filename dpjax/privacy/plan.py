"""The DP execution plan: the one place that decides what a private run does.

A `DPExecutionPlan` (in the spirit of jax_privacy 2.x's `DPExecutionPlan`)
owns every number the privacy guarantee depends on:

  * the phases (DP-RandP's linear probe and fine-tuning, or one DP-SGD phase),
    each with its steps and its noise multiplier σ, calibrated ONCE here when
    a target ε is asked for;
  * the sampling rate q = B / N and the expected batch size B, the public
    normaliser of every update;
  * the sampler that draws each step's Poisson batch (its stream derived from
    the run's seed, never the raw seed);
  * the noise: its standard deviation σ·Δ, with Δ the sensitivity of the
    clipped sum (`sensitivity`), and the key it is drawn from;
  * the ledger of steps that ran, and the `DpEvent` and ε computed from it.

The loop asks the plan for each step's batch and keys and hands it each step
that ran (`record`); nothing else computes σ, q, B, the sensitivity or ε.

Everything here is pure: no I/O, no config objects, no model code.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence

import dp_accounting
import jax

from dpjax.errors import ConfigError
from dpjax.privacy import accounting, clipping, randomness
from dpjax.privacy.sampling import BatchPlan, PoissonSampler, PrivacyLedger, ShuffleSampler

TRAINABLE = ("all", "head")


@dataclasses.dataclass(frozen=True)
class PhaseSpec:
    """A stretch of private steps with one σ, learning rate and trainable set.

    Attributes:
      name: label in summaries ("dpsgd", "phase2_linear_probe", ...).
      steps: number of noisy updates in the phase.
      noise_multiplier: σ (noise standard deviation / sensitivity); 0 for a
        non-private run.
      learning_rate: the optimiser's learning rate in this phase.
      trainable: "all", or "head" (only the last norm's affine and the
        classifier: a DP linear probe, Tang et al. 2023 Phase II).
    """

    name: str
    steps: int
    noise_multiplier: float
    learning_rate: float
    trainable: str = "all"

    def __post_init__(self):
        if self.trainable not in TRAINABLE:
            raise ConfigError(f"Expected trainable in {TRAINABLE}, got {self.trainable!r}.")


@dataclasses.dataclass(frozen=True)
class PhaseShape:
    """A phase before its σ is known: (name, steps, learning rate, trainable, fixed σ or 0)."""

    name: str
    steps: int
    learning_rate: float
    trainable: str = "all"
    noise_multiplier: float = 0.0   # > 0: this phase's σ is fixed, not calibrated


@dataclasses.dataclass(frozen=True)
class DPExecutionPlan:
    """σ, q, B, C, δ and the phases of one run, decided before training.

    Build it with `make_plan`. Attributes are public settings; the private
    inputs (the seed, the data) are arguments of the methods that need them.
    """

    phases: tuple[PhaseSpec, ...]
    num_examples: int
    expected_batch_size: int
    clip_norm: float
    delta: float
    accountant: str
    private: bool
    poisson: bool
    calibrated: bool
    # Private releases made before training and composed into ε, as (name, DpEvent,
    # ε of that release alone): e.g. Laplace-noised class counts for logit adjustment.
    pre_releases: tuple = ()

    # --- the schedule ------------------------------------------------------

    @property
    def sampling_rate(self) -> float:
        """q = B / N: each example joins each step's batch with this probability."""
        return self.expected_batch_size / self.num_examples

    @property
    def num_steps(self) -> int:
        return sum(p.steps for p in self.phases)

    @property
    def noise_multiplier(self) -> float:
        """σ of the main (last) phase."""
        return self.phases[-1].noise_multiplier

    def phase_index(self, step: int) -> int:
        """Index of the phase that runs step `step` (0-based)."""
        end = 0
        for i, p in enumerate(self.phases):
            end += p.steps
            if step < end:
                return i
        return len(self.phases) - 1

    def phase(self, step: int) -> PhaseSpec:
        return self.phases[self.phase_index(step)]

    def with_noise_multipliers(self, sigmas: Sequence[float]) -> DPExecutionPlan:
        """This plan with the phases' σ replaced (a resumed run keeps the σ it started with,
        even if a newer dpjax would calibrate a slightly different one)."""
        if len(sigmas) != len(self.phases):
            raise ConfigError(f"The checkpoint's plan has {len(sigmas)} phases, the config "
                              f"{len(self.phases)}: use a new --workdir.")
        return dataclasses.replace(self, phases=tuple(
            dataclasses.replace(p, noise_multiplier=float(z)) for p, z in zip(self.phases,
                                                                                sigmas)))

    # --- sampling ----------------------------------------------------------

    def sampler(self, seed: int, micro_batch_size: int) -> PoissonSampler:
        """The sampler of this run (its stream is the seed's "sampling" stream).

        Args:
          seed: the run's seed, the same on every host (`randomness.shared_seed`).
          micro_batch_size: rows per micro-batch over all devices together.
        """
        cls = PoissonSampler if self.poisson else ShuffleSampler
        return cls(self.num_examples, self.expected_batch_size, micro_batch_size,
                   randomness.derive_seed(seed, "sampling"))

    def batch(self, sampler: PoissonSampler, step: int) -> BatchPlan:
        """The examples of step `step`."""
        return sampler.batch(step)

    # --- noise -------------------------------------------------------------

    def sensitivity(self) -> float:
        """L2 sensitivity of one step's clipped sum to adding or removing one example."""
        return clipping.clipped_sum_sensitivity(self.clip_norm)

    def noise_stddev(self, step: int) -> float:
        """Standard deviation of the Gaussian noise on step `step`'s sum: σ·Δ (0 if not private)."""
        if not self.private:
            return 0.0
        return self.phase(step).noise_multiplier * self.sensitivity()

    def step_keys(self, seed: int, step: int) -> tuple[jax.Array, jax.Array]:
        """(noise key, augmentation key) of step `step`, from their own streams of the seed."""
        noise = jax.random.fold_in(randomness.jax_key(seed, "noise"), step)
        augment = jax.random.fold_in(randomness.jax_key(seed, "augment"), step)
        return noise, augment

    # --- accounting --------------------------------------------------------

    def new_ledger(self) -> PrivacyLedger:
        return PrivacyLedger()

    def record(self, ledger: PrivacyLedger, step: int) -> None:
        """Records in `ledger` that step `step` ran (with its phase's σ and this q).

        Raises:
          RuntimeError: the ledger does not hold exactly `step` steps before
            the call (a step recorded twice or skipped): never silently.
        """
        if ledger.steps != step:
            raise RuntimeError(f"privacy ledger holds {ledger.steps} steps, but step {step} "
                               "is being recorded: refusing to account a schedule that did "
                               "not run.")
        ph = self.phase(step)
        ledger.record(ph.noise_multiplier if self.private else 0.0, self.sampling_rate, ph.name)

    def dp_event(self, ledger: PrivacyLedger) -> dp_accounting.DpEvent:
        """The `DpEvent` of the steps in `ledger` (Poisson-subsampled Gaussians, composed)."""
        return accounting.dp_event(ledger.phases)

    def epsilon(self, ledger: PrivacyLedger) -> float | None:
        """ε spent by the steps in `ledger` at this plan's δ (None for a non-private run)."""
        if not self.private:
            return None
        return accounting.epsilon(ledger.phases, self.delta, self.accountant,
                                  self._pre_events())

    def _pre_events(self) -> tuple:
        return tuple(event for _, event, _ in self.pre_releases)

    def with_pre_release(self, name: str, event: dp_accounting.DpEvent,
                         epsilon: float) -> DPExecutionPlan:
        """This plan with one more private release before training, composed into ε.

        σ is not recalibrated: a calibrated plan's total ε then exceeds its target
        by about the release's ε (callers calibrate with `make_plan(pre_releases=...)`).
        """
        return dataclasses.replace(self, pre_releases=self.pre_releases + ((name, event,
                                                                           epsilon),))

    def planned_epsilon(self) -> float | None:
        """ε after all planned steps (what `dpjax account` prints)."""
        if not self.private:
            return None
        return accounting.epsilon(self._planned_phases(), self.delta, self.accountant,
                                  self._pre_events())

    def _planned_phases(self) -> list[accounting.Phase]:
        return [accounting.Phase(p.steps, p.noise_multiplier, self.sampling_rate, p.name)
                for p in self.phases]

    def phase_report(self, ledger: PrivacyLedger) -> list[dict]:
        """Per release and phase that ran: name, steps, σ, q and ε cumulative after it."""
        out = [{"name": name, "steps": 0, "noise_multiplier": None, "sampling_rate": None,
                "epsilon": accounting.epsilon([], self.delta, self.accountant,
                                              self._pre_events()[:i + 1])}
               for i, (name, _, _) in enumerate(self.pre_releases)]
        for i, ph in enumerate(ledger.phases):
            out.append({"name": ph.name, "steps": ph.steps,
                        "noise_multiplier": ph.noise_multiplier if self.private else None,
                        "sampling_rate": ph.sampling_rate,
                        "epsilon": accounting.epsilon(ledger.phases[:i + 1], self.delta,
                                                      self.accountant, self._pre_events())
                        if self.private else None})
        return out


def make_plan(shapes: Sequence[PhaseShape], *, num_examples: int, expected_batch_size: int,
              clip_norm: float, delta: float, accountant: str = "pld", private: bool = True,
              poisson: bool = True, target_epsilon: float = 0.0,
              noise_multiplier: float = 0.0, pre_releases: tuple = ()) -> DPExecutionPlan:
    """Decides every phase's σ: given (`noise_multiplier` > 0) or calibrated to `target_epsilon`.

    Phases with their own fixed σ (`PhaseShape.noise_multiplier` > 0) keep it;
    the others share one σ, the given one or the smallest that keeps ε of all
    phases composed at or below `target_epsilon` (`accounting.calibrate_noise_multiplier`).
    `pre_releases` ((name, DpEvent, ε) made before training) are composed in, and
    the calibration leaves room for them.

    Raises:
      ConfigError: an argument out of range, or both or neither of
        `target_epsilon` and `noise_multiplier` set for a private run.
    """
    if not shapes or any(s.steps < 0 for s in shapes) or sum(s.steps for s in shapes) < 1:
        raise ConfigError("A run needs at least one step in its phases.")
    if not (isinstance(num_examples, int) and num_examples > 0):
        raise ConfigError(f"Expected num_examples={num_examples!r} to be a positive integer.")
    if not (isinstance(expected_batch_size, int) and 0 < expected_batch_size <= num_examples):
        raise ConfigError(f"batch_size={expected_batch_size} must be in [1, {num_examples}] "
                          f"(the training set has {num_examples} examples): lower batch_size.")
    common = dict(num_examples=num_examples, expected_batch_size=expected_batch_size,
                  delta=delta, accountant=accountant, poisson=poisson)
    if not private:
        phases = tuple(PhaseSpec(s.name, s.steps, 0.0, s.learning_rate, s.trainable)
                       for s in shapes)
        return DPExecutionPlan(phases, clip_norm=math.inf, private=False, calibrated=False,
                               **common)
    if not (math.isfinite(clip_norm) and clip_norm > 0):
        raise ConfigError(f"Expected privacy.clip_norm={clip_norm!r} to be a finite number > 0.")
    if noise_multiplier > 0 and target_epsilon > 0:
        raise ConfigError("Both privacy.target_epsilon and privacy.noise_multiplier are set: "
                          "set privacy.target_epsilon=0 to train at the given σ, or "
                          "privacy.noise_multiplier=0 to calibrate σ to the target.")
    q = expected_batch_size / num_examples
    free = [s for s in shapes if s.noise_multiplier <= 0 and s.steps > 0]
    if not free and target_epsilon > 0:
        # e.g. a probe-only run whose one phase has phases.head_noise_multiplier:
        # the target would be silently ignored, and ε would not be what was asked.
        raise ConfigError("Every phase has its own σ (phases.head_noise_multiplier), so "
                          "privacy.target_epsilon has nothing to calibrate: set "
                          "privacy.target_epsilon=0 to train at the given σ, or "
                          "phases.head_noise_multiplier=0 to calibrate σ to the target.")
    if noise_multiplier > 0 or not free:
        sigma, calibrated = noise_multiplier, False
    elif target_epsilon > 0:
        fixed = [accounting.Phase(s.steps, s.noise_multiplier, q, s.name) for s in shapes
                 if s.noise_multiplier > 0 and s.steps > 0]
        sigma = accounting.calibrate_noise_multiplier(
            target_epsilon, delta, q, sum(s.steps for s in free), accountant, fixed,
            tuple(event for _, event, _ in pre_releases))
        calibrated = True
    else:
        raise ConfigError("Neither privacy.target_epsilon nor privacy.noise_multiplier is set: "
                          "set one of them > 0.")
    phases = tuple(PhaseSpec(s.name, s.steps, s.noise_multiplier if s.noise_multiplier > 0
                             else sigma, s.learning_rate, s.trainable) for s in shapes)
    return DPExecutionPlan(phases, clip_norm=float(clip_norm), private=True,
                           calibrated=calibrated, pre_releases=tuple(pre_releases), **common)
