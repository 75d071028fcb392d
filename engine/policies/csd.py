"""CSD, content-aware speculative decoding (arXiv 2606.27829, ICML 2026; code: aderfebr/CSD).

Acceptance is raised in proportion to the target's entropy, but only where the draft
distribution is already close to the target's: ``min(1, a + lambda * H(p) * [TV(p, q) < tau])``.
Uncertain, low-detail regions (smooth backgrounds) are accepted more readily; a misaligned draft
gets no relaxation. The knob maps linearly onto lambda (``relaxation 0.5`` is the released 0.5).
"""

from __future__ import annotations

import torch

from .base import PolicyContext
from .relaxed import RelaxedPolicy, check_range

LAMBDA_AT_FULL = 1.0  # lambda at relaxation 1
TV_THRESHOLD = 0.65  # the released code's tau
P_FLOOR = 1e-10


def entropy(p: torch.Tensor) -> torch.Tensor:
    """Entropy in nats of each distribution along the last axis."""
    return -(p * p.clamp_min(P_FLOOR).log()).sum(-1)


def total_variation(p: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
    return 0.5 * (p - q).abs().sum(-1)


class CSDPolicy(RelaxedPolicy):
    name = "csd"
    parameter_names = ("lambda_at_full", "tv_threshold")
    # No measured CSD setting stays in plain AR's quality band on the demo (docs/benchmarks.md); 0.1 is the mildest
    # measured
    recommended_relaxation = 0.1

    def __init__(
        self,
        relaxation: float = 0.0,
        region: torch.Tensor | None = None,
        lambda_at_full: float = LAMBDA_AT_FULL,
        tv_threshold: float = TV_THRESHOLD,
    ) -> None:
        super().__init__(relaxation, region)
        self.lambda_at_full = check_range("CSD lambda", lambda_at_full, 0.0, 100.0)
        self.tv_threshold = check_range("CSD TV threshold tau", tv_threshold, 0.0, 1.0)

    def acceptance(
        self, p: torch.Tensor, q: torch.Tensor, tokens: torch.Tensor, ctx: PolicyContext
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        base, _ = self.base_ratio(p, q, tokens)
        h, tv = entropy(p), total_variation(p, q)
        boost = self.lambda_at_full * self.relaxation_at(ctx.positions) * h * (tv < self.tv_threshold)
        return (base + boost).clamp_max(1.0), {"entropy": h, "tv": tv}
