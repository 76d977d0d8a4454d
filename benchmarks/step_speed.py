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
shows the peak after that step's first run; the first runs go in increasing
order of compiled memory, so a row's peak is its own unless a step that
compiled smaller peaked higher, or an earlier case in the same process did:
benchmarks/gpu_check.py runs each case in a process of its own). Timed
repeats are interleaved across the steps; a row's time is their median. A
step that fails to compile or run gets an error in its row, and the others
go on.

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
    JAX_PRIVACY_NOTE = ""
except Exception as _e:  # not installed, or an installed version that fails to import
    jax_privacy = None
    JAX_PRIVACY_NOTE = f"jax_privacy not importable ({type(_e).__name__}: {_e})"

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


# --- the pieces of a measurement: inputs, memory, timing ---------------------------------

def make_case(model_name: str, batch: int, num_views: int, size: int, dtype,
              model_kwargs: dict | None = None):
    """(model, (params, inputs, labels, mask)) for one benchmark case.

    Inputs are random normal images (never zeros), `batch · num_views` of them;
    `model_kwargs` replaces MODEL_KWARGS[model_name] (e.g. a smaller model for a smoke run).
    """
    kwargs = MODEL_KWARGS.get(model_name, {}) if model_kwargs is None else model_kwargs
    model = get_model(model_name, 10, dtype=jnp.dtype(dtype), **kwargs)
    inputs = jax.random.normal(jax.random.key(0), (batch * num_views, size, size, 3),
                               jnp.float32)
    params = model.init(jax.random.key(1), inputs[:1])["params"]
    labels = jnp.arange(batch, dtype=jnp.int32) % 10
    mask = jnp.ones((batch,), bool)
    return model, (params, inputs, labels, mask)


def compiled_bytes(compiled) -> int | None:
    """XLA's memory estimate of a compiled step (arguments + outputs + temporaries)."""
    try:
        m = compiled.memory_analysis()
        return int(m.argument_size_in_bytes + m.output_size_in_bytes + m.temp_size_in_bytes)
    except Exception:  # not every backend reports it
        return None


def device_memory() -> dict:
    """{"peak": the process's running peak of bytes in use, "limit": the allocator's
    limit}, from the first device's `memory_stats`; None where not reported (CPU)."""
    try:
        stats = jax.devices()[0].memory_stats() or {}
    except Exception:
        stats = {}
    return {"peak": stats.get("peak_bytes_in_use"), "limit": stats.get("bytes_limit")}


def mib(n: int | None) -> str:
    return "n/a" if n is None else f"{n / 2**20:.0f} MiB"


def error_text(e: BaseException) -> str:
    """One line: the exception's type and the first line of its message (XLA's are long)."""
    lines = str(e).strip().splitlines()
    return f"{type(e).__name__}: {lines[0][:300] if lines else ''}"


def time_interleaved(compiled: dict, args, repeats: int, min_seconds: float = 0.0,
                     max_repeats: int | None = None, deadline: float | None = None,
                     times: dict | None = None, errors: dict | None = None):
    """({name: [seconds per call]}, {name: error}) for already compiled, warmed-up steps.

    Rounds call every step once, in turn (a load change on a shared machine hits all
    alike), each call synchronised with `block_until_ready`. At least `repeats` rounds,
    then more until every step has `min_seconds` of timed calls or `max_repeats` rounds;
    after the first round none starts that would end past `deadline` (time.monotonic()).
    A step that raises is dropped from later rounds, with its error. `times` and `errors`,
    if given, are filled in place (what was timed survives an interruption).
    """
    times = {name: [] for name in compiled} if times is None else times
    errors = {} if errors is None else errors
    max_repeats = max(repeats, max_repeats or repeats)
    for round_ in range(max_repeats):
        live = [n for n in compiled if n not in errors]
        if not live:
            break
        if round_ >= repeats and all(sum(times[n]) >= min_seconds for n in live):
            break
        if round_ >= 1 and deadline is not None and time.monotonic() + sum(
                statistics.median(times[n]) for n in live) > deadline:
            break
        for name in live:
            t0 = time.perf_counter()
            try:
                jax.block_until_ready(compiled[name](*args))
            except Exception as e:
                errors[name] = error_text(e)
                continue
            times[name].append(time.perf_counter() - t0)
    return times, errors


