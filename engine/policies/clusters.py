"""Cluster acceptance: grouped speculative sampling over a fixed partition of look-alike codes.

GSD (arXiv 2508.07747) accepts a draft on the summed ratio of a *dynamic* group of interchangeable
tokens and LANTERN (arXiv 2410.03355) moves latent neighbours' mass onto it; both raise acceptance
with the standard residual, which takes the extra acceptance from every token the draft
under-proposes. On the demo model those are mostly the rare, decisive tokens (the first patch of an
object inside a background), which is where their quality cost comes from.

This policy is SpecAR's own variant (not from a paper): the codebook is split once into nested
groups of look-alike codes (balanced median splits along the code vectors' principal direction,
so a group of 2^s codes is the union of two groups of 2^(s-1)), and speculative sampling runs on
the *groups*: a draft ``x`` is accepted with ``min(1, p(G(x)) / q(G(x)))``; a correction draws a
group from ``max(0, p_G - q_G)`` and a code inside it from ``p``. Every group therefore keeps
exactly the target's mass at every position; only which look-alike code inside a group is drawn
may follow the draft. The acceptance rate is ``1 - TV(p_G, q_G)``, the most any rule that keeps
the group masses can reach, and it grows with the group size (coarser groups are unions of finer
ones). The knob picks the group size: ``2^round(relax * log2(max_group))`` codes, 1 (exact) at 0.

On draft trees with point-mass siblings (the dynamic tree) the verifier's recursive rejection then
runs over groups: a sibling is accepted with its group's current mass and a rejection spends the
whole group, so the guarantee holds there too. Siblings sampled without replacement (static trees)
are renormalised per token, not per group, so there it holds only approximately.
"""

from __future__ import annotations

import math
import weakref

import torch

from ..errors import SettingsError
from ..models.base import ImageTokenModel
from ..sampling import residual
from .base import PolicyContext
from .exact import Q_FLOOR, token_probs
from .relaxed import RelaxedPolicy, check_range, code_latents, require_model

MAX_GROUP = 16  # codes per group at relax 1

_RANKS: "weakref.WeakKeyDictionary[ImageTokenModel, torch.Tensor]" = weakref.WeakKeyDictionary()


def nested_order(vectors: torch.Tensor) -> torch.Tensor:
    """A permutation of the rows of ``vectors [V, C]`` in which every aligned block of 2^s rows is a
    group of look-alike vectors: split at the median along the principal direction, recursively."""
    order: list[torch.Tensor] = []
    pending = [torch.arange(len(vectors), device=vectors.device)]
    while pending:
        index = pending.pop()
        if len(index) <= 1:
            order.append(index)
            continue
        block = vectors[index]
        centred = block - block.mean(0, keepdim=True)
        direction = torch.linalg.svd(centred, full_matrices=False).Vh[0]
        ranked = index[torch.argsort(centred @ direction, stable=True)]
        half = 1 << (math.ceil(math.log2(len(index))) - 1)  # keep blocks aligned to powers of two
        pending += [ranked[half:], ranked[:half]]  # the first half is popped (ordered) first
    return torch.cat(order)


def code_ranks(model: ImageTokenModel) -> torch.Tensor:
    """Each code's position in :func:`nested_order` of the model's code vectors ``[V]`` (cached per model)."""
    cached = _RANKS.get(model)
    if cached is None or cached.device != model.device:
        order = nested_order(code_latents(model).cpu())  # thousands of tiny SVDs: cheaper on the host, once
        cached = torch.empty_like(order)
        cached[order] = torch.arange(len(order))
        cached = cached.to(model.device)
        _RANKS[model] = cached
    return cached


