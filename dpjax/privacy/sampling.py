"""Batch selection for DP-SGD, and the ledger that accounts for what it chose.

Poisson sampling (the default) puts every example in a step's batch
independently with probability q = B/N. That is the mechanism the accountant
analyses; fixed-size shuffled batches are a different mechanism, which many
libraries train with while reporting Poisson ε (jax_privacy #84, Opacus #80).
`ShuffleSampler` exists for comparison and is labelled as not matching the
accounting.

`jit` needs static shapes, so the realised batch (whose size varies) is padded
up to a whole number of micro-batches and a mask marks the real rows; masked
rows contribute exactly zero to the clipped sum. Nothing is ever truncated and
an empty batch is valid (it still releases a noisy, all-noise update).

The choice for step t depends only on (seed, t): every host of a cluster
computes the same batch and takes its share, and a resumed run continues the
same stream. `PrivacyLedger` records each step the loop actually took, so the
accountant is fed the schedule that ran, never a recomputation.
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np

from dpjax import validate
from dpjax.privacy.accounting import Phase

# Domain separators for `np.random.default_rng([seed, step, STREAM])`, so that
# batch selection never shares random bits with anything else seeded alike.
_POISSON_STREAM = 0x5053
_SHUFFLE_STREAM = 0x5348


@dataclasses.dataclass(frozen=True)
class BatchPlan:
    """The examples of one logical batch, padded to whole micro-batches.

    Attributes:
      indices: int32 (num_micro_batches, micro_batch_size) example indices;
        padding rows hold index 0 and are masked out.
      mask: bool, same shape, True for real examples.
      num_examples: the realised batch size (number of True in mask).
    """

    indices: np.ndarray
    mask: np.ndarray
    num_examples: int

    @property
    def num_micro_batches(self) -> int:
        return self.indices.shape[0]


def pad_to_micro_batches(indices: np.ndarray, micro_batch_size: int) -> BatchPlan:
    """Pads a 1-D index array to whole micro-batches with a mask (no truncation)."""
    n = int(indices.shape[0])
    num_micro = math.ceil(n / micro_batch_size)
    padded = np.zeros(num_micro * micro_batch_size, np.int32)
    mask = np.zeros(num_micro * micro_batch_size, bool)
    padded[:n] = indices
    mask[:n] = True
    return BatchPlan(
        padded.reshape(num_micro, micro_batch_size),
        mask.reshape(num_micro, micro_batch_size),
        n,
    )


@dataclasses.dataclass(frozen=True)
class PoissonSampler:
    """Each example joins each step's batch independently with probability q.

    Attributes:
      num_examples: N, the size of the private training set (public: it is
        the denominator of q; under add/remove neighbouring a careful
        analysis treats it as fixed by the user's choice of B/N).
      expected_batch_size: B = qN, the public normaliser of the update.
      micro_batch_size: rows per micro-batch over all devices together.
      seed: the sampling seed, shared by all hosts.
    """

    num_examples: int
    expected_batch_size: int
    micro_batch_size: int
    seed: int

    is_poisson = True

    def __post_init__(self):
        validate.positive_int("num_examples", self.num_examples)
        validate.positive_int("micro_batch_size", self.micro_batch_size)
        validate.integer("batch_size", self.expected_batch_size, 1, self.num_examples,
                         fix=f"the training set has {self.num_examples} examples: lower "
                         "batch_size")

    @property
    def sampling_rate(self) -> float:
        return self.expected_batch_size / self.num_examples

    def batch(self, step: int) -> BatchPlan:
        """The batch of step `step` (deterministic in (seed, step))."""
        rng = np.random.default_rng([self.seed, step, _POISSON_STREAM])
        chosen = np.flatnonzero(rng.random(self.num_examples) < self.sampling_rate)
        return pad_to_micro_batches(chosen.astype(np.int32), self.micro_batch_size)


@dataclasses.dataclass(frozen=True)
class ShuffleSampler(PoissonSampler):
    """Fixed-size batches from a fresh permutation each epoch.

    NOT the mechanism the Poisson accountant analyses: the ε reported for a
    run with this sampler is the Poisson ε for the same q and is labelled as
    not applying. Use it for non-private baselines and comparisons only.
    """

    is_poisson = False

    def batch(self, step: int) -> BatchPlan:
        steps_per_epoch = self.num_examples // self.expected_batch_size
        epoch, position = divmod(step, steps_per_epoch)
        rng = np.random.default_rng([self.seed, epoch, _SHUFFLE_STREAM])
        order = rng.permutation(self.num_examples)
        start = position * self.expected_batch_size
        chosen = order[start : start + self.expected_batch_size]
        return pad_to_micro_batches(chosen.astype(np.int32), self.micro_batch_size)


@dataclasses.dataclass
class PrivacyLedger:
    """The steps that ran, grouped into phases of constant (σ, q).

    The training loop calls `record` once per noisy update it applies; the
    ledger is saved with each checkpoint and restored on resume, so ε always
    covers exactly the updates in the checkpointed model.
    """

    phases: list[Phase] = dataclasses.field(default_factory=list)

    def record(self, noise_multiplier: float, sampling_rate: float, name: str,
               steps: int = 1) -> None:
        last = self.phases[-1] if self.phases else None
        if last is not None and (last.noise_multiplier, last.sampling_rate, last.name) == (
                noise_multiplier, sampling_rate, name):
            self.phases[-1] = dataclasses.replace(last, steps=last.steps + steps)
        else:
            self.phases.append(Phase(steps, noise_multiplier, sampling_rate, name))

    @property
    def steps(self) -> int:
        return sum(p.steps for p in self.phases)

    def to_json(self) -> list[dict]:
        return [dataclasses.asdict(p) for p in self.phases]

    @classmethod
    def from_json(cls, records: list[dict]) -> PrivacyLedger:
        return cls([Phase(**r) for r in records])
