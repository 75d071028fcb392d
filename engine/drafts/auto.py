"""Draft length and source chosen by cost: the most committed tokens per second, not per forward.

Every target forward, :class:`AutoDrafts` picks one arm, a draft source (Jacobi with row-above
initialisation, always; the drafter model and the tree head, drafting chains, when given) and a chain
length ``L``, or a plain step, to maximise

    expected committed tokens / expected seconds
    = (1 + sum_{j<=L} prod_{i<=j} a_i) / (target forward of L + 1 tokens + drafting time)

where ``a_i`` is the source's acceptance rate at depth ``i`` given depth ``i - 1`` was accepted,
counted over this generation's recent steps (with a weak prior, and the deepest measured depth
standing in for deeper ones), and the times come from :class:`ForwardCosts`, measured on this
machine once per model, batch size and guidance, the first time a generation asks. The drafter and
the head are timed drafting real chains, each chain followed by the target's verify of it as in the
loop: a drafter forward timed alone, with its weights warm in the processor's caches, costs a
fraction of what it costs between the target's forwards.

The drafter's and the head's drafts are fresh every forward, so any ``L`` up to their longest chain
is a candidate. The head drafts from the target's states of the committed tokens, so it sees every
verified block, whoever drafted it, and catches up on them when it drafts again.
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

import math
import weakref
from dataclasses import dataclass, replace
from statistics import NormalDist
from typing import Callable

import torch

from ..timing import Clock, fastest
from ..models.base import ImageTokenModel
from ..policies import ExactPolicy
from ..sampling import make_generator, point_mass
from ..types import DraftBlock
from ..verify import verify_chain
from .base import DecodeState, DraftSource, StepOutcome, chain
from .drafter import DrafterModelDrafts
from .jacobi import JacobiDrafts
from .tree_drafts import TreeHeadDrafts, TreeShape
from .tree_head import TreeHead

CALIBRATION_BLOCKS = (1, 2, 3, 5, 9, 17)  # target block sizes timed (pending token included)
JACOBI_WINDOW = (
    CALIBRATION_BLOCKS[-1] - 1
)  # drafts per Jacobi block: the window of 16 of the SJD paper, less the pending token
CHAIN_MAX_DRAFTS = 8  # the drafter's and the head's longest chain
CALIBRATION_ROUNDS = 3  # timed rounds per measured cost: the calibration is part of the first run's time
# a weak prior: acceptance 0.8 (a drafter trained for its target) at depths with no data yet
PRIOR_ACCEPTED, PRIOR_REJECTED = 1.6, 0.4
MEMORY = 0.95  # counts fade by this factor per target forward: acceptance is tracked over the last ~20 forwards
STINT = 8  # forwards between choices of the draft source
COST_TOLERANCE = 0.1  # a source must be expected to beat plain steps by more than this share to be used
RUN_OF_BLOCKS = 2  # blocks of one size timed back to back, as a stint runs them (a block timed just after a
# larger one finds less of the model and cache in the processor's caches, and is timed slower than in a run)


@dataclass(frozen=True)
class ChainCost:
    """Seconds a chain drafter (the drafter model, the tree head) spends, as the loop spends them."""

    step: float  # per draft
    chain: float = 0.0  # per chain beyond its drafts (its first forward catches up on the committed tokens)
    refeed: float = 0.0  # per token the drafter model re-feeds when it drafts again after sitting out

    def seconds(self, drafts: int) -> float:
        return self.chain + drafts * self.step

    def describe(self, name: str, one: float) -> str:
        return (
            f"{name} {1000 * self.chain:.2f} ms per chain + {1000 * self.step:.2f} ms per draft "
            f"({self.chain / one:.2f}x + {self.step / one:.2f}x)"
        )


@dataclass(frozen=True)
class ForwardCosts:
    """Seconds of one target forward per block size, and of the chain drafters' drafts, on this machine."""

    target: dict[int, float]  # block tokens (pending token included) -> seconds
    padded: bool  # blocks run padded to the next measured size (compiled buckets): cost is a step function
    drafter: ChainCost | None = None
    head: ChainCost | None = None

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
        parts = [f"target forward {1000 * one:.2f} ms for 1 token ({blocks} for n tokens)"]
        for name, cost in (("drafter", self.drafter), ("tree head", self.head)):
            if cost is not None:
                parts.append(cost.describe(name, one))
        return ", ".join(parts)


