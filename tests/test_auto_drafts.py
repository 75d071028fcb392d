"""``--draft auto``: the draft source and chain length chosen by measured cost, still lossless
(its sampled-distribution tests run with the other sources' in test_lossless.py)."""

from __future__ import annotations

import statistics
from dataclasses import replace

import pytest
import torch
from tiny import tiny_auto_drafts, tiny_drafter, tiny_model, tiny_tree_head

from specar import Conditioning, JacobiDrafts, SamplingSettings, generate
from specar.drafts import auto as auto_drafts
from specar.drafts.auto import CALIBRATION_BLOCKS, JACOBI_WINDOWS, AutoDrafts, ForwardCosts, measure_costs
from specar.drafts.base import DecodeState
from specar.drafts.drafter import DrafterModelDrafts
from specar.drafts.tree_drafts import TreeHeadDrafts, TreeShape, pack_queue
from specar.drafts.tree_head import TreeHead
from specar.models.llamagen.adapter import LlamaGenModel
from specar.sampling import DistributionProcessor, make_generator
from specar.types import DraftBlock

COND = Conditioning.classes([1, 4, 7])


@pytest.fixture(scope="module")
def target() -> LlamaGenModel:
    return tiny_model(0)


@pytest.mark.parametrize("cfg", [1.0, 3.0])
@pytest.mark.parametrize("with_drafter", [False, True])
def test_greedy_equals_plain_ar(target: LlamaGenModel, cfg: float, with_drafter: bool) -> None:
    settings = SamplingSettings(cfg_scale=cfg, greedy=True, seed=5)
    ar = generate(target, COND, settings)
    auto = generate(target, COND, settings, draft=AutoDrafts(tiny_drafter() if with_drafter else None))
    assert torch.equal(auto.tokens, ar.tokens)
    assert auto.target_forwards <= ar.target_forwards
    assert auto.draft_summary.startswith("auto chose")


def test_switches_between_sources_and_stays_exact(target: LlamaGenModel) -> None:
    """With a fixed cost table both arms are used in one image; the drafter catches up on the
    tokens Jacobi committed while it sat out."""
    settings = SamplingSettings(cfg_scale=3.0, greedy=True, seed=1)
    auto = tiny_auto_drafts()
    result = generate(target, COND, settings, draft=auto)
    assert torch.equal(result.tokens, generate(target, COND, settings).tokens)
    used = {arm.label for arm in auto.arms if arm.used}
    assert used == {"jacobi-row", "drafter"}, result.draft_summary
    assert "drafter (" in result.draft_summary and f"{auto.arms[0].name} (" in result.draft_summary


def test_the_head_drafts_too_and_catches_up_on_what_others_committed(target: LlamaGenModel) -> None:
    """With a tree head given, all three arms draft in one image. The head sat out while the others
    drafted; its entries for their tokens come from the target's states of those blocks, so its
    drafts are those of a head that drafted every block (greedy equality needs only losslessness;
    this checks the catch-up directly)."""
    settings = SamplingSettings(cfg_scale=3.0, greedy=True, seed=1)
    auto = tiny_auto_drafts(head=True)
    result = generate(target, COND, settings, draft=auto)
    assert torch.equal(result.tokens, generate(target, COND, settings).tokens)
    used = {arm.label for arm in auto.arms if arm.used}
    assert used == {"jacobi-row", "drafter", "tree head"}, result.draft_summary
    assert "tree head (" in result.draft_summary


def test_a_head_that_sat_out_drafts_as_one_that_never_did(target: LlamaGenModel) -> None:
    """States queued over several blocks feed the head in one catch-up: the chain it then drafts is
    the chain of a head that was fed block by block."""
    settings = SamplingSettings(cfg_scale=2.0, greedy=True, seed=3)  # plain steps: the same tokens in both runs
    probes = {}
    for every in (1, 4):
        probe = _HeadProbe(tiny_tree_head(target), every)
        generate(target, Conditioning.classes([1, 4]), settings, draft=probe, observer=lambda e: e.target_forwards < 17)
        probes[every] = probe.chains
    fed_every_block = probes[1][3::4]
    assert len(probes[4]) == len(fed_every_block) == 4
    for late, fed in zip(probes[4], fed_every_block):
        assert torch.equal(late.tokens, fed.tokens)
        assert torch.allclose(late.q, fed.q, rtol=1e-3, atol=1e-4), (late.q - fed.q).abs().max()
    target.release()


