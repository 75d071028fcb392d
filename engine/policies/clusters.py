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

On draft trees the verifier's recursive rejection then runs over groups: a sibling is accepted with
its group's current mass and a rejection spends the whole group, so the guarantee holds there too,
for point-mass siblings (the dynamic tree) and for siblings sampled without replacement (static
trees): the verifier renormalises each sibling's q without the codes already tried, which is the
true q of that sibling, and a later sibling in a spent group is always rejected (tested).
"""

from __future__ import annotations

import math
import weakref

import torch

from ..errors import SettingsError
from ..models.base import ImageTokenModel
from ..types import SamplingSettings
from ..sampling import DIVISOR_FLOOR, MASS_EPSILON, residual
from .base import PolicyContext
from .exact import Q_FLOOR, token_probs
from .relaxed import RelaxedPolicy, check_range, code_latents, ratio_bound_option, require_model

MAX_GROUP = 16  # codes per group at relax 1

_RANKS: "weakref.WeakKeyDictionary[ImageTokenModel, dict[bool, torch.Tensor]]" = weakref.WeakKeyDictionary()


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


EMBEDDING_COMPONENTS = 256  # at most this many principal components of the target's code embeddings are read


def _unit_scale(vectors: torch.Tensor) -> torch.Tensor:
    """Centred rows scaled to unit mean squared norm (so two kinds of vectors weigh alike)."""
    centred = vectors - vectors.mean(0, keepdim=True)
    return centred / centred.pow(2).sum(-1).mean().sqrt().clamp_min(MASS_EPSILON)


def grouping_vectors(model: ImageTokenModel, target_alike: bool) -> torch.Tensor:
    """What the groups are split on, one row per code ``[V, ·]`` on the host: the code vectors (codes
    that *look* alike); with ``target_alike`` also the target's input embeddings of the codes, reduced to
    at most their leading principal components, each part at unit mean squared norm, so the codes of a group
    look alike *and* leave the target in alike states (its state after a code depends on the code only
    through that embedding)."""
    latents = code_latents(model).cpu()
    if not target_alike:
        return latents
    with torch.no_grad():
        codes = torch.arange(model.vocab_size, device=model.device)[None]
        embeddings = _unit_scale(model.embed_codes(codes)[0].float().cpu())
    if embeddings.shape[1] > EMBEDDING_COMPONENTS:  # wide models: split on the leading components, seconds not minutes
        basis = torch.svd_lowrank(embeddings, q=EMBEDDING_COMPONENTS, niter=4, M=None)[2]
        embeddings = embeddings @ basis
    return torch.cat([_unit_scale(latents), _unit_scale(embeddings)], -1)


def code_ranks(model: ImageTokenModel, target_alike: bool = False) -> torch.Tensor:
    """Each code's position in :func:`nested_order` of :func:`grouping_vectors` ``[V]`` (cached per model)."""
    per_model = _RANKS.setdefault(model, {})
    cached = per_model.get(target_alike)
    if cached is None or cached.device != model.device:
        order = nested_order(grouping_vectors(model, target_alike))  # thousands of tiny SVDs: cheaper on the host, once
        cached = torch.empty_like(order)
        cached[order] = torch.arange(len(order))
        cached = cached.to(model.device)
        per_model[target_alike] = cached
    return cached


