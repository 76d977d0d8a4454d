"""The rules a config field or command-line argument must satisfy, in one place.

Every validator takes the field's name (as the user writes it: `privacy.delta`,
`--canaries`), its value and, optionally, the fix; it returns the value
(converted where that is lossless, e.g. a numpy integer to `int`) or raises
`ConfigError` with one line naming all four:

    Expected privacy.delta=0.5 in (0, 1): lower privacy.delta (it must be below 1/N).

The privacy core (`dpjax.privacy`) uses these too, so this module imports
nothing from dpjax but `errors`.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Iterable, Sequence
from typing import Any

from dpjax.errors import ConfigError


def fail(name: str, value: Any, expected: str, fix: str | None = None) -> None:
    """Raises the one-line `ConfigError`: "Expected NAME=VALUE EXPECTED[: FIX]."."""
    text = f"Expected {name}={value!r} {expected}"
    if fix:
        text += f": {fix.rstrip('.')}"
    raise ConfigError(text + ".")


def is_number(value: Any) -> bool:
    """A real number (int, float or numpy scalar), not a bool."""
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


def is_integer(value: Any) -> bool:
    """An integer (int or numpy integer), not a bool."""
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def _bound(value, none: str) -> str:
    if value is None:
        return none
    if isinstance(value, int) and value >= 2 ** 32 and value & (value - 1) == 0:
        return f"2**{value.bit_length() - 1}"
    return f"{value:g}" if isinstance(value, float) else str(value)


def _interval(low, high, low_open: bool, high_open: bool) -> str:
    left = "(" if low_open or low is None else "["
    right = ")" if high_open or high is None else "]"
    return f"{left}{_bound(low, '-inf')}, {_bound(high, 'inf')}{right}"


def _inside(value, low, high, low_open: bool, high_open: bool) -> bool:
    if low is not None and (value <= low if low_open else value < low):
        return False
    return not (high is not None and (value >= high if high_open else value > high))


def integer(name: str, value: Any, low: int | None = None, high: int | None = None, *,
            high_open: bool = False, fix: str | None = None) -> int:
    """An integer in [low, high] (either end may be None: unbounded)."""
    if not (is_integer(value) and _inside(value, low, high, False, high_open)):
        if low is not None and high is None:
            expected = f">= {low} (an integer)"
        else:
            expected = f"in {_interval(low, high, False, high_open)} (an integer)"
        fail(name, value, expected, fix)
    return int(value)


def positive_int(name: str, value: Any, fix: str | None = None) -> int:
    """An integer >= 1."""
    return integer(name, value, 1, fix=fix)


def non_negative_int(name: str, value: Any, fix: str | None = None) -> int:
    """An integer >= 0."""
    return integer(name, value, 0, fix=fix)


def finite(name: str, value: Any, fix: str | None = None) -> float:
    """A finite real number (not NaN, not ±inf)."""
    if not (is_number(value) and math.isfinite(value)):
        fail(name, value, "to be a finite number", fix)
    return value


def in_range(name: str, value: Any, low: float | None = None, high: float | None = None, *,
             low_open: bool = False, high_open: bool = False, fix: str | None = None) -> float:
    """A finite number in the interval from `low` to `high` (open ends as flagged)."""
    if not (is_number(value) and math.isfinite(value)
            and _inside(value, low, high, low_open, high_open)):
        if high is None and low is not None:
            expected = f"{'>' if low_open else '>='} {low:g} (a finite number)"
        else:
            expected = f"in {_interval(low, high, low_open, high_open)}"
        fail(name, value, expected, fix)
    return value


def positive_finite(name: str, value: Any, fix: str | None = None) -> float:
    """A finite number > 0."""
    return in_range(name, value, 0, low_open=True, fix=fix)


def non_negative_finite(name: str, value: Any, fix: str | None = None) -> float:
    """A finite number >= 0."""
    return in_range(name, value, 0, fix=fix)


def probability(name: str, value: Any, *, allow_zero: bool = False, allow_one: bool = False,
                fix: str | None = None) -> float:
    """A number in (0, 1), with 0 and 1 allowed as flagged."""
    return in_range(name, value, 0.0, 1.0, low_open=not allow_zero, high_open=not allow_one,
                    fix=fix)


def one_of(name: str, value: Any, options: Iterable[Any], fix: str | None = None) -> Any:
    """One of `options`."""
    options = tuple(options)
    if not any(value == o and type(value) is type(o) for o in options):
        fail(name, value, f"to be one of {', '.join(repr(o) for o in options)}", fix)
    return value


def boolean(name: str, value: Any, fix: str | None = None) -> bool:
    """True or False."""
    if not isinstance(value, bool):
        fail(name, value, "to be True or False", fix)
    return value


def numbers_tuple(name: str, value: Any, *, positive: bool = False,
                  fix: str | None = None) -> tuple[float, ...]:
    """A non-empty sequence of finite numbers (each > 0 with `positive`)."""
    ok = (isinstance(value, Sequence) and not isinstance(value, str) and len(value) > 0
          and all(is_number(v) and math.isfinite(v) and (v > 0 or not positive) for v in value))
    if not ok:
        what = "finite numbers > 0" if positive else "finite numbers"
        fail(name, value, f"to be a non-empty tuple of {what}", fix)
    return tuple(float(v) for v in value)


def seed(name: str, value: Any, bits: int = 63) -> int:
    """-1 (draw from OS entropy, the default) or a fixed integer in [0, 2**bits)."""
    if not (is_integer(value) and -1 <= value < 2 ** bits):
        fail(name, value, f"to be -1 (draw from OS entropy, the default) or a fixed integer "
             f"in [0, 2**{bits})", "a fixed seed is for debugging only: whoever knows it "
             "can remove the noise")
    return int(value)


def comma_floats(name: str, text: str, *, positive: bool = False,
                 fix: str | None = None) -> list[float]:
    """A comma-separated list of finite numbers (a command-line argument)."""
    try:
        values = [float(s) for s in str(text).split(",") if s.strip()]
    except ValueError:
        values = []
    if not values or not all(math.isfinite(v) and (v > 0 or not positive) for v in values):
        what = "finite numbers > 0" if positive else "finite numbers"
        fail(name, text, f"to be a comma-separated list of {what} (e.g. 1,2,4)", fix)
    return values