def test_queued_states_stay_in_order_per_row() -> None:
    first = torch.arange(2 * 3).view(2, 3, 1).float()  # row 0 committed 3 states of it, row 1 only its first
    second = 10 + torch.arange(2 * 2).view(2, 2, 1).float()  # row 0 none of it, row 1 both
    third = 20 + torch.arange(2 * 1).view(2, 1, 1).float()
    out = pack_queue([(first, torch.tensor([3, 1])), (second, torch.tensor([0, 2])), (third, torch.tensor([1, 1]))])
    assert out[0, :4, 0].tolist() == [0, 1, 2, 20]
    assert out[1, :4, 0].tolist() == [3, 12, 13, 21]


class _HeadProbe(TreeHeadDrafts):
    """Drafts nothing (the target steps plainly) but, every ``every``-th block, catches the head up and
    drafts a probe chain with a fixed generator, kept in ``chains``."""

    def __init__(self, head: TreeHead, every: int) -> None:
        super().__init__(head, TreeShape(kind="static", branching=(1,) * 4))
        self.every, self.blocks, self.chains = every, 0, []

    def propose(self, state: DecodeState) -> DraftBlock:
        self.blocks += 1
        if self.blocks % self.every == 0:
            fixed = replace(state, generator=make_generator(7, state.tokens.device))
            self.chains.append(super().propose(fixed))
        return DraftBlock.empty(state.batch, state.model.vocab_size, state.tokens.device)


def test_a_drafter_that_sat_out_catches_up_rows_of_any_length(target: LlamaGenModel) -> None:
    """Rows far apart, one with fewer tokens than the other is missing: one forward re-feeds both (the
    short row feeds a tail it then drops), and each row drafts what the drafter drafts for it alone."""
    settings = SamplingSettings(cfg_scale=2.0, greedy=True, seed=3)
    cond = Conditioning.classes([1, 4])
    image = generate(target, cond, settings).tokens
    tokens = torch.cat([image, torch.zeros(2, 1, dtype=torch.long)], 1)
    behind = torch.tensor([3, 12])

    def drafts_for(rows: list[int], committed: torch.Tensor, sat_out: bool) -> torch.Tensor:
        state = _decode_state(target, Conditioning.classes([[1, 4][r] for r in rows]), settings, tokens[rows])
        state.committed = torch.ones(len(rows), dtype=torch.long) if sat_out else committed
        drafts = DrafterModelDrafts(tiny_drafter(), 4)
        drafts.begin(state)
        state.committed = committed
        block = drafts.propose(state).tokens
        drafts.end()
        return block

    together = drafts_for([0, 1], behind, sat_out=True)
    for row in (0, 1):
        assert torch.equal(together[row], drafts_for([row], behind[row : row + 1], sat_out=False)[0])
    target.release()


def test_same_seed_same_image(target: LlamaGenModel) -> None:
    settings = SamplingSettings(cfg_scale=2.0, top_k=20, seed=11)
    drafter = tiny_drafter()
    a = generate(target, COND, settings, draft=AutoDrafts(drafter))
    b = generate(target, COND, settings, draft=AutoDrafts(drafter))
    assert torch.equal(a.tokens, b.tokens)


def test_chooses_by_cost_per_second() -> None:
    """Cheap long verifies buy long chains; expensive ones buy short chains or none."""
    state = _state(tiny_model(0))
    cheap = AutoDrafts(costs=ForwardCosts({n: 1.0 for n in CALIBRATION_BLOCKS}, padded=False))
    dear = AutoDrafts(costs=ForwardCosts({n: float(n) for n in CALIBRATION_BLOCKS}, padded=False))
    for auto in (cheap, dear):
        auto.begin(state)
    assert cheap.choose(state)[1] == CALIBRATION_BLOCKS[-1] - 1
    assert dear.choose(state)[1] == 0  # a verify of n tokens costs n forwards: no draft pays, a plain step


def _first_choice(costs: ForwardCosts, batch: int = 1) -> tuple["auto_drafts._Arm | None", int]:
    """The arm (``None``: a plain step) and chain length auto picks first for ``batch`` images at ``costs``."""
    auto = AutoDrafts(costs=costs)
    state = _state(tiny_model(0), batch)
    auto.begin(state)
    return auto.choose(state)


