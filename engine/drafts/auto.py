"""Draft length and source chosen by cost: the most committed tokens per second, not per forward.

Every target forward, :class:`AutoDrafts` picks one arm, a draft source (Jacobi with row-above
initialisation at one window of :data:`JACOBI_WINDOWS`, always, coupled as MC-SJD at the longest; the
drafter model and the tree head, drafting chains, when given) and a chain length ``L``, or a plain step,
to maximise

    expected committed tokens / expected seconds
    = (1 + sum_{j<=L} prod_{i<=j} a_i) / (target forward of L + 1 tokens + drafting time)

where ``a_i`` is the source's acceptance rate at depth ``i`` given depth ``i - 1`` was accepted,
counted over this generation's recent steps (with a weak prior, and the deepest measured depth
standing in for deeper ones), and the times come from :class:`ForwardCosts`, measured on this
machine once per model, batch size and guidance, the first time a generation asks, before its
prefill. Every arm is timed running the loop itself, so its price holds all that a step of it
spends: the drafting, the distributions, the verification and the bookkeeping around them.

The drafter's and the head's drafts are fresh every forward, so any ``L`` up to their longest chain
is a candidate. The head drafts from the target's states of the committed tokens, so it sees every
verified block, whoever drafted it, and catches up on them when it drafts again.
Jacobi's are not: a window slot gets better only when a forward verifies it (its next draft is
sampled from the target's distribution there), so a short block leaves the rest of the window
unrefined and lowers the acceptance of later blocks. Jacobi therefore runs its whole window or not at
all, and the window is chosen once per generation (:meth:`AutoDrafts.windows`): the longest commits the
most per forward, a shorter one pays where a block's cost grows faster than its yield (a batch of images
on a CPU).

The choice depends on past outcomes and on the measured costs only, never on the drafts it is
about to verify, so the exact policy stays exact: every draft still carries the distribution it
was drawn from. For a fixed machine and session the choice is deterministic, so a seed gives the
same image every time; another machine may measure other costs, choose other lengths, and so draw
another (equally distributed) image from the same seed.
"""

from __future__ import annotations

import functools
import math
import time
import weakref
from dataclasses import dataclass, field, replace
from statistics import NormalDist, median
from typing import Callable

import torch

from ..errors import NonFiniteOutputError
from ..timing import Clock
from ..models.base import ImageTokenModel
from ..policies import ExactPolicy
from ..sampling import DistributionProcessor, make_generator, point_mass
from ..types import Conditioning, DraftBlock, SamplingSettings, StepEvent
from ..verify import verify_chain
from .base import DecodeState, DraftSource, StepOutcome, chain
from .drafter import DrafterModelDrafts, place_drafter
from .jacobi import JacobiDrafts
from .tree_drafts import TreeHeadDrafts, TreeShape
from .tree_head import TreeHead

CALIBRATION_BLOCKS = (1, 2, 3, 5, 9, 17)  # target block sizes timed (pending token included)
# Jacobi's windows (drafts per block, each a calibrated block size less its pending token, up to the SJD paper's
# window of 16) -> accepted drafts per block before any was measured, and where an unused estimate drifts back
# to: about what row-above Jacobi accepts on the bundled demo model. A short window accepts less than its share
# of a long one: a draft is refined only while it sits in the window.
JACOBI_PRIORS = {2: 1.2, 4: 2.0, 8: 3.2, CALIBRATION_BLOCKS[-1] - 1: 4.8}
JACOBI_WINDOWS = tuple(JACOBI_PRIORS)
# Each window -> the spread of the forwards an image needs with it, as a batch's wait for its slowest row measures
# it: a batch of B images needs about 1 + z_B * spread times the forwards one image needs on average (z_B the
# expected largest of B standard normal draws; fitted to batches of 4 and 16 on the bundled demo model). Jacobi's
# yield follows the image (a flat one accepts whole windows, a detailed one little), so an image's forwards vary
# far more than a sum of independent per-forward yields would, and the more, the longer the window.
JACOBI_SPREAD = {2: 0.10, 4: 0.13, 8: 0.16, CALIBRATION_BLOCKS[-1] - 1: 0.32}
# Long windows couple their drafts across forwards (MC-SJD): a draft far out in one is refined over many forwards,
# and one that changes only where its new distribution makes it keeps agreeing with its neighbours, so more of them
# are accepted together. A short window's drafts are refined a few times at most: coupling them accepts no more
# (on the demo), and costs a little per step.
COUPLED_FROM = 8  # drafts
CHAIN_MAX_DRAFTS = 8  # the drafter's and the head's longest chain
CALIBRATION_ROUNDS = 2  # rounds of timing, the arms in turns: the calibration is part of the first run's time
# a weak prior: acceptance 0.8 (a drafter trained for its target) at depths with no data yet
PRIOR_ACCEPTED, PRIOR_REJECTED = 1.6, 0.4
MEMORY = 0.95  # counts fade by this factor per target forward: acceptance is tracked over the last ~20 forwards
# blocks a Jacobi window's prior yield counts as: a plain stint gives up STINT forwards of drafting, so it takes a
# drop in yield that lasts, not a gap between bursts, to choose one
PRIOR_BLOCKS = 4.0
STINT = 8  # forwards between choices of the draft source
COST_TOLERANCE = 0.1  # a source must be expected to beat plain steps by more than this share to be used
# where the first rounds' prices put a shorter Jacobi window within this share (either way) of the margin it needs
# to beat the longest by, the target's stints are timed again: a margin a busy moment of the machine can make
SECOND_LOOK = 0.2
RUN_OF_BLOCKS = 2  # blocks of one size timed back to back, as a stint runs them (a block timed just after a
# larger one finds less of the model and cache in the processor's caches, and is timed slower than in a run)
STEPS_UNTIMED, STEPS_TIMED = 1, 3  # forwards of a calibration stint: the first pays for switching arms
# plain forwards a calibration run takes, untimed, after reading its prefix and before its first stint: the steps
# just after that long forward run slow (the processor's caches refill), which would price the first stint high
PREFIX_WARMUP = 3
CHAIN_TIMED = (1, 4)  # chain lengths a chain drafter is timed drafting; its costs are linear in the length between


