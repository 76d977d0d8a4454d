"""Class priors from private labels, with differential privacy: Laplace-noised class counts.

Logit adjustment (Menon et al. 2021) and class-balanced losses need the class
prior π of the training set. The training labels are private, so their
counts are a release like any other: here they are released once, before
training, by the Laplace mechanism, and the release is composed into the
run's ε (`DPExecutionPlan.pre_releases`).

The mechanism. Under add/remove-one neighbouring (the neighbouring of the
whole of dpjax) adding or removing one example changes exactly one count of
the histogram by one, so the histogram's L1 sensitivity is 1
(`L1_SENSITIVITY`). Adding independent Laplace(0, b) noise with b = 1/ε to
every count is ε-DP (Dwork et al. 2006), `dp_accounting.LaplaceDpEvent(
noise_multiplier=b / sensitivity = 1/ε)`. With several images per privacy
unit (a patient), each unit contributes its label *fractions* (its images'
labels divided by its image count), which again sum to one: the L1
sensitivity of the histogram of units stays 1.

Everything after the noise is post-processing and costs nothing: counts are
clipped below at `floor` (a noisy count can be negative) and normalised into
a prior; the logit offsets are τ·log π.

The noise is drawn from the run's "class_counts" stream
(`randomness.numpy_rng(seed, "class_counts")`), so it comes from OS entropy
like the DP-SGD noise, is redrawn identically on a resumed run (one release,
not two) and shares no bits with the batches or the gradient noise. NumPy's
floating-point Laplace sampler has the least-significant-bit weakness of
every floating-point sampler (Mironov 2012; docs/sharp_edges.md section 11).

Everything here is pure: no I/O, no config objects.
"""

from __future__ import annotations

import dataclasses
import math

import dp_accounting
import numpy as np

from dpjax.errors import ConfigError

L1_SENSITIVITY = 1.0
MECHANISM = "laplace"
RELEASE_NAME = "class_counts"


def _check_epsilon(epsilon: float) -> float:
    if not (isinstance(epsilon, (int, float)) and not isinstance(epsilon, bool)
            and math.isfinite(epsilon) and epsilon > 0):
        raise ConfigError(f"Expected imbalance.prior_epsilon={epsilon!r} to be a finite number "
                          "> 0.")
    return float(epsilon)


def laplace_scale(epsilon: float) -> float:
    """b = Δ₁/ε: the Laplace scale that makes the counts ε-DP."""
    return L1_SENSITIVITY / _check_epsilon(epsilon)


def dp_event(epsilon: float) -> dp_accounting.DpEvent:
    """The release's `DpEvent`: Laplace with noise multiplier b/Δ₁ = 1/ε."""
    return dp_accounting.LaplaceDpEvent(noise_multiplier=laplace_scale(epsilon) / L1_SENSITIVITY)


def pre_release(epsilon: float) -> tuple[str, dp_accounting.DpEvent, float]:
    """(name, DpEvent, ε) for `plan_lib.make_plan(pre_releases=...)`."""
    return (RELEASE_NAME, dp_event(epsilon), _check_epsilon(epsilon))


def class_histogram(labels: np.ndarray, num_classes: int,
                    units: np.ndarray | None = None) -> np.ndarray:
    """Exact class counts (float64, (K,)) of the private labels: NOT private, never released.

    Args:
      labels: (N,) or (N, 1) integer labels in [0, K).
      num_classes: K.
      units: optional (P, M) image indices of each privacy unit, −1 padded
        (`train.input.privacy_units`); each unit then adds its label fractions,
        which sum to one (so the L1 sensitivity per unit is 1).
    """
    labels = np.asarray(labels).reshape(-1)
    if labels.size and (labels.min() < 0 or labels.max() >= num_classes):
        raise ValueError(f"labels must lie in [0, {num_classes}).")
    if units is None:
        return np.bincount(labels.astype(np.int64), minlength=num_classes).astype(np.float64)
    units = np.asarray(units)
    valid = units >= 0
    per_unit = valid.sum(axis=1)
    rows = np.repeat(np.arange(units.shape[0]), per_unit)
    weights = (1.0 / np.maximum(per_unit, 1))[rows]
    return np.bincount(labels[units[valid]].astype(np.int64), weights=weights,
                       minlength=num_classes)


def noisy_counts(histogram: np.ndarray, epsilon: float, rng: np.random.Generator) -> np.ndarray:
    """histogram + independent Laplace(0, 1/ε) per class: ε-DP for L1 sensitivity 1."""
    histogram = np.asarray(histogram, np.float64)
    return histogram + rng.laplace(0.0, laplace_scale(epsilon), size=histogram.shape)


def prior_from_counts(counts: np.ndarray, floor: float = 1.0) -> np.ndarray:
    """Post-processing: counts clipped below at `floor` (> 0), normalised to sum to one."""
    if not (math.isfinite(floor) and floor > 0):
        raise ValueError(f"Expected floor={floor!r} > 0.")
    clipped = np.maximum(np.asarray(counts, np.float64), floor)
    return clipped / clipped.sum()


def logit_offsets(prior, tau: float = 1.0) -> tuple[float, ...]:
    """τ·log π per class: what logit adjustment adds to the logits in the training loss."""
    prior = np.asarray(prior, np.float64)
    if prior.ndim != 1 or np.any(prior <= 0) or not np.isclose(prior.sum(), 1.0, atol=1e-6):
        raise ValueError(f"Expected a prior of positive probabilities summing to 1, got {prior}.")
    return tuple(float(tau * v) for v in np.log(prior))


@dataclasses.dataclass(frozen=True)
class NoisyPrior:
    """A class prior released with ε-DP (Laplace counts), and what it cost."""

    counts: tuple[float, ...]       # the noisy counts (a DP release)
    prior: tuple[float, ...]        # post-processed: clipped at `floor`, normalised
    epsilon: float
    scale: float                    # Laplace scale b = 1/ε
    floor: float

    def dp_event(self) -> dp_accounting.DpEvent:
        return dp_event(self.epsilon)


def estimate_prior(labels: np.ndarray, num_classes: int, epsilon: float,
                   rng: np.random.Generator, *, floor: float = 1.0,
                   units: np.ndarray | None = None) -> NoisyPrior:
    """The ε-DP class prior of `labels` (Laplace counts, then post-processing).

    `rng` must be the run's "class_counts" stream
    (`randomness.numpy_rng(seed, "class_counts")`).
    """
    counts = noisy_counts(class_histogram(labels, num_classes, units), epsilon, rng)
    prior = prior_from_counts(counts, floor)
    return NoisyPrior(tuple(float(c) for c in counts), tuple(float(p) for p in prior),
                      _check_epsilon(epsilon), laplace_scale(epsilon), float(floor))
