"""Layers for DP training: weight-standardised convolutions and per-example norms.

BatchNorm in training mode normalises each example with statistics of the
whole batch, so one example's gradient depends on the others: the per-example
sensitivity that DP-SGD's clipping bounds no longer holds (and under `vmap`
it silently becomes a different, per-example normalisation). De et al. 2022
("Unlocking high-accuracy differentially private image classification
through scale") replace it with GroupNorm (Wu & He 2018), which normalises
each example on its own, together with weight-standardised convolutions
(Qiao et al. 2019), which keep the scale of the signal under control without
any batch statistic. BatchNorm whose statistics are frozen (taken from
public pre-training) is safe too: it is then a fixed per-channel affine map.
"""

from __future__ import annotations

from typing import Any, Callable, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from dpjax.errors import ConfigError

Dtype = Any

# Normalisation kinds, in the order the docs list them. Only the first two are DP-safe.
NORM_KINDS = ("group", "batch_frozen", "batch")
DP_SAFE_NORMS = ("group", "batch_frozen")

# He initialisation (He et al. 2015), as torchvision initialises ResNet convolutions.
he_normal = nn.initializers.variance_scaling(2.0, "fan_out", "normal")


def standardize_kernel(kernel: jax.Array, eps: float = 1e-4) -> jax.Array:
    """Scaled weight standardisation of a conv kernel (H, W, C_in, C_out).

    Each output channel's filter is centred and scaled over its fan-in
    (H·W·C_in): w ↦ (w − mean) / sqrt(max(fan_in · var, eps)). This is the
    form De et al. 2022 use (jax_privacy's `WSConv2D`, after Brock et al.'s
    NFNets); it is Qiao et al. 2019's standardisation divided by sqrt(fan_in),
    so a unit-variance input gives a unit-variance output. `eps` only matters
    for a (near-)constant filter. The result is unchanged when the kernel is
    multiplied by a positive constant or shifted by a constant per output
    channel.
    """
    reduce_axes = tuple(range(kernel.ndim - 1))
    fan_in = 1
    for axis in reduce_axes:
        fan_in *= kernel.shape[axis]
    mean = jnp.mean(kernel, axis=reduce_axes, keepdims=True)
    var = jnp.var(kernel, axis=reduce_axes, keepdims=True)
    return (kernel - mean) * jax.lax.rsqrt(jnp.maximum(var * fan_in, eps))


class WSConv(nn.Module):
    """2-D convolution (NHWC) whose kernel is weight-standardised on every call.

    The stored parameter `kernel` is the raw, unconstrained weight; the
    convolution uses `standardize_kernel(kernel)`, computed in the parameter
    dtype (float32) and only then cast to the computation `dtype`, so bf16
    mixed precision does not degrade the standardisation (Qiao et al. 2019;
    De et al. 2022). No learnable gain: a GroupNorm follows every use here.
    """

    features: int
    kernel_size: Sequence[int] = (3, 3)
    strides: Sequence[int] = (1, 1)
    padding: str | Sequence[tuple[int, int]] = "SAME"
    use_bias: bool = False
    eps: float = 1e-4
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32
    kernel_init: Callable = he_normal

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        kernel_shape = tuple(self.kernel_size) + (x.shape[-1], self.features)
        kernel = self.param("kernel", self.kernel_init, kernel_shape, self.param_dtype)
        kernel = standardize_kernel(kernel.astype(jnp.float32), self.eps).astype(self.dtype)
        padding = self.padding if isinstance(self.padding, str) else tuple(self.padding)
        y = jax.lax.conv_general_dilated(
            x.astype(self.dtype), kernel, window_strides=tuple(self.strides), padding=padding,
            dimension_numbers=("NHWC", "HWIO", "NHWC"))
        if self.use_bias:
            bias = self.param("bias", nn.initializers.zeros, (self.features,), self.param_dtype)
            y = y + bias.astype(self.dtype)
        return y


def conv(features: int, kernel_size: int, stride: int = 1, *, weight_standardization: bool,
         dtype: Dtype = jnp.float32, name: str | None = None) -> nn.Module:
    """A bias-free square convolution with symmetric padding `kernel_size // 2`.

    Symmetric padding matches torchvision's ResNets (so public pre-trained
    weights keep their meaning); float32 parameters whatever `dtype` is.
    """
    pad = kernel_size // 2
    kwargs = dict(strides=(stride, stride), padding=((pad, pad), (pad, pad)), use_bias=False,
                  dtype=dtype, param_dtype=jnp.float32, kernel_init=he_normal, name=name)
    if weight_standardization:
        return WSConv(features, (kernel_size, kernel_size), **kwargs)
    return nn.Conv(features, (kernel_size, kernel_size), **kwargs)


def num_groups(channels: int, groups: int = 16) -> int:
    """`groups` capped at `channels`, lowered to the nearest divisor of `channels`."""
    g = max(1, min(groups, channels))
    while channels % g:
        g -= 1
    return g


def norm_layer(kind: str, channels: int, *, groups: int = 16, dtype: Dtype = jnp.float32,
               name: str | None = None) -> nn.Module:
    """The normalisation layer of `kind` for a feature map with `channels` channels.

    - "group": GroupNorm (Wu & He 2018) with `groups` groups (16 as in De et
      al. 2022), capped at the channel count and lowered to a divisor of it.
      Each example is normalised on its own: DP-safe.
    - "batch_frozen": BatchNorm that always uses its stored running mean and
      variance (`use_running_average=True`) and never updates them. With
      statistics from public pre-training it is a fixed affine map: DP-safe.
    - "batch": ordinary BatchNorm normalising with the statistics of the
      current batch (momentum 0.9, like torchvision's 0.1). It mixes
      examples, so it is for non-private training only;
      `dpjax.models.check_dp_compatible` refuses it. Applying such a model
      needs `mutable=["batch_stats"]`.

    Statistics are computed in at least float32 even when `dtype` is bf16.

    Raises:
        ConfigError: `kind` is not one of `NORM_KINDS`.
    """
    if kind == "group":
        return nn.GroupNorm(num_groups=num_groups(channels, groups), epsilon=1e-5, dtype=dtype,
                            param_dtype=jnp.float32, name=name)
    if kind in ("batch_frozen", "batch"):
        return nn.BatchNorm(use_running_average=kind == "batch_frozen", momentum=0.9,
                            epsilon=1e-5, dtype=dtype, param_dtype=jnp.float32, name=name)
    raise ConfigError(f"Expected model.kwargs.norm in {NORM_KINDS}, got {kind!r}.")
