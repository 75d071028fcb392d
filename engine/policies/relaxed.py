"""What the relaxed policies share: the lossless base ratio, the standard residual, code latents.

Every relaxed policy only *raises* acceptance above the exact ratio ``min(1, p(x)/q(x))``; at
strength 0 it computes exactly that ratio (bit for bit). After a rejection they use the standard
residual ``norm(max(0, p - q))``, which is the total-variation-optimal correction when acceptance
is only raised (cluster acceptance has its own group residual).
"""

from __future__ import annotations

import math
import weakref

import torch

from ..errors import SettingsError
from ..models.base import ImageTokenModel
from ..sampling import residual
from .base import AcceptancePolicy, PolicyContext
from .exact import exact_ratio, token_probs

_LATENTS: "weakref.WeakKeyDictionary[ImageTokenModel, torch.Tensor]" = weakref.WeakKeyDictionary()


def code_latents(model: ImageTokenModel) -> torch.Tensor:
    """Latent vector of every code ``[V, C]`` (float32, on the model's device), computed once per model."""
    cached = _LATENTS.get(model)
    if cached is None or cached.device != model.device:
        codes = torch.arange(model.vocab_size, device=model.device)
        cached = model.latent(codes).float().reshape(model.vocab_size, -1)
        _LATENTS[model] = cached
    return cached


def require_model(name: str, model: ImageTokenModel | None) -> ImageTokenModel:
    if model is None:
        raise SettingsError(f"the {name} policy compares tokens by their code vectors and needs the target model")
    return model


def check_range(name: str, value: float, low: float, high: float) -> float:
    if not low <= value <= high:
        raise SettingsError(f"{name} must lie in {low}..{high}, got {value}")
    return value


def check_count(name: str, value: float, low: int, high: int) -> int:
    """A whole number of things in ``low..high`` (options arrive as floats: 2.0 is 2, 2.5 is refused)."""
    if not float(check_range(name, value, low, high)).is_integer():
        raise SettingsError(f"{name} must be a whole number, got {value}")
    return int(value)


def ratio_bound_option(name: str, value: float | None) -> float | None:
    """LANTERN++'s lambda as every policy takes it: at least 1; ``None`` or ``inf`` switch it off."""
    if value is None:
        return None
    check_range(f"{name} ratio_bound", value, 1.0, math.inf)
    return None if math.isinf(value) else value


class RelaxedPolicy(AcceptancePolicy):
    """Base of the lossy policies: exact ratio underneath, standard residual on rejection."""

    lossless = False

    @staticmethod
    def base_ratio(p: torch.Tensor, q: torch.Tensor, tokens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``min(1, p(x)/q(x))`` exactly as the exact policy computes it, and ``p(x)``."""
        return exact_ratio(p, q, tokens), token_probs(p, tokens)

    def residual(self, p: torch.Tensor, q: torch.Tensor, tokens: torch.Tensor, ctx: PolicyContext) -> torch.Tensor:
        return residual(p, q)
