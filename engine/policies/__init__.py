"""Acceptance policies, by name. Relaxed policies register here as they land."""

from __future__ import annotations

from typing import Callable

import torch

from ..errors import SettingsError
from .base import AcceptancePolicy, PolicyContext
from .exact import ExactPolicy

POLICIES: dict[str, Callable[..., AcceptancePolicy]] = {
    "exact": ExactPolicy,
}


def make_policy(name: str, relaxation: float = 0.0, region: torch.Tensor | None = None) -> AcceptancePolicy:
    """Policy ``name`` at ``relaxation`` (0..1, 0 = lossless), scaled per token by ``region [B or 1, tokens]``."""
    if name not in POLICIES:
        raise SettingsError(f"unknown acceptance policy {name!r}; available: {', '.join(POLICIES)}")
    return POLICIES[name](relaxation, region)


__all__ = ["AcceptancePolicy", "PolicyContext", "ExactPolicy", "POLICIES", "make_policy"]
