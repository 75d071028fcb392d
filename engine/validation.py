"""Checks of the numbers a user passes in (settings, option values), each failing with a
:class:`SettingsError` that names the field and the allowed range.

NaN compares false with everything, so a plain ``x < 0`` check lets it through and sampling then
turns it into silent garbage; these checks test finiteness and type first.
"""

from __future__ import annotations

import math

from .errors import SettingsError, SpecARError

SEED_RANGE = (-(2**63), 2**64 - 1)  # what torch.Generator.manual_seed accepts


def finite_number(
    name: str,
    value: object,
    low: float | None = None,
    high: float | None = None,
    error: type[SpecARError] = SettingsError,
) -> float:
    """``value`` as a float if it is a finite real number in ``[low, high]``; else ``error`` (a setting's by
    default, a checkpoint's for config files)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise error(f"{name} must be a number, got {value!r}")
    if not math.isfinite(value):
        raise error(f"{name} must be a finite number, got {value}")
    if (low is not None and value < low) or (high is not None and value > high):
        raise error(f"{name} must be in [{_bound(low)}, {_bound(high)}], got {value}")
    return float(value)


def positive_number(name: str, value: object, error: type[SpecARError] = SettingsError) -> float:
    """``value`` as a float if it is finite and above 0."""
    if finite_number(name, value, error=error) <= 0:
        raise error(f"{name} must be > 0, got {value}")
    return float(value)  # finite_number checked it is a real number


def whole_number(
    name: str, value: object, low: int | None = None, high: int | None = None, error: type[SpecARError] = SettingsError
) -> int:
    """``value`` if it is an integer (not a bool, not a float) in ``[low, high]``."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise error(f"{name} must be a whole number, got {value!r}")
    if (low is not None and value < low) or (high is not None and value > high):
        raise error(f"{name} must be in [{_bound(low)}, {_bound(high)}], got {value}")
    return value


def seed(value: object) -> int:
    return whole_number("seed", value, *SEED_RANGE)


def _bound(value: float | None) -> str:
    return "any" if value is None else f"{value:g}" if isinstance(value, float) else str(value)
