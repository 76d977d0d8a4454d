"""Layers for DP training: weight-standardised convolutions and group/frozen norms.

BatchNorm in training mode computes statistics across the examples of a batch,
which breaks per-example privacy (and `vmap` silently turns it into a
per-example norm). The standard replacements (De et al. 2022) are GroupNorm
(Wu & He 2018) and weight-standardised convolutions (Qiao et al. 2019).
BatchNorm whose statistics are frozen (taken from public pre-training) is
also safe: it is a fixed affine map.
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax.numpy as jnp

NORMS = ("group", "batch_frozen", "batch")


class WSConv(nn.Conv):
    """Convolution whose kernel is standardised per output channel.

    The kernel W (H, W, C_in, C_out) is replaced by (W − mean) / sqrt(var + eps)
    with mean and variance over (H, W, C_in) for each output channel (Qiao et
    al. 2019; De et al. 2022 use it with GroupNorm for DP-SGD). The output is
    thus unchanged by a positive rescaling or per-channel shift of W.
    """

    eps: float = 1e-4

    def param(self, name: str, init_fn, *init_args, **init_kwargs):
        value = super().param(name, init_fn, *init_args, **init_kwargs)
        if name != "kernel":
            return value
        reduce_axes = tuple(range(value.ndim - 1))
        mean = jnp.mean(value, axis=reduce_axes, keepdims=True)
        var = jnp.var(value, axis=reduce_axes, keepdims=True)
        return (value - mean) * jnp.reciprocal(jnp.sqrt(var + self.eps))


def conv(features: int, kernel: int, stride: int = 1, *, ws: bool, dtype: Any,
         name: str | None = None) -> nn.Module:
    cls = WSConv if ws else nn.Conv
    return cls(features, (kernel, kernel), strides=(stride, stride), padding="SAME",
               use_bias=False, dtype=dtype, param_dtype=jnp.float32, name=name,
               kernel_init=nn.initializers.variance_scaling(2.0, "fan_in", "normal"))


def norm(kind: str, channels: int, *, dtype: Any, groups: int = 16,
         name: str | None = None) -> nn.Module:
    """GroupNorm (groups capped at the channel count) or BatchNorm.

    kind="batch_frozen" always uses the stored running statistics; kind="batch"
    computes batch statistics and is for non-private training only.
    """
    if kind == "group":
        g = min(groups, channels)
        while channels % g:
            g -= 1
        return nn.GroupNorm(num_groups=g, dtype=dtype, param_dtype=jnp.float32, name=name)
    if kind == "batch_frozen":
        return nn.BatchNorm(use_running_average=True, dtype=dtype, param_dtype=jnp.float32,
                            name=name)
    if kind == "batch":
        return nn.BatchNorm(use_running_average=False, momentum=0.9, dtype=dtype,
                            param_dtype=jnp.float32, name=name)
    raise ValueError(f"norm kind {kind!r} not in {NORMS}")
