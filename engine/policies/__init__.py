"""Acceptance policies, by name: the lossless one and the relaxed (lossy) ones."""

from __future__ import annotations

from typing import Callable

import torch

from ..errors import SettingsError
from ..models.base import ImageTokenModel
from .base import AcceptancePolicy, PolicyContext
from .csd import CSDPolicy
from .exact import ExactPolicy
from .gsd import GSDPolicy
from .lantern import LanternPolicy

POLICIES: dict[str, Callable[..., AcceptancePolicy]] = {
    "exact": ExactPolicy,
    "lantern": LanternPolicy,
    "gsd": GSDPolicy,
    "csd": CSDPolicy,
}


def make_policy(name: str, relaxation: float = 0.0, region: torch.Tensor | None = None,
                model: ImageTokenModel | None = None, **options: float) -> AcceptancePolicy:
    """Policy ``name`` at ``relaxation`` (0..1, 0 = lossless), scaled per token by ``region [B or 1, tokens]``.

    ``model`` (the target) is handed to policies that compare code vectors; ``options`` set a
    policy's native parameters (experts)."""
    if name not in POLICIES:
        raise SettingsError(f"unknown acceptance policy {name!r}; available: {', '.join(POLICIES)}")
    factory = POLICIES[name]
    if getattr(factory, "needs_model", False):
        options = {**options, "model": model}  # type: ignore[dict-item]
    try:
        return factory(relaxation, region, **options)
    except TypeError as exc:
        raise SettingsError(f"the {name} policy does not take {sorted(options)}: {exc}") from exc


__all__ = ["AcceptancePolicy", "PolicyContext", "ExactPolicy", "LanternPolicy", "GSDPolicy", "CSDPolicy",
           "POLICIES", "make_policy"]
