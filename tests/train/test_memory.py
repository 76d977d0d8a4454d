"""Speed and memory knobs: automatic micro-batch size (micro_batch_size=0), fast clipping
with measured norm forms, and no recompilation across steps."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from dpjax.config import base_config
from dpjax.errors import DpjaxError
from dpjax.train import loop, memory
from tests.helpers import make_splits


def _linear(fixed, per_example, calls):
    def measure(m):
        calls.append(m)
        return fixed + per_example * m
    return measure


def test_fit_picks_largest_power_of_two_under_budget():
    calls = []
    m, info = memory.fit_micro_batch_size(_linear(1000, 100, calls), budget=1000 + 100 * 200,
                                          cap=1024)
    assert m == 128 and info["per_example"] == 100 and info["fixed"] == 1000
    assert calls == [8, 16, 128]  # two probes and one confirming compile


def test_fit_respects_cap_and_small_caps():
    m, _ = memory.fit_micro_batch_size(_linear(0, 1, []), budget=10**9, cap=300)
    assert m == 300
    calls = []
    m, _ = memory.fit_micro_batch_size(_linear(0, 1, calls), budget=10**9, cap=5)
    assert m == 5 and calls == [5]


def test_fit_halves_when_the_fit_is_optimistic():
    calls = []
    # Memory jumps above m = 32 (a different fusion): the linear fit from 8 and 16 says 64.
    measure = lambda m: calls.append(m) or (10 * m if m <= 32 else 40 * m)  # noqa: E731
    m, info = memory.fit_micro_batch_size(measure, budget=700, cap=1024)
    assert m == 32 and calls == [8, 16, 64, 32] and info["bytes"] == 320


def test_nothing_fits_is_a_clear_error():
    with pytest.raises(DpjaxError, match="micro_batch_size=1 needs"):
        memory.fit_micro_batch_size(lambda m: 10**9 * m, budget=10**6, cap=64)


def test_compiled_bytes_grow_with_the_batch():
    w = jnp.zeros((256, 256))
    f = lambda x, w: jnp.tanh(x @ w) @ w  # noqa: E731
    small = memory.compiled_bytes(f, jax.ShapeDtypeStruct((8, 256), jnp.float32), w)
    large = memory.compiled_bytes(f, jax.ShapeDtypeStruct((64, 256), jnp.float32), w)
    assert large - small >= 56 * 256 * 4


def _config(micro):
    c = base_config()
    c.model.name = "mlp"
    c.model.kwargs.width = 16
    c.privacy.noise_multiplier = 1.0
    c.privacy.delta = 1e-3
    c.batch_size = 24
    c.micro_batch_size = micro
    c.augmult = 2
    c.num_steps = 3
    c.seed = 5
    c.progress_bar = False
    return c


def test_auto_micro_batch_trains_the_same_model(tmp_path, monkeypatch):
    data = make_splits(num_train=96, num_test=16, size=8, seed=4)
    fixed = loop.train_and_evaluate(_config(4), str(tmp_path / "fixed"), data=data)
    # A device with little memory (the budget shrunk to what 12 rows need): a smaller
    # size than the batch, the same model.
    chosen = {}
    real_fit = memory.fit_micro_batch_size

    def small_device(measure, budget, cap):
        per_example = measure(9) - measure(8)
        m, info = real_fit(measure, measure(8) + 4 * per_example + 1, cap)
        chosen["m"] = m
        return m, info

    monkeypatch.setattr(memory, "fit_micro_batch_size", small_device)
    small = loop.train_and_evaluate(_config(0), str(tmp_path / "small"), data=data)
    assert 4 <= chosen["m"] < 24 and small["micro_batch_size"] == chosen["m"]
    assert small["epsilon"] == fixed["epsilon"]
    np.testing.assert_allclose(small["test_probs"], fixed["test_probs"], rtol=1e-4, atol=1e-5)


def test_no_recompilation_across_steps(tmp_path):
    # Each step compiles nothing new: a run of 6 steps compiles no more than one of 2
    # (every step logs, checkpoints and varies its realised batch size).
    compiles = []
    jax.monitoring.register_event_duration_secs_listener(
        lambda name, *a, **k: compiles.append(name) if name.endswith("backend_compile_duration")
        else None)
    data = make_splits(num_train=96, num_test=16, size=8, seed=4)
    counts = []
    for steps in (2, 6):
        c = _config(8)
        c.num_steps, c.log_every, c.checkpoint_every = steps, 1, 1
        before = len(compiles)
        loop.train_and_evaluate(c, str(tmp_path / f"run{steps}"), data=data)
        counts.append(len(compiles) - before)
    assert counts[0] > 0 and counts[1] <= counts[0], counts


def test_fast_clipping_with_measured_norm_forms_trains_like_vmap(tmp_path):
    data = make_splits(num_train=96, num_test=16, size=8, seed=4)
    vmap = loop.train_and_evaluate(_config(8), str(tmp_path / "vmap"), data=data)
    c = _config(8)
    c.privacy.clipping, c.privacy.fast_method = "fast", "measured"
    fast = loop.train_and_evaluate(c, str(tmp_path / "fast"), data=data)
    assert fast["epsilon"] == vmap["epsilon"]
    np.testing.assert_allclose(fast["test_probs"], vmap["test_probs"], rtol=1e-4, atol=1e-5)
