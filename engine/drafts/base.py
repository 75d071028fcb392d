"""The draft-source plug-in interface and the state the loop shares with it."""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Callable, TypeVar

import torch

from ..models.base import ImageTokenModel
from ..sampling import DistributionProcessor
from ..timing import Clock
from ..types import Conditioning, DraftBlock, SamplingSettings, Verdict


T = TypeVar("T")


@dataclass
class DecodeState:
    """The generation in progress, as draft sources may read it (never write it)."""

    model: ImageTokenModel  # the target
    cond: Conditioning
    guided: bool
    processor: DistributionProcessor  # the target's; drafts use the same settings
    generator: torch.Generator
    tokens: torch.Tensor  # [B, N + 1] committed tokens (column N is scratch), on the model's device
    committed: torch.Tensor  # [B] long on the host: tokens committed per row
    max_drafts: int  # the most drafts any unfinished row can still use this step
    context_hidden: torch.Tensor  # [R, P, D] target states after the condition and the first P - 1 tokens
    sibling_groups: torch.Tensor | None = None  # [V] the policy's code groups (AcceptancePolicy.sibling_groups)
    # [R, C - 1, D] target states at the condition positions before the last one, for a condition of C > 1
    # positions (ModelOutput.condition_hidden of the prefill); None where the condition is one position
    condition_hidden: torch.Tensor | None = None

    @property
    def batch(self) -> int:
        return int(self.tokens.shape[0])

    @property
    def num_tokens(self) -> int:
        return self.model.num_image_tokens


@dataclass
class StepOutcome:
    """What one target forward decided, handed back to the draft source."""

    block: DraftBlock
    verdict: Verdict
    p: torch.Tensor  # [B, n + 1, V] processed target distributions of the forward
    hidden: torch.Tensor  # [R, n + 1, D] target hidden states of the forward
    committed_before: torch.Tensor  # [B] host, committed tokens before this step
    # per row, the drafts it accepted in this step, or None for a row that was done before it (host numbers,
    # read from the step's one sync, for sources that keep their own statistics)
    accepted: list[int | None]


class DraftSource(ABC):
    """Proposes draft blocks; keeps whatever state it needs between target forwards."""

    name: str = "draft"
    # The most drafts one block holds (what a target forward verifies besides the pending token), so the loop
    # can size a step's distributions before the first is allocated; each source sets it from its options.
    largest_block: int = 0

    def __init__(self) -> None:
        self.forwards = 0  # forwards of a separate drafter network, if any
        self.clock = Clock()  # their time; the loop gives a synchronising one when it times precisely

    @property
    def seconds(self) -> float:
        return self.clock.seconds

    def timed(self, call: Callable[[], T]) -> T:
        """Run one forward of the source's own network, counting it and its time."""
        self.forwards += 1
        return self.clock.run(call)

    def prepare(self, model: ImageTokenModel, cond: Conditioning, settings: SamplingSettings) -> None:
        """Called once before the target's prefill, while its cache is free: a source may run the loop
        itself here (auto times its choices)."""

    def begin(self, state: DecodeState) -> None:
        """Called once after the target's prefill committed token 0."""

    @abstractmethod
    def propose(self, state: DecodeState) -> DraftBlock:
        """Drafts for positions ``committed[b], committed[b] + 1, ...`` (at most ``state.max_drafts``)."""

    def observe(self, state: DecodeState, outcome: StepOutcome) -> None:
        """Called after every verified block, once ``state`` holds the newly committed tokens."""

    def end(self) -> None:
        """Release per-generation state (caches)."""

    def summary(self) -> str:
        """A line for the run's stats on choices the source made (empty when it made none)."""
        return ""


def chain(tokens: torch.Tensor, q: torch.Tensor) -> DraftBlock:
    return DraftBlock(tokens, q, list(range(-1, tokens.shape[1] - 1)))
