"""Choosing the micro-batch size from the compiled step's own memory (micro_batch_size=0).

The micro-batch size changes only memory and speed, never the result (the
logical batch is the same; tests check it): the largest size that fits is
the fastest. Rather than guess from parameter counts, we ask XLA. The
accumulation step is compiled for two small probe sizes, its memory (XLA's
`memory_analysis`: arguments + outputs + temporaries) fitted as a + b·m,
and the largest m whose prediction stays under the budget is compiled once
more to confirm it (halving until it fits, should the fit be optimistic).
Memory of these steps is linear in m up to XLA's choices of fusion, which
is why the chosen size is checked rather than trusted.

The budget is `MEMORY_FRACTION` of the device's memory (`bytes_limit` on
accelerators; on a CPU the machine's RAM shared by its local devices) minus
what stays resident beside the step (the training state and any data held on
the device), leaving room for the update step and the runtime's own buffers.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

import jax

from dpjax.errors import DpjaxError

MEMORY_FRACTION = 0.7
PROBES = (8, 16)


def compiled_bytes(fn: Callable, *args: Any) -> int:
    """Bytes XLA plans for `jax.jit(fn)(*args)`: arguments + outputs + temporaries − aliased.

    `args` may be arrays or `jax.ShapeDtypeStruct`s; nothing runs.
    """
    analysis = jax.jit(fn).lower(*args).compile().memory_analysis()
    if analysis is None:
        raise DpjaxError("This JAX backend reports no compiled memory: set micro_batch_size "
                         "to a positive number instead of 0 (auto).")
    return int(analysis.argument_size_in_bytes + analysis.output_size_in_bytes
               + analysis.temp_size_in_bytes - analysis.alias_size_in_bytes)


def device_memory_bytes(device: jax.Device | None = None) -> int:
    """Memory one local device may use: its `bytes_limit`, or RAM / local devices on a CPU."""
    device = device or jax.local_devices()[0]
    stats = device.memory_stats() if hasattr(device, "memory_stats") else None
    if stats and stats.get("bytes_limit"):
        return int(stats["bytes_limit"])
    ram = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    return int(ram // max(jax.local_device_count(), 1))


def fit_micro_batch_size(measure: Callable[[int], int], budget: int, cap: int,
                         probes: tuple[int, int] = PROBES) -> tuple[int, dict]:
    """The largest micro-batch size m ≤ cap with measure(m) ≤ budget.

    Args:
      measure: m -> bytes the step needs at micro-batch size m (a compile).
      budget: bytes available to the step.
      cap: no use going above this (the rows per device of an expected batch).
      probes: the two sizes the linear fit is made from.

    Returns:
      (m, {"bytes": measure(m), "budget": budget, "per_example": slope,
      "fixed": intercept}).

    Raises:
      DpjaxError: not even m = 1 fits.
    """
    cap = max(int(cap), 1)
    lo, hi = min(probes[0], cap), min(probes[1], cap)
    measured = {lo: measure(lo)}
    if hi != lo:
        measured[hi] = measure(hi)
        slope = max((measured[hi] - measured[lo]) / (hi - lo), 1.0)
    else:
        slope = max(measured[lo] / lo, 1.0)
    fixed = measured[lo] - slope * lo
    m = int(min(cap, max(1, (budget - fixed) // slope)))
    if m > hi:  # a power of two (or the cap): the sizes XLA tiles best
        m = cap if m == cap else 1 << (m.bit_length() - 1)
    while True:
        if m not in measured:
            measured[m] = measure(m)
        if measured[m] <= budget:
            return m, {"bytes": measured[m], "budget": int(budget),
                       "per_example": float(slope), "fixed": float(fixed)}
        if m == 1:
            raise DpjaxError(
                f"Even micro_batch_size=1 needs {measured[1] / 2**30:.2f} GiB, more than the "
                f"{budget / 2**30:.2f} GiB available: use a smaller model, model.dtype=bfloat16 "
                "or a smaller augmult.")
        m //= 2


def auto_micro_batch_size(fns, params, is_trainable, image_shape: tuple, units,
                          data_bytes: int, batch_size: int) -> int:
    """micro_batch_size=0: the largest per-device micro-batch the accumulation step fits.

    Args:
      fns: the step functions (`train.step.build_step_fns`) of the first phase.
      params: the initial parameters.
      is_trainable: the first phase's trainable-parameter predicate.
      image_shape: (H, W, C) of one training image.
      units: the patient table of a per-patient run (rows are patients), or None.
      data_bytes: bytes of training data held on each device beside the step.
      batch_size: the expected logical batch (no use going above its share per device).
    """
    import logging

    import jax.numpy as jnp
    import numpy as np

    from dpjax.train import step as step_lib

    trainable, _ = step_lib.split_params(params, is_trainable)
    acc = jax.tree_util.tree_map(lambda p: jax.ShapeDtypeStruct(p.shape, jnp.float32), trainable)
    row = tuple(image_shape) if units is None else (units.shape[1],) + tuple(image_shape)
    label_row = () if units is None else (units.shape[1],)

    def measure(m: int) -> int:
        return compiled_bytes(
            fns.accumulate_one_device, params, acc, step_lib.zero_stats(),
            jax.ShapeDtypeStruct((m,) + row, jnp.uint8),
            jax.ShapeDtypeStruct((m,) + label_row, jnp.int32),
            jax.ShapeDtypeStruct((m,), jnp.int32), jax.ShapeDtypeStruct((m,), jnp.bool_),
            jax.random.key(0), jnp.float32(1.0))

    param_bytes = sum(x.size * 4 for x in jax.tree_util.tree_leaves(params))
    # Beside the step stay the state (params, EMA, optimiser moments) and the data.
    budget = MEMORY_FRACTION * device_memory_bytes() - 4 * param_bytes - data_bytes
    cap = -(-batch_size // jax.device_count())
    m, info = fit_micro_batch_size(measure, budget, cap)
    if jax.process_count() > 1:  # every host must use the same size
        from jax.experimental import multihost_utils

        m = int(multihost_utils.broadcast_one_to_all(np.int32(m)))
    logging.getLogger("dpjax").info(
        "micro_batch_size=0 (auto): %d per device (%.2f GiB of a %.2f GiB budget)", m,
        info["bytes"] / 2**30, info["budget"] / 2**30)
    return m
