"""Checks of config values, shared so that models and data fail the same way before any data is read."""

from __future__ import annotations

import string
from typing import Any

from medlm.errors import ConfigError


def check_number(value: Any, key: str, kind: type | tuple[type, ...], low: float, low_ok: bool = True,
                 high: float | None = None) -> None:
    """``value`` is a ``kind`` (not a bool) within [low or (low, high): else a ConfigError naming ``key``."""
    ok = isinstance(value, kind) and not isinstance(value, bool)
    if ok:
        ok = (value >= low if low_ok else value > low) and (high is None or value < high)
    if not ok:
        bound = f"{'>=' if low_ok else '>'} {low}" + (f" and < {high}" if high is not None else "")
        raise ConfigError(f"{key} must be a{'n integer' if kind is int else ' number'} {bound}, got {value!r}")


def template_fields(template: str, key: str) -> set[str]:
    """The ``{field}`` names a format template uses; a malformed template is a ConfigError naming ``key``."""
    try:
        return {f for _, f, _, _ in string.Formatter().parse(template) if f is not None}
    except ValueError as err:
        raise ConfigError(f"{key}: {err} in {template!r} (write literal braces as {{{{ and }}}})") from None
