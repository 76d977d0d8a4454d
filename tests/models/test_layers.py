"""Weight-standardised convolution and the normalisation helper."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from dpjax.errors import ConfigError
from dpjax.models import layers


def _ws_conv_and_vars(features=5, kernel=3, channels=4, dtype=jnp.float32):
    conv = layers.WSConv(features, (kernel, kernel), dtype=dtype)
    x = jax.random.normal(jax.random.key(1), (2, 6, 6, channels))
    return conv, conv.init(jax.random.key(0), x), x


def test_ws_conv_invariant_to_positive_scale_and_per_channel_shift():
    conv, variables, x = _ws_conv_and_vars()
    kernel = variables["params"]["kernel"]
    shift = jax.random.normal(jax.random.key(2), (kernel.shape[-1],))
    moved = {"params": {"kernel": 3.7 * kernel + shift}}
    np.testing.assert_allclose(conv.apply(variables, x), conv.apply(moved, x),
                               rtol=1e-4, atol=1e-5)
    # ... but it is a real function of the kernel: a different kernel changes the output.
    other = {"params": {"kernel": kernel[..., ::-1]}}
    assert not np.allclose(conv.apply(variables, x), conv.apply(other, x), atol=1e-3)


def test_standardized_kernel_has_zero_mean_and_unit_fan_in_variance_per_output_channel():
    kernel = 5.0 + 2.0 * jax.random.normal(jax.random.key(0), (3, 3, 8, 6))
    w = layers.standardize_kernel(kernel)
    np.testing.assert_allclose(w.mean(axis=(0, 1, 2)), 0.0, atol=1e-5)
    np.testing.assert_allclose(w.var(axis=(0, 1, 2)) * 3 * 3 * 8, 1.0, rtol=1e-3)


def test_ws_conv_equals_plain_conv_with_the_standardized_kernel():
    conv, variables, x = _ws_conv_and_vars()
    plain = layers.conv(5, 3, 1, weight_standardization=False)
    w = layers.standardize_kernel(variables["params"]["kernel"])
    np.testing.assert_allclose(conv.apply(variables, x),
                               plain.apply({"params": {"kernel": w}}, x), rtol=1e-5, atol=1e-5)


def test_ws_conv_bf16_keeps_float32_parameters():
    conv, variables, x = _ws_conv_and_vars(dtype=jnp.bfloat16)
    assert variables["params"]["kernel"].dtype == jnp.float32
    assert conv.apply(variables, x).dtype == jnp.bfloat16


@pytest.mark.parametrize("channels, groups, expected", [(64, 16, 16), (16, 16, 16),
                                                        (8, 16, 8), (24, 16, 12), (3, 2, 1)])
def test_group_count_is_capped_by_channels_and_divides_them(channels, groups, expected):
    assert layers.num_groups(channels, groups) == expected


def test_norm_layer_kinds():
    x = jax.random.normal(jax.random.key(0), (2, 4, 4, 8))
    group = layers.norm_layer("group", 8)
    assert set(jax.eval_shape(group.init, jax.random.key(0), x)) == {"params"}
    frozen = layers.norm_layer("batch_frozen", 8)
    variables = frozen.init(jax.random.key(0), x)
    assert set(variables) == {"params", "batch_stats"}
    # Frozen: a fixed affine map with the stored statistics (mean 0, var 1 at init).
    np.testing.assert_allclose(frozen.apply(variables, x), x / np.sqrt(1 + 1e-5), rtol=1e-5)
    with pytest.raises(ConfigError, match="model.kwargs.norm"):
        layers.norm_layer("layer", 8)
