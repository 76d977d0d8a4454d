"""ResNet-18/34/50 (He et al. 2016) with a DP-safe choice of normalisation.

The layout is torchvision's (v1.5: in bottlenecks the stride sits on the 3x3
convolution; symmetric padding), so public ImageNet weights map one to one.

`norm` picks the normalisation after every convolution:

- "group" (default): GroupNorm with 16 groups (Wu & He 2018), optionally
  with weight-standardised convolutions (`weight_standardization=True`,
  Qiao et al. 2019), the replacement for BatchNorm that De et al. 2022 use
  for DP-SGD. No statistic crosses examples; `model.init` returns only
  'params'.
- "batch_frozen": BatchNorm that always normalises with its stored running
  statistics and never updates them. Those statistics must come from public
  pre-training (e.g. ImageNet weights); then the layer is a fixed affine map
  and DP-safe. `model.init` also returns 'batch_stats' (mean 0, variance 1
  until loaded).
- "batch": ordinary training-mode BatchNorm. It normalises each example with
  its batch's statistics, which breaks per-example DP
  (`check_dp_compatible` refuses it); for non-private baselines only, and
  applying it needs `mutable=["batch_stats"]`.

`small_input=False` is the ImageNet stem (7x7 stride-2 convolution, 3x3
stride-2 max-pool; 224 px in, 7x7 map out). `small_input=True` is the usual
adaptation for images of 64 px or less (CIFAR, MedMNIST): a 3x3 stride-1
stem without max-pooling (32 px in, 4x4 map out).

These are post-activation ResNets: each block ends with ReLU(norm(out) +
shortcut), so there is no normalisation after the last block and hence no
`final_norm` layer; a DP linear probe trains only the dense `classifier`.

Parameters at 1000 classes: ResNet-18 11,689,512; ResNet-34 21,797,672;
ResNet-50 25,557,032 (torchvision's counts; GroupNorm has as many affine
parameters as BatchNorm). At 10 classes ResNet-18 has 11,181,642.
"""

from __future__ import annotations

from typing import Any, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from dpjax.errors import ConfigError
from dpjax.models import _checks, layers


class _Block(nn.Module):
    """Shared fields of the residual blocks."""

    features: int
    stride: int = 1
    norm: str = "group"
    weight_standardization: bool = False
    groups: int = 16
    dtype: Any = jnp.float32

    def conv(self, features: int, kernel_size: int, stride: int, name: str) -> nn.Module:
        return layers.conv(features, kernel_size, stride, dtype=self.dtype, name=name,
                           weight_standardization=self.weight_standardization)

    def norm_layer(self, channels: int, name: str) -> nn.Module:
        return layers.norm_layer(self.norm, channels, groups=self.groups, dtype=self.dtype,
                                 name=name)

    def shortcut(self, x: jax.Array, features: int) -> jax.Array:
        if self.stride == 1 and x.shape[-1] == features:
            return x
        x = self.conv(features, 1, self.stride, "shortcut_conv")(x)
        return self.norm_layer(features, "shortcut_norm")(x)


class BasicBlock(_Block):
    """conv3x3-norm-ReLU-conv3x3-norm, add the shortcut, ReLU (ResNet-18/34)."""

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        out = self.conv(self.features, 3, self.stride, "conv1")(x)
        out = nn.relu(self.norm_layer(self.features, "norm1")(out))
        out = self.conv(self.features, 3, 1, "conv2")(out)
        out = self.norm_layer(self.features, "norm2")(out)
        return nn.relu(out + self.shortcut(x, self.features))


class Bottleneck(_Block):
    """conv1x1-norm-ReLU-conv3x3(stride)-norm-ReLU-conv1x1(4x)-norm, add, ReLU (ResNet-50)."""

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        out_features = 4 * self.features
        out = self.conv(self.features, 1, 1, "conv1")(x)
        out = nn.relu(self.norm_layer(self.features, "norm1")(out))
        out = self.conv(self.features, 3, self.stride, "conv2")(out)
        out = nn.relu(self.norm_layer(self.features, "norm2")(out))
        out = self.conv(out_features, 1, 1, "conv3")(out)
        out = self.norm_layer(out_features, "norm3")(out)
        return nn.relu(out + self.shortcut(x, out_features))


