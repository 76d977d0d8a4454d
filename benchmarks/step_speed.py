"""Examples/s and memory of the gradient step: non-private, vmap DP, fast DP.

Times, in one process and on the same random inputs, the part of a training
step that differs between the three:

- nonprivate: `jax.grad` of Σ_i ℓ_i over the batch (one batched backward pass);
- vmap: `clipping.clipped_grad_sum` (per-example gradients by vmap(grad));
- fast: `fast_clipping.fast_clipped_grad_sum` (one backward pass, per-layer
  norms from activations and output gradients, weighted contraction);
- jax_privacy: `jax_privacy.clipped_grad` (PyPI `jax-privacy`, vmap over
  examples inside), the peer's clipped sum, called as in
  ../shared/bench/peer_bench.py. Optional: measured when `jax_privacy` is
  importable, otherwise skipped with a one-line note.

ℓ_i is the mean cross-entropy over example i's K augmult views (views are
random tensors here: augmentation costs the same for every step and is left
out, as are noise and the optimiser update). jax-privacy has no augmult
option: its row passes the views as a (B, K, ...) batch argument and its loss
averages an example's K views, as the vmap row does. Reported: examples/s (examples,
not views), the ratio to the non-private step, XLA's compiled memory estimate
(arguments + outputs + temporaries) and, where the device reports it, the
peak device memory (`memory_stats`, a process-wide running peak: each row
shows the peak after that step's first run, the steps running in the order
listed). Timed repeats are interleaved across the steps (median).

    python benchmarks/step_speed.py --model wrn16_4 --batch 256,1024 --augmult 1,16
    python benchmarks/step_speed.py --model resnet18 --size 224 --batch 64,256
    python benchmarks/step_speed.py --model wrn16_4 --batch 8 --check   # fast, jax_privacy == vmap?

On a CPU use small batches and few repeats (the defaults).
"""

from __future__ import annotations

import argparse
import platform
import statistics
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax

from dpjax.models import get_model
from dpjax.privacy import clipping, fast_clipping

try:  # optional peer row; not a dependency of dpjax
    import jax_privacy
except ImportError:
    jax_privacy = None

STEPS = ("nonprivate", "vmap", "fast") + (("jax_privacy",) if jax_privacy else ())
MODEL_KWARGS = {
    "wrn16_4": dict(),
    "resnet18": dict(norm="group"),
    "resnet50": dict(norm="group"),
}


def _example_losses(model, params, inputs, labels, num_views):
    logits = model.apply({"params": params}, inputs)
    losses = optax.softmax_cross_entropy_with_integer_labels(
        logits, jnp.repeat(labels, num_views))
    return losses.reshape(-1, num_views).mean(1)


def make_steps(model, num_views: int, clip_norm: float = 1.0, fast_method: str = "auto"):
    """{name: jitted f(params, inputs, labels, mask) -> gradient sum} for each step.

    The DP steps return (clipped sum, per-example norms before clipping).
    "jax_privacy" is present only when `jax_privacy` is importable.
    """

    def nonprivate(params, inputs, labels, mask):
        def loss(p):
            return jnp.sum(mask * _example_losses(model, p, inputs, labels, num_views))
        return jax.grad(loss)(params)

    def vmap(params, inputs, labels, mask):
        views = inputs.reshape((labels.shape[0], num_views) + inputs.shape[1:])

        def loss(p, example):
            x, y = example
            value = _example_losses(model, p, x, y[None], num_views)[0]
            return value, value

        total, norms, _ = clipping.clipped_grad_sum(loss, params, (views, labels), mask,
                                                    clip_norm)
        return total, norms

    def fast(params, inputs, labels, mask):
        return fast_clipping.fast_clipped_grad_sum(model, params, {}, inputs, labels, mask,
                                                   clip_norm, num_views, method=fast_method)

    fns = {"nonprivate": jax.jit(nonprivate), "vmap": jax.jit(vmap), "fast": jax.jit(fast)}
    if jax_privacy is not None:
        fns["jax_privacy"] = jax.jit(_jax_privacy_step(model, num_views, clip_norm))
    return fns


def _jax_privacy_step(model, num_views: int, clip_norm: float):
    """The peer's clipped sum: `jax_privacy.clipped_grad` as peer_bench.py calls it.

    Same work as the vmap row: per-example gradient of ℓ_i (the mean over the
    example's K views), clipped to `clip_norm`, summed over the batch; padding
    rows (mask False) go in as jax-privacy's `is_padding_example` and count 0.
    With the default `keep_batch_dim=True` the loss sees a batch of one
    example, views (1, K, H, W, 3). The sum is accumulated in float32, as
    dpjax's is.
    """

    def loss(params, views, labels):
        x = views.reshape((-1,) + views.shape[2:])
        return _example_losses(model, params, x, labels, num_views)[0]

    grad_fn = jax_privacy.clipped_grad(loss, l2_clip_norm=clip_norm, batch_argnums=(1, 2),
                                       return_grad_norms=True, dtype=jnp.float32)

    def step(params, inputs, labels, mask):
        views = inputs.reshape((labels.shape[0], num_views) + inputs.shape[1:])
        total, aux = grad_fn(params, views, labels, is_padding_example=~mask)
        return total, aux.grad_norms

    return step


def _device_peak() -> str:
    stats = jax.devices()[0].memory_stats()
    if not stats or "peak_bytes_in_use" not in stats:
        return "n/a"
    return f"{stats['peak_bytes_in_use'] / 2**20:.0f} MiB"


def _compiled_bytes(compiled) -> str:
    try:
        m = compiled.memory_analysis()
        total = m.argument_size_in_bytes + m.output_size_in_bytes + m.temp_size_in_bytes
        return f"{total / 2**20:.0f} MiB"
    except Exception:  # not every backend reports it
        return "n/a"