@dataclass(frozen=True)
class ChainCost:
    """Seconds a chain drafter (the drafter model, the tree head) adds to a target step, as the loop spends them."""

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
    """Seconds of one target step per block size, and what each arm adds to it in the loop, on this machine.

    With a chain drafter, ``target`` is the block table: the forward, its distributions and the verification
    of its drafts, per block size; ``plain`` and ``jacobi`` are what a whole step of the loop spends beyond
    that (committing tokens, the health check, a Jacobi window's new samples and initialisation), and the
    chain costs hold the same for the drafters. Without one, ``target`` holds the whole plain and Jacobi
    steps of the loop, at one token and at each Jacobi window, and nothing is extra."""

    target: dict[int, float]  # block tokens (pending token included) -> seconds
    padded: bool  # blocks run padded to the next measured size (compiled buckets): cost is a step function
    drafter: ChainCost | None = None
    head: ChainCost | None = None
    # seconds a plain step of the loop spends beyond its one-token block, and a Jacobi step of each window
    # (drafts) beyond its block (below 0 where noise timed the block slower than the whole step: the step's own
    # time is the price)
    plain: float = 0.0
    jacobi: dict[int, float] = field(default_factory=dict)

    def target_seconds(self, tokens: int) -> float:
        sizes = sorted(self.target)
        upper = next((s for s in sizes if s >= tokens), sizes[-1])
        if self.padded or upper == tokens or upper == sizes[0]:
            return self.target[upper]
        lower = max(s for s in sizes if s < tokens)
        share = (tokens - lower) / (upper - lower)
        return self.target[lower] + share * (self.target[upper] - self.target[lower])

    def plain_seconds(self) -> float:
        return self.target_seconds(1) + self.plain

    def jacobi_seconds(self, drafts: int) -> float:
        """A Jacobi step of ``drafts`` drafts: its block, and what the window it runs in spends beyond it (a
        window shrinks to the drafts left at an image's end)."""
        windows = sorted(self.jacobi)
        window = next((w for w in windows if w >= drafts), windows[-1] if windows else 0)
        return self.target_seconds(drafts + 1) + self.jacobi.get(window, 0.0)

    def describe(self) -> str:
        one = self.plain_seconds()
        steps = ", ".join(f"{w}: {self.jacobi_seconds(w) / one:.2f}x" for w in JACOBI_WINDOWS)
        window = f"Jacobi step of n drafts {steps}"
        if self.target.keys() > {1, *(w + 1 for w in JACOBI_WINDOWS)}:  # the block table a chain drafter needs
            blocks = ", ".join(f"{n}: {self.target[n] / one:.2f}x" for n in sorted(self.target) if n > 1)
            window += f"; target forward of n tokens {blocks}"
        parts = [f"plain step {1000 * one:.2f} ms ({window})"]
        for name, cost in (("drafter", self.drafter), ("tree head", self.head)):
            if cost is not None:
                parts.append(cost.describe(name, one))
        return ", ".join(parts)


@dataclass(frozen=True)
class _TargetCosts:
    plain: float  # seconds of a plain step of the loop
    jacobi: dict[int, float]  # drafts per block -> seconds of a step of the loop with that Jacobi window
    blocks: dict[int, float] | None = None  # the target's block table: measured when a chain drafter needs it

    def costs(self, padded: bool) -> ForwardCosts:
        """Without a block table the steps are the table (costs in between interpolate, as a Jacobi window
        shrinks at an image's end); with one, what each step spends beyond its block is its extra. A step timed
        slower than a larger one takes the larger's time: that is noise."""
        steps = _capped_by_larger({1: self.plain, **{drafts + 1: t for drafts, t in self.jacobi.items()}})
        if self.blocks is None:
            return ForwardCosts(steps, padded)
        extra = {drafts: steps[drafts + 1] - self.blocks[drafts + 1] for drafts in self.jacobi}
        return ForwardCosts(self.blocks, padded, plain=steps[1] - self.blocks[1], jacobi=extra)


