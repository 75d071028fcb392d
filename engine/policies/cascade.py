"""CASCADE: context-aware relaxation from the target's hidden states (Chen et al., arXiv 2605.07230).

The paper observes two redundancies of the target's last-layer states over a draft tree:
*semantic interchangeability* across siblings (different tokens that leave the target in almost
the same state) and *semantic convergence* along depth (consecutive states that barely change,
i.e. smooth, low-information regions). Only the abstract and figure captions were available, so
the rule is our reconstruction, with the choices below and its two thresholds as named parameters
(docs/methods.md).

A node is accepted on the target mass of a *group* of codes, with group-level speculative
sampling (the test and residual of :class:`ClusterPolicy`): every group keeps the target's mass,
only which member is drawn may follow the draft. A group holds codes that look alike *and* that
the target embeds alike (``grouping_vectors``), i.e. codes after which the target's state barely
differs, which is the redundancy CASCADE reads; grouping by looks alone let the head swap the
first patch of an object for a look-alike of another colour. (The expert option
``target_alike=0`` groups by looks only; docs/benchmarks.md.) CASCADE decides the groups' sizes
from the states:

* **convergence (depth)** sets how far to relax: where the context leading to a node has
  converged, ``cos(h_parent, h_grandparent) >= tau_seq``, groups are ``converged_group`` codes of
  look-alike neighbours (32), elsewhere ``max_group`` (16): texture, edges and onsets stay tighter.
  The test uses the context's states, not the node's own, so all siblings of a level face one
  partition, which recursive rejection over siblings needs to keep group masses. Roots (whose
  grandparent was committed in an earlier forward) count as not converged.
* **interchangeability (breadth)**: in a converged context, a drafted sibling whose state after
  its token is ``cos(h_node, h_sibling) >= tau_pos`` merges its group into the node's, so the node
  is tested on both groups' mass (the paper's rule, ``p~(x_v) = p(x_v) + p(x_s)``, lifted to groups).
* **evidence guard** (SpecAR's own; under CFG): inside an accepted group the draft picks the code, and a
  code whose condition evidence lies more than ``evidence_margin`` (0.5) nats below its group's is tested on
  its own mass (:class:`ClusterPolicy`). The guard gives back the class evidence a small drafter's
  generic picks cost, which is what lets the groups hold 16/32 codes. Without CFG there is no
  evidence and no guard; relax 0.75 then gives groups of 8/16.
* **ratio bound** (LANTERN++'s lambda, 8): a code of an accepted group is accepted at most ``lambda p(x)/q(x)``,
  so no code is emitted much more often than the target would emit it.

Why groups rather than moving only drafted siblings' mass: a dynamic tree's siblings are all the
mass a level can ever accept, and the exact rule already reaches it, so that rule gains little;
accepting whole converged nodes outright truncates objects. The knob maps linearly: at ``r`` the thresholds are
``1 - r (1 - tau_at_full)`` and the group sizes ``2^round(r log2 size)``; at 0 every code is its own
group and nothing merges, bit for bit the exact test. Without tree states (chains) it is exact.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ..errors import SettingsError
from ..models.base import ImageTokenModel
from .base import PolicyContext
from .clusters import ClusterPolicy
from .relaxed import check_range

TAU_POS_AT_FULL = 0.95  # on the demo target 18% of top-4 alternatives have cos >= 0.95 (58% >= 0.9)
TAU_SEQ_AT_FULL = 0.9  # median cosine of consecutive demo states is 0.94
MAX_GROUP = 16  # codes per group at relax 1 where the context has not converged
CONVERGED_GROUP = 32  # codes per group in converged contexts at relax 1
# Under CFG a code whose condition evidence lies more than this many nats below its group's is tested on its
# own mass (ClusterPolicy's evidence guard); without CFG there is nothing to read and the guard is off.
EVIDENCE_MARGIN = 0.5
# A code inside an accepted group is accepted at most this many times its exact test's ratio (LANTERN++'s lambda):
# the drafter's pick inside a group is where the groups' quality cost lies (docs/benchmarks.md: trees).
RATIO_BOUND = 8.0


class CascadePolicy(ClusterPolicy):
    name = "cascade"
    groups_target_alike = True  # codes that look alike and that the target embeds alike (redundant for the target)
    needs_tree_states = True  # the verifier hands over node, parent, grandparent and sibling states
    default_evidence_margin = EVIDENCE_MARGIN
    default_ratio_bound = RATIO_BOUND
    recommended_relaxation = 1.0
    recommended_with = "a drafter model's deep static tree"

    def __init__(
        self,
        relaxation: float = 0.0,
        region: torch.Tensor | None = None,
        model: ImageTokenModel | None = None,
        tau_pos_at_full: float = TAU_POS_AT_FULL,
        tau_seq_at_full: float = TAU_SEQ_AT_FULL,
        max_group: float = MAX_GROUP,
        converged_group: float = CONVERGED_GROUP,
        ratio_bound: float | None = None,
        plausible_share: float = 0.0,
        target_alike: float | None = None,
        evidence_margin: float | None = None,
    ) -> None:
        super().__init__(
            relaxation, region, model, max_group, ratio_bound, plausible_share, target_alike, evidence_margin
        )
        self.tau_pos_at_full = check_range("CASCADE tau_pos", tau_pos_at_full, -1.0, 1.0)
        self.tau_seq_at_full = check_range("CASCADE tau_seq", tau_seq_at_full, -1.0, 1.0)
        if converged_group < max_group:
            raise SettingsError(f"CASCADE converged_group ({converged_group}) must be at least max_group ({max_group})")
        self.converged_levels = self.group_levels_of("converged_group", converged_group)

    def parameters(self) -> dict[str, float | None]:
        return {
            **super().parameters(),
            "converged_group": float(1 << self.converged_levels),
            "tau_pos_at_full": self.tau_pos_at_full,
            "tau_seq_at_full": self.tau_seq_at_full,
        }

    def _thresholds(self, ctx: PolicyContext) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Relaxation strength ``[B, m]`` and the two cosine thresholds there."""
        strength = self.relaxation_at(ctx.positions)
        return (strength, 1.0 - strength * (1.0 - self.tau_pos_at_full), 1.0 - strength * (1.0 - self.tau_seq_at_full))

    def convergence(self, ctx: PolicyContext) -> torch.Tensor | None:
        """``cos(h_parent, h_grandparent)`` ``[B, m]`` (NaN where unknown); ``None`` without tree states."""
        if ctx.parent_hidden is None or ctx.grandparent_hidden is None:
            return None
        return F.cosine_similarity(ctx.parent_hidden.float(), ctx.grandparent_hidden.float(), dim=-1)

    def _grouping(
        self, tokens: torch.Tensor, ctx: PolicyContext
    ) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
        """Group ids ``[B, m, V]`` of each tested node, which siblings ``[B, m, K]`` merged into its group and
        the convergence cosine ``[B, m]`` (both ``None`` without tree states: then every code is its own group)."""
        convergence = self.convergence(ctx)
        if convergence is None:
            return self.ids_at(torch.zeros_like(ctx.positions)), None, None
        strength, tau_pos, tau_seq = self._thresholds(ctx)
        converged = (strength > 0) & (convergence >= tau_seq)  # NaN (roots) compares False
        levels = torch.where(converged, self.converged_levels, self.levels)
        groups = self.ids_at(torch.round(strength * levels).long())
        if ctx.hidden is None or ctx.siblings is None or ctx.sibling_hidden is None:
            return groups, None, convergence
        similarity = F.cosine_similarity(ctx.hidden.float()[:, :, None], ctx.sibling_hidden.float(), dim=-1)
        merge = converged[..., None] & (ctx.siblings >= 0) & (similarity >= tau_pos[..., None])
        own = groups.gather(-1, tokens[..., None])  # [B, m, 1]
        sibling_groups = groups.gather(-1, ctx.siblings.clamp(min=0))
        absorbed = ((groups[..., None] == sibling_groups[..., None, :]) & merge[..., None, :]).any(-1)
        return torch.where(absorbed, own, groups), merge, convergence

    def group_ids(self, tokens: torch.Tensor, ctx: PolicyContext) -> torch.Tensor:
        return self._grouping(tokens, ctx)[0]

    def uniform_level(self) -> int | None:
        return None  # groups follow the tree's states node by node

    def acceptance(
        self, p: torch.Tensor, q: torch.Tensor, tokens: torch.Tensor, ctx: PolicyContext
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        groups, merge, convergence = self._grouping(tokens, ctx)
        alpha, info = self.accept_in_groups(p, q, tokens, groups, ctx)
        if merge is not None and convergence is not None:
            info = {**info, "interchangeable": merge.sum(-1).float(), "convergence": convergence}
        return alpha, info
