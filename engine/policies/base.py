"""The acceptance-policy plug-in interface.

A policy answers two questions, and the shared verifier (:mod:`specar.verify`) does the rest
(left-to-right chains, recursive rejection over tree siblings, bonus tokens, bookkeeping):

1. With what probability is draft token ``x`` (drawn from ``q``) accepted where the target says ``p``?
2. After a rejection, which distribution is the correction drawn from?

Lossless speculative sampling answers ``min(1, p(x)/q(x))`` and ``norm(max(0, p - q))``; relaxed
policies (LANTERN, GSD, CSD, CASCADE) raise the first and keep or adapt the second.

Every policy takes one user-facing ``relaxation`` in 0..1 (0 = lossless; each relaxed policy maps it
onto its own knob) and an optional per-token ``region`` weight (from a painted mask, see
:mod:`specar.regions`) that scales it locally: :meth:`AcceptancePolicy.relaxation_at` is the
strength a policy should apply at each tested token.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass

import torch

from ..errors import SettingsError
from ..models.base import ImageTokenModel
from ..types import SamplingSettings


@dataclass
class PolicyContext:
    """Per-node facts a policy may use besides the two distributions."""

    positions: torch.Tensor  # [B, m] image-token index of each tested token
    # Tree verification fills these for policies with ``needs_tree_states`` (CASCADE):
    hidden: torch.Tensor | None = None  # [B, m, D] target state after each tested token
    parent_hidden: torch.Tensor | None = None  # [B, m, D] target state after its parent (the pending token for roots)
    grandparent_hidden: torch.Tensor | None = None  # [B, m, D] state after the parent's parent; NaN for roots (unknown)
    siblings: torch.Tensor | None = None  # [B, m, K] tokens of its siblings, -1 where none (itself excluded)
    sibling_hidden: torch.Tensor | None = None  # [B, m, K, D] target states after those siblings
    # Verification fills this for policies with ``needs_code_evidence`` (the clusters/CASCADE evidence guard):
    evidence: torch.Tensor | None = None  # [B, m, V] log p(code | condition) - log p(code | none) at each tested token


class AcceptancePolicy(ABC):
    """Decides acceptance of drafted tokens; see the module docstring."""

    name: str = "policy"
    lossless: bool = False
    needs_model: bool = False  # make_policy passes the target model (code vectors) to the constructor
    needs_tree_states: bool = False  # tree verification passes node, parent and sibling states (PolicyContext)
    needs_code_evidence: bool = False  # verification passes every code's condition evidence (under CFG)
    parameter_names: tuple[str, ...] = ()  # attributes holding the native parameters (see parameters())
    recommended_relaxation: float = 0.0  # the setting used when none is given (docs/benchmarks.md)
    # the draft source with which that setting kept plain AR's quality on the demo ("" where none did)
    recommended_with: str = ""

    def __init__(self, relaxation: float = 0.0, region: torch.Tensor | None = None) -> None:
        if not 0.0 <= relaxation <= 1.0:
            raise SettingsError(f"relaxation must lie in 0..1 (0 = lossless), got {relaxation}")
        if region is not None and region.dim() != 2:
            raise SettingsError(f"a region must be per-token weights [B or 1, tokens], got shape {list(region.shape)}")
        self.relaxation = relaxation
        self.region = region

    def parameters(self) -> dict[str, float | None]:
        """The native parameters this policy runs with, defaults resolved (``None``: off). A benchmark
        records them, so runs made under different defaults are never read as one setting."""
        values = {name: getattr(self, name) for name in self.parameter_names}
        return {name: None if value is None else float(value) for name, value in values.items()}

    def for_model(self, model: ImageTokenModel) -> "AcceptancePolicy":
        """This policy for the target ``model`` (itself; a policy named before its target is built here)."""
        return self

    def check_sampling(self, settings: SamplingSettings) -> None:
        """Refuse sampling settings this policy cannot work under (before any decoding)."""

    def check_model(self, model: ImageTokenModel) -> None:
        """Refuse a target this policy was not built for: another vocabulary than the model it compares codes
        of (``make_policy(..., model=)``), or a region laid out for another number of tokens."""
        own = getattr(self, "model", None)
        if own is not None and own.vocab_size != model.vocab_size:
            raise SettingsError(
                f"this {self.name} policy was built for {own.name} ({own.vocab_size} codes), not for {model.name} "
                f"({model.vocab_size} codes): build it with model= the target"
            )
        if self.region is not None and self.region.shape[1] != model.num_image_tokens:
            raise SettingsError(
                f"the region has {self.region.shape[1]} token weights but {model.name} draws {model.num_image_tokens}"
            )

    def relaxation_at(self, positions: torch.Tensor) -> torch.Tensor:
        """Relaxation strength ``[B, m]`` at image-token ``positions [B, m]``: the global value
        times the region weight of each token (1 everywhere without a region)."""
        strength = torch.full(positions.shape, self.relaxation, dtype=torch.float32, device=positions.device)
        if self.region is None:
            return strength
        region = self.region.to(positions.device)
        if region.shape[0] == 1:
            region = region.expand(positions.shape[0], -1)
        elif region.shape[0] != positions.shape[0]:
            raise SettingsError(
                f"the region mask has {region.shape[0]} images but the batch has {positions.shape[0]}: "
                "give one mask, or one per image"
            )
        return strength * region.gather(1, positions.clamp(0, region.shape[1] - 1))

    @abstractmethod
    def acceptance(
        self, p: torch.Tensor, q: torch.Tensor, tokens: torch.Tensor, ctx: PolicyContext
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Acceptance probabilities ``[B, m]`` for ``tokens [B, m]`` given the processed target
        ``p [B, m, V]`` and draft ``q [B, m, V]``, plus per-token diagnostics ``{name: [B, m]}``."""

    @abstractmethod
    def residual(self, p: torch.Tensor, q: torch.Tensor, tokens: torch.Tensor, ctx: PolicyContext) -> torch.Tensor:
        """The distribution ``[B, V]`` a correction is drawn from after ``tokens [B]`` was rejected."""

    def sibling_groups(self) -> torch.Tensor | None:
        """Group id of every code ``[V]`` for policies that accept a draft with its whole group's
        mass: a draft tree then offers one sibling per group (see ``TreeHeadDrafts``). ``None``:
        every code is its own group."""
        return None