# model -> (batch, guided) -> the target's steps (and block table); drafter or head -> (batch, guided) ->
# its chain costs. Weak keys, so a freed model takes its measurements along.
_MEASURED: "weakref.WeakKeyDictionary[ImageTokenModel, dict[tuple[int, bool], _TargetCosts]]" = (
    weakref.WeakKeyDictionary()
)
_CHAIN_MEASURED: "weakref.WeakKeyDictionary[ImageTokenModel | TreeHead, dict[tuple[int, bool], ChainCost]]" = (
    weakref.WeakKeyDictionary()
)


def measure_costs(
    model: ImageTokenModel,
    cond: Conditioning,
    settings: SamplingSettings,
    drafter: ImageTokenModel | None = None,
    head: TreeHead | None = None,
) -> ForwardCosts:
    """Every arm's cost in the loop, measured the first time a model, batch size and guidance ask, before the
    generation's prefill (the model's cache is free).

    Auto's own arms run the loop from a placeholder prefix of half an image (:func:`_stint_samples`; attention
    over the cache grows through an image, and half-way is its mean): plain steps, each Jacobi window, and chains
    of each length in :data:`CHAIN_TIMED` of the drafter and the head. A step so timed holds all that the loop
    spends on it (the drafting, the bookkeeping), which timing the forwards alone would miss: it would price
    drafted steps below plain ones. A chain drafter's price at other lengths needs the target's cost per block
    size, so with one the block table is timed too (:func:`_block_seconds`), and a chain's price is what its
    step costs beyond its block.

    Every step's price is the median of the single steps timed over :data:`CALIBRATION_ROUNDS` rounds, the arms
    taking turns: a busy moment of the machine slows some of a stint's steps and a quiet one speeds some up, and
    the median moves little with either. Where those prices choose between the longest Jacobi window and a
    shorter one by a margin noise can make (:func:`_close_call`), the target's stints are timed for as many
    rounds again before the prices stand: a short window is right where a block's cost grows fast (a batch on a
    CPU), and costly where a busy moment priced the longest one high."""
    key = (cond.batch_size, settings.uses_cfg)
    measured = _MEASURED.setdefault(model, {})
    nets: dict[str, ImageTokenModel | TreeHead] = {}
    if drafter is not None:
        nets["drafter"] = drafter
    if head is not None:
        nets["tree head"] = head
    missing = {name: net for name, net in nets.items() if key not in _CHAIN_MEASURED.setdefault(net, {})}
    if drafter is not None and "drafter" in missing:
        place_drafter(model, drafter)  # on the target's device before it is timed (its runs place it too)
    target = measured.get(key)
    target_stints = [("plain", 0)] + [("jacobi-row", drafts) for drafts in JACOBI_WINDOWS] if target is None else []
    stints = target_stints + [(name, length) for name in missing for length in CHAIN_TIMED]
    samples: dict[tuple[str, int], list[float]] = {}
    if stints:
        timing = drafter if "drafter" in missing else None, head if "tree head" in missing else None
        samples = _stint_samples(model, cond, settings, *timing, stints)
    if target is None:
        target = _timed_steps(samples)
        if target is not None and _close_call(target.costs(model.pads_blocks), cond.batch_size):
            for stint, more in _stint_samples(model, cond, settings, None, None, target_stints).items():
                samples[stint] += more
            target = _timed_steps(samples)
        if target is None:  # a stint no run could time (a model that cannot take placeholders) is priced by its block
            blocks = _block_seconds(model, cond, settings)
            priced = {stint: median(timed) for stint, timed in samples.items()}
            jacobi = {drafts: priced.get(("jacobi-row", drafts), blocks[drafts + 1]) for drafts in JACOBI_WINDOWS}
            target = _TargetCosts(priced.get(("plain", 0), blocks[1]), jacobi, blocks)
    if nets and target.blocks is None:
        target = replace(target, blocks=_block_seconds(model, cond, settings))
    measured[key] = target
    for name, net in missing.items():
        assert target.blocks is not None
        extra = {  # what its step spent beyond its target block (never less than nothing: that is noise)
            length: max(median(samples.get((name, length), [0.0])) - target.blocks[length + 1], 0.0)
            for length in CHAIN_TIMED
        }
        first, last = CHAIN_TIMED
        per_draft = max((extra[last] - extra[first]) / (last - first), 0.0)
        refeed = _refeed_seconds(net, cond, settings.uses_cfg) if name == "drafter" else 0.0
        _CHAIN_MEASURED[net][key] = ChainCost(per_draft, max(extra[first] - per_draft, 0.0), refeed)
    return replace(
        target.costs(model.pads_blocks),
        drafter=None if drafter is None else _CHAIN_MEASURED[drafter][key],
        head=None if head is None else _CHAIN_MEASURED[head][key],
    )