def test_a_batch_prices_the_wait_for_its_slowest_row_before_any_yield_is_measured() -> None:
    """A Jacobi step at 5 plain steps (at any window) beats plain ones for one image at the longest window's
    prior yield of 5.8 tokens per forward; a batch of 4 expects its slowest row to fall behind (images differ in
    how much a window accepts) and decodes plainly."""
    costs = ForwardCosts({n: 1.0 if n == 1 else 5.0 for n in CALIBRATION_BLOCKS}, padded=False)
    chosen = {batch: _first_choice(costs, batch)[0] for batch in (1, 4)}
    assert chosen[1] is not None and chosen[1].label == "jacobi-row" and chosen[4] is None
    assert chosen[1].runs("jacobi-row", JACOBI_WINDOWS[-1])


def test_a_short_jacobi_window_is_chosen_where_long_blocks_cost_more_than_they_yield() -> None:
    """Blocks whose cost grows with their size (a batch on a CPU) make a short Jacobi window the best buy; where
    every block costs the same, the longest window is, and where a shorter one is expected to beat it by less
    than the timings' noise, the longest still is."""
    growing = ForwardCosts({n: 1.0 + (n - 1) / 4 for n in CALIBRATION_BLOCKS}, padded=False)
    flat = ForwardCosts({n: 1.0 if n == 1 else 1.2 for n in CALIBRATION_BLOCKS}, padded=False)
    close = ForwardCosts({1: 1.0, 2: 1.1, 3: 1.2, 5: 1.3, 9: 1.4, 17: 2.1}, padded=False)
    lengths = {
        name: _first_choice(costs)[1] for name, costs in (("growing", growing), ("flat", flat), ("close", close))
    }
    assert lengths == {"growing": JACOBI_WINDOWS[1], "flat": JACOBI_WINDOWS[-1], "close": JACOBI_WINDOWS[-1]}


def test_a_batch_takes_the_window_whose_images_differ_less() -> None:
    """Where a 17-token step costs 3.35 plain steps and a 9-token one 2.3, one image drafts with the longest
    window (the 8-draft one is not ahead of it by the margin it needs), and a batch of 4 with the 8-draft one: a
    long window's yield varies the more from image to image, and a batch waits for its slowest row."""
    costs = ForwardCosts({1: 1.0, 2: 1.4, 3: 1.5, 5: 1.8, 9: 2.3, 17: 3.35}, padded=False)
    lengths = {batch: _first_choice(costs, batch)[1] for batch in (1, 4)}
    assert lengths == {1: JACOBI_WINDOWS[-1], 4: JACOBI_WINDOWS[-2]}


def test_auto_drafts_from_the_image_first_token(target: LlamaGenModel) -> None:
    """Row-above Jacobi drafts the first grid row too (the stretch under way, where nothing is above), so auto
    drafts with its window from the first token on."""
    flat = ForwardCosts({n: 1.0 if n == 1 else 1.2 for n in CALIBRATION_BLOCKS}, padded=False)
    state = _state(tiny_model(0))
    state.committed = torch.tensor([1])
    auto = AutoDrafts(costs=flat)
    auto.begin(state)
    assert auto.choose(state)[1] == JACOBI_WINDOWS[-1]


def test_a_gap_between_bursts_keeps_jacobi_drafting_and_a_lasting_drop_does_not() -> None:
    """Jacobi's blocks accept in bursts: a few blocks that accept nothing after a run of good ones leave the window
    worth drafting, where a block costs 2.2 plain steps; a drop that lasts (a third of a draft per block) makes
    plain steps the better choice."""
    costs = ForwardCosts({1: 1.0, 2: 1.15, 3: 1.3, 5: 1.5, 9: 1.8, 17: 2.2}, padded=False)
    state = _state(tiny_model(0))
    arm = auto_drafts._JacobiArm(JacobiDrafts(JACOBI_WINDOWS[-1] + 1, "row_above", coupling=True))
    threshold = (1 + auto_drafts.COST_TOLERANCE) / costs.plain_seconds()  # what a stint must beat

    def blocks(accepted: list[int]) -> float:
        for each in accepted:
            arm.fade()  # a forward went by
            arm.record(JACOBI_WINDOWS[-1], [each])
        return arm.plan(state, costs)[0]

    assert blocks([5] * 12) > threshold
    assert blocks([0] * 6) > threshold  # a gap
    assert blocks([0, 1, 0] * 14) < threshold  # a drop that lasts