class ClusterPolicy(RelaxedPolicy):
    name = "clusters"
    needs_model = True
    groups_target_alike = False  # groups of look-alike codes only (see grouping_vectors)
    default_evidence_margin: float | None = None  # no evidence guard unless asked for
    default_ratio_bound: float | None = None  # no ratio bound unless asked for
    recommended_relaxation = 1.0
    recommended_with = "a drafter model's chains of 32"

    def __init__(
        self,
        relaxation: float = 0.0,
        region: torch.Tensor | None = None,
        model: ImageTokenModel | None = None,
        max_group: float = MAX_GROUP,
        ratio_bound: float | None = None,
        plausible_share: float = 0.0,
        target_alike: float | None = None,
        evidence_margin: float | None = None,
    ) -> None:
        super().__init__(relaxation, region)
        self.levels = self.group_levels_of("max_group", max_group)
        if target_alike is not None:  # 1: codes must also leave the target in alike states; 0: looks only
            if target_alike not in (0, 1):
                raise SettingsError(
                    f"{self.name} target_alike must be 0 (group by looks) or 1 (looks and target), got {target_alike}"
                )
            self.groups_target_alike = bool(target_alike)
        self.ranks = code_ranks(require_model(self.name, model), self.groups_target_alike)
        # Without a region every tested token has the same group size; the knob maps onto it as in group_levels
        self.level = int(torch.round(torch.tensor(self.relaxation, dtype=torch.float32) * self.levels))
        # (level, device) -> each code's group, each group's codes and their weights: see _groups_as_blocks
        self._members: dict[tuple[int, torch.device], tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]] = {}
        self.ratio_bound = ratio_bound_option(
            self.name, self.default_ratio_bound if ratio_bound is None else ratio_bound
        )
        self.plausible_share = check_range(f"{self.name} plausible_share", plausible_share, 0.0, 1.0)
        # An evidence margin the user set must be honoured (refused without CFG); the policy's own default
        # is simply off where there is no evidence to read. inf switches the guard off.
        self.evidence_margin_set = evidence_margin is not None
        margin = self.default_evidence_margin if evidence_margin is None else evidence_margin
        if margin is not None:
            check_range(f"{self.name} evidence_margin", margin, 0.0, math.inf)
        self.evidence_margin = None if margin is None or math.isinf(margin) else margin

    @property
    def needs_code_evidence(self) -> bool:
        return self.evidence_margin is not None

    def parameters(self) -> dict[str, float | None]:
        return {
            "max_group": float(1 << self.levels),
            "ratio_bound": self.ratio_bound,
            "plausible_share": self.plausible_share,
            "target_alike": float(self.groups_target_alike),
            "evidence_margin": self.evidence_margin,
        }  # the guard runs under CFG only

    def check_sampling(self, settings: SamplingSettings) -> None:
        if self.evidence_margin is not None and self.evidence_margin_set and not settings.uses_cfg:
            raise SettingsError(
                f"the {self.name} evidence guard reads the target's two guidance halves: "
                "use a CFG scale above 1, or drop evidence_margin"
            )

    def group_levels_of(self, option: str, size: float) -> int:
        """log2 of a group size option, which must be a power of two."""
        if size < 1 or size != int(size) or int(size) & (int(size) - 1):
            raise SettingsError(f"{self.name} {option} must be a power of two >= 1, got {size}")
        return int(size).bit_length() - 1

    def sibling_groups(self) -> torch.Tensor | None:
        return self.ranks >> self.level if self.level > 0 else None

    def uniform_level(self) -> int | None:
        """log2 of the group size at every tested token where nothing varies it (no region), else ``None``.
        Groups of one size are aligned blocks of the nested order, so their masses are block sums."""
        return self.level if self.region is None else None

    def _groups_as_blocks(
        self, level: int, device: torch.device
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """Groups of ``2^level`` codes as blocks of the nested order (made once per size and device): each code's
        group ``[V]``, each group's codes ``[groups, 2^level]`` and, where the vocabulary is not a multiple of
        the group size, each entry's weight (0 for the padding, which repeats the last code), else ``None``."""
        key = (level, device)
        if key not in self._members:
            size = 1 << level
            ranks = self.ranks.to(device)
            order = torch.argsort(ranks)  # the codes in nested order
            pad = -len(order) % size
            members = torch.cat([order, order[-1:].expand(pad)]).view(-1, size)
            weights = (torch.arange(members.numel(), device=device) < len(order)).float().view_as(members)
            self._members[key] = (ranks >> level, members, weights if pad else None)
        return self._members[key]

    def _blocks(self, dist: torch.Tensor, level: int) -> torch.Tensor:
        """``dist [..., V]`` in nested order as ``[..., groups, 2^level]``, one group per block (the last
        group's padding at 0)."""
        _, members, weights = self._groups_as_blocks(level, dist.device)
        blocks = dist.index_select(-1, members.flatten()).unflatten(-1, members.shape)
        return blocks if weights is None else blocks * weights

    def group_levels(self, ctx: PolicyContext) -> torch.Tensor:
        """log2 of the group size at each tested token ``[B, m]`` (0: the exact test)."""
        return torch.round(self.relaxation_at(ctx.positions) * self.levels).long()

    def group_ids(self, tokens: torch.Tensor, ctx: PolicyContext) -> torch.Tensor:
        """Group id of every code ``[B, m, V]`` at each tested token (ids are < V)."""
        return self.ids_at(self.group_levels(ctx))

    def ids_at(self, level: torch.Tensor) -> torch.Tensor:
        """Group ids ``[B, m, V]`` for groups of ``2^level [B, m]`` codes."""
        return self.ranks.to(level.device)[None, None, :] >> level[..., None]

    def _code_acceptance(
        self,
        p_group: torch.Tensor,
        q_group: torch.Tensor,
        p_code: torch.Tensor,
        q_code: torch.Tensor,
        p_best: torch.Tensor | None,
        evidence_gap: torch.Tensor | None,
    ) -> torch.Tensor:
        """Acceptance of codes with target/draft mass ``p_code``/``q_code``, whose groups have masses
        ``p_group``/``q_group`` and whose group's most likely code has target mass ``p_best`` (all one shape;
        ``p_best`` is only read under a plausible share, ``evidence_gap`` under an evidence margin):
        ``min(1, p(G)/q(G))``; under a ratio bound lambda also at most ``lambda p(x)/q(x)`` (LANTERN++'s
        bound); under a plausible share s, a code the target finds less than s times as likely as its
        group's favourite is tested on its own mass, ``min(1, p(G)/q(G), p(x)/q(x))``; under an evidence
        margin m, so is a code whose condition evidence falls more than m below its group's (``evidence_gap``,
        see :meth:`_evidence_gap`). Every acceptance stays <= p(G)/q(G), so the residual can still give each
        group exactly its target mass."""
        grouped = (p_group / q_group.clamp_min(Q_FLOOR)).clamp_max(1.0)
        own = p_code / q_code.clamp_min(Q_FLOOR)
        if self.ratio_bound is not None:
            grouped = grouped.minimum(self.ratio_bound * own)
        if self.plausible_share > 0 and p_best is not None:
            grouped = torch.where(p_code >= self.plausible_share * p_best, grouped, grouped.minimum(own))
        if self.evidence_margin is not None and evidence_gap is not None:
            grouped = torch.where(evidence_gap <= self.evidence_margin, grouped, grouped.minimum(own))
        return grouped

    def _evidence_gap(self, p: torch.Tensor, groups: torch.Tensor, ctx: PolicyContext) -> torch.Tensor | None:
        """How far each code's condition evidence falls below its group's, shaped like ``p`` and ``groups``
        (``[B, m, V]``, or ``[B, V]`` for a residual's one tested token per row): the group's
        target-weighted mean evidence minus the code's (``None`` without an evidence margin).

        Why: inside an accepted group the emitted code follows the draft, and a small drafter's favourite
        look-alike is often a more generic code than the target's (less evidence for the condition). On the
        demo that, not the group masses, is the whole class-evidence cost of group acceptance
        (docs/benchmarks.md). Codes that would lower the condition's evidence by more than the margin
        are therefore tested on their own mass; the rest keep the group test."""
        if self.evidence_margin is None:
            return None
        if ctx.evidence is None:  # no guidance halves to read it from
            if self.evidence_margin_set:
                raise SettingsError(
                    f"the {self.name} evidence guard needs the target's condition evidence from "
                    "the verifier (decode with classifier-free guidance)"
                )
            return None
        evidence = ctx.evidence.to(p.dtype).reshape(p.shape)
        group_p = torch.zeros_like(p).scatter_add_(-1, groups, p)
        group_evidence = torch.zeros_like(p).scatter_add_(-1, groups, p * evidence)
        mean = (group_evidence / group_p.clamp_min(DIVISOR_FLOOR)).gather(-1, groups)
        return mean - evidence

    def acceptance(
        self, p: torch.Tensor, q: torch.Tensor, tokens: torch.Tensor, ctx: PolicyContext
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        level = self.uniform_level()
        if level == 0:  # groups of one code: the exact test
            return self.base_ratio(p, q, tokens)[0], {"group_mass": torch.zeros_like(tokens, dtype=p.dtype)}
        if level is None or self.evidence_margin is not None:
            return self.accept_in_groups(p, q, tokens, self.group_ids(tokens, ctx), ctx)
        return self._accept_in_blocks(p, q, tokens, level)

    def _accept_in_blocks(
        self, p: torch.Tensor, q: torch.Tensor, tokens: torch.Tensor, level: int
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """:meth:`accept_in_groups` for groups of ``2^level`` codes everywhere, reading only each tested token's
        group: its codes are one block of the nested order."""
        members, weights = self._group_members(level, tokens)  # [B, m, 2^level]
        p_members, q_members = p.gather(-1, members), q.gather(-1, members)
        if weights is not None:  # the last group is short of codes: its padding repeats a code, weighted 0
            p_members, q_members = p_members * weights, q_members * weights
        p_group, q_group = p_members.sum(-1), q_members.sum(-1)
        p_best = p_members.amax(-1) if self.plausible_share > 0 else None
        px = token_probs(p, tokens)
        grouped = self._code_acceptance(p_group, q_group, px, token_probs(q, tokens), p_best, None)
        return grouped, {"group_mass": p_group - px}

    def _group_members(self, level: int, tokens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """The codes of each token's group of ``2^level`` ``[..., 2^level]``, and where the vocabulary is not a
        multiple of the group size the weight (1, or 0 for padding) of each entry."""
        group_of, members, weights = self._groups_as_blocks(level, tokens.device)
        groups = group_of.take(tokens).flatten()
        shaped = (*tokens.shape, -1)
        return members.index_select(0, groups).view(shaped), None if weights is None else weights[groups].view(shaped)

    def accept_in_groups(
        self, p: torch.Tensor, q: torch.Tensor, tokens: torch.Tensor, groups: torch.Tensor, ctx: PolicyContext
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """:meth:`acceptance` for given group ids ``[B, m, V]``."""
        base, px = self.base_ratio(p, q, tokens)
        same = groups == groups.gather(-1, tokens[..., None])
        relaxed = same.sum(-1) > 1
        members = p * same
        p_group = members.sum(-1)
        p_best = members.amax(-1) if self.plausible_share > 0 else None  # a [B, m, V] pass only when it is read
        gap = self._evidence_gap(p, groups, ctx)
        gap = None if gap is None else gap.gather(-1, tokens[..., None])[..., 0]
        grouped = self._code_acceptance(p_group, (q * same).sum(-1), px, token_probs(q, tokens), p_best, gap)
        return torch.where(relaxed, grouped, base), {"group_mass": torch.where(relaxed, p_group - px, 0.0)}

    def residual(self, p: torch.Tensor, q: torch.Tensor, tokens: torch.Tensor, ctx: PolicyContext) -> torch.Tensor:
        """A group from ``max(0, p_G - A_G)``, where ``A_G`` is the mass acceptance gives group G, and a
        code inside it from ``p`` (plain group acceptance) or from what acceptance left of ``p`` (under a
        ratio bound, a plausible share or an evidence guard): every group keeps the target's mass."""
        level = self.uniform_level()
        if level == 0:  # groups of one code: the exact residual
            return residual(p, q)
        plain = self.ratio_bound is None and self.plausible_share == 0 and self.evidence_margin is None
        if level is not None and plain:
            return self._residual_in_blocks(p, q, level)
        groups = self.group_ids(tokens[:, None], ctx)[:, 0]  # verifiers hand one tested token per row
        relaxed = (groups == groups.gather(-1, tokens[:, None])).sum(-1) > 1
        p_group = torch.zeros_like(p).scatter_add_(1, groups, p)  # group ids < V: no host sync to size it
        q_group = torch.zeros_like(p_group).scatter_add_(1, groups, q)
        gap = self._evidence_gap(p, groups, ctx)
        if self.ratio_bound is None and self.plausible_share == 0 and gap is None:  # plain min(1, p(G)/q(G))
            accepted, weights = q_group.gather(1, groups).minimum(p_group.gather(1, groups)), p
        else:
            p_best = (
                torch.zeros_like(p).scatter_reduce_(1, groups, p, "amax").gather(1, groups)
                if self.plausible_share > 0
                else None
            )
            alpha = self._code_acceptance(p_group.gather(1, groups), q_group.gather(1, groups), p, q, p_best, gap)
            given = q * alpha  # mass each code receives from acceptance
            accepted = torch.zeros_like(p).scatter_add_(1, groups, given).gather(1, groups)
            weights = (p - given).clamp_min(0.0)
        excess = (p_group.gather(1, groups) - accepted).clamp_min(0.0)
        weight_group = torch.zeros_like(p).scatter_add_(1, groups, weights).gather(1, groups)
        grouped = excess * weights / weight_group.clamp_min(DIVISOR_FLOOR)
        total = grouped.sum(-1, keepdim=True)
        grouped = torch.where(total > 0, grouped / total.clamp_min(DIVISOR_FLOOR), p)
        return torch.where(relaxed[:, None], grouped, residual(p, q))

    def _residual_in_blocks(self, p: torch.Tensor, q: torch.Tensor, level: int) -> torch.Tensor:
        """:meth:`residual` of plain group acceptance for groups of ``2^level`` codes everywhere: each group's
        ``max(0, p_G - q_G)`` spread over its codes as ``p`` is, from block sums."""
        p_blocks = self._blocks(p, level)
        p_group = p_blocks.sum(-1, keepdim=True)
        excess = (p_group - self._blocks(q, level).sum(-1, keepdim=True)).clamp_min(0.0)
        grouped = (excess * p_blocks / p_group.clamp_min(DIVISOR_FLOOR)).flatten(-2)
        grouped = grouped.index_select(-1, self.ranks.to(p.device))  # back to code order (drops the padding)
        total = grouped.sum(-1, keepdim=True)
        return torch.where(total > 0, grouped / total.clamp_min(DIVISOR_FLOOR), p)
