"""Poisson sampling: inclusion frequency, padding, determinism; the ledger."""

import numpy as np
import pytest

from dpjax.errors import ConfigError
from dpjax.privacy.sampling import (
    PoissonSampler,
    PrivacyLedger,
    ShuffleSampler,
    pad_to_micro_batches,
)


def test_inclusion_frequency_matches_q():
    sampler = PoissonSampler(num_examples=500, expected_batch_size=50, micro_batch_size=16,
                             seed=3)
    counts = np.zeros(500)
    steps = 2000
    for t in range(steps):
        b = sampler.batch(t)
        counts[b.indices[b.mask]] += 1
    freq = counts / steps
    q = 0.1
    # Per-example frequency: binomial std sqrt(q(1-q)/steps) ≈ 0.0067; overall mean much tighter.
    assert abs(freq.mean() - q) < 0.003
    assert np.all(np.abs(freq - q) < 6 * np.sqrt(q * (1 - q) / steps))
    # Batch sizes vary (not fixed-size) with the binomial variance.
    sizes = [sampler.batch(t).num_examples for t in range(500)]
    assert np.std(sizes) == pytest.approx(np.sqrt(500 * q * (1 - q)), rel=0.2)


def test_padding_and_no_truncation():
    sampler = PoissonSampler(1000, 300, 64, seed=0)
    for t in range(20):
        b = sampler.batch(t)
        assert b.indices.shape == b.mask.shape
        assert b.indices.shape[1] == 64
        assert b.mask.sum() == b.num_examples
        assert b.num_micro_batches == -(-b.num_examples // 64)
        chosen = b.indices[b.mask]
        assert len(np.unique(chosen)) == len(chosen)  # no example twice
        # Padding only at the end, masked.
        flat_mask = b.mask.reshape(-1)
        assert not flat_mask[b.num_examples:].any() and flat_mask[:b.num_examples].all()


def test_empty_batch():
    plan = pad_to_micro_batches(np.zeros(0, np.int32), 8)
    assert plan.num_micro_batches == 0 and plan.num_examples == 0
    sampler = PoissonSampler(10, 1, 4, seed=1)  # q = 0.1: empty batches are common
    sizes = [sampler.batch(t).num_examples for t in range(200)]
    assert 0 in sizes


def test_deterministic_in_seed_and_step():
    a = PoissonSampler(100, 10, 8, seed=7)
    b = PoissonSampler(100, 10, 8, seed=7)
    c = PoissonSampler(100, 10, 8, seed=8)
    assert np.array_equal(a.batch(5).indices, b.batch(5).indices)
    assert not np.array_equal(a.batch(5).indices, a.batch(6).indices)
    assert not all(np.array_equal(a.batch(t).indices, c.batch(t).indices) for t in range(5))


def test_shuffle_sampler_is_fixed_size_and_labelled():
    s = ShuffleSampler(100, 30, 16, seed=0)
    assert not s.is_poisson and PoissonSampler.is_poisson
    assert {s.batch(t).num_examples for t in range(9)} == {30}
    epoch = np.concatenate([s.batch(t).indices[s.batch(t).mask] for t in range(3)])
    assert len(np.unique(epoch)) == 90


def test_batch_larger_than_data_refused():
    with pytest.raises(ConfigError, match="batch_size"):
        PoissonSampler(10, 11, 4, seed=0)


def test_ledger_groups_phases_and_round_trips():
    ledger = PrivacyLedger()
    for _ in range(3):
        ledger.record(2.0, 0.1, "phase2")
    ledger.record(2.0, 0.1, "phase3")
    ledger.record(1.0, 0.1, "phase3")
    assert [(p.name, p.steps, p.noise_multiplier) for p in ledger.phases] == [
        ("phase2", 3, 2.0), ("phase3", 1, 2.0), ("phase3", 1, 1.0)]
    assert ledger.steps == 5
    assert PrivacyLedger.from_json(ledger.to_json()) == ledger
