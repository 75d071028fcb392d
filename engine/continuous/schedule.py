"""MAR's generation schedule: a random order per image, a cosine mask schedule, a linear CFG ramp.

Step ``s`` of ``num_iter`` leaves ``floor(L * cos(pi/2 * (s+1) / num_iter))`` tokens unknown
(at least one until the last step, and always at least one fewer than before), so early steps
predict few tokens and late steps many. The tokens predicted at a step are the next ones of the
image's random order; every image of a batch predicts the same number. Guidance grows linearly
with the share of known tokens (MAR's "linear" CFG schedule).
"""

from __future__ import annotations

import math

import torch

from ..errors import SettingsError

CFG_SCHEDULES = ("linear", "constant")


def unknown_counts(seq_len: int, num_iter: int) -> list[int]:
    """Tokens still unknown before each step, then after the last: ``num_iter + 1`` numbers from L to 0."""
    if not 1 <= num_iter <= seq_len:
        raise SettingsError(f"num_iter (MAR steps) must be in 1..{seq_len} for {seq_len} tokens, got {num_iter}")
    counts = [seq_len]
    for step in range(num_iter):
        if step == num_iter - 1:
            counts.append(0)
            break
        wanted = math.floor(seq_len * math.cos(math.pi / 2 * (step + 1) / num_iter))
        counts.append(max(1, min(counts[-1] - 1, wanted)))
    return counts


def random_orders(batch: int, seq_len: int, generator: torch.Generator) -> torch.Tensor:
    """One random permutation of the positions per image ``[B, L]``; tokens are predicted from its end."""
    return torch.argsort(torch.rand(batch, seq_len, generator=generator, device=generator.device), dim=1)


def cfg_at(cfg_scale: float, schedule: str, unknown_after: int, seq_len: int) -> float:
    """The guidance scale of a step that leaves ``unknown_after`` tokens unknown."""
    if schedule not in CFG_SCHEDULES:
        raise SettingsError(f"cfg schedule must be one of {', '.join(CFG_SCHEDULES)}, got {schedule!r}")
    if schedule == "constant":
        return cfg_scale
    return 1 + (cfg_scale - 1) * (seq_len - unknown_after) / seq_len


class MaskSchedule:
    """The positions each step predicts, for one batch: ``positions(step) -> [B, k]``."""

    def __init__(self, orders: torch.Tensor, num_iter: int) -> None:
        self.orders = orders
        self.counts = unknown_counts(orders.shape[1], num_iter)
        self.num_iter = num_iter

    def positions(self, step: int) -> torch.Tensor:
        return self.orders[:, self.counts[step + 1] : self.counts[step]]

    def unknown_after(self, step: int) -> int:
        return self.counts[step + 1]


__all__ = ["MaskSchedule", "unknown_counts", "random_orders", "cfg_at", "CFG_SCHEDULES"]
