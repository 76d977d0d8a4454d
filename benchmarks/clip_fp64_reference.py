"""How far the float32 clipped sums (fast and vmap) are from a float64 reference.

`step_speed.py --check` compares fast with vmap, both in float32. When they
differ by more than rounding, this says which is off: it recomputes the
per-example gradients in float64 (JAX_ENABLE_X64, vmap of grad) and reports
each float32 method's relative error in the norms and the clipped sum.

    JAX_ENABLE_X64=1 python benchmarks/clip_fp64_reference.py --model wrn16_4 --batch 32
"""

from __future__ import annotations

import argparse

import jax
import jax.numpy as jnp
import numpy as np
import optax

from dpjax.models import _checks, get_model
from dpjax.privacy import clipping, fast_clipping


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="wrn16_4")
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--size", type=int, default=32)
    parser.add_argument("--clip_norm", type=float, default=1.0)
    args = parser.parse_args()
    if not jax.config.jax_enable_x64:
        raise SystemExit("Run with JAX_ENABLE_X64=1.")
    b = args.batch
    model = get_model(args.model, 10)
    inputs = jax.random.normal(jax.random.key(0), (b, args.size, args.size, 3), jnp.float32)
    labels = jnp.arange(b) % 10
    mask = jnp.ones(b, bool)
    params = model.init(jax.random.key(0), inputs[:1])["params"]

    def loss(p, example):
        x, y = example
        value = optax.softmax_cross_entropy_with_integer_labels(
            model.apply({"params": p}, x[None]), y[None])[0]
        return value, value

    fast_sum, fast_norms = jax.jit(lambda p: fast_clipping.fast_clipped_grad_sum(
        model, p, {}, inputs, labels, mask, args.clip_norm, 1))(params)
    vmap_sum, vmap_norms, _ = jax.jit(lambda p: clipping.clipped_grad_sum(
        loss, p, (inputs, labels), mask, args.clip_norm))(params)

    _checks.float_dtype = lambda dtype: None  # allow float64 for the reference only
    model64 = get_model(args.model, 10, dtype=jnp.float64)
    params64 = jax.tree_util.tree_map(lambda v: v.astype(jnp.float64), params)

    grads = jax.jit(jax.vmap(lambda x, y: jax.grad(
        lambda p: optax.softmax_cross_entropy_with_integer_labels(
            model64.apply({"params": p}, x[None]), y[None])[0])(params64)))(
        inputs.astype(jnp.float64), labels)
    leaves = [np.asarray(v) for v in jax.tree_util.tree_leaves(grads)]
    norms = np.sqrt(sum(np.sum(v.reshape(b, -1) ** 2, 1) for v in leaves))
    factor = np.minimum(1.0, args.clip_norm / norms)
    ref = [np.einsum("b,b...->...", factor, v) for v in leaves]

    def rel(tree):
        got = [np.asarray(v, np.float64) for v in jax.tree_util.tree_leaves(tree)]
        return (np.sqrt(sum(np.sum((a - r) ** 2) for a, r in zip(got, ref)))
                / np.sqrt(sum(np.sum(r ** 2) for r in ref)))

    print(f"{args.model}@{args.size}, batch {b}, C = {args.clip_norm}: relative error "
          "against float64")
    for name, total, n in (("fast", fast_sum, fast_norms), ("vmap", vmap_sum, vmap_norms)):
        norm_err = np.max(np.abs(np.asarray(n, np.float64) - norms) / norms)
        print(f"  {name} (float32): clipped sum {rel(total):.2e}, max norm {norm_err:.2e}")


if __name__ == "__main__":
    main()
