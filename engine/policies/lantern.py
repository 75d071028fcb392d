"""LANTERN latent-proximity acceptance (arXiv 2410.03355, ICLR 2025) with the LANTERN++ bound
(arXiv 2502.06352); code: jadohu/LANTERN.

Image tokens whose code vectors are close look alike, so the target's mass on the draft's latent
neighbours is moved onto the draft: ``p~(x) = p(x) + C``, where ``C`` is the largest cumulative
mass of x's nearest neighbours (in code-vector distance, at most ``neighbours`` of them: see
:func:`default_neighbours`) that stays
within the total-variation budget ``delta`` (and, for LANTERN++, within ``(lambda - 1) * p(x)``).
The test is then ``min(1, p~(x)/q(x))``. The knob maps linearly onto delta.
"""

from __future__ import annotations

import weakref

import torch

from ..models.base import ImageTokenModel
from .base import PolicyContext
from .exact import Q_FLOOR, token_probs
from .relaxed import RelaxedPolicy, check_count, check_range, code_latents, ratio_bound_option, require_model

DELTA_AT_FULL = 0.5  # delta at relaxation 1 (the paper's default 0.1 is relaxation 0.2)
NEIGHBOURS = 1000  # LANTERN's k for LlamaGen's 16,384 codes ...
NEIGHBOUR_SHARE = 16  # ... at most 1/16 of a codebook, so that on small codebooks "neighbours" stay near


def default_neighbours(vocab_size: int) -> int:
    """LANTERN's k = 1000, but at most a 16th of the codebook (32 of the demo's 512 codes).

    Deviation from the released code, which uses 1000 whatever the codebook: on a 512-code
    codebook that is every other code, the neighbour mass is then any mass at all, and on the
    demo model row-above Jacobi drafts copied whole rows (FID-lite 42.6 against 19.0 with 31
    neighbours at relaxation 0.25, 200 images).
    """
    return max(1, min(NEIGHBOURS, vocab_size // NEIGHBOUR_SHARE))


_TABLES: "weakref.WeakKeyDictionary[ImageTokenModel, dict[int, torch.Tensor]]" = weakref.WeakKeyDictionary()


def neighbour_table(model: ImageTokenModel, k: int) -> torch.Tensor:
    """``[V, k]``: each code's k nearest other codes by code-vector distance, nearest first (cached)."""
    tables = _TABLES.setdefault(model, {})
    table = tables.get(k)
    if table is None or table.device != model.device:
        latents = code_latents(model)
        distances = torch.cdist(latents, latents)
        distances.fill_diagonal_(float("inf"))  # a code is not its own neighbour
        table = distances.topk(k, dim=-1, largest=False).indices
        tables[k] = table
    return table


class LanternPolicy(RelaxedPolicy):
    name = "lantern"
    parameter_names = ("delta_at_full", "neighbours", "ratio_bound")
    recommended_relaxation = 0.75  # inside plain AR's quality band with the drafter's chains (docs/benchmarks.md)
    recommended_with = "a drafter model's chains of 6"
    needs_model = True

    def __init__(
        self,
        relaxation: float = 0.0,
        region: torch.Tensor | None = None,
        model: ImageTokenModel | None = None,
        delta_at_full: float = DELTA_AT_FULL,
        neighbours: int | None = None,
        ratio_bound: float | None = None,
    ) -> None:
        super().__init__(relaxation, region)
        self.model = require_model(self.name, model)
        self.delta_at_full = check_range("LANTERN delta", delta_at_full, 0.0, 1.0)
        wanted = (
            default_neighbours(self.model.vocab_size)
            if neighbours is None
            else check_count("LANTERN neighbours", neighbours, 1, 10**7)
        )
        self.neighbours = min(wanted, self.model.vocab_size - 1)
        self.ratio_bound = ratio_bound_option(self.name, ratio_bound)

    def acceptance(
        self, p: torch.Tensor, q: torch.Tensor, tokens: torch.Tensor, ctx: PolicyContext
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        base, px = self.base_ratio(p, q, tokens)
        near = neighbour_table(self.model, self.neighbours).to(p.device)[tokens]  # [B, m, k]
        cumulative = p.gather(-1, near).cumsum(-1)
        budget = (self.delta_at_full * self.relaxation_at(ctx.positions))[..., None]
        allowed = cumulative <= budget
        if self.ratio_bound is not None:
            allowed &= cumulative <= (self.ratio_bound - 1.0) * px[..., None]
        moved = torch.where(allowed, cumulative, 0.0).amax(-1)  # C is non-decreasing: the largest allowed
        relaxed = ((px + moved) / token_probs(q, tokens).clamp_min(Q_FLOOR)).clamp_max(1.0)
        return torch.where(moved > 0, relaxed, base), {"neighbour_mass": moved}
