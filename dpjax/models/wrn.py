"""Wide-ResNets with GroupNorm and weight-standardised convolutions (De et al. 2022).

Pre-activation WRN-d-k (Zagoruyko & Komodakis 2016): a 3x3 stem with 16
channels, three groups of (d − 4)/6 blocks of widths 16k, 32k, 64k with
strides 1, 2, 2, then GroupNorm (`final_norm`), ReLU, global average pooling
and a dense `classifier`. WRN-16-4 has 2.75 M parameters at 10 classes.
As in jax_privacy's WideResNet, normalisation is GroupNorm with 16 groups and
convolutions are weight-standardised, so no statistic mixes examples.
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax.numpy as jnp

from dpjax.models import layers


class WRNBlock(nn.Module):
    features: int
    stride: int
    groups: int
    dtype: Any

    @nn.compact
    def __call__(self, x):
        out = nn.relu(layers.norm("group", x.shape[-1], groups=self.groups, dtype=self.dtype,
                                  name="norm1")(x))
        shortcut = x
        if self.stride != 1 or x.shape[-1] != self.features:
            shortcut = layers.conv(self.features, 1, self.stride, ws=True, dtype=self.dtype,
                                   name="shortcut")(out)
        out = layers.conv(self.features, 3, self.stride, ws=True, dtype=self.dtype,
                          name="conv1")(out)
        out = nn.relu(layers.norm("group", self.features, groups=self.groups, dtype=self.dtype,
                                  name="norm2")(out))
        out = layers.conv(self.features, 3, 1, ws=True, dtype=self.dtype, name="conv2")(out)
        return out + shortcut


class WideResNet(nn.Module):
    num_classes: int
    depth: int = 16
    width: int = 4
    groups: int = 16
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x, return_feature_map: bool = False):
        if (self.depth - 4) % 6:
            raise ValueError(f"WRN depth {self.depth} is not 6n + 4.")
        blocks = (self.depth - 4) // 6
        x = layers.conv(16, 3, 1, ws=True, dtype=self.dtype, name="stem")(x.astype(self.dtype))
        for g, (mult, stride) in enumerate(((1, 1), (2, 2), (4, 2))):
            for b in range(blocks):
                x = WRNBlock(16 * mult * self.width, stride if b == 0 else 1, self.groups,
                             self.dtype, name=f"group{g}_block{b}")(x)
        x = nn.relu(layers.norm("group", x.shape[-1], groups=self.groups, dtype=self.dtype,
                                name="final_norm")(x))
        if return_feature_map:
            return x
        x = jnp.mean(x, axis=(1, 2))
        x = nn.Dense(self.num_classes, dtype=self.dtype, param_dtype=jnp.float32,
                     kernel_init=nn.initializers.zeros, name="classifier")(x)
        return x.astype(jnp.float32)