class ClusterPolicy(RelaxedPolicy):
    name = "clusters"
    needs_model = True
    # README Pareto table: with a gamma-32 drafter 1.54x (seeds A) and 1.50x (seeds C) the exact chain, inside the AR band.
    recommended_relaxation = 1.0

    def __init__(self, relaxation: float = 0.0, region: torch.Tensor | None = None,
                 model: ImageTokenModel | None = None, max_group: float = MAX_GROUP,
                 ratio_bound: float | None = None) -> None:
        super().__init__(relaxation, region)
        self.levels = self.group_levels_of("max_group", max_group)
        self.ranks = code_ranks(require_model(self.name, model))
        self.ratio_bound = None if ratio_bound is None else check_range(f"{self.name} ratio_bound", ratio_bound, 1.0, 1e6)

    def group_levels_of(self, option: str, size: float) -> int:
        """log2 of a group size option, which must be a power of two."""
        if size < 1 or size != int(size) or int(size) & (int(size) - 1):
            raise SettingsError(f"{self.name} {option} must be a power of two >= 1, got {size}")
        return int(size).bit_length() - 1

    def sibling_groups(self) -> torch.Tensor | None:
        level = round(self.relaxation * self.levels)
        return self.ranks >> level if level > 0 else None

    def group_levels(self, ctx: PolicyContext) -> torch.Tensor:
        """log2 of the group size at each tested token ``[B, m]`` (0: the exact test)."""
        return torch.round(self.relaxation_at(ctx.positions) * self.levels).long()

    def group_ids(self, tokens: torch.Tensor, ctx: PolicyContext) -> torch.Tensor:
        """Group id of every code ``[B, m, V]`` at each tested token (ids are < V)."""
        return self.ids_at(self.group_levels(ctx))

    def ids_at(self, level: torch.Tensor) -> torch.Tensor:
        """Group ids ``[B, m, V]`` for groups of ``2^level [B, m]`` codes."""
        return self.ranks.to(level.device)[None, None, :] >> level[..., None]

    def _code_acceptance(self, p: torch.Tensor, q: torch.Tensor, same: torch.Tensor, px: torch.Tensor,
                         qx: torch.Tensor) -> torch.Tensor:
        """``min(1, p(G)/q(G))`` for codes ``x`` with group members ``same [..., V]``; under a ratio bound
        lambda also at most ``lambda p(x)/q(x)``, lambda times the exact test (LANTERN++'s bound)."""
        p_group, q_group = (p * same).sum(-1), (q * same).sum(-1)
        grouped = (p_group / q_group.clamp_min(Q_FLOOR)).clamp_max(1.0)
        if self.ratio_bound is None:
            return grouped
        return grouped.minimum(self.ratio_bound * px / qx.clamp_min(Q_FLOOR))

    def acceptance(self, p: torch.Tensor, q: torch.Tensor, tokens: torch.Tensor,
                   ctx: PolicyContext) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        return self.accept_in_groups(p, q, tokens, self.group_ids(tokens, ctx))

    def accept_in_groups(self, p: torch.Tensor, q: torch.Tensor, tokens: torch.Tensor,
                         groups: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """:meth:`acceptance` for given group ids ``[B, m, V]``."""
        base, px = self.base_ratio(p, q, tokens)
        same = groups == groups.gather(-1, tokens[..., None])
        relaxed = same.sum(-1) > 1
        grouped = self._code_acceptance(p, q, same, px, token_probs(q, tokens))
        p_group = (p * same).sum(-1)
        return torch.where(relaxed, grouped, base), {"group_mass": torch.where(relaxed, p_group - px, 0.0)}

    def residual(self, p: torch.Tensor, q: torch.Tensor, tokens: torch.Tensor, ctx: PolicyContext) -> torch.Tensor:
        """A group from ``max(0, p_G - A_G)``, where ``A_G`` is the mass acceptance gives group G, and a
        code inside it from ``p`` (without a ratio bound) or from what acceptance left of ``p``: every
        group keeps the target's mass."""
        groups = self.group_ids(tokens[:, None], ctx)[:, 0]  # verifiers hand one tested token per row
        relaxed = (groups == groups.gather(-1, tokens[:, None])).sum(-1) > 1
        p_group = torch.zeros_like(p).scatter_add_(1, groups, p)  # group ids < V: no host sync to size it
        q_group = torch.zeros_like(p_group).scatter_add_(1, groups, q)
        if self.ratio_bound is None:
            accepted, weights = q_group.gather(1, groups).minimum(p_group.gather(1, groups)), p
        else:
            p_own, q_own = p_group.gather(1, groups), q_group.gather(1, groups)
            alpha = (p_own / q_own.clamp_min(Q_FLOOR)).clamp_max(1.0).minimum(self.ratio_bound * p / q.clamp_min(Q_FLOOR))
            given = q * alpha  # mass each code receives from acceptance
            accepted = torch.zeros_like(p).scatter_add_(1, groups, given).gather(1, groups)
            weights = (p - given).clamp_min(0.0)
        excess = (p_group.gather(1, groups) - accepted).clamp_min(0.0)
        weight_group = torch.zeros_like(p).scatter_add_(1, groups, weights).gather(1, groups)
        grouped = excess * weights / weight_group.clamp_min(1e-30)
        total = grouped.sum(-1, keepdim=True)
        grouped = torch.where(total > 0, grouped / total.clamp_min(1e-30), p)
        return torch.where(relaxed[:, None], grouped, residual(p, q))
