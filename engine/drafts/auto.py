"""Draft length and source chosen by cost: the most committed tokens per second, not per forward.

Every target forward, :class:`AutoDrafts` picks one arm, a draft source (Jacobi with row-above
initialisation, always; the drafter model when one is given) and a chain length ``L``, or a plain
step, to maximise

    expected committed tokens / expected seconds
    = (1 + sum_{j<=L} prod_{i<=j} a_i) / (target forward of L + 1 tokens + drafting time)

where ``a_i`` is the source's acceptance rate at depth ``i`` given depth ``i - 1`` was accepted,
counted over this generation's recent steps (with a weak prior, and the deepest measured depth
standing in for deeper ones), and the times come from :class:`ForwardCosts`, measured on this
machine once per model, batch size and guidance, the first time a generation asks. The drafter is
timed drafting a real chain, each chain followed by the target's verify of it as in the loop: a
drafter forward timed alone, with its weights warm in the processor's caches, costs a fraction of
what it costs between the target's forwards.

The drafter's drafts are fresh every forward, so any ``L`` up to its longest chain is a candidate.
Jacobi's are not: a window slot gets better only when a forward verifies it (its next draft is
sampled from the target's distribution there), so a short block leaves the rest of the window
unrefined and lowers the acceptance of later blocks. Jacobi therefore runs its whole window or
not at all.

The choice depends on past outcomes and on the measured costs only, never on the drafts it is
about to verify, so the exact policy stays exact: every draft still carries the distribution it
was drawn from. For a fixed machine and session the choice is deterministic, so a seed gives the
same image every time; another machine may measure other costs, choose other lengths, and so draw
another (equally distributed) image from the same seed.
"""

from __future__ import annotations

import weakref
from dataclasses import dataclass, replace

import torch

from ..timing import Clock, fastest
from ..models.base import ImageTokenModel
from ..sampling import make_generator, sample
from ..types import DraftBlock
from .base import DecodeState, DraftSource, StepOutcome
from .drafter import DrafterModelDrafts
from .jacobi import JacobiDrafts

CALIBRATION_BLOCKS = (1, 2, 3, 5, 9, 17)  # target block sizes timed (pending token included)
JACOBI_WINDOW = (
    CALIBRATION_BLOCKS[-1] - 1
)  # drafts per Jacobi block: the window of 16 of the SJD paper, less the pending token
DRAFTER_MAX_DRAFTS = 8
CALIBRATION_ROUNDS = 3  # timed rounds per measured cost: the calibration is part of the first run's time
PRIOR_ACCEPTED, PRIOR_REJECTED = 1.2, 0.8  # a weak prior: acceptance 0.6 at depths with no data yet
MEMORY = 0.95  # counts fade by this factor per target forward: acceptance is tracked over the last ~20 forwards
STINT = 8  # forwards between choices of the draft source


@dataclass(frozen=True)
class ForwardCosts:
    """Seconds of one target forward per block size, and of one draft of the drafter's chain, on this machine."""

    target: dict[int, float]  # block tokens (pending token included) -> seconds
    padded: bool  # blocks run padded to the next measured size (compiled buckets): cost is a step function
    drafter_step: float | None = None  # seconds per draft of a chain, as the loop spends them

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
            text += f", drafter {1000 * self.drafter_step:.2f} ms per draft ({self.drafter_step / one:.2f}x)"
        return text


# model (target or drafter) -> (batch, guided) -> seconds per block size; weak keys, so a freed
# model takes its measurements along
_MEASURED: "weakref.WeakKeyDictionary[ImageTokenModel, dict[tuple[int, bool], dict[int, float]]]" = (
    weakref.WeakKeyDictionary()
)