def test_the_longest_window_drafts_coupled_and_the_summary_names_it(target: LlamaGenModel) -> None:
    """Where every block costs the same, auto drafts with its longest Jacobi window, whose drafts are coupled across
    forwards (MC-SJD: in a long window coupled drafts are accepted more often), and its summary names that method."""
    flat = ForwardCosts({n: 1.0 if n == 1 else 1.2 for n in CALIBRATION_BLOCKS}, padded=False)
    auto = AutoDrafts(costs=flat)
    settings = SamplingSettings(cfg_scale=3.0, greedy=True, seed=2)
    cond = Conditioning.classes([4])
    result = generate(target, cond, settings, draft=auto)
    assert torch.equal(result.tokens, generate(target, cond, settings).tokens)
    used = [arm for arm in auto.arms if arm.used]
    assert [arm.source.window - 1 for arm in used] == [JACOBI_WINDOWS[-1]], result.draft_summary
    assert used[0].source.coupling and "mcsjd-row (" in result.draft_summary


def test_padded_costs_are_steps_and_eager_costs_interpolate() -> None:
    table = {1: 1.0, 2: 2.0, 3: 3.0, 5: 5.0, 9: 9.0, 17: 17.0}
    assert ForwardCosts(table, padded=False).target_seconds(7) == 7.0
    assert ForwardCosts(table, padded=True).target_seconds(7) == 9.0
    assert ForwardCosts(table, padded=True).target_seconds(40) == 17.0


def test_costs_are_measured_once_per_shape(target: LlamaGenModel) -> None:
    """Without a chain drafter only the loop's plain and Jacobi steps are timed; a drafter given later adds
    the block table it is priced by, and keeps the steps already timed."""
    settings = SamplingSettings(cfg_scale=2.0, seed=0)
    cond = Conditioning.classes([2])
    first = measure_costs(target, cond, settings)
    assert set(first.target) == {1, *(w + 1 for w in JACOBI_WINDOWS)} and all(t > 0 for t in first.target.values())
    steps = [first.target[n] for n in sorted(first.target)]
    assert steps == sorted(steps)  # a step is never priced below a shorter one
    assert first.plain == 0.0 and first.jacobi == {} and first.drafter is None and first.head is None
    assert measure_costs(target, cond, settings) == first
    assert measure_costs(target, Conditioning.classes([2, 3]), settings) != first  # batch 2: timed again
    drafted = measure_costs(target, cond, settings, tiny_drafter())
    assert set(drafted.target) == set(CALIBRATION_BLOCKS) and drafted.drafter is not None
    assert all(drafted.target[a] <= drafted.target[b] for a, b in zip(CALIBRATION_BLOCKS, CALIBRATION_BLOCKS[1:]))
    assert drafted.plain_seconds() == pytest.approx(first.plain_seconds())  # the same steps, now split
    for window in JACOBI_WINDOWS:
        assert drafted.jacobi_seconds(window) == pytest.approx(first.jacobi_seconds(window))
    assert measure_costs(target, cond, settings) == replace(drafted, drafter=None)


def test_a_window_chosen_by_a_margin_noise_can_make_is_a_close_call() -> None:
    """For one image: the longest window ahead by far, or narrowly; a shorter one ahead narrowly, or by far."""
    flat = ForwardCosts({1: 1.0, 3: 1.02, 5: 1.04, 9: 1.08, 17: 1.16}, padded=False)  # a step grows 0.01 per token
    assert not auto_drafts._close_call(flat, 1)
    linear = ForwardCosts({1: 1.0, 3: 1.1, 5: 1.2, 9: 1.4, 17: 1.8}, padded=False)  # 0.05 per token
    assert auto_drafts._close_call(linear, 1)  # the 8-draft window 15% short of the margin it needs
    steep = ForwardCosts({1: 1.0, 3: 1.3, 5: 1.6, 9: 2.2, 17: 3.6}, padded=False)  # a shorter window wins by a fifth
    assert auto_drafts._close_call(steep, 1)
    steeper = ForwardCosts({1: 1.0, 3: 1.5, 5: 2.0, 9: 3.0, 17: 6.0}, padded=False)  # it wins by far: no noise
    assert not auto_drafts._close_call(steeper, 1)


