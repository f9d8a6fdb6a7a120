"""Checks of config values, shared so that models and data fail the same way before any data is
read.

Each raises a ConfigError whose message starts with the key (``model.n_head: ...``), so that a
user sees which setting to change.
"""

from __future__ import annotations

import math
import string
from typing import Any

from medlm.errors import ConfigError


def is_int(value: Any) -> bool:
    """An int that is not a bool (True is an int to Python, never a size to us)."""
    return isinstance(value, int) and not isinstance(value, bool)


def is_number(value: Any) -> bool:
    """An int or a float that is not a bool."""
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def check_number(
    value: Any,
    key: str,
    kind: type | tuple[type, ...],
    low: float,
    low_ok: bool = True,
    high: float | None = None,
) -> None:
    """``value`` is a ``kind`` (not a bool) within [low or (low, high): else a ConfigError naming
    ``key``."""
    ok = isinstance(value, kind) and not isinstance(value, bool)
    if ok:
        ok = (value >= low if low_ok else value > low) and (high is None or value < high)
    if not ok:
        bound = f"{'>=' if low_ok else '>'} {low}" + (f" and < {high}" if high is not None else "")
        raise ConfigError(
            f"{key} must be a{'n integer' if kind is int else ' number'} {bound}, got {value!r}"
        )


def check_positive_int(value: Any, key: str) -> None:
    """A size or a count: an int >= 1."""
    if not (is_int(value) and value >= 1):
        raise ConfigError(f"{key}: {value!r} is not a positive integer")


def check_positive_number(value: Any, key: str, below: float | None = None) -> None:
    """A finite number > 0 (and < ``below`` when given): a scale, an epsilon, a frequency base."""
    ok = is_number(value) and math.isfinite(value) and value > 0
    if not ok or (below is not None and value >= below):
        bound = "" if below is None else f" below {below}"
        raise ConfigError(f"{key}: {value!r} is not a positive number{bound}")


def check_probability(value: Any, key: str) -> None:
    """A dropout rate: a number in [0, 1) (1 would drop everything)."""
    if not (is_number(value) and 0 <= value < 1):
        raise ConfigError(f"{key}: {value!r} is not a probability in [0, 1)")


def check_bool(value: Any, key: str) -> None:
    """A switch: exactly true or false, not a string that YAML or a user meant as one."""
    if not isinstance(value, bool):
        raise ConfigError(f"{key}: {value!r} is not true or false")


def template_fields(template: str, key: str) -> set[str]:
    """The ``{field}`` names a format template uses; a malformed template is a ConfigError naming
    ``key``."""
    try:
        return {f for _, f, _, _ in string.Formatter().parse(template) if f is not None}
    except ValueError as err:
        raise ConfigError(
            f"{key}: {err} in {template!r} (write literal braces as {{{{ and }}}})"
        ) from None
