"""On-device augmentation: shapes, identity, crop windows, flip rate, determinism."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from dpjax.data import augment
from dpjax.errors import ConfigError

H, W, C = 6, 5, 3


def _image(dtype=np.uint8):
    return jnp.asarray(np.arange(H * W * C).reshape(H, W, C) % 251, dtype)


def test_to_float_and_normalize():
    x = augment.to_float(jnp.asarray([[[0], [51], [255]]], jnp.uint8))
    assert x.dtype == jnp.float32
    np.testing.assert_allclose(np.asarray(x).ravel(), [0.0, 0.2, 1.0])
    y = augment.normalize(jnp.ones((2, 2, 3)), (0.5, 0.0, 1.0), (0.5, 2.0, 1.0))
    np.testing.assert_allclose(np.asarray(y[0, 0]), [1.0, 0.5, 0.0])
    assert augment.normalize(jnp.ones((2, 2, 3)), (0.5,), (0.5,)).shape == (2, 2, 3)
    with pytest.raises(ConfigError, match="dataset.mean"):
        augment.normalize(jnp.ones((2, 2, 1)), (0.5, 0.5, 0.5), (1.0,))
    with pytest.raises(TypeError, match="uint8"):
        augment.to_float(jnp.ones((2, 2, 1)))


def test_identity_when_off():
    image = _image()
    out = augment.random_crop_flip(jax.random.key(0), image, 0, False)
    np.testing.assert_array_equal(out, image)


@pytest.mark.parametrize("pad", [1, 2])
def test_crop_is_a_window_of_the_reflect_padded_image(pad):
    image = _image(np.float32)
    padded = np.pad(np.asarray(image), ((pad, pad), (pad, pad), (0, 0)), mode="reflect")
    windows = {(dy, dx): padded[dy:dy + H, dx:dx + W]
               for dy in range(2 * pad + 1) for dx in range(2 * pad + 1)}
    crop = jax.jit(lambda k: augment.random_crop_flip(k, image, pad, False))
    seen = set()
    for i in range(60):
        out = np.asarray(crop(jax.random.key(i)))
        assert out.shape == (H, W, C)
        matches = [o for o, win in windows.items() if np.array_equal(out, win)]
        assert matches, "crop is not a window of the reflect-padded image"
        seen.update(matches)
    assert len(seen) > len(windows) // 2  # offsets vary over keys


def test_flip_probability_is_about_half():
    image = _image()
    keys = jax.random.split(jax.random.key(1), 2000)
    out = jax.jit(jax.vmap(lambda k: augment.random_crop_flip(k, image, 0, True)))(keys)
    flipped = np.all(np.asarray(out) == np.asarray(image)[:, ::-1], axis=(1, 2, 3))
    same = np.all(np.asarray(out) == np.asarray(image), axis=(1, 2, 3))
    assert np.all(flipped ^ same)
    assert 0.45 < flipped.mean() < 0.55  # 2000 draws: sd of the rate is 0.011


def test_deterministic_per_key_and_jit_matches_eager():
    image = _image()
    f = lambda k: augment.random_crop_flip(k, image, 2, True)
    a, b = f(jax.random.key(7)), jax.jit(f)(jax.random.key(7))
    np.testing.assert_array_equal(a, b)
    others = [f(jax.random.key(i)) for i in range(8)]
    assert any(not np.array_equal(a, o) for o in others)


def test_augmult_views():
    image = _image()
    views = augment.augmult_views(jax.random.key(3), image, 4, 2, True)
    assert views.shape == (4, H, W, C) and views.dtype == image.dtype
    assert len({np.asarray(v).tobytes() for v in views}) > 1
    np.testing.assert_array_equal(views, augment.augmult_views(jax.random.key(3), image, 4, 2,
                                                               True))
    # One view without augmentation is the image itself; batched over examples by vmap.
    np.testing.assert_array_equal(augment.augmult_views(jax.random.key(0), image, 1, 0, False)[0],
                                  image)
    batch = jnp.stack([image, image])
    keys = jax.random.split(jax.random.key(0), 2)
    out = jax.vmap(lambda k, x: augment.augmult_views(k, x, 3, 1, True))(keys, batch)
    assert out.shape == (2, 3, H, W, C)


def test_bad_settings():
    with pytest.raises(ConfigError, match="augment.crop_padding"):
        augment.random_crop_flip(jax.random.key(0), _image(), W, False)
    with pytest.raises(ConfigError, match="augment.crop_padding"):
        augment.random_crop_flip(jax.random.key(0), _image(), -1, False)
    with pytest.raises(ConfigError, match="augmult"):
        augment.augmult_views(jax.random.key(0), _image(), 0, 1, False)
