"""Small models for tiny images: the quickstart's 8x8 digits and 28/32 px sets.

Both are built for DP-SGD on a CPU, where every example's gradient is
computed separately (`vmap`): few, narrow layers, and GroupNorm (Wu & He
2018) rather than BatchNorm, so that no statistic mixes examples (De et al.
2022). Tanh is the default activation: bounded activations keep per-example
gradient norms even and suit clipped, noisy updates (Papernot et al. 2021,
"Tempered sigmoid activations for deep learning with differential privacy").
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from dpjax.errors import ConfigError
from dpjax.models import _checks, layers

ACTIVATIONS = {"tanh": jnp.tanh, "relu": nn.relu}


class SmallCNN(nn.Module):
    """conv3x3-GN-act, conv3x3-GN-act, `pool`x`pool` average pool, flatten, dense `classifier`.

    Parameters: `conv0`, `norm0`, `conv1`, `final_norm` (the last GroupNorm),
    `classifier`. (Before 2026-11-29 the last norm was called `norm1`; priors
    made then still load, see `dpjax.randp.priors`.)

    On 8x8 digits at `width` 32: 14,762 parameters at 10 classes.

    Attributes:
        num_classes: size of the classifier's output.
        width: channels of both convolutions.
        activation: "tanh" | "relu".
        groups: GroupNorm groups (capped by `width`).
        pool: side of the average-pooling window (and its stride) before the
            classifier. The classifier has (H/pool)·(W/pool)·width inputs per
            class: a larger window gives a DP linear probe fewer weights to
            noise (DP-RandP's Phase II; docs/results.md, "CIFAR-10 on a CPU").
        weight_standardization: standardise the convolution kernels (Qiao et al. 2019).
        dtype: computation dtype; parameters and logits stay float32.
    """

    num_classes: int
    width: int = 32
    activation: str = "tanh"
    groups: int = 8
    pool: int = 2
    weight_standardization: bool = True
    dtype: Any = jnp.float32

    def __post_init__(self):
        _checks.positive_int("num_classes", self.num_classes)
        _checks.positive_int("model.kwargs.width", self.width)
        _checks.positive_int("model.kwargs.groups", self.groups)
        _checks.positive_int("model.kwargs.pool", self.pool)
        _checks.one_of("model.kwargs.activation", self.activation, tuple(ACTIVATIONS))
        _checks.one_of("model.kwargs.weight_standardization", self.weight_standardization,
                       (False, True))
        _checks.float_dtype(self.dtype)
        super().__post_init__()

    @nn.compact
    def __call__(self, x: jax.Array, return_feature_map: bool = False) -> jax.Array:
        """Logits (N, num_classes) float32 for normalised NHWC images `x`.

        With `return_feature_map=True`: the (N, H/pool, W/pool, width) map after
        pooling, before flattening, in the computation dtype.
        """
        act = ACTIVATIONS[self.activation]
        x = x.astype(self.dtype)
        for i in range(2):
            x = layers.conv(self.width, 3, 1, weight_standardization=self.weight_standardization,
                            dtype=self.dtype, name=f"conv{i}")(x)
            # The last norm is `final_norm`, as in every zoo model: with the `classifier`
            # it is what a DP linear probe trains (DP-RandP's Phase II).
            x = layers.norm_layer("group", self.width, groups=self.groups, dtype=self.dtype,
                                  name="final_norm" if i == 1 else f"norm{i}")(x)
            x = act(x)
        if self.pool > min(x.shape[1:3]):
            raise ConfigError(f"model.kwargs.pool={self.pool} is larger than the "
                              f"{x.shape[1]}x{x.shape[2]} images: lower it.")
        x = nn.avg_pool(x, (self.pool, self.pool), strides=(self.pool, self.pool))
        if return_feature_map:
            return x
        x = x.reshape(x.shape[0], -1)
        x = nn.Dense(self.num_classes, dtype=self.dtype, param_dtype=jnp.float32,
                     name="classifier")(x)
        return x.astype(jnp.float32)


class MLP(nn.Module):
    """Flatten, `depth` hidden dense layers of `width` with `activation`, dense `classifier`.

    Attributes:
        num_classes: size of the classifier's output.
        width: units per hidden layer.
        depth: number of hidden layers (0 is multinomial logistic regression).
        activation: "tanh" | "relu".
        dtype: computation dtype; parameters and logits stay float32.
    """

    num_classes: int
    width: int = 256
    depth: int = 1
    activation: str = "tanh"
    dtype: Any = jnp.float32

    def __post_init__(self):
        _checks.positive_int("num_classes", self.num_classes)
        _checks.positive_int("model.kwargs.width", self.width)
        if isinstance(self.depth, bool) or not isinstance(self.depth, int) or self.depth < 0:
            raise ConfigError(f"Expected model.kwargs.depth to be a non-negative integer, "
                              f"got {self.depth!r}.")
        _checks.one_of("model.kwargs.activation", self.activation, tuple(ACTIVATIONS))
        _checks.float_dtype(self.dtype)
        super().__post_init__()

    @nn.compact
    def __call__(self, x: jax.Array, return_feature_map: bool = False) -> jax.Array:
        """Logits (N, num_classes) float32 for inputs `x` of any shape (N, ...).

        An MLP has no spatial map: `return_feature_map=True` gives the last
        hidden layer's activations (N, width), or the flattened input when
        `depth` is 0.
        """
        act = ACTIVATIONS[self.activation]
        x = x.reshape(x.shape[0], -1).astype(self.dtype)
        for i in range(self.depth):
            x = act(nn.Dense(self.width, dtype=self.dtype, param_dtype=jnp.float32,
                             name=f"hidden{i}")(x))
        if return_feature_map:
            return x
        x = nn.Dense(self.num_classes, dtype=self.dtype, param_dtype=jnp.float32,
                     name="classifier")(x)
        return x.astype(jnp.float32)