def bench(model_name: str, batch: int, num_views: int, size: int, dtype, repeats: int,
          steps=STEPS, fast_method: str = "auto", check: bool = False, *,
          model_kwargs: dict | None = None, min_seconds: float = 0.0,
          max_repeats: int | None = None, deadline: float | None = None,
          memory_limit: int | None = None, report=None) -> list[dict]:
    """One row per step: examples/s (median of the timed calls), ratio to "nonprivate",
    compile seconds, compiled memory and device peak (bytes), or an `error`.

    Keyword arguments (the CLI leaves them at their defaults):
      model_kwargs: model fields instead of MODEL_KWARGS[model_name].
      min_seconds, max_repeats: repeat past `repeats` until each step has this much
        timed time, up to `max_repeats` rounds (`time_interleaved`).
      deadline: a time.monotonic() value: no compilation starts that would end after it
        (guessed from the longest so far; the step gets an error), nor a timed round.
      memory_limit: bytes; a step whose compiled memory exceeds it is not run.
      report: called with the rows so far after each compile, first run and the timing,
        so that a caller can save partial results.
    """
    report = report or (lambda rows: None)
    dtype = jnp.dtype(dtype)
    model, args = make_case(model_name, batch, num_views, size, dtype, model_kwargs)
    if fast_method == "measured":  # time each layer's norm forms first (not in the rows)
        fast_method = fast_clipping.measure_norm_methods(model, args[0], {}, args[1].shape,
                                                         num_views)
        print(f"  measured norm forms: {sorted(set(fast_method.values()))} "
              f"({sum(v == 'ghost' for v in fast_method.values())} ghost of "
              f"{len(fast_method)})")
    fns = make_steps(model, num_views, fast_method=fast_method)
    rows, compiled = {}, {}
    for name in steps:
        row = rows[name] = dict(
            model=model_name, batch=batch, augmult=num_views, size=size, dtype=dtype.name,
            step=name, examples_per_s=None, seconds=None, ratio=None, repeats=0,
            compile_s=None, compiled_bytes=None, device_peak_bytes=None, error=None)
        if name not in fns:
            row["error"] = (JAX_PRIVACY_NOTE or "not importable") if name == "jax_privacy" \
                else f"unknown step {name!r}"
            continue
        # A compilation is guessed to take up to 1.5x the longest one so far.
        guess = 1.5 * max(r["compile_s"] or 0.0 for r in rows.values())
        if deadline is not None and time.monotonic() + guess > deadline:
            row["error"] = "skipped: time budget"
            continue
        t0 = time.perf_counter()
        try:
            compiled[name] = fns[name].lower(*args).compile()
        except Exception as e:
            row["error"] = error_text(e)
            continue
        finally:
            row["compile_s"] = time.perf_counter() - t0
        row["compiled_bytes"] = compiled_bytes(compiled[name])
        if memory_limit and row["compiled_bytes"] and row["compiled_bytes"] > memory_limit:
            row["error"] = (f"not run: compiled memory {mib(row['compiled_bytes'])} > "
                            f"limit {mib(memory_limit)}")
            del compiled[name]
        report(list(rows.values()))
    # First runs (not timed), least compiled memory first: the running peak then reads as
    # each step's own.
    outputs = {}
    for name in sorted(compiled, key=lambda n: rows[n]["compiled_bytes"] or 0):
        try:
            out = jax.block_until_ready(compiled[name](*args))
            if check:
                outputs[name] = out
        except Exception as e:
            rows[name]["error"] = error_text(e)
            del compiled[name]
        rows[name]["device_peak_bytes"] = device_memory()["peak"]
        report(list(rows.values()))
    times, errors = {name: [] for name in compiled}, {}
    try:
        time_interleaved(compiled, args, repeats, min_seconds, max_repeats, deadline, times,
                         errors)
    finally:  # also when interrupted (a signal): keep the calls timed so far
        _fill_times(rows, times, errors, batch)
        report(list(rows.values()))
    for name in ("fast", "jax_privacy"):
        if check and "vmap" in outputs and name in outputs:
            err, norm_err = _rel_errors(outputs[name], outputs["vmap"])
            print(f"  check {name} vs vmap: clipped sum rel. error {err:.2e}, max norm rel. "
                  f"error {norm_err:.2e}")
    return list(rows.values())


def _fill_times(rows: dict, times: dict, errors: dict, batch: int) -> None:
    """Median seconds, examples/s and the ratio to "nonprivate" into the rows."""
    for name, t in times.items():
        if t:
            median = statistics.median(t)
            rows[name].update(seconds=median, examples_per_s=batch / median, repeats=len(t),
                              seconds_min=min(t), seconds_max=max(t))
        if name in errors:
            rows[name]["error"] = errors[name]
    base = rows["nonprivate"]["examples_per_s"] if "nonprivate" in rows else None
    for r in rows.values():
        if base and r["examples_per_s"]:
            r["ratio"] = r["examples_per_s"] / base


def _rel_errors(out, ref) -> tuple[float, float]:
    """‖sum − ref_sum‖ / ‖ref_sum‖ and max_i |n_i − ref_n_i| / ref_n_i of two DP steps' outputs."""
    (total, norms), (ref_total, ref_norms) = out, ref
    diff = jax.tree_util.tree_map(lambda a, b: a - b, total, ref_total)
    err = float(clipping.global_norm(diff) / clipping.global_norm(ref_total))
    return err, float(jnp.max(jnp.abs(norms - ref_norms) / ref_norms))


def format_row(r: dict) -> str:
    """A Markdown table row: model | batch | K | dtype | step | ex/s | ratio | compiled mem |
    device peak | compile s (the CLI's table)."""
    speed = f"{r['examples_per_s']:.1f}" if r["examples_per_s"] else f"— ({r['error']})"
    ratio = f"{r['ratio']:.3f}" if r["ratio"] else "—"
    compile_s = f"{r['compile_s']:.1f}" if r["compile_s"] is not None else "—"
    return (f"| {r['model']}@{r['size']} | {r['batch']} | {r['augmult']} | {r['dtype']} | "
            f"{r['step']} | {speed} | {ratio} | {mib(r['compiled_bytes'])} | "
            f"{mib(r['device_peak_bytes'])} | {compile_s} |")


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
        print(f"# jax_privacy row skipped: {JAX_PRIVACY_NOTE} (pip install jax-privacy)")
        steps = tuple(s for s in steps if s != "jax_privacy")
    print("| model | batch | K | dtype | step | ex/s | ratio | compiled mem | device peak |"
          " compile s |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for batch in map(int, args.batch.split(",")):
        for k in map(int, args.augmult.split(",")):
            for r in bench(args.model, batch, k, size, jnp.dtype(args.dtype), args.repeats,
                           steps, args.fast_method, args.check):
                print(format_row(r), flush=True)


if __name__ == "__main__":
    main()
