"""Argument checks shared by the experiment modules: a bad option fails naming itself, never later."""

from __future__ import annotations

import operator


def as_int(name: str, value: object, minimum: int) -> int:
    """Returns ``value`` as an int ≥ ``minimum`` or raises naming the argument (a bool is not a count)."""
    if isinstance(value, bool):
        raise TypeError(f"{name} must be an int, got bool {value!r}")
    try:
        out = operator.index(value)  # type: ignore[arg-type]
    except TypeError:
        raise TypeError(f"{name} must be an int, got {type(value).__name__} {value!r}") from None
    if out < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {out}")
    return out