def bench(model_name: str, batch: int, num_views: int, size: int, dtype, repeats: int,
          steps=STEPS, fast_method: str = "auto", check: bool = False) -> list[dict]:
    model = get_model(model_name, 10, dtype=dtype, **MODEL_KWARGS.get(model_name, {}))
    key = jax.random.key(0)
    inputs = jax.random.normal(key, (batch * num_views, size, size, 3), jnp.float32)
    params = model.init(jax.random.key(1), inputs[:1])["params"]
    labels = jnp.arange(batch, dtype=jnp.int32) % 10
    mask = jnp.ones((batch,), bool)
    if fast_method == "measured":  # time each layer's norm forms first (not in the rows)
        fast_method = fast_clipping.measure_norm_methods(model, params, {}, inputs.shape,
                                                         num_views)
        print(f"  measured norm forms: {sorted(set(fast_method.values()))} "
              f"({sum(v == 'ghost' for v in fast_method.values())} ghost of "
              f"{len(fast_method)})")
    fns = make_steps(model, num_views, fast_method=fast_method)
    rows, outputs, compiled, times = [], {}, {}, {name: [] for name in steps}
    for name in steps:
        t0 = time.perf_counter()
        compiled[name] = fns[name].lower(params, inputs, labels, mask).compile()
        rows.append(dict(model=model_name, batch=batch, augmult=num_views, size=size,
                         dtype=jnp.dtype(dtype).name, step=name,
                         compile_s=time.perf_counter() - t0,
                         compiled_mem=_compiled_bytes(compiled[name])))
        outputs[name] = jax.block_until_ready(compiled[name](params, inputs, labels, mask))
        rows[-1]["device_peak"] = _device_peak()
    # Interleaved repeats, so that a load change on a shared machine hits all steps alike.
    for _ in range(repeats):
        for name in steps:
            t0 = time.perf_counter()
            jax.block_until_ready(compiled[name](params, inputs, labels, mask))
            times[name].append(time.perf_counter() - t0)
    for r in rows:
        r["seconds"] = statistics.median(times[r["step"]])
        r["examples_per_s"] = batch / r["seconds"]
    base = next((r["examples_per_s"] for r in rows if r["step"] == "nonprivate"), None)
    for r in rows:
        r["ratio"] = r["examples_per_s"] / base if base else float("nan")
    for name in ("fast",):
        if check and "vmap" in outputs and name in outputs:
            err, norm_err = _rel_errors(outputs[name], outputs["vmap"])
            print(f"  check {name} vs vmap: clipped sum rel. error {err:.2e}, max norm rel. "
                  f"error {norm_err:.2e}")
    if check and "vmap" in outputs and "jax_privacy" in outputs:
        err, norm_err = _rel_errors(outputs["jax_privacy"], outputs["vmap"])
        print(f"  check jax_privacy vs vmap: clipped sum rel. error {err:.2e}, "
              f"max norm rel. error {norm_err:.2e}")
    return rows


def _rel_errors(out, ref) -> tuple[float, float]:
    """‖sum − ref_sum‖ / ‖ref_sum‖ and max_i |n_i − ref_n_i| / ref_n_i of two DP steps' outputs."""
    (total, norms), (ref_total, ref_norms) = out, ref
    diff = jax.tree_util.tree_map(lambda a, b: a - b, total, ref_total)
    err = float(clipping.global_norm(diff) / clipping.global_norm(ref_total))
    return err, float(jnp.max(jnp.abs(norms - ref_norms) / ref_norms))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default="wrn16_4", choices=sorted(MODEL_KWARGS))
    parser.add_argument("--batch", default="32", help="comma-separated batch sizes")
    parser.add_argument("--augmult", default="1", help="comma-separated K values")
    parser.add_argument("--size", type=int, default=None, help="image side (32 WRN, 224 ResNet)")
    parser.add_argument("--dtype", default="float32", choices=("float32", "bfloat16"))
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--steps", default=",".join(STEPS))
    parser.add_argument("--fast-method", default="auto",
                        choices=fast_clipping.METHODS + ("measured",))
    parser.add_argument("--check", action="store_true",
                        help="compare fast (and jax_privacy) with vmap")
    args = parser.parse_args()
    size = args.size or (32 if args.model.startswith("wrn") else 224)
    steps = tuple(args.steps.split(","))
    dev = jax.devices()[0]
    peer = f", jax-privacy {jax_privacy.__version__}" if jax_privacy else ""
    print(f"# {platform.processor() or platform.machine()}, {dev.platform}: {dev.device_kind}; "
          f"jax {jax.__version__}, numpy {np.__version__}{peer}")
    if jax_privacy is None:
        print("# jax_privacy row skipped: jax_privacy not importable (pip install jax-privacy)")
        steps = tuple(s for s in steps if s != "jax_privacy")
    print("| model | batch | K | dtype | step | ex/s | ratio | compiled mem | device peak |"
          " compile s |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for batch in map(int, args.batch.split(",")):
        for k in map(int, args.augmult.split(",")):
            for r in bench(args.model, batch, k, size, jnp.dtype(args.dtype), args.repeats,
                           steps, args.fast_method, args.check):
                print(f"| {r['model']}@{r['size']} | {r['batch']} | {r['augmult']} | "
                      f"{r['dtype']} | {r['step']} | {r['examples_per_s']:.1f} | "
                      f"{r['ratio']:.3f} | {r['compiled_mem']} | {r['device_peak']} | "
                      f"{r['compile_s']:.1f} |", flush=True)


if __name__ == "__main__":
    main()
