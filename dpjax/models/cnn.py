"""Small models for tiny images (the quickstart's 8x8 digits, 28/32 px sets)."""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax.numpy as jnp

from dpjax.models import layers


class SmallCNN(nn.Module):
    """conv-GN-tanh x2, 2x2 average pool, conv-GN-tanh, global pool, dense.

    Tanh activations suit DP-SGD's clipped, noisy updates at small scale
    (Papernot et al. 2021, "Tempered sigmoid activations").
    """

    num_classes: int
    width: int = 32
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x, return_feature_map: bool = False):
        x = x.astype(self.dtype)
        for i, (features, stride) in enumerate(((self.width, 1), (self.width, 1),
                                                (2 * self.width, 2))):
            x = layers.conv(features, 3, stride, ws=True, dtype=self.dtype, name=f"conv{i}")(x)
            x = layers.norm("group", features, groups=8, dtype=self.dtype, name=f"norm{i}")(x)
            x = jnp.tanh(x)
        if return_feature_map:
            return x
        x = jnp.mean(x, axis=(1, 2))
        x = nn.Dense(self.num_classes, dtype=self.dtype, param_dtype=jnp.float32,
                     name="classifier")(x)
        return x.astype(jnp.float32)


class MLP(nn.Module):
    """Flatten, `depth` tanh hidden layers of `width`, dense classifier."""

    num_classes: int
    width: int = 256
    depth: int = 1
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x, return_feature_map: bool = False):
        x = x.reshape(x.shape[0], -1).astype(self.dtype)
        for i in range(self.depth):
            x = jnp.tanh(nn.Dense(self.width, dtype=self.dtype, param_dtype=jnp.float32,
                                  name=f"hidden{i}")(x))
        if return_feature_map:
            return x
        x = nn.Dense(self.num_classes, dtype=self.dtype, param_dtype=jnp.float32,
                     name="classifier")(x)
        return x.astype(jnp.float32)
