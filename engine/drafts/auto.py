"""Draft length and source chosen by cost: the most committed tokens per second, not per forward.

Every target forward, :class:`AutoDrafts` picks one arm, a draft source (Jacobi with row-above
initialisation, always; the drafter model when one is given) and a chain length ``L``, to
maximise

    expected committed tokens / expected seconds
    = (1 + sum_{j<=L} prod_{i<=j} a_i) / (target forward of L + 1 tokens + drafting time)

where ``a_i`` is the source's acceptance rate at depth ``i`` given depth ``i - 1`` was accepted,
counted over this generation's own steps (with a weak prior, and the deepest measured depth
standing in for deeper ones), and the times come from :class:`ForwardCosts`, measured on this
machine once per model, batch size and guidance, the first time a generation asks.

The choice depends on past outcomes and on the measured costs only, never on the drafts it is
about to verify, so the exact policy stays exact: every draft still carries the distribution it
was drawn from. For a fixed machine and session the choice is deterministic, so a seed gives the
same image every time; another machine may measure other costs, choose other lengths, and so draw
another (equally distributed) image from the same seed.
"""

from __future__ import annotations

import time
import weakref
from dataclasses import dataclass, replace
from typing import Callable

import torch

from ..loop import synchronize
from ..models.base import ImageTokenModel
from ..types import DraftBlock
from .base import DecodeState, DraftSource, StepOutcome
from .drafter import DrafterModelDrafts
from .jacobi import JacobiDrafts

CALIBRATION_BLOCKS = (1, 2, 3, 5, 9, 17)  # target block sizes timed (pending token included)
JACOBI_MAX_DRAFTS = CALIBRATION_BLOCKS[-1] - 1
DRAFTER_MAX_DRAFTS = 8
PRIOR_ACCEPTED, PRIOR_REJECTED = 1.2, 0.8  # a weak prior: acceptance 0.6 at depths with no data yet
MEMORY = 0.95  # counts fade by this factor per target forward: acceptance is tracked over the last ~20 forwards


def _best_of(call: Callable[[], object], device: torch.device, repeats: int = 3) -> float:
    """Fastest of ``repeats`` timed calls after one untimed call (kernels, allocator, compilation)."""
    best = float("inf")
    for attempt in range(repeats + 1):
        synchronize(device)
        start = time.perf_counter()
        call()
        synchronize(device)
        if attempt:
            best = min(best, time.perf_counter() - start)
    return best


@dataclass(frozen=True)
class ForwardCosts:
    """Seconds of one target forward per block size, and of one drafter step, on this machine."""

    target: dict[int, float]  # block tokens (pending token included) -> seconds
    padded: bool  # blocks run padded to the next measured size (compiled buckets): cost is a step function
    drafter_step: float | None = None

    def target_seconds(self, tokens: int) -> float:
        sizes = sorted(self.target)
        upper = next((s for s in sizes if s >= tokens), sizes[-1])
        if self.padded or upper == tokens or upper == sizes[0]:
            return self.target[upper]
        lower = max(s for s in sizes if s < tokens)
        share = (tokens - lower) / (upper - lower)
        return self.target[lower] + share * (self.target[upper] - self.target[lower])

    def describe(self) -> str:
        one = self.target[1]
        blocks = ", ".join(f"{n}: {self.target[n] / one:.2f}x" for n in sorted(self.target) if n > 1)
        text = f"target forward {1000 * one:.2f} ms for 1 token ({blocks} for n tokens)"
        if self.drafter_step is not None:
            text += f", drafter step {1000 * self.drafter_step:.2f} ms ({self.drafter_step / one:.2f}x)"
        return text


# model (target or drafter) -> (batch, guided) -> seconds per block size; weak keys, so a freed
# model takes its measurements along
_MEASURED: "weakref.WeakKeyDictionary[ImageTokenModel, dict[tuple[int, bool], dict[int, float]]]" = \
    weakref.WeakKeyDictionary()


