"""Per-example clipping and Gaussian noise: the privacy-critical core of DP-SGD.

DP-SGD (Abadi et al. 2016) releases, each step,

    ĝ = (Σ_i clip_C(g_i) + N(0, σ²C² I)) / B,

where g_i is example i's gradient, clip_C(g) = g · min(1, C/‖g‖₂), the sum is
over the realised batch, and B is the *expected* batch size (dividing by the
realised size would reveal it). Under add/remove-one neighbouring the sum has
L2 sensitivity C, so the noise is calibrated to the sum, then divided.

With augmentation multiplicity K (De et al. 2022) g_i is the gradient of the
loss averaged over K augmented views of example i, clipped once: the
sensitivity is unchanged.

Everything here is pure: no I/O, no configs, no models.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp

PyTree = Any


def global_norm(tree: PyTree) -> jax.Array:
    """L2 norm of all leaves together, accumulated in float32."""
    leaves = jax.tree_util.tree_leaves(tree)
    return jnp.sqrt(sum(jnp.sum(jnp.square(x.astype(jnp.float32))) for x in leaves))


def clip_factor(norm: jax.Array, clip_norm: float) -> jax.Array:
    """min(1, C/‖g‖), safe at ‖g‖ = 0. `clip_norm=inf` gives 1 (no clipping)."""
    return jnp.minimum(1.0, clip_norm / jnp.maximum(norm, 1e-12))


def clipped_sum_sensitivity(clip_norm: float) -> float:
    """L2 sensitivity of Σ_i clip_C(g_i) to adding or removing one example."""
    return clip_norm


def clip_and_sum(
    per_example_grads: PyTree, clip_norm: float, mask: jax.Array
) -> tuple[PyTree, jax.Array]:
    """Σ_i mask_i · clip_C(g_i) over a leading batch axis.

    A non-finite per-example gradient (NaN or inf) is dropped: its clipping
    factor is set to zero, so a pathological example cannot poison the sum,
    and the sensitivity bound still holds (it contributes 0, norm ≤ C).

    Args:
      per_example_grads: pytree whose leaves have a leading axis of size b.
      clip_norm: C > 0 (inf disables clipping: not private).
      mask: bool (b,), False for padding rows, which then contribute exactly 0.

    Returns:
      (clipped sum with the per-example leading axis removed, per-example
      norms before clipping, shape (b,)).
    """
    leaves = jax.tree_util.tree_leaves(per_example_grads)
    sq = sum(jnp.sum(jnp.square(x.astype(jnp.float32)).reshape(x.shape[0], -1), axis=1)
             for x in leaves)
    norms = jnp.sqrt(sq)
    factor = jnp.where(mask & jnp.isfinite(norms), clip_factor(norms, clip_norm), 0.0)

    def weighted_sum(g):
        g = jnp.where(factor.reshape((-1,) + (1,) * (g.ndim - 1)) > 0, g, 0)  # NaN * 0 = NaN
        # HIGHEST: on GPUs (TF32) and TPUs (bf16 passes) the default precision would round
        # g before weighting it, and example i would contribute c_i·round(g_i), not c_i·g_i.
        return jnp.einsum("b,b...->...", factor, g.astype(jnp.float32),
                          precision=jax.lax.Precision.HIGHEST)

    return jax.tree_util.tree_map(weighted_sum, per_example_grads), norms


def clipped_grad_sum(
    loss_fn: Callable[..., tuple[jax.Array, Any]],
    params: PyTree,
    examples: PyTree,
    mask: jax.Array,
    clip_norm: float,
) -> tuple[PyTree, jax.Array, Any]:
    """Per-example gradients by `jax.vmap(jax.grad)`, clipped and summed.

    Args:
      loss_fn: `loss_fn(params, example) -> (loss, aux)` for ONE example (no
        batch axis): any cross-example computation in it would break DP.
      params: the parameters to differentiate (those being trained).
      examples: pytree of arrays with a leading batch axis.
      mask: bool (b,), False on padding rows.
      clip_norm: C.

    Returns:
      (clipped gradient sum, per-example norms, per-example aux).
    """
    grad_fn = jax.grad(loss_fn, has_aux=True)
    grads, aux = jax.vmap(grad_fn, in_axes=(None, 0))(params, examples)
    clipped, norms = clip_and_sum(grads, clip_norm, mask)
    return clipped, norms, aux


def gaussian_noise_like(key: jax.Array, tree: PyTree, stddev: float) -> PyTree:
    """Independent N(0, stddev²) for every coordinate, in float32 (never lower).

    `key` is split into one key per leaf, in the tree's leaf order (`jax.random.split`),
    so every coordinate gets an independent draw; the same key and tree structure
    give the same draw on every device and host.
    """
    leaves, treedef = jax.tree_util.tree_flatten(tree)
    keys = jax.random.split(key, len(leaves))
    noise = [stddev * jax.random.normal(k, x.shape, jnp.float32) for k, x in zip(keys, leaves)]
    return jax.tree_util.tree_unflatten(treedef, noise)


def privatize_sum(
    key: jax.Array,
    clipped_sum: PyTree,
    noise_multiplier: float,
    clip_norm: float,
    expected_batch_size: float,
) -> PyTree:
    """(Σ clip_C(g_i) + N(0, σ²C²)) / B: the released DP-SGD gradient.

    Noise is added once, to the sum over the whole logical batch (all devices
    and micro-batches), with standard deviation σ times the sum's sensitivity.
    """
    # σ = 0 means no noise even when C = inf (a non-private reference run).
    stddev = jnp.where(noise_multiplier > 0,
                       noise_multiplier * clipped_sum_sensitivity(clip_norm), 0.0)
    noise = gaussian_noise_like(key, clipped_sum, stddev)
    return jax.tree_util.tree_map(
        lambda s, n: (s.astype(jnp.float32) + n) / expected_batch_size, clipped_sum, noise
    )
