"""Field checks shared by the model modules: one-line `ConfigError`s naming the field."""

from __future__ import annotations

from typing import Any

import jax.numpy as jnp

from dpjax.errors import ConfigError


def positive_int(field: str, value: Any) -> None:
    """Refuses anything but an int >= 1 (bools too) for the config path `field`."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ConfigError(f"Expected {field} to be a positive integer, got {value!r}.")


def one_of(field: str, value: Any, allowed: tuple) -> None:
    if value not in allowed:
        raise ConfigError(f"Expected {field} in {allowed}, got {value!r}.")


def float_dtype(value: Any) -> None:
    """Refuses computation dtypes other than float32, bfloat16 and float16."""
    try:
        ok = jnp.dtype(value) in (jnp.float32, jnp.bfloat16, jnp.float16)
    except TypeError:
        ok = False
    if not ok:
        raise ConfigError(f"Expected model.dtype in ('float32', 'bfloat16', 'float16'), "
                          f"got {value!r}.")
