"""The acceptance-policy plug-in interface.

A policy answers two questions, and the shared verifier (:mod:`engine.verify`) does the rest
(left-to-right chains, recursive rejection over tree siblings, bonus tokens, bookkeeping):

1. With what probability is draft token ``x`` (drawn from ``q``) accepted where the target says ``p``?
2. After a rejection, which distribution is the correction drawn from?

Lossless speculative sampling answers ``min(1, p(x)/q(x))`` and ``norm(max(0, p - q))``; relaxed
policies (LANTERN, GSD, CSD, CASCADE) raise the first and keep or adapt the second.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass

import torch


@dataclass
class PolicyContext:
    """Per-node facts a policy may use besides the two distributions."""

    positions: torch.Tensor  # [B, m] image-token index of each tested token
    hidden: torch.Tensor | None = None  # [B, m, D] target hidden states where a policy needs them


class AcceptancePolicy(ABC):
    """Decides acceptance of drafted tokens; see the module docstring."""

    name: str = "policy"
    lossless: bool = False

    @abstractmethod
    def acceptance(self, p: torch.Tensor, q: torch.Tensor, tokens: torch.Tensor,
                   ctx: PolicyContext) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Acceptance probabilities ``[B, m]`` for ``tokens [B, m]`` given the processed target
        ``p [B, m, V]`` and draft ``q [B, m, V]``, plus per-token diagnostics ``{name: [B, m]}``."""

    @abstractmethod
    def residual(self, p: torch.Tensor, q: torch.Tensor, tokens: torch.Tensor,
                 ctx: PolicyContext) -> torch.Tensor:
        """The distribution ``[B, V]`` a correction is drawn from after ``tokens [B]`` was rejected."""
