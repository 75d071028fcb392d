"""Acceptance policies, by name. Relaxed policies register here as they land."""

from __future__ import annotations

from typing import Callable

from ..errors import SettingsError
from .base import AcceptancePolicy, PolicyContext
from .exact import ExactPolicy

POLICIES: dict[str, Callable[[], AcceptancePolicy]] = {
    "exact": ExactPolicy,
}


def make_policy(name: str) -> AcceptancePolicy:
    if name not in POLICIES:
        raise SettingsError(f"unknown acceptance policy {name!r}; available: {', '.join(POLICIES)}")
    return POLICIES[name]()


__all__ = ["AcceptancePolicy", "PolicyContext", "ExactPolicy", "POLICIES", "make_policy"]
