"""ResNet-18/34/50 (He et al. 2016) with DP-safe normalisation.

`norm="group"` (default): GroupNorm, optionally with weight-standardised
convolutions — no cross-example statistics. `norm="batch_frozen"`: BatchNorm
that always uses its stored statistics (from public pre-training), a fixed
affine map and so DP-safe. `norm="batch"`: ordinary training-mode BatchNorm,
for non-private training only (refused in DP mode).

`small_input=True` (default for images ≤ 64 px) uses a 3x3 stride-1 stem
without max-pooling, the usual CIFAR adaptation. These post-activation
ResNets have no normalisation after the last block, so there is no
`final_norm`; the classifier is named `classifier`.
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax.numpy as jnp

from dpjax.models import layers


class BasicBlock(nn.Module):
    features: int
    stride: int
    norm: str
    ws: bool
    dtype: Any
    expansion = 1

    @nn.compact
    def __call__(self, x):
        kw = dict(ws=self.ws, dtype=self.dtype)
        out = layers.conv(self.features, 3, self.stride, name="conv1", **kw)(x)
        out = nn.relu(layers.norm(self.norm, self.features, dtype=self.dtype, name="norm1")(out))
        out = layers.conv(self.features, 3, 1, name="conv2", **kw)(out)
        out = layers.norm(self.norm, self.features, dtype=self.dtype, name="norm2")(out)
        if self.stride != 1 or x.shape[-1] != self.features:
            x = layers.conv(self.features, 1, self.stride, name="shortcut_conv", **kw)(x)
            x = layers.norm(self.norm, self.features, dtype=self.dtype, name="shortcut_norm")(x)
        return nn.relu(out + x)


class Bottleneck(nn.Module):
    features: int
    stride: int
    norm: str
    ws: bool
    dtype: Any
    expansion = 4

    @nn.compact
    def __call__(self, x):
        kw = dict(ws=self.ws, dtype=self.dtype)
        out_features = self.features * 4
        out = layers.conv(self.features, 1, 1, name="conv1", **kw)(x)
        out = nn.relu(layers.norm(self.norm, self.features, dtype=self.dtype, name="norm1")(out))
        out = layers.conv(self.features, 3, self.stride, name="conv2", **kw)(out)
        out = nn.relu(layers.norm(self.norm, self.features, dtype=self.dtype, name="norm2")(out))
        out = layers.conv(out_features, 1, 1, name="conv3", **kw)(out)
        out = layers.norm(self.norm, out_features, dtype=self.dtype, name="norm3")(out)
        if self.stride != 1 or x.shape[-1] != out_features:
            x = layers.conv(out_features, 1, self.stride, name="shortcut_conv", **kw)(x)
            x = layers.norm(self.norm, out_features, dtype=self.dtype, name="shortcut_norm")(x)
        return nn.relu(out + x)


class ResNet(nn.Module):
    num_classes: int
    stage_sizes: tuple = (2, 2, 2, 2)
    bottleneck: bool = False
    norm: str = "group"
    weight_standardization: bool = False
    small_input: bool | None = None
    width: int = 64
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x, return_feature_map: bool = False):
        if self.norm not in layers.NORMS:
            raise ValueError(f"model.norm={self.norm!r} not in {layers.NORMS}")
        small = self.small_input if self.small_input is not None else x.shape[1] <= 64
        kw = dict(ws=self.weight_standardization, dtype=self.dtype)
        x = x.astype(self.dtype)
        if small:
            x = layers.conv(self.width, 3, 1, name="stem_conv", **kw)(x)
        else:
            x = layers.conv(self.width, 7, 2, name="stem_conv", **kw)(x)
        x = nn.relu(layers.norm(self.norm, self.width, dtype=self.dtype, name="stem_norm")(x))
        if not small:
            x = nn.max_pool(x, (3, 3), strides=(2, 2), padding="SAME")
        block = Bottleneck if self.bottleneck else BasicBlock
        for s, size in enumerate(self.stage_sizes):
            for b in range(size):
                x = block(self.width * 2**s, 2 if (b == 0 and s > 0) else 1, self.norm,
                          self.weight_standardization, self.dtype, name=f"stage{s}_block{b}")(x)
        if return_feature_map:
            return x
        x = jnp.mean(x, axis=(1, 2))
        x = nn.Dense(self.num_classes, dtype=self.dtype, param_dtype=jnp.float32,
                     name="classifier")(x)
        return x.astype(jnp.float32)