class ResNet(nn.Module):
    """ResNet with basic or bottleneck blocks; see the module docstring.

    Attributes:
        num_classes: size of the classifier's output.
        stage_sizes: blocks per stage ((2, 2, 2, 2) is ResNet-18).
        bottleneck: bottleneck blocks (ResNet-50) instead of basic blocks.
        norm: "group" | "batch_frozen" | "batch".
        weight_standardization: standardise every convolution's kernel.
        small_input: 3x3 stride-1 stem without max-pool, for images <= 64 px.
        width: channels of the stem and the first stage (64 in He et al.).
        groups: GroupNorm groups (norm="group" only).
        dtype: computation dtype (e.g. jnp.bfloat16); parameters and logits stay float32.
    """

    num_classes: int
    stage_sizes: Sequence[int] = (2, 2, 2, 2)
    bottleneck: bool = False
    norm: str = "group"
    weight_standardization: bool = False
    small_input: bool = False
    width: int = 64
    groups: int = 16
    dtype: Any = jnp.float32

    def __post_init__(self):
        _checks.positive_int("num_classes", self.num_classes)
        _checks.positive_int("model.kwargs.width", self.width)
        _checks.positive_int("model.kwargs.groups", self.groups)
        _checks.one_of("model.kwargs.norm", self.norm, layers.NORM_KINDS)
        for field in ("bottleneck", "weight_standardization", "small_input"):
            _checks.one_of(f"model.kwargs.{field}", getattr(self, field), (False, True))
        if not self.stage_sizes or not all(
                isinstance(n, int) and n >= 1 for n in self.stage_sizes):
            raise ConfigError(f"Expected model.kwargs.stage_sizes to be a non-empty sequence of "
                              f"positive integers, got {self.stage_sizes!r}.")
        _checks.float_dtype(self.dtype)
        super().__post_init__()

    @nn.compact
    def __call__(self, x: jax.Array, return_feature_map: bool = False) -> jax.Array:
        """Logits (N, num_classes) float32 for normalised NHWC images `x`.

        With `return_feature_map=True`: the output of the last stage (after
        its final ReLU), before pooling, in the computation dtype —
        (N, 7, 7, 512) for ResNet-18 at 224 px, 2048 channels for ResNet-50.
        """
        x = x.astype(self.dtype)
        ws = self.weight_standardization
        if self.small_input:
            x = layers.conv(self.width, 3, 1, weight_standardization=ws, dtype=self.dtype,
                            name="stem_conv")(x)
        else:
            x = layers.conv(self.width, 7, 2, weight_standardization=ws, dtype=self.dtype,
                            name="stem_conv")(x)
        x = layers.norm_layer(self.norm, self.width, groups=self.groups, dtype=self.dtype,
                              name="stem_norm")(x)
        x = nn.relu(x)
        if not self.small_input:
            x = nn.max_pool(x, (3, 3), strides=(2, 2), padding=((1, 1), (1, 1)))
        block = Bottleneck if self.bottleneck else BasicBlock
        for s, size in enumerate(self.stage_sizes):
            for b in range(size):
                x = block(self.width * 2**s, 2 if (b == 0 and s > 0) else 1, self.norm, ws,
                          self.groups, self.dtype, name=f"stage{s}_block{b}")(x)
        if return_feature_map:
            return x
        x = jnp.mean(x, axis=(1, 2), dtype=jnp.float32)
        x = nn.Dense(self.num_classes, dtype=self.dtype, param_dtype=jnp.float32,
                     name="classifier")(x)
        return x.astype(jnp.float32)
