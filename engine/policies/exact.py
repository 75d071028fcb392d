"""Lossless speculative sampling (Leviathan et al. 2023, arXiv 2211.17192; Chen et al. 2023,
arXiv 2302.01318).

Accept ``x ~ q`` with probability ``min(1, p(x)/q(x))``; after a rejection draw from
``norm(max(0, p - q))``. The emitted token is then distributed exactly as ``p``, whatever ``q``
is. Point-mass drafts (one-hot ``q``) reduce to accepting with ``p(x)`` and removing ``x`` from
``p`` on rejection, and under greedy settings (``p`` one-hot on the argmax) the rule accepts a
draft exactly when it equals the target's argmax.
"""

from __future__ import annotations

import torch

from ..errors import SettingsError
from ..sampling import Q_FLOOR, residual
from .base import AcceptancePolicy, PolicyContext


def token_probs(dist: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
    """``dist[..., tokens]``: the probability of each token under its own row."""
    return dist.gather(-1, tokens.unsqueeze(-1)).squeeze(-1)


def exact_ratio(p: torch.Tensor, q: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
    """``min(1, p(x)/q(x))`` for every drafted token: the lossless acceptance probability."""
    x = tokens.unsqueeze(-1)
    return (p.gather(-1, x) / q.gather(-1, x).clamp_min(Q_FLOOR)).clamp_max_(1.0).squeeze(-1)


class ExactPolicy(AcceptancePolicy):
    name = "exact"
    lossless = True

    def __init__(self, relaxation: float = 0.0, region: torch.Tensor | None = None) -> None:
        if relaxation != 0.0:
            raise SettingsError(
                f"the exact policy is lossless and has nothing to relax (relaxation {relaxation}); "
                "set relaxation to 0 or choose a relaxed policy"
            )
        super().__init__(0.0, region)

    def acceptance(
        self, p: torch.Tensor, q: torch.Tensor, tokens: torch.Tensor, ctx: PolicyContext
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        return exact_ratio(p, q, tokens), {}

    def residual(self, p: torch.Tensor, q: torch.Tensor, tokens: torch.Tensor, ctx: PolicyContext) -> torch.Tensor:
        return residual(p, q)