# model (target, drafter or head) -> (batch, guided) -> seconds per block size (target) or chain costs (drafters);
# weak keys, so a freed model takes its measurements along
_MEASURED: "weakref.WeakKeyDictionary[ImageTokenModel, dict[tuple[int, bool], dict[int, float]]]" = (
    weakref.WeakKeyDictionary()
)
_CHAIN_MEASURED: "weakref.WeakKeyDictionary[ImageTokenModel | TreeHead, dict[tuple[int, bool], ChainCost]]" = (
    weakref.WeakKeyDictionary()
)


def measure_costs(
    state: DecodeState, drafter: DrafterModelDrafts | None, head: TreeHeadDrafts | None = None
) -> ForwardCosts:
    """The target's block costs and the chain drafters' costs, measured the first time a model,
    batch size and guidance ask (every cache prefilled, the head begun).

    All are timed with half an image of placeholder tokens in the target's and the drafter's caches
    (attention over the cache grows through an image, and half-way is its mean; at a batch of images
    it is much of a forward), filled once and rolled back afterwards. The head's cache holds only
    the entries of the image so far: a one-token entry's attention is a small share of its step."""
    key = (state.batch, state.guided)
    blocks = _MEASURED.setdefault(state.model, {})
    timers: dict[ImageTokenModel | TreeHead, Callable[[torch.Tensor], ChainCost]] = {}
    if drafter is not None:
        timers[drafter.drafter] = lambda filled: _drafter_costs(drafter, state, filled)
    if head is not None:
        timers[head.head] = lambda filled: _head_costs(head, state, filled)
    missing = [net for net in timers if key not in _CHAIN_MEASURED.setdefault(net, {})]
    if key not in blocks or missing:
        dev = state.tokens.device
        cached = state.committed - 1  # host [B]: image tokens in the target's cache
        context = max(0, state.num_tokens // 2 - int(cached.min()))
        room = max(CALIBRATION_BLOCKS[-1], CHAIN_MAX_DRAFTS + 1)
        filled = torch.maximum(cached, (cached + context).clamp(max=state.num_tokens - room))
        _fill(state.model, cached, filled, dev)
        if key not in blocks:
            blocks[key] = _block_seconds(state, filled, CALIBRATION_BLOCKS)
        for net in missing:
            _CHAIN_MEASURED[net][key] = timers[net](filled)
        state.model.truncate(cached)
    return ForwardCosts(
        blocks[key],
        state.model.pads_blocks,
        drafter=None if drafter is None else _CHAIN_MEASURED[drafter.drafter][key],
        head=None if head is None else _CHAIN_MEASURED[head.head][key],
    )


def _fill(model: ImageTokenModel, cached: torch.Tensor, filled: torch.Tensor, dev: torch.device) -> None:
    """Feed placeholder tokens so that every row's cache holds ``filled [B]`` image tokens (host, ``>= cached``):
    in one forward, or for a compiled model in blocks of the largest calibrated size (a compiled
    forward of a new size would compile it just for this)."""
    chunk = CALIBRATION_BLOCKS[-1] if model.pads_blocks else None
    while (width := int((filled - cached).max())) > 0:
        width = min(width, chunk or width)
        positions = (cached.to(dev)[:, None] + torch.arange(width, device=dev)[None, :]).clamp(
            max=filled.to(dev)[:, None] - 1
        )
        model.forward(torch.zeros_like(positions), positions)
        cached = torch.minimum(cached + width, filled)
        model.truncate(cached)


def _block_seconds(state: DecodeState, filled: torch.Tensor, sizes: tuple[int, ...]) -> dict[int, float]:
    """Seconds of one target step of ``sizes`` tokens after ``filled [B]`` cached tokens: the forward,
    its distributions and the verification of the drafts in it (or a plain step's sample), as the
    loop spends them. The cache is rolled back after each; the sizes take turns, each timed over a
    run of :data:`RUN_OF_BLOCKS` steps. A block is never cheaper than a smaller one, so a size timed
    slower than a larger one takes the larger's time."""
    model, dev, last = state.model, state.tokens.device, state.num_tokens - 1
    scratch = make_generator(0, dev)  # the run's own generator is never drawn from here
    policy, limit = ExactPolicy(), torch.full((state.batch,), max(sizes), device=dev)
    drafts = torch.zeros(state.batch, max(sizes) - 1, dtype=torch.long, device=dev)
    blocks = {size: chain(drafts[:, : size - 1], point_mass(drafts[:, : size - 1], model.vocab_size)) for size in sizes}

    def run(size: int) -> None:
        positions = (filled.to(dev)[:, None] + torch.arange(size, device=dev)[None, :]).clamp(max=last)
        for _ in range(RUN_OF_BLOCKS):
            out = model.forward(torch.zeros_like(positions), positions)
            p = state.processor(out.logits, (positions + 1).clamp(max=last))
            verify_chain(policy, p, blocks[size], positions[:, 1:], limit, scratch)
            model.truncate(filled)

    seconds = fastest({size: (lambda size=size: run(size)) for size in sizes}, dev, CALIBRATION_ROUNDS)
    return {size: min(t for s, t in seconds.items() if s >= size) / RUN_OF_BLOCKS for size in sizes}


def _drafter_costs(drafts: DrafterModelDrafts, state: DecodeState, filled: torch.Tensor) -> ChainCost:
    """The drafter's costs after ``filled [B]`` cached tokens (the target's cache holds them): the
    per-token cost of re-feeding, from the forward that fills the drafter's cache, and the chains'
    (:func:`_chain_costs`), each opening as in the loop by re-feeding the last two committed tokens.
    The drafter's cache and bookkeeping come out as they went in."""
    dev = state.tokens.device
    valid = drafts.valid.clone()  # host [B]: image tokens the drafter's cache holds
    fill = Clock(dev)
    fill.run(lambda: _fill(drafts.drafter, valid, filled, dev))
    per_refed = fill.seconds / max(int((filled - valid).max()), 1)
    reopen = lambda: setattr(drafts, "valid", filled - 1)  # noqa: E731  the loop's usual re-feed of two tokens
    per_chain, per_draft = _chain_costs(drafts, state, filled, drafts.gamma, reopen)
    drafts.drafter.truncate(valid)
    drafts.valid = valid
    return ChainCost(per_draft, per_chain, per_refed)


def _head_costs(drafts: TreeHeadDrafts, state: DecodeState, filled: torch.Tensor) -> ChainCost:
    """The head's chain costs (:func:`_chain_costs`) after ``filled [B]`` cached tokens, every chain
    opening as in the loop with a catch-up on its queue (:meth:`TreeHeadDrafts.trial`)."""
    reopen, restore = drafts.trial(filled + 1)
    per_chain, per_draft = _chain_costs(drafts, state, filled, CHAIN_MAX_DRAFTS, reopen)
    restore()
    return ChainCost(per_draft, per_chain)


def _chain_costs(
    drafts: DraftSource, state: DecodeState, filled: torch.Tensor, longest: int, reopen: Callable[[], None]
) -> tuple[float, float]:
    """Seconds per chain and per draft of ``drafts`` after ``filled [B]`` cached tokens, from real chains
    of one and of ``longest`` drafts (``reopen`` first puts the source as the loop finds it), each
    followed by the target's verify of it as in the loop (a drafter forward timed alone, with its
    weights warm in the processor's caches, costs less); the verifies' own times, timed in turns,
    are taken off. The drafts are drawn from a scratch generator, never the run's, and the source's
    clock comes out as it went in."""
    model, dev = state.model, state.tokens.device
    committed = filled + 1
    trial = replace(state, generator=make_generator(0, dev), tokens=torch.zeros_like(state.tokens), committed=committed)
    lengths = (1, longest) if longest > 1 else (1,)

    def verify(length: int) -> None:
        positions = (filled.to(dev)[:, None] + torch.arange(length + 1, device=dev)[None, :]).clamp(
            max=state.num_tokens - 1
        )
        model.forward(torch.zeros_like(positions), positions)
        model.truncate(filled)

    def chain_then_verify(length: int) -> None:
        reopen()
        drafts.propose(replace(trial, max_drafts=length))
        verify(length)

    calls = {
        (kind, length): (lambda kind=kind, length=length: (chain_then_verify if kind else verify)(length))
        for length in lengths
        for kind in (False, True)
    }
    run_clock, drafts.clock = drafts.clock, Clock()  # trials are not the run's drafting time
    seconds = fastest(calls, dev, CALIBRATION_ROUNDS)
    drafts.clock = run_clock
    chains = {length: max(seconds[True, length] - seconds[False, length], 0.0) for length in lengths}
    per_draft = (chains[longest] - chains[1]) / (longest - 1) if longest > 1 else chains[1]
    per_draft = max(per_draft, chains[longest] / longest)  # noise never makes a longer chain look cheaper per draft
    return max(chains[1] - per_draft, 0.0), per_draft


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
    """A draft source the chooser can use: what it is expected to commit, at what cost.

    In a batch, rows advance by different amounts and a generation lasts until its last row is
    done, so the more a source's yield per forward varies, the more forwards the slowest of the
    rows needs beyond the mean. :meth:`efficiency` is the expected share of a batch's forwards that
    is not spent waiting for it (1 for one image), and scales the yield each arm expects."""

    label = ""

    def __init__(self, source: DraftSource) -> None:
        self.source = source
        self.used: dict[int, int] = {}  # chain length -> target forwards it drafted
        self.yields = [0.0, 0.0, 0.0]  # count, sum and sum of squares of the tokens a row committed per forward

    def plan(self, state: DecodeState, costs: ForwardCosts, running: bool = True) -> tuple[float, int]:
        """Expected committed tokens per second at the best chain length, and that length; ``running``: as
        the arm of the stint under way (else as one that would open a stint)."""
        raise NotImplementedError

    def record(self, drafts: int, accepted: torch.Tensor) -> None:
        """One block of ``drafts`` drafts it proposed; ``accepted [rows]`` host, per running row."""
        count, total, squares = self.yields
        committed = accepted.double() + 1
        self.yields = [count + len(committed), total + float(committed.sum()), squares + float(committed.pow(2).sum())]

    def efficiency(self, state: DecodeState) -> float:
        """The slowest of ``B`` rows needs about ``z_B * sd * sqrt(F) / mean`` forwards beyond the ``F`` a row
        needs on average to commit what is left (a sum of ``F`` yields of mean ``mean`` and deviation
        ``sd``; ``z_B`` the expected largest of ``B`` standard normal draws)."""
        count, total, squares = self.yields
        if state.batch == 1 or count < 2:
            return 1.0
        mean = total / count
        spread = math.sqrt(max(squares / count - mean * mean, 0.0)) / mean
        forwards = max((state.num_tokens - int(state.committed.min())) / mean, 1.0)
        slowest = NormalDist().inv_cdf((state.batch - 0.375) / (state.batch + 0.25))  # Blom's approximation
        return 1.0 / (1.0 + slowest * spread / math.sqrt(forwards))

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
        self.warmup_accepted = self.PRIOR  # the same over the blocks that open a stint
        self.since_start = 0

    def plan(self, state: DecodeState, costs: ForwardCosts, running: bool = True) -> tuple[float, int]:
        """A stint that opens afresh (another arm ran before it) spends its first blocks refining the window."""
        length = min(self.window, state.max_drafts)
        accepted = self.mean_accepted
        if not running:
            accepted += self.WARMUP * (self.warmup_accepted - self.mean_accepted) / STINT
        expected = (1 + min(accepted, length)) * self.efficiency(state)
        return expected / costs.target_seconds(length + 1), length

    def record(self, drafts: int, accepted: torch.Tensor) -> None:
        super().record(drafts, accepted)
        self.since_start += 1
        if len(accepted):
            mean = float(accepted.float().mean())
            if self.since_start > self.WARMUP:
                self.mean_accepted += 0.25 * (mean - self.mean_accepted)
            else:
                self.warmup_accepted += 0.25 * (mean - self.warmup_accepted)

    def fade(self) -> None:
        self.mean_accepted += (1 - MEMORY) * (self.PRIOR - self.mean_accepted)

    def start(self, state: DecodeState) -> None:
        """The window starts afresh: the blocks other arms drafted were not its own to refine."""
        self.since_start = 0
        self.source.begin(state)


class _ChainArm(_Arm):
    """A chain drafter (the drafter model, the tree head) at any chain length; acceptance modelled per
    depth (its drafts are fresh each block)."""

    def __init__(self, source: DraftSource, label: str, cost: Callable[[ForwardCosts], ChainCost | None]) -> None:
        super().__init__(source)
        self.label, self.cost = label, cost
        self.acceptance = _DepthAcceptance(CHAIN_MAX_DRAFTS)

    def catch_up_seconds(self, state: DecodeState, costs: ForwardCosts) -> float:
        """Seconds per forward of a stint it spends catching up on tokens drafted while it sat out."""
        return 0.0

    def plan(self, state: DecodeState, costs: ForwardCosts, running: bool = True) -> tuple[float, int]:
        cost = self.cost(costs)
        assert cost is not None, "a chain arm's costs are measured when it is given"
        best, survive, expected = (0.0, 0), 1.0, 1.0
        rates, efficiency = self.acceptance.rates(), self.efficiency(state)
        catch_up = self.catch_up_seconds(state, costs)
        for length in range(1, min(CHAIN_MAX_DRAFTS, state.max_drafts) + 1):
            survive *= rates[length]
            expected += survive
            seconds = costs.target_seconds(length + 1) + cost.seconds(length) + catch_up
            rate = expected * efficiency / seconds
            best = max(best, (rate, length))
        return best

    def record(self, drafts: int, accepted: torch.Tensor) -> None:
        super().record(drafts, accepted)
        self.acceptance.record(drafts, accepted)

    def fade(self) -> None:
        self.acceptance.fade()


class _DrafterArm(_ChainArm):
    """The drafter model, which re-feeds the tokens its cache missed while it sat out."""

    def __init__(self, source: DrafterModelDrafts) -> None:
        super().__init__(source, "drafter", lambda costs: costs.drafter)
        self.drafter = source

    def catch_up_seconds(self, state: DecodeState, costs: ForwardCosts) -> float:
        assert costs.drafter is not None
        missed = max(int((state.committed - self.drafter.valid).max()) - 2, 0)  # once per stint
        return missed * costs.drafter.refeed / STINT


class AutoDrafts(DraftSource):
    """Chooses draft source and chain length by measured cost (module doc).

    The source is re-chosen every :data:`STINT` forwards (Jacobi's window needs a few forwards to
    refine, so switching every forward would never show its yield); the drafter's chain length,
    every forward. A plain stint is chosen where no source is expected to beat plain steps by more
    than :data:`COST_TOLERANCE`: a drafted step also spends time the calibration does not time (the
    drafts' bookkeeping, the choice itself), and a batch's rows are less level than the calibration's.
    An arm's estimate drifts back to its prior while unused, so it is tried again later.
    """

    name = "auto"

    def __init__(
        self, drafter: ImageTokenModel | None = None, head: TreeHead | None = None, costs: ForwardCosts | None = None
    ) -> None:
        """``costs`` fixes the cost table (reproducible choices on any machine); by default it is measured."""
        super().__init__()
        self.drafter, self.given_costs = drafter, costs
        self.jacobi = JacobiDrafts(JACOBI_WINDOW + 1, "row_above")
        self.drafter_drafts = DrafterModelDrafts(drafter, CHAIN_MAX_DRAFTS) if drafter is not None else None
        chain = TreeShape(kind="static", branching=(1,) * CHAIN_MAX_DRAFTS)
        self.head_drafts = TreeHeadDrafts(head, chain) if head is not None else None
        self.largest_block = max(JACOBI_WINDOW, CHAIN_MAX_DRAFTS)
        self.arms: list[_Arm] = []
        self.costs: ForwardCosts | None = None
        self.plain_steps = 0  # forwards with no draft worth its verify
        self._stint: tuple[_Arm | None, int] = (None, 0)  # the arm of this stint (None: plain) and forwards left
        self._chosen: _Arm | None = None

    @property
    def sources(self) -> list[DraftSource]:
        return [self.jacobi] + [s for s in (self.drafter_drafts, self.head_drafts) if s is not None]

    def begin(self, state: DecodeState) -> None:
        for source in self.sources:
            source.clock = self.clock  # their drafter time is this source's
            source.begin(state)
        self.costs = self.given_costs or measure_costs(state, self.drafter_drafts, self.head_drafts)
        self.arms = [_JacobiArm(self.jacobi)]
        if self.drafter_drafts is not None:
            self.arms.append(_DrafterArm(self.drafter_drafts))
        if self.head_drafts is not None:
            self.arms.append(_ChainArm(self.head_drafts, "tree head", lambda costs: costs.head))

    def choose(self, state: DecodeState) -> tuple[_Arm | None, int]:
        """This forward's arm (``None``: a plain step) and chain length."""
        assert self.costs is not None, "begin() first"
        arm, left = self._stint
        if left == 0:
            plain = 1.0 / self.costs.target_seconds(1)
            rated = [(each.plan(state, self.costs, each is arm)[0], index) for index, each in enumerate(self.arms)]
            rate, index = max(rated)
            chosen = self.arms[index] if rate > plain * (1 + COST_TOLERANCE) else None
            if chosen is not None and chosen is not arm:
                chosen.start(state)
            arm, left = chosen, STINT
        self._stint = (arm, left - 1)
        if arm is None:
            return None, 0
        return arm, arm.plan(state, self.costs)[1]

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
        chosen = self._chosen if outcome.block.size else None
        if chosen is not None:
            running = state.committed > outcome.committed_before  # rows that were not done already
            chosen.record(outcome.block.size, (state.committed - outcome.committed_before - 1)[running])
            chosen.source.observe(state, outcome)
        if self.head_drafts is not None and (chosen is None or chosen.source is not self.head_drafts):
            self.head_drafts.observe(state, outcome)  # it drafts from the target's states of every committed token

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
