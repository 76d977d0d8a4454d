"""The DP-SGD step: sensitivity of the update, noise once per logical batch."""

import jax
import numpy as np
import optax
import pytest

from dpjax import models
from dpjax.train import step as step_lib
from tests.helpers import make_splits

LR, C, B = 0.5, 0.1, 16.0


def _setup(micro=8, private=True, augmult=1, crop=0):
    model = models.get_model("mlp", 3, width=16)
    spec = step_lib.InputSpec(mean=(0.5,), std=(0.5,), crop_padding=crop, flip=bool(crop),
                              augmult=augmult)
    tx = optax.sgd(LR)
    fns = step_lib.build_step_fns(model, spec, tx, private=private)
    params = model.init(jax.random.key(0), np.zeros((1, 8, 8, 1), np.float32))["params"]
    state = step_lib.init_state(params, tx)
    return fns, state, micro


def _update(fns, state, images, labels, micro, sigma=0.0, seed=0, ids=None):
    """One logical batch = all given rows, in micro-batches of `micro` (padded).

    `ids` are the rows' example indices (they seed each example's augmentation).
    """
    n = len(labels)
    num_micro = max(1, -(-n // micro))
    pad = num_micro * micro - n
    ids = np.arange(n) if ids is None else ids
    idx = np.concatenate([ids, np.zeros(pad, int)]).astype(np.int32)
    mask = np.arange(num_micro * micro) < n
    images = np.concatenate([images, np.zeros((pad,) + images.shape[1:], images.dtype)])
    labels = np.concatenate([labels, np.zeros(pad, labels.dtype)])
    state = jax.tree_util.tree_map(jax.numpy.array, state)  # a copy: the update donates it
    acc, stats = fns.zeros(state.params)
    key = jax.random.key(seed)
    for m in range(num_micro):
        sl = slice(m * micro, (m + 1) * micro)
        acc, stats = fns.accumulate(state.params, acc, stats, images[sl], labels[sl], idx[sl],
                                    mask[sl], jax.random.fold_in(key, 1), C)
    new, stats, _ = fns.update(state, acc, stats, jax.random.fold_in(key, 0),
                              sigma * C if sigma else 0.0, B)
    return jax.tree_util.tree_map(np.asarray, new.params)


def _dist(a, b):
    return float(np.sqrt(sum(np.sum((np.float64(x) - y) ** 2) for x, y in zip(
        jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b)))))


def _norm(a):
    return float(np.sqrt(sum(np.sum(np.float64(x) ** 2) for x in jax.tree_util.tree_leaves(a))))


U = float(np.finfo(np.float32).eps) / 2  # float32 unit roundoff


def _sensitivity_bound(k, a, b, n):
    """k·lr·C/B for two updates a, b whose clipped sums differ by k contributions,
    plus what float32 rounding can add to their distance: the n other contributions
    (norm ≤ C each) summed in another order (≤ n·u each) and every updated parameter
    rounded (≤ u·|θ|). The last term dominates: ~2e-4 of lr·C/B here."""
    return (k + n * n * U) * LR * C / B + U * (_norm(a) + _norm(b))


def _assert_updates_close(actual, desired, rel):
    """Updated parameters whose gradient sums were added in different orders or shapes:
    rtol `rel`, and atol `rel` times the largest parameter (rounding scales with it)."""
    for x, y in zip(jax.tree_util.tree_leaves(actual), jax.tree_util.tree_leaves(desired)):
        y = np.asarray(y)
        np.testing.assert_allclose(x, y, rtol=rel, atol=rel * float(np.max(np.abs(y))))


@pytest.mark.parametrize("augmult,crop", [(1, 0), (4, 1)])
def test_add_remove_and_replace_sensitivity(augmult, crop):
    fns, state, micro = _setup(augmult=augmult, crop=crop)
    data = make_splits(num_train=20, seed=1).train
    # Make gradients large so that clipping binds.
    images, labels = data.images, data.labels
    full = _update(fns, state, images, labels, micro)
    for i in (0, 7, 19):
        keep = np.arange(20) != i
        removed = _update(fns, state, images[keep], labels[keep], micro,
                          ids=np.arange(20)[keep])
        assert _dist(full, removed) <= _sensitivity_bound(1, full, removed, 20)
        replaced_images = images.copy()
        replaced_images[i] = 255 - replaced_images[i]
        replaced_labels = labels.copy()
        replaced_labels[i] = (labels[i] + 1) % 3
        replaced = _update(fns, state, replaced_images, replaced_labels, micro)
        assert _dist(full, replaced) <= _sensitivity_bound(2, full, replaced, 20)
    # The bound is attained up to clipping: removal moves the update by about lr·C/B.
    assert _dist(full, removed) > 0.5 * LR * C / B


def test_noise_added_once_per_logical_batch():
    """Same batch, same key, different micro-batching: identical noisy update."""
    fns, state, _ = _setup()
    data = make_splits(num_train=24, seed=2).train
    a = _update(fns, state, data.images, data.labels, micro=4, sigma=2.0)
    b = _update(fns, state, data.images, data.labels, micro=24, sigma=2.0)
    _assert_updates_close(a, b, rel=1e-5)  # 6 micro-batches of 4 against 1 of 24
    # And the noise has the calibrated scale: update − noiseless update ~ N(0, (lr σ C / B)²).
    clean = _update(fns, state, data.images, data.labels, micro=24, sigma=0.0)
    diff = np.concatenate([np.ravel(x - y) for x, y in zip(
        jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(clean))])
    assert diff.std() == pytest.approx(LR * 2.0 * C / B, rel=0.05)


def test_empty_batch_gives_pure_noise_and_no_nan():
    fns, state, micro = _setup()
    images = np.zeros((0, 8, 8, 1), np.uint8)
    labels = np.zeros(0, np.int32)
    clean = _update(fns, state, images, labels, micro, sigma=0.0)
    for x, y in zip(jax.tree_util.tree_leaves(clean), jax.tree_util.tree_leaves(state.params)):
        np.testing.assert_array_equal(x, np.asarray(y))
    noisy = _update(fns, state, images, labels, micro, sigma=1.0)
    assert all(np.all(np.isfinite(x)) for x in jax.tree_util.tree_leaves(noisy))
    assert _dist(noisy, clean) > 0


def test_infinite_clip_no_noise_equals_nonprivate_sgd():
    """DP step with C = inf, σ = 0 and B = realised size is plain SGD on the mean loss."""
    data = make_splits(num_train=16, seed=3).train
    fns, state, micro = _setup()
    global C
    saved = C
    try:
        C = float("inf")
        private = _update(fns, state, data.images, data.labels, micro)
    finally:
        C = saved
    fns_np, _, _ = _setup(private=False)
    plain = _update(fns_np, state, data.images, data.labels, micro)
    _assert_updates_close(private, plain, rel=1e-5)  # per-example sum against batched


@pytest.mark.parametrize("augmult,crop", [(1, 0), (3, 1)])
def test_fast_clipping_step_equals_vmap_step(augmult, crop):
    model = models.get_model("small_cnn", 3, width=8)
    spec = step_lib.InputSpec(mean=(0.5,), std=(0.5,), crop_padding=crop, flip=bool(crop),
                              augmult=augmult)
    params = model.init(jax.random.key(0), np.zeros((1, 8, 8, 1), np.float32))["params"]
    state = step_lib.init_state(params, optax.sgd(LR))
    data = make_splits(num_train=12, seed=5).train
    updates = []
    for method in ("vmap", "fast"):
        fns = step_lib.build_step_fns(model, spec, optax.sgd(LR), private=True,
                                      clipping_method=method)
        updates.append(_update(fns, state, data.images, data.labels, micro=8, sigma=0.0))
    _assert_updates_close(*updates, rel=1e-5)  # two ways of computing the clipped sum


def test_accumulator_and_state_buffers_are_donated():
    # The gradient accumulator, the stats and the training state are donated: each
    # call reuses their device buffers instead of allocating new ones.
    model = models.get_model("mlp", 3, width=16)
    fns = step_lib.build_step_fns(model, step_lib.InputSpec(mean=(0.5,), std=(0.5,)),
                                  optax.sgd(LR), private=True, ema_decay=0.9)
    _, state, micro = _setup()
    rstate = jax.tree_util.tree_map(jax.numpy.array, state)
    acc, stats = fns.zeros(rstate.params)
    images = np.zeros((micro, 8, 8, 1), np.uint8)
    rows = (np.zeros((micro,), np.int32), np.arange(micro, dtype=np.int32),
            np.ones((micro,), bool))
    new_acc, new_stats = fns.accumulate(rstate.params, acc, stats, images, *rows,
                                        jax.random.key(0), C)
    assert all(x.is_deleted() for x in jax.tree_util.tree_leaves((acc, stats)))
    new_state, _, _ = fns.update(rstate, new_acc, new_stats, jax.random.key(1), 1.0 * C, B)
    assert all(x.is_deleted() for x in jax.tree_util.tree_leaves(rstate))
    assert not any(x.is_deleted() for x in jax.tree_util.tree_leaves(new_state))