def _block_seconds(model: ImageTokenModel, state: DecodeState, sizes: tuple[int, ...]) -> dict[int, float]:
    """Seconds of one forward of ``sizes`` tokens right after the prefill, the cache rolled back
    after each; measured once per model, batch size and guidance. A block is never cheaper than a
    smaller one, so a size timed slower than a larger one (a hiccup of the machine) takes the larger's time."""
    known = _MEASURED.setdefault(model, {})
    key = (state.batch, state.guided)
    if key not in known:
        dev = state.tokens.device
        cached = state.committed - 1  # host [B]: image tokens in the cache

        def block(size: int) -> None:
            positions = cached.to(dev)[:, None] + torch.arange(size, device=dev)[None, :]
            model.forward(torch.zeros_like(positions), positions)
            model.truncate(cached)

        seconds = {size: _best_of(lambda: block(size), dev) for size in sizes}
        known[key] = {size: min(t for s, t in seconds.items() if s >= size) for size in sizes}
    return known[key]


def measure_costs(state: DecodeState, drafter: ImageTokenModel | None) -> ForwardCosts:
    """The target's block costs and the drafter's one-token step (both caches prefilled)."""
    target = _block_seconds(state.model, state, CALIBRATION_BLOCKS)
    drafter_step = _block_seconds(drafter, state, (1,))[1] if drafter is not None else None
    return ForwardCosts(target, state.model.pads_blocks, drafter_step)


class _DepthAcceptance:
    """Counts of drafts examined and accepted at each chain depth (1-based) of one draft source."""

    def __init__(self, depths: int) -> None:
        self.examined = [0.0] * (depths + 1)
        self.accepted = [0.0] * (depths + 1)

    def fade(self) -> None:
        """Let old outcomes count less, so the estimate follows the image (and an arm that is not
        chosen drifts back to the prior and gets tried again)."""
        self.examined = [MEMORY * n for n in self.examined]
        self.accepted = [MEMORY * n for n in self.accepted]

    def record(self, drafts: int, accepted: torch.Tensor) -> None:
        """``accepted`` [rows] host: drafts accepted per row of a block of ``drafts`` drafts."""
        for a in accepted.tolist():
            for depth in range(1, min(a + 1, drafts) + 1):
                self.examined[depth] += 1
                self.accepted[depth] += depth <= a

    def rates(self) -> list[float]:
        """Estimated conditional acceptance per depth (index 0 unused); depths past the deepest
        with data take that depth's estimate."""
        rates, last = [0.0], PRIOR_ACCEPTED / (PRIOR_ACCEPTED + PRIOR_REJECTED)
        for depth in range(1, len(self.examined)):
            if self.examined[depth] > 0.05:
                last = (self.accepted[depth] + PRIOR_ACCEPTED) / (self.examined[depth] + PRIOR_ACCEPTED + PRIOR_REJECTED)
            rates.append(last)
        return rates


@dataclass
class _Arm:
    """A draft source the chooser can use, its longest chain and what its drafting costs."""

    label: str
    source: DraftSource
    max_drafts: int
    acceptance: _DepthAcceptance
    seconds_per_draft: float  # drafting time per drafted token (0 for Jacobi: its drafts come with the verify)
    used: dict[int, int]  # chain length -> target forwards it was chosen for