def _block_seconds(model: ImageTokenModel, state: DecodeState, sizes: tuple[int, ...]) -> dict[int, float]:
    """Seconds of one step of ``sizes`` tokens (the forward, its distributions and a sample from
    them, as a draft or verify step spends them) with half an image of placeholder tokens cached
    (attention over the cache grows through an image; half-way is its mean), the cache rolled back
    after each; measured once per model, batch size and guidance, the sizes taking turns. A block
    is never cheaper than a smaller one, so a size timed slower than a larger one takes the larger's time."""
    known = _MEASURED.setdefault(model, {})
    key = (state.batch, state.guided)
    if key not in known:
        dev = state.tokens.device
        last = state.num_tokens - 1
        scratch = make_generator(0, dev)  # the run's own generator is never drawn from here
        cached = state.committed - 1  # host [B]: image tokens in the cache
        context = max(0, state.num_tokens // 2 - int(cached.min()))
        positions = cached.to(dev)[:, None] + torch.arange(context, device=dev)[None, :]
        model.forward(torch.zeros_like(positions), positions)
        filled = cached + context

        def block(size: int) -> None:
            positions = (filled.to(dev)[:, None] + torch.arange(size, device=dev)[None, :]).clamp(max=last)
            out = model.forward(torch.zeros_like(positions), positions)
            sample(state.processor(out.logits, (positions + 1).clamp(max=last)), scratch)
            model.truncate(filled)

        seconds = fastest({size: (lambda size=size: block(size)) for size in sizes}, dev, CALIBRATION_ROUNDS)
        model.truncate(cached)
        known[key] = {size: min(t for s, t in seconds.items() if s >= size) for size in sizes}
    return known[key]


# drafter -> (batch, guided) -> seconds per draft of a chain; weak keys, as for _MEASURED
_CHAIN_MEASURED: "weakref.WeakKeyDictionary[ImageTokenModel, dict[tuple[int, bool], float]]" = (
    weakref.WeakKeyDictionary()
)


def _chain_seconds_per_draft(drafts: DrafterModelDrafts, state: DecodeState) -> float:
    """Seconds per draft of a real chain of ``drafts.gamma`` drafts (the drafter's forwards, its
    distributions and samples), each chain followed by the target's verify of it as in the loop;
    the verify's own time, timed in turns, is taken off. The drafts are drawn from a scratch
    generator, never the run's; the target's cache is rolled back after each try, and the
    drafter's is by the next chain, which first cuts it back to the tokens verified so far."""
    known = _CHAIN_MEASURED.setdefault(drafts.drafter, {})
    key = (state.batch, state.guided)
    if key not in known:
        model, dev, k = state.model, state.tokens.device, drafts.gamma
        trial = replace(state, generator=make_generator(0, dev), max_drafts=k)
        cached = state.committed - 1  # host [B]: image tokens in the target's cache
        positions = cached.to(dev)[:, None] + torch.arange(k + 1, device=dev)[None, :]

        def verify() -> None:
            model.forward(torch.zeros_like(positions), positions)
            model.truncate(cached)

        def chain_then_verify() -> None:
            drafts.propose(trial)
            verify()

        run_clock, drafts.clock = drafts.clock, Clock()  # trials are not the run's drafting time
        seconds = fastest({"verify": verify, "chain": chain_then_verify}, dev, CALIBRATION_ROUNDS)
        drafts.clock = run_clock
        known[key] = max(seconds["chain"] - seconds["verify"], 0.0) / k
    return known[key]


def measure_costs(state: DecodeState, drafter: DrafterModelDrafts | None) -> ForwardCosts:
    """The target's block costs and the drafter's cost per draft (both caches prefilled)."""
    target = _block_seconds(state.model, state, CALIBRATION_BLOCKS)
    per_draft = _chain_seconds_per_draft(drafter, state) if drafter is not None else None
    return ForwardCosts(target, state.model.pads_blocks, per_draft)


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
                last = (self.accepted[depth] + PRIOR_ACCEPTED) / (
                    self.examined[depth] + PRIOR_ACCEPTED + PRIOR_REJECTED
                )
            rates.append(last)
        return rates


class _Arm:
    """A draft source the chooser can use: what it is expected to commit, at what cost."""

    label = ""

    def __init__(self, source: DraftSource) -> None:
        self.source = source
        self.used: dict[int, int] = {}  # chain length -> target forwards it drafted

    def plan(self, state: DecodeState, costs: ForwardCosts) -> tuple[float, int]:
        """Expected committed tokens per second at the best chain length, and that length."""
        raise NotImplementedError

    def record(self, drafts: int, accepted: torch.Tensor) -> None:
        """One block of ``drafts`` drafts it proposed; ``accepted [rows]`` host, per running row."""

    def fade(self) -> None:
        """A target forward went by: older outcomes count for less."""

    def start(self, state: DecodeState) -> None:
        """A stint of this arm begins (it saw none of the blocks since its last one)."""


class _JacobiArm(_Arm):
    """Row-above Jacobi at its whole window; expected yield = the recent mean of accepted drafts per block."""

    label = "jacobi-row"
    PRIOR = 3.0  # accepted drafts per block before any was measured, and where an unused estimate drifts back to
    WARMUP = 2  # blocks after a stint starts that refine the window and are not counted

    def __init__(self, source: JacobiDrafts) -> None:
        super().__init__(source)
        self.window = source.slots
        self.mean_accepted = self.PRIOR
        self.since_start = 0

    def plan(self, state: DecodeState, costs: ForwardCosts) -> tuple[float, int]:
        length = min(self.window, state.max_drafts)
        expected = 1 + min(self.mean_accepted, length)
        return expected / costs.target_seconds(length + 1), length

    def record(self, drafts: int, accepted: torch.Tensor) -> None:
        self.since_start += 1
        if len(accepted) and self.since_start > self.WARMUP:
            self.mean_accepted += 0.25 * (float(accepted.float().mean()) - self.mean_accepted)

    def fade(self) -> None:
        self.mean_accepted += (1 - MEMORY) * (self.PRIOR - self.mean_accepted)

    def start(self, state: DecodeState) -> None:
        """The window starts afresh: the blocks other arms drafted were not its own to refine."""
        self.since_start = 0
        self.source.begin(state)


class _DrafterArm(_Arm):
    """The drafter model at any chain length; acceptance modelled per depth (its drafts are fresh each block)."""

    label = "drafter"

    def __init__(self, source: DrafterModelDrafts, seconds_per_draft: float) -> None:
        super().__init__(source)
        self.drafter = source
        self.acceptance = _DepthAcceptance(DRAFTER_MAX_DRAFTS)
        self.seconds_per_draft = seconds_per_draft

    def plan(self, state: DecodeState, costs: ForwardCosts) -> tuple[float, int]:
        best, survive, expected = (0.0, 0), 1.0, 1.0
        if not self.drafter.can_catch_up(state):
            return best
        rates = self.acceptance.rates()
        for length in range(1, min(DRAFTER_MAX_DRAFTS, state.max_drafts) + 1):
            survive *= rates[length]
            expected += survive
            rate = expected / (costs.target_seconds(length + 1) + length * self.seconds_per_draft)
            best = max(best, (rate, length))
        return best

    def record(self, drafts: int, accepted: torch.Tensor) -> None:
        self.acceptance.record(drafts, accepted)

    def fade(self) -> None:
        self.acceptance.fade()


class AutoDrafts(DraftSource):
    """Chooses draft source and chain length by measured cost (module doc).

    The source is re-chosen every :data:`STINT` forwards (Jacobi's window needs a few forwards to
    refine, so switching every forward would never show its yield); the drafter's chain length,
    every forward. A plain stint is chosen where no source is expected to pay for its verifies; an
    arm's estimate drifts back to its prior while unused, so it is tried again later.
    """

    name = "auto"

    def __init__(self, drafter: ImageTokenModel | None = None, costs: ForwardCosts | None = None) -> None:
        """``costs`` fixes the cost table (reproducible choices on any machine); by default it is measured."""
        super().__init__()
        self.drafter, self.given_costs = drafter, costs
        self.jacobi = JacobiDrafts(JACOBI_WINDOW + 1, "row_above")
        self.drafter_drafts = DrafterModelDrafts(drafter, DRAFTER_MAX_DRAFTS) if drafter is not None else None
        self.largest_block = max(JACOBI_WINDOW, DRAFTER_MAX_DRAFTS if drafter is not None else 0)
        self.arms: list[_Arm] = []
        self.costs: ForwardCosts | None = None
        self.plain_steps = 0  # forwards with no draft worth its verify
        self._stint: tuple[_Arm | None, int] = (None, 0)  # the arm of this stint (None: plain) and forwards left
        self._chosen: _Arm | None = None

    @property
    def sources(self) -> list[DraftSource]:
        return [self.jacobi] + ([self.drafter_drafts] if self.drafter_drafts is not None else [])

    def begin(self, state: DecodeState) -> None:
        for source in self.sources:
            source.clock = self.clock  # their drafter time is this source's
            source.begin(state)
        self.costs = self.given_costs or measure_costs(state, self.drafter_drafts)
        self.arms = [_JacobiArm(self.jacobi)]
        if self.drafter_drafts is not None:
            self.arms.append(_DrafterArm(self.drafter_drafts, self.costs.drafter_step or 0.0))

    def choose(self, state: DecodeState) -> tuple[_Arm | None, int]:
        """This forward's arm (``None``: a plain step) and chain length."""
        assert self.costs is not None, "begin() first"
        arm, left = self._stint
        if left == 0:
            plain = 1.0 / self.costs.target_seconds(1)
            rated = [(each.plan(state, self.costs)[0], index) for index, each in enumerate(self.arms)]
            rate, index = max(rated)
            chosen = self.arms[index] if rate > plain else None
            if chosen is not None and chosen is not arm:
                chosen.start(state)
            arm, left = chosen, STINT
        self._stint = (arm, left - 1)
        if arm is None:
            return None, 0
        rate, length = arm.plan(state, self.costs)
        if length == 0 and arm is not self.arms[0]:  # the drafter cannot catch up this forward
            return self.arms[0], self.arms[0].plan(state, self.costs)[1]
        return arm, length

    def propose(self, state: DecodeState) -> DraftBlock:
        arm, length = self.choose(state)
        self._chosen = arm if length else None
        if arm is None or length == 0:
            self.plain_steps += 1
            return DraftBlock.empty(state.batch, state.model.vocab_size, state.tokens.device)
        arm.used[length] = arm.used.get(length, 0) + 1
        return arm.source.propose(replace(state, max_drafts=length))

    def observe(self, state: DecodeState, outcome: StepOutcome) -> None:
        for arm in self.arms:
            arm.fade()
        if self._chosen is not None and outcome.block.size:
            running = state.committed > outcome.committed_before  # rows that were not done already
            self._chosen.record(outcome.block.size, (state.committed - outcome.committed_before - 1)[running])
            self._chosen.source.observe(state, outcome)

    def end(self) -> None:
        for source in self.sources:
            source.end()
        self.forwards = sum(source.forwards for source in self.sources)

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
        return f"auto chose {', '.join(parts) or 'nothing'}; {self.costs.describe()}"
