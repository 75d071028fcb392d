"""GSD, grouped speculative decoding (arXiv 2508.07747, ICCV 2025; code: junhyukso/GSD).

Many image tokens are visually interchangeable, so GSD tests a dynamic *group* around the draft
instead of the draft alone: tokens within ``rank_window`` ranks of the draft in the target's
order, whose target probability differs from the draft's by less than ``p_gap`` and whose
latent distance to it is below ``max_distance``; accept with ``min(1, sum_G p / sum_G q)``.
The knob maps linearly onto ``p_gap`` (relaxation 0.5 is the paper's 0.15). With a drafter's full
``q`` the group ratio can fall below the draft's own ratio; SpecAR then keeps the draft's own.

Deviation: the paper measures distance between the target's input-embedding rows (threshold
0.5 for Lumina-mGPT); SpecAR uses the tokenizer's code vectors (what ``latent()`` gives for every
family) with a scale-free default threshold, the 5th percentile of all squared code distances.

Ranks order codes by target probability, ties (the codes top-k leaves at zero) by code number. Only
the ``2 * rank_window`` codes ranked next to the draft can join its group, so they are found by
selection (two ``topk`` calls) and only they are compared with the draft, instead of sorting and
comparing the whole vocabulary at every drafted position.
"""

from __future__ import annotations

import weakref

import torch

from ..models.base import ImageTokenModel
from .base import PolicyContext
from .exact import Q_FLOOR
from .relaxed import RelaxedPolicy, check_count, check_range, code_latents, require_model

P_GAP_AT_FULL = 0.3
RANK_WINDOW = 7
DISTANCE_QUANTILE = 0.05
_QUANTILE_SAMPLE = 4096  # codes used to estimate the distance quantile on large vocabularies

_THRESHOLDS: "weakref.WeakKeyDictionary[ImageTokenModel, float]" = weakref.WeakKeyDictionary()


def default_distance(model: ImageTokenModel) -> float:
    """The 5th percentile of squared distances between distinct code vectors (cached per model)."""
    if model not in _THRESHOLDS:
        latents = code_latents(model)[:_QUANTILE_SAMPLE]
        squared = torch.cdist(latents, latents).pow(2)
        off_diagonal = squared[~torch.eye(len(latents), dtype=torch.bool, device=latents.device)]
        _THRESHOLDS[model] = float(off_diagonal.float().quantile(DISTANCE_QUANTILE)) if off_diagonal.numel() else 0.0
    return _THRESHOLDS[model]


class GSDPolicy(RelaxedPolicy):
    name = "gsd"
    parameter_names = ("p_gap_at_full", "rank_window", "max_distance")
    recommended_relaxation = 1.0  # inside plain AR's quality band with Jacobi's drafts (docs/benchmarks.md)
    recommended_with = "Jacobi drafts"
    needs_model = True

    def __init__(
        self,
        relaxation: float = 0.0,
        region: torch.Tensor | None = None,
        model: ImageTokenModel | None = None,
        p_gap_at_full: float = P_GAP_AT_FULL,
        rank_window: int = RANK_WINDOW,
        max_distance: float | None = None,
    ) -> None:
        super().__init__(relaxation, region)
        self.model = require_model(self.name, model)
        self.p_gap_at_full = check_range("GSD probability gap", p_gap_at_full, 0.0, 1.0)
        self.rank_window = check_count("GSD rank window", rank_window, 0, self.model.vocab_size)
        self.max_distance = (
            default_distance(self.model)
            if max_distance is None
            else check_range("GSD latent distance", max_distance, 0.0, float("inf"))
        )

    def acceptance(
        self, p: torch.Tensor, q: torch.Tensor, tokens: torch.Tensor, ctx: PolicyContext
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        base, px = self.base_ratio(p, q, tokens)
        codes, ranked = rank_neighbours(p, tokens, self.rank_window)
        gap = (self.p_gap_at_full * self.relaxation_at(ctx.positions))[..., None]
        p_near = p.gather(-1, codes)
        latents = code_latents(self.model).to(p.device)
        squared = (latents[codes] - latents[tokens][..., None, :]).pow(2).sum(-1)
        member = ranked & ((p_near - px[..., None]).abs() < gap) & (squared <= self.max_distance)
        qx = q.gather(-1, tokens[..., None]).squeeze(-1)
        group_p = px + (p_near * member).sum(-1)
        group_q = qx + (q.gather(-1, codes) * member).sum(-1)
        grouped = (group_p / group_q.clamp_min(Q_FLOOR)).clamp_max(1.0)
        size = 1 + member.sum(-1)  # the draft itself always belongs
        # With a point-mass draft (Jacobi, as in the paper) sum_G q = q(x) and the group only adds mass; with a
        # drafter's full q the group's ratio can fall below the draft's own, and a relaxation must never lower it.
        return torch.where(size > 1, torch.maximum(grouped, base), base), {"group_size": size.float()}


def rank_neighbours(p: torch.Tensor, tokens: torch.Tensor, window: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The codes ranked within ``window`` places of each drafted token in ``p [..., V]``, ``[..., 2 * window]``,
    and whether each slot holds one (a draft ranked near the top or the bottom has fewer neighbours).

    Ranks order codes by probability, ties by code number: each code gets a distinct integer key, its
    probability's bit pattern (which orders non-negative floats as their values) then its place.
    """
    V = p.shape[-1]
    if window == 0:
        empty = tokens[..., None][..., :0]
        return empty, empty.bool()
    bits = (p.float() + 0.0).view(torch.int32)  # + 0.0 turns a -0.0 into 0.0
    keys = bits.long().mul_(V).add_(torch.arange(V - 1, -1, -1, device=p.device))  # larger key: ranked first
    own = keys.gather(-1, tokens[..., None])
    last, first = torch.iinfo(torch.long).max, torch.iinfo(torch.long).min
    above = keys.masked_fill(keys <= own, last).topk(window, -1, largest=False)
    below = keys.masked_fill_(keys >= own, first).topk(window, -1, largest=True)  # keys are not needed again
    codes = torch.cat([above.indices, below.indices], -1)
    return codes, torch.cat([above.values != last, below.values != first], -1)