def _timed_steps(samples: dict[tuple[str, int], list[float]]) -> _TargetCosts | None:
    """The target's plain and Jacobi steps priced from their timed samples, or ``None`` if one was not timed."""
    jacobi = {drafts: samples.get(("jacobi-row", drafts), []) for drafts in JACOBI_WINDOWS}
    plain = samples.get(("plain", 0), [])
    if not plain or not all(jacobi.values()):
        return None
    return _TargetCosts(median(plain), {drafts: median(timed) for drafts, timed in jacobi.items()})


def _close_call(costs: ForwardCosts, batch: int) -> bool:
    """Whether, at the windows' prior yields, the best shorter window's expected tokens per second for a batch of
    ``batch`` images lie within :data:`SECOND_LOOK` (either way, as a ratio) of what it must reach to be chosen
    over the longest (:func:`_window_choice`): a choice a busy moment of the machine could have made."""
    rates = [
        (1 + JACOBI_PRIORS[drafts]) * _jacobi_efficiency(batch, drafts) / costs.jacobi_seconds(drafts)
        for drafts in JACOBI_WINDOWS
    ]
    needed = rates[-1] * (1 + COST_TOLERANCE)
    return abs(math.log(max(rates[:-1]) / needed)) < math.log(1 + SECOND_LOOK)


def _window_choice(rates: list[float]) -> int:
    """Index of the Jacobi window to draft with, given each window's expected tokens per second (shortest first):
    the best, where it beats the longest by more than :data:`COST_TOLERANCE`, else the longest."""
    best = max(range(len(rates)), key=rates.__getitem__)
    return best if rates[best] > rates[-1] * (1 + COST_TOLERANCE) else len(rates) - 1