def test_a_close_call_times_the_target_again(monkeypatch: pytest.MonkeyPatch) -> None:
    """Each stint's price is the median of its single steps; where the first rounds' prices make a close call, the
    target's stints are timed for as many rounds again and priced from all their steps; otherwise they are not."""
    runs: list[dict[tuple[str, int], list[float]]] = []
    timed = auto_drafts._stint_samples

    def recorded(*args: object) -> dict[tuple[str, int], list[float]]:
        samples = timed(*args)  # type: ignore[arg-type]
        runs.append({stint: list(seconds) for stint, seconds in samples.items()})
        return samples

    monkeypatch.setattr(auto_drafts, "_stint_samples", recorded)
    settings, cond = SamplingSettings(cfg_scale=2.0, seed=0), Conditioning.classes([2])
    stints = [("plain", 0)] + [("jacobi-row", drafts) for drafts in JACOBI_WINDOWS]
    steps = auto_drafts.CALIBRATION_ROUNDS * auto_drafts.STEPS_TIMED
    monkeypatch.setattr(auto_drafts, "_close_call", lambda costs, batch: True)
    costs = measure_costs(tiny_model(0), cond, settings)
    assert [sorted(run) for run in runs] == [sorted(stints), sorted(stints)]
    assert all(0 < len(run[stint]) <= steps for run in runs for stint in stints)  # an image's end may cut a stint
    for drafts in JACOBI_WINDOWS:
        both = runs[0][("jacobi-row", drafts)] + runs[1][("jacobi-row", drafts)]
        assert costs.target[drafts + 1] <= statistics.median(both)  # a size priced above a larger one takes its price
    assert costs.target[JACOBI_WINDOWS[-1] + 1] == statistics.median(both)

    runs.clear()
    monkeypatch.setattr(auto_drafts, "_close_call", lambda costs, batch: False)
    measure_costs(tiny_model(0), cond, settings)
    assert [sorted(run) for run in runs] == [sorted(stints)]


@pytest.mark.parametrize("head", [False, True])
def test_the_calibrating_run_draws_the_image_a_calibrated_one_does(target: LlamaGenModel, head: bool) -> None:
    """Auto times its arms by running the loop before the generation's prefill, with its own generator: the
    first run of a model (which calibrates the target, the drafter and the head) draws, for a seed, the
    image the next run draws from the stored costs, drafting with every arm."""
    drafter, tree_head = tiny_drafter(), tiny_tree_head(target) if head else None
    settings = SamplingSettings(cfg_scale=3.0, seed=3)
    cond = Conditioning.classes([5])
    runs = [generate(target, cond, settings, draft=AutoDrafts(drafter, tree_head)) for _ in range(2)]
    assert torch.equal(runs[0].tokens, runs[1].tokens)
    assert runs[0].draft_summary == runs[1].draft_summary
    costs = measure_costs(target, cond, settings, drafter, tree_head)
    assert costs.drafter is not None and costs.drafter.step >= 0 and costs.drafter.refeed > 0
    assert (costs.head is not None) == head


def _decode_state(
    model: LlamaGenModel, cond: Conditioning, settings: SamplingSettings, tokens: torch.Tensor
) -> DecodeState:
    out = model.prefill(cond, guided=settings.uses_cfg)
    committed = torch.ones(cond.batch_size, dtype=torch.long)
    return DecodeState(
        model,
        cond,
        settings.uses_cfg,
        DistributionProcessor(settings),
        make_generator(settings.seed, model.device),
        tokens,
        committed,
        model.num_image_tokens - 2,
        out.hidden,
    )


def _state(model: LlamaGenModel, batch: int = 1) -> DecodeState:
    """A state one grid row and a token into the image: row-above Jacobi has a row above to draft from."""
    cond = Conditioning.classes([2] * batch)
    settings = SamplingSettings(cfg_scale=2.0, seed=0)
    out = model.prefill(cond, guided=True)
    tokens = torch.zeros(batch, model.num_image_tokens + 1, dtype=torch.long)
    return DecodeState(
        model,
        cond,
        True,
        DistributionProcessor(settings),
        make_generator(0, model.device),
        tokens,
        torch.full((batch,), model.grid[1] + 1),
        model.num_image_tokens - 2,
        out.hidden,
    )