class AutoDrafts(DraftSource):
    """Chooses draft source and chain length each target forward by measured cost (module doc)."""

    name = "auto"

    def __init__(self, drafter: ImageTokenModel | None = None, costs: ForwardCosts | None = None) -> None:
        """``costs`` fixes the cost table (reproducible choices on any machine); by default it is measured."""
        super().__init__()
        self.drafter, self.given_costs = drafter, costs
        self.jacobi = JacobiDrafts(JACOBI_MAX_DRAFTS + 1, "row_above")
        self.drafter_drafts = DrafterModelDrafts(drafter, DRAFTER_MAX_DRAFTS) if drafter is not None else None
        self.arms: list[_Arm] = []
        self.costs: ForwardCosts | None = None
        self.plain_steps = 0  # forwards with no draft worth its verify
        self._chosen: tuple[_Arm, int] | None = None

    @property
    def sources(self) -> list[DraftSource]:
        return [self.jacobi] + ([self.drafter_drafts] if self.drafter_drafts is not None else [])

    def begin(self, state: DecodeState) -> None:
        for source in self.sources:
            source.begin(state)
        self.costs = self.given_costs or measure_costs(state, self.drafter)
        self.arms = [_Arm("jacobi-row", self.jacobi, JACOBI_MAX_DRAFTS, _DepthAcceptance(JACOBI_MAX_DRAFTS), 0.0, {})]
        if self.drafter_drafts is not None:
            step = self.costs.drafter_step or 0.0
            self.arms.append(_Arm("drafter", self.drafter_drafts, DRAFTER_MAX_DRAFTS,
                                  _DepthAcceptance(DRAFTER_MAX_DRAFTS), step, {}))

    def choose(self, state: DecodeState) -> tuple[_Arm, int]:
        """The arm and chain length with the most expected committed tokens per second; length 0
        (a plain step) where no draft is expected to pay for its verify."""
        assert self.costs is not None, "begin() first"
        best: tuple[float, _Arm, int] = (1.0 / self.costs.target_seconds(1), self.arms[0], 0)
        for arm in self.arms:
            if arm.source is self.drafter_drafts and not self.drafter_drafts.can_catch_up(state):
                continue
            rates, survive, expected = arm.acceptance.rates(), 1.0, 1.0
            for length in range(1, min(arm.max_drafts, state.max_drafts) + 1):
                survive *= rates[length]
                expected += survive
                seconds = self.costs.target_seconds(length + 1) + length * arm.seconds_per_draft
                if expected / seconds > best[0]:
                    best = (expected / seconds, arm, length)
        return best[1], best[2]

    def propose(self, state: DecodeState) -> DraftBlock:
        arm, length = self.choose(state)
        self._chosen = (arm, length)
        if length == 0:
            self.plain_steps += 1
            return DraftBlock.empty(state.batch, state.model.vocab_size, state.tokens.device)
        arm.used[length] = arm.used.get(length, 0) + 1
        return arm.source.propose(replace(state, max_drafts=length))

    def observe(self, state: DecodeState, outcome: StepOutcome) -> None:
        assert self._chosen is not None
        arm, _ = self._chosen
        for each in self.arms:
            each.acceptance.fade()
        running = state.committed > outcome.committed_before  # rows that were not done already
        accepted = (state.committed - outcome.committed_before - 1)[running]
        if outcome.block.size:
            arm.acceptance.record(outcome.block.size, accepted)
        for source in self.sources:
            source.observe(state, outcome)

    def end(self) -> None:
        for source in self.sources:
            source.end()
        self.forwards = sum(source.forwards for source in self.sources)
        self.seconds = sum(source.seconds for source in self.sources)

    def summary(self) -> str:
        """What was chosen, and the measured costs it was chosen by."""
        if self.costs is None:
            return ""
        parts = []
        for arm in self.arms:
            if arm.used:
                lengths = ", ".join(f"{length} drafts x{count}" for length, count in sorted(arm.used.items()))
                parts.append(f"{arm.label} ({lengths})")
        if self.plain_steps:
            parts.append(f"no drafts x{self.plain_steps}")
        rates = "; ".join(f"{arm.label} acceptance by depth "
                          + " ".join(f"{rate:.2f}" for rate in arm.acceptance.rates()[1:6]) for arm in self.arms)
        return f"auto chose {', '.join(parts) or 'nothing'}; {rates}; {self.costs.describe()}"
