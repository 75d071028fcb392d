"""Region masks on the token grid: where an artist allows (or forbids) relaxed acceptance.

A ComfyUI MASK is a pixel map; acceptance policies work per image token. A token covers a
rectangle of pixels, so its weight is the mean of the mask over that rectangle (area average):
a mask painted over half a token relaxes that token half as much.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from .errors import SettingsError


def mask_to_token_weights(mask: torch.Tensor | np.ndarray, grid: tuple[int, int]) -> torch.Tensor:
    """Pixel ``mask [H, W]`` or ``[B, H, W]`` in 0..1 (a tensor or an array) -> per-token weights
    ``[B or 1, h*w]`` in raster order."""
    try:
        mask = torch.as_tensor(mask).float()
    except (TypeError, ValueError, RuntimeError):
        raise SettingsError(f"a region mask must be an array of numbers in 0..1, got {type(mask).__name__}") from None
    if not bool(torch.isfinite(mask).all()):
        raise SettingsError("a region mask must hold finite numbers in 0..1 (it has NaN or infinite values)")
    if mask.dim() == 2:
        mask = mask[None]
    if mask.dim() != 3 or mask.shape[1] < 1 or mask.shape[2] < 1:
        raise SettingsError(f"a region mask must be [H, W] or [B, H, W], got shape {list(mask.shape)}")
    h, w = grid
    weights = F.adaptive_avg_pool2d(mask.float().clamp(0.0, 1.0)[:, None], (h, w))
    return weights.reshape(mask.shape[0], h * w)