def _block_seconds(model: ImageTokenModel, cond: Conditioning, settings: SamplingSettings) -> dict[int, float]:
    """Seconds of one target step of each calibrated size after half an image of cached placeholder tokens:
    the forward, its distributions and the verification of the drafts in it (or a plain step's sample). The
    sizes take turns, each in a run of :data:`RUN_OF_BLOCKS` steps, the cache rolled back after each; a size's
    price is the median of its steps, and a size priced above a larger one takes the larger's price (a block
    is never cheaper than a smaller one)."""
    dev, B, last = model.device, cond.batch_size, model.num_image_tokens - 1
    processor = DistributionProcessor(settings, model.constraint)
    scratch = make_generator(0, dev)
    policy = ExactPolicy()
    drafts = torch.zeros(B, CALIBRATION_BLOCKS[-1] - 1, dtype=torch.long, device=dev)
    model.prefill(cond, settings.uses_cfg)
    filled = torch.full((B,), min(model.num_image_tokens // 2, model.num_image_tokens - CALIBRATION_BLOCKS[-1]))
    _fill(model, torch.zeros(B, dtype=torch.long), filled, dev)

    def step(size: int) -> None:
        block = chain(drafts[:, : size - 1], point_mass(drafts[:, : size - 1], model.vocab_size))
        positions = (filled.to(dev)[:, None] + torch.arange(size, device=dev)[None, :]).clamp(max=last)
        out = model.forward(torch.zeros_like(positions), positions)
        p = processor(out.logits, (positions + 1).clamp(max=last))
        verify_chain(policy, p, block, positions[:, 1:], None, scratch)  # mid-image: no row near its end
        model.truncate(filled)

    samples: dict[int, list[float]] = {size: [] for size in CALIBRATION_BLOCKS}
    for _ in range(CALIBRATION_ROUNDS):
        for size in CALIBRATION_BLOCKS:
            for _ in range(RUN_OF_BLOCKS):
                clock = Clock(dev)
                clock.run(lambda: step(size))
                samples[size].append(clock.seconds)
    model.release()
    return _capped_by_larger({size: median(timed) for size, timed in samples.items()})


def _capped_by_larger(seconds: dict[int, float]) -> dict[int, float]:
    """Block size -> seconds, each size priced no higher than any larger one: a block timed slower than a larger
    one was timed in a busy moment (a block never costs less than a smaller one)."""
    return {size: min(t for s, t in seconds.items() if s >= size) for size in seconds}


def _refeed_seconds(drafter: ImageTokenModel, cond: Conditioning, guided: bool) -> float:
    """Seconds per token of ``drafter`` reading half an image of committed tokens in one forward, as it
    re-feeds the tokens its cache missed when it drafts again after sitting out (the fastest of the rounds)."""
    dev, B, context = drafter.device, cond.batch_size, max(drafter.num_image_tokens // 2, 1)
    drafter.prefill(cond, guided)
    empty, filled = torch.zeros(B, dtype=torch.long), torch.full((B,), context)
    seconds = math.inf
    for _ in range(CALIBRATION_ROUNDS):
        clock = Clock(dev)
        clock.run(lambda: _fill(drafter, empty, filled, dev))
        drafter.truncate(empty.to(dev))
        seconds = min(seconds, clock.seconds / context)
    drafter.release()
    return seconds


def _stint_samples(
    model: ImageTokenModel,
    cond: Conditioning,
    settings: SamplingSettings,
    drafter: ImageTokenModel | None,
    head: TreeHead | None,
    stints: list[tuple[str, int]],
) -> dict[tuple[str, int], list[float]]:
    """Seconds of each timed target forward of each stint (arm label, chain length; "plain" for plain steps),
    over :data:`CALIBRATION_ROUNDS` rounds of auto's own arms running in turn from a placeholder prefix of half
    an image, each round in a run of the loop of its own (or as many as the image's end makes it take), after
    :data:`PREFIX_WARMUP` untimed plain forwards: each stint times :data:`STEPS_TIMED` forwards after
    :data:`STEPS_UNTIMED` (its first forward pays for switching arms: a fresh Jacobi window, a catch-up). A round
    moves its rows on by tens of tokens, and a step attends to the cache up to the longest row, so rounds run
    back to back would price the later ones near the image's end, where a batch's steps cost more than on
    average (and a plain step the most against a block, whose own tokens weigh more). The runs draw from their
    own generators and keep nothing; non-finite output ends a run (the generation itself then stops with its own
    one-line reason, about its own tokens). A stint no run could time is left out."""
    prefix = torch.zeros(cond.batch_size, model.num_image_tokens // 2, dtype=torch.long, device=model.device)
    samples: dict[tuple[str, int], list[float]] = {stint: [] for stint in stints}
    for _ in range(CALIBRATION_ROUNDS):
        _time_round(model, cond, settings, drafter, head, list(stints), prefix, samples)
    return {stint: timed for stint, timed in samples.items() if timed}


def _time_round(
    model: ImageTokenModel,
    cond: Conditioning,
    settings: SamplingSettings,
    drafter: ImageTokenModel | None,
    head: TreeHead | None,
    todo: list[tuple[str, int]],
    prefix: torch.Tensor,
    samples: dict[tuple[str, int], list[float]],
) -> None:
    """Run the stints ``todo`` in turn from ``prefix``, in one run of the loop or as many as the image's end makes
    it take, adding each stint's timed forwards to ``samples``."""
    from ..loop import generate  # the loop drafts with auto: imported when auto calibrates

    per_stint = STEPS_UNTIMED + STEPS_TIMED
    while todo:
        stamps: list[float] = []

        def stamp(event: StepEvent) -> bool:
            stamps.append(time.perf_counter())
            return len(stamps) <= PREFIX_WARMUP + per_stint * len(todo)

        stints = _Stints(drafter, head, todo, per_stint, PREFIX_WARMUP)
        try:
            generate(model, cond, settings, stints, prefix=prefix, observer=stamp)
        except NonFiniteOutputError:  # placeholder tokens the model cannot take: the timings so far serve
            pass
        intervals = [later - earlier for earlier, later in zip(stamps, stamps[1:])][PREFIX_WARMUP:]
        done = 0
        for index, stint in enumerate(todo):
            timed = intervals[index * per_stint + STEPS_UNTIMED : (index + 1) * per_stint]
            if not timed:  # the run ended: the stints left go to the next one
                break
            samples[stint] += timed
            done = index + 1
        if not done:  # not one timed forward: the first stint keeps what it ran, if anything, and is not tried again
            samples[todo[0]] += intervals
            done = 1
        todo = todo[done:]


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

    def record(self, drafts: int, accepted: list[int]) -> None:
        """``accepted``: drafts accepted per row of a block of ``drafts`` drafts."""
        for a in accepted:
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


def _remaining(state: DecodeState) -> int:
    """Tokens the least advanced row has still to commit."""
    return state.num_tokens - int(state.committed.min())


def _jacobi_efficiency(batch: int, window: int) -> float:
    """The share of a batch's forwards with a Jacobi window of ``window`` drafts not spent waiting for its slowest
    row (:meth:`_JacobiArm.efficiency`)."""
    return 1.0 if batch == 1 else 1.0 / (1.0 + _slowest_of(batch) * JACOBI_SPREAD[window])


@functools.lru_cache(maxsize=None)
def _slowest_of(rows: int) -> float:
    """The expected largest of ``rows`` standard normal draws (Blom's approximation)."""
    return NormalDist().inv_cdf((rows - 0.375) / (rows + 0.25))


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

    def plan(self, state: DecodeState, costs: ForwardCosts, running: bool = True) -> tuple[float, int]:
        """Expected committed tokens per second at the best chain length, and that length; ``running``: as
        the arm of the stint under way (else as one that would open a stint)."""
        raise NotImplementedError

    def length(self, state: DecodeState, costs: ForwardCosts) -> int:
        """The chain length of this forward, in a stint of this arm."""
        return self.plan(state, costs)[1]

    def record(self, drafts: int, accepted: list[int]) -> None:
        """One block of ``drafts`` drafts it proposed; ``accepted``: drafts accepted by each running row."""
        raise NotImplementedError

    def efficiency(self, state: DecodeState, expected: float) -> float:
        """The expected share of a batch's forwards not spent waiting for its slowest row, at an ``expected``
        yield per forward (1 for one image)."""
        raise NotImplementedError

    def fade(self) -> None:
        """A target forward went by: older outcomes count for less."""

    def start(self, state: DecodeState) -> None:
        """A stint of this arm begins (it saw none of the blocks since its last one)."""

    def runs(self, label: str, length: int) -> bool:
        """Whether this arm drafts a stint of ``label`` at chain length ``length``."""
        return label == self.label

    @property
    def name(self) -> str:
        """The arm as the run's summary names it: its method."""
        return self.label


class _RecentMean:
    """The mean of recent values, each counting for less by :data:`MEMORY` per target forward, starting from a
    prior that counts as :data:`PRIOR_BLOCKS` values (and where it drifts back to while nothing is added)."""

    def __init__(self, prior: float) -> None:
        self.prior = prior
        self.total = self.count = 0.0

    def add(self, value: float) -> None:
        self.total += value
        self.count += 1

    def fade(self) -> None:
        self.total *= MEMORY
        self.count *= MEMORY

    @property
    def value(self) -> float:
        return (self.total + PRIOR_BLOCKS * self.prior) / (self.count + PRIOR_BLOCKS)


class _JacobiArm(_Arm):
    """Row-above Jacobi at its whole window; expected yield = the recent mean of accepted drafts per block.

    Jacobi's blocks accept in bursts: a block that accepts nothing is often followed by one that accepts most of
    the window, as the window's drafts settle. So the yield is the mean over the last ~20 forwards (as the chain
    arms' acceptance): a gap in a burst is not read as a drop that a plain stint would pay for."""

    label = "jacobi-row"
    WARMUP = 2  # blocks after a stint starts that refine the window and are not counted

    def __init__(self, source: JacobiDrafts) -> None:
        super().__init__(source)
        self.window = source.slots
        self.prior = JACOBI_PRIORS[self.window]
        self.accepted = _RecentMean(self.prior)
        self.warmup_accepted = _RecentMean(self.prior)  # the same over the blocks that open a stint
        self.since_start = 0

    def plan(self, state: DecodeState, costs: ForwardCosts, running: bool = True) -> tuple[float, int]:
        """A stint that opens afresh (another arm ran before it) spends its first blocks refining the window."""
        accepted = self.accepted.value
        if not running:
            accepted += self.WARMUP * (self.warmup_accepted.value - accepted) / STINT
        return self.rate(state, costs, accepted)

    def length(self, state: DecodeState, costs: ForwardCosts) -> int:
        """The whole window, or the drafts an image has left (the rate needs working out only to choose)."""
        return min(self.window, state.max_drafts)

    def rate(self, state: DecodeState, costs: ForwardCosts, accepted: float) -> tuple[float, int]:
        """Expected committed tokens per second at the whole window for ``accepted`` drafts per block, and the
        window's length."""
        length = self.length(state, costs)
        expected = 1 + min(accepted, length)
        efficiency = self.efficiency(state, expected)
        return expected * efficiency / costs.jacobi_seconds(length), length

    def efficiency(self, state: DecodeState, expected: float) -> float:
        """A batch of ``B`` rows needs about ``1 + z_B * spread`` times the forwards of its mean row, the spread
        the window's :data:`JACOBI_SPREAD`: what sets the wait is how much images differ, which a row's own
        yields, taken as independent draws (as :meth:`_ChainArm.efficiency` takes a chain drafter's), would
        miss."""
        return _jacobi_efficiency(state.batch, self.window)

    def record(self, drafts: int, accepted: list[int]) -> None:
        self.since_start += 1
        if accepted:
            mean = sum(accepted) / len(accepted)
            (self.accepted if self.since_start > self.WARMUP else self.warmup_accepted).add(mean)

    def fade(self) -> None:
        self.accepted.fade()  # the blocks that open stints are few: all of them count

    def start(self, state: DecodeState) -> None:
        """The window starts afresh: the blocks other arms drafted were not its own to refine."""
        self.since_start = 0
        self.source.begin(state)

    def runs(self, label: str, length: int) -> bool:
        return label == self.label and length == self.window

    @property
    def name(self) -> str:
        from . import jacobi_method  # the registry imports this module: looked up when a summary is written

        return jacobi_method(self.source.init, self.source.coupling)


class _ChainArm(_Arm):
    """A chain drafter (the drafter model, the tree head) at any chain length; acceptance modelled per
    depth (its drafts are fresh each block)."""

    def __init__(self, source: DraftSource, label: str, cost: Callable[[ForwardCosts], ChainCost | None]) -> None:
        super().__init__(source)
        self.label, self.cost = label, cost
        self.acceptance = _DepthAcceptance(CHAIN_MAX_DRAFTS)
        self.yields = [0.0, 0.0, 0.0]  # count, sum and sum of squares of the tokens a row committed per forward

    def catch_up_seconds(self, state: DecodeState, costs: ForwardCosts) -> float:
        """Seconds per forward of a stint it spends catching up on tokens drafted while it sat out."""
        return 0.0

    def plan(self, state: DecodeState, costs: ForwardCosts, running: bool = True) -> tuple[float, int]:
        cost = self.cost(costs)
        assert cost is not None, "a chain arm's costs are measured when it is given"
        best, survive, expected = (0.0, 0), 1.0, 1.0
        rates = self.acceptance.rates()
        catch_up = self.catch_up_seconds(state, costs)
        for length in range(1, min(CHAIN_MAX_DRAFTS, state.max_drafts) + 1):
            survive *= rates[length]
            expected += survive
            seconds = costs.target_seconds(length + 1) + cost.seconds(length) + catch_up
            rate = expected * self.efficiency(state, expected) / seconds
            best = max(best, (rate, length))
        return best

    def record(self, drafts: int, accepted: list[int]) -> None:
        count, total, squares = self.yields
        committed = [a + 1 for a in accepted]
        self.yields = [count + len(committed), total + sum(committed), squares + sum(c * c for c in committed)]
        self.acceptance.record(drafts, accepted)

    def efficiency(self, state: DecodeState, expected: float) -> float:
        """The slowest of ``B`` rows needs about ``z_B * sd * sqrt(F) / mean`` forwards beyond the ``F`` a row
        needs on average to commit what is left (a sum of ``F`` yields of mean ``mean`` and deviation
        ``sd``; ``z_B`` the expected largest of ``B`` standard normal draws): a chain drafter's drafts are fresh
        every forward, so its yields are taken as independent. Before the arm has yields of its own, ``mean``
        is the ``expected`` yield it plans for, and its accepted drafts are taken as geometric (deviation
        ``sqrt(a (a + 1))`` for a mean of ``a``): each draft is accepted only if the one before it was. What is
        left is what the least advanced of the batch's rows has still to commit."""
        batch = state.batch
        if batch == 1:  # one image waits for no other row
            return 1.0
        count, total, squares = self.yields
        if count < 2:
            mean, deviation = expected, math.sqrt(max(expected - 1, 0.0) * expected)
        else:
            mean = total / count
            deviation = math.sqrt(max(squares / count - mean * mean, 0.0))
        forwards = max(_remaining(state) / mean, 1.0)
        return 1.0 / (1.0 + _slowest_of(batch) * deviation / mean / math.sqrt(forwards))

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
    than :data:`COST_TOLERANCE`: the calibration's timings are noisy, it does not time the choice itself,
    and a batch's rows are less level than in its short runs.
    An arm's estimate drifts back to its prior while unused, so it is tried again later.
    """

    name = "auto"

    def __init__(
        self, drafter: ImageTokenModel | None = None, head: TreeHead | None = None, costs: ForwardCosts | None = None
    ) -> None:
        """``costs`` fixes the cost table (reproducible choices on any machine); by default it is measured."""
        super().__init__()
        self.drafter, self.given_costs = drafter, costs
        self.jacobi_windows = [
            JacobiDrafts(drafts + 1, "row_above", coupling=drafts >= COUPLED_FROM) for drafts in JACOBI_WINDOWS
        ]
        self.drafter_drafts = DrafterModelDrafts(drafter, CHAIN_MAX_DRAFTS) if drafter is not None else None
        chain = TreeShape(kind="static", branching=(1,) * CHAIN_MAX_DRAFTS)
        self.head_drafts = TreeHeadDrafts(head, chain) if head is not None else None
        self.largest_block = max(*JACOBI_WINDOWS, CHAIN_MAX_DRAFTS)
        self.arms: list[_Arm] = []
        self.costs: ForwardCosts | None = costs
        self.plain_steps = 0  # forwards with no draft worth its verify
        self._stint: tuple[_Arm | None, int] = (None, 0)  # the arm of this stint (None: plain) and forwards left
        self._chosen: _Arm | None = None

    def prepare(self, model: ImageTokenModel, cond: Conditioning, settings: SamplingSettings) -> None:
        if self.given_costs is None:
            head = self.head_drafts.head if self.head_drafts is not None else None
            self.costs = measure_costs(model, cond, settings, self.drafter, head)

    def begin(self, state: DecodeState) -> None:
        self.plain_steps, self._stint = 0, (None, 0)
        self.arms = self.windows([_JacobiArm(window) for window in self.jacobi_windows], state)
        if self.drafter_drafts is not None:
            self.arms.append(_DrafterArm(self.drafter_drafts))
        if self.head_drafts is not None:
            self.arms.append(_ChainArm(self.head_drafts, "tree head", lambda costs: costs.head))
        for arm in self.arms:
            arm.source.clock = self.clock  # their drafter time is this source's
            arm.source.begin(state)

    def windows(self, arms: list[_JacobiArm], state: DecodeState) -> list[_JacobiArm]:
        """The Jacobi window a generation drafts with: the one expected to commit the most tokens per second
        at its prior yield, by the measured costs, where it beats the longest window by more than
        :data:`COST_TOLERANCE` (else the longest). One window for the whole generation: windows judged by their
        own recent blocks would be judged on different regions of the image (a flat one accepts whole windows,
        a detailed one little), and a short window that accepts all it holds tells nothing of what a longer
        one would."""
        assert self.costs is not None, "prepare() first: the loop calls it before the prefill"
        return [arms[_window_choice([arm.rate(state, self.costs, arm.prior)[0] for arm in arms])]]

    def choose(self, state: DecodeState) -> tuple[_Arm | None, int]:
        """This forward's arm (``None``: a plain step) and chain length."""
        assert self.costs is not None, "prepare() first: the loop calls it before the prefill"
        arm, left = self._stint
        if left == 0:
            plain = 1.0 / self.costs.plain_seconds()
            rated = [(each.plan(state, self.costs, each is arm)[0], index) for index, each in enumerate(self.arms)]
            rate, index = max(rated)
            chosen = self.arms[index] if rate > plain * (1 + COST_TOLERANCE) else None
            if chosen is not None and chosen is not arm:
                chosen.start(state)
            arm, left = chosen, STINT
        self._stint = (arm, left - 1)
        if arm is None:
            return None, 0
        return arm, arm.length(state, self.costs)

    def propose(self, state: DecodeState) -> DraftBlock:
        arm, length = self.choose(state)
        self._chosen = arm if length else None
        if arm is None or length == 0:
            self.plain_steps += 1
            return DraftBlock.empty(state.batch, state.model.vocab_size, state.tokens.device)
        arm.used[length] = arm.used.get(length, 0) + 1
        if length == min(arm.source.largest_block, state.max_drafts):  # what the source drafts when left to itself
            return arm.source.propose(state)
        return arm.source.propose(replace(state, max_drafts=length))

    def observe(self, state: DecodeState, outcome: StepOutcome) -> None:
        for arm in self.arms:
            arm.fade()
        chosen = self._chosen if outcome.block.size else None
        if chosen is not None:
            running = [took for took in outcome.accepted if took is not None]  # rows that were not done already
            chosen.record(outcome.block.size, running)
            chosen.source.observe(state, outcome)
        if self.head_drafts is not None and (chosen is None or chosen.source is not self.head_drafts):
            self.head_drafts.observe(state, outcome)  # it drafts from the target's states of every committed token

    def end(self) -> None:
        for arm in self.arms:  # the sources this generation began
            arm.source.end()
        self.forwards = sum(arm.source.forwards for arm in self.arms)

    def summary(self) -> str:
        """What was chosen, and the measured costs it was chosen by."""
        if self.costs is None:
            return ""
        parts = []
        for arm in self.arms:
            if arm.used:
                lengths = ", ".join(f"{length} drafts x{count}" for length, count in sorted(arm.used.items()))
                parts.append(f"{arm.name} ({lengths})")
        if self.plain_steps:
            parts.append(f"no drafts x{self.plain_steps}")
        return f"auto chose {', '.join(parts) or 'nothing'}; {self.costs.describe()}"


class _Stints(AutoDrafts):
    """Auto's arms in a fixed order of stints, each ``forwards`` long: (arm label or "plain", chain length), after
    ``warmup`` plain forwards. Calibration times them with this, so that every price holds what auto's own steps
    spend."""

    def __init__(
        self,
        drafter: ImageTokenModel | None,
        head: TreeHead | None,
        stints: list[tuple[str, int]],
        forwards: int,
        warmup: int = 0,
    ) -> None:
        super().__init__(drafter, head)
        self.plan = [("plain", 0)] * warmup + [stint for stint in stints for _ in range(forwards)]
        self.forward = 0

    def prepare(self, model: ImageTokenModel, cond: Conditioning, settings: SamplingSettings) -> None:
        """Nothing to measure: the plan fixes every choice."""

    def windows(self, arms: list[_JacobiArm], state: DecodeState) -> list[_JacobiArm]:
        """Every window: each is timed."""
        return arms

    def choose(self, state: DecodeState) -> tuple[_Arm | None, int]:
        label, length = self.plan[min(self.forward, len(self.plan) - 1)]
        self.forward += 1
        arm = next((each for each in self.arms if each.runs(label, length)), None)
        if arm is not None and arm is not self._stint[0]:
            arm.start(state)
        self._stint = (arm, 0)
        return arm, min(length, state.max_drafts)
