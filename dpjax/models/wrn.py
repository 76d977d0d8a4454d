"""Wide-ResNets with GroupNorm and weight-standardised convolutions (De et al. 2022).

WRN-d-k (Zagoruyko & Komodakis 2016) in pre-activation order (He et al.
2016, "Identity mappings"): a 3x3 stem convolution with 16 channels, three
groups of (d − 4)/6 blocks of widths 16k, 32k, 64k and strides 1, 2, 2, then
GroupNorm (`final_norm`), ReLU, global average pooling and a dense
`classifier`. Every normalisation is GroupNorm with 16 groups (Wu & He 2018)
and every convolution is weight-standardised (Qiao et al. 2019), as in De et
al. 2022 ("Unlocking high-accuracy differentially private image
classification through scale") and jax_privacy's WideResNet: no statistic
mixes the examples of a batch, so per-example gradients are exact.

WRN-16-4 has 2,748,890 parameters at 10 classes; WRN-40-4 8,949,210. The
names `final_norm` and `classifier` are what a DP linear probe trains
(DP-RandP's Phase II, Tang et al. 2023).
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from dpjax.errors import ConfigError
from dpjax.models import _checks, layers


class WRNBlock(nn.Module):
    """Pre-activation basic block: GN-ReLU-conv3x3-GN-ReLU-conv3x3, plus a shortcut.

    The shortcut is the identity, or a 1x1 convolution of the pre-activated
    input where the stride or the width changes.
    """

    features: int
    stride: int = 1
    groups: int = 16
    weight_standardization: bool = True
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        def conv(features, kernel_size, stride, name):
            return layers.conv(features, kernel_size, stride, dtype=self.dtype, name=name,
                               weight_standardization=self.weight_standardization)

        def norm(channels, name):
            return layers.norm_layer("group", channels, groups=self.groups, dtype=self.dtype,
                                     name=name)

        out = nn.relu(norm(x.shape[-1], "norm1")(x))
        shortcut = x
        if self.stride != 1 or x.shape[-1] != self.features:
            shortcut = conv(self.features, 1, self.stride, "shortcut")(out)
        out = conv(self.features, 3, self.stride, "conv1")(out)
        out = nn.relu(norm(self.features, "norm2")(out))
        out = conv(self.features, 3, 1, "conv2")(out)
        return out + shortcut


class WideResNet(nn.Module):
    """WRN-`depth`-`width` for small images (32x32 CIFAR-style); see the module docstring.

    Attributes:
        num_classes: size of the classifier's output.
        depth: 6n + 4 (16 for WRN-16-4, 40 for WRN-40-4).
        width: widening factor k (group widths 16k, 32k, 64k).
        groups: GroupNorm groups (16 in De et al. 2022).
        weight_standardization: standardise every convolution's kernel.
        dtype: computation dtype (e.g. jnp.bfloat16); parameters and logits stay float32.
    """

    num_classes: int
    depth: int = 16
    width: int = 4
    groups: int = 16
    weight_standardization: bool = True
    dtype: Any = jnp.float32

    def __post_init__(self):
        _checks.positive_int("num_classes", self.num_classes)
        _checks.positive_int("model.kwargs.width", self.width)
        _checks.positive_int("model.kwargs.groups", self.groups)
        _checks.one_of("model.kwargs.weight_standardization", self.weight_standardization,
                       (False, True))
        _checks.float_dtype(self.dtype)
        if not isinstance(self.depth, int) or self.depth < 10 or (self.depth - 4) % 6:
            raise ConfigError(f"Expected model.kwargs.depth = 6n + 4 with n >= 1 (16, 22, 28, "
                              f"40, ...), got {self.depth!r}.")
        super().__post_init__()

    @nn.compact
    def __call__(self, x: jax.Array, return_feature_map: bool = False) -> jax.Array:
        """Logits (N, num_classes) float32 for normalised NHWC images `x`.

        With `return_feature_map=True`: the (N, H/4, W/4, 64·width) map after
        `final_norm` and ReLU, before pooling, in the computation dtype.
        """
        blocks = (self.depth - 4) // 6
        x = layers.conv(16, 3, 1, weight_standardization=self.weight_standardization,
                        dtype=self.dtype, name="stem")(x.astype(self.dtype))
        for g, (multiplier, stride) in enumerate(((1, 1), (2, 2), (4, 2))):
            for b in range(blocks):
                x = WRNBlock(16 * multiplier * self.width, stride if b == 0 else 1, self.groups,
                             self.weight_standardization, self.dtype,
                             name=f"group{g}_block{b}")(x)
        x = layers.norm_layer("group", x.shape[-1], groups=self.groups, dtype=self.dtype,
                              name="final_norm")(x)
        x = nn.relu(x)
        if return_feature_map:
            return x
        x = jnp.mean(x, axis=(1, 2), dtype=jnp.float32)
        x = nn.Dense(self.num_classes, dtype=self.dtype, param_dtype=jnp.float32,
                     name="classifier")(x)
        return x.astype(jnp.float32)

