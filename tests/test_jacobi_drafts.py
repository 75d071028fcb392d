"""Jacobi's window initialisation: what a slot new to the window drafts before the target has seen it."""

from __future__ import annotations

import pytest
import torch
from tiny import tiny_model

from specar import Conditioning, JacobiDrafts, SamplingSettings, load_model
from specar import generate
from specar.drafts.base import DecodeState
from specar.types import DraftBlock
from specar.sampling import DistributionProcessor, make_generator


def _state(committed: int) -> DecodeState:
    """A tiny model's state with ``committed`` tokens, each token's value its own position (all distinct)."""
    model = tiny_model(0)
    cond = Conditioning.classes([2])
    out = model.prefill(cond, guided=True)
    tokens = torch.arange(model.num_image_tokens + 1)[None] % model.vocab_size
    return DecodeState(
        model,
        cond,
        True,
        DistributionProcessor(SamplingSettings(cfg_scale=2.0, seed=0)),
        make_generator(0, model.device),
        tokens,
        torch.tensor([committed]),
        model.num_image_tokens - 2,
        out.hidden,
    )


@pytest.mark.parametrize("committed, drafts", [(3, 4), (3, 13), (10, 6), (12, 8)])
def test_row_above_drafts_the_row_above_and_in_the_first_grid_row_the_last_committed_token(
    committed: int, drafts: int
) -> None:
    """Each slot drafts the token one grid row above its position, committed or drafted in the window; in the first
    grid row, which has nothing above, the last committed token. Drafts are point masses (q one-hot)."""
    state = _state(committed)
    width = state.model.grid[1]
    source = JacobiDrafts(drafts + 1, "row_above")
    source.begin(state)
    expected: list[int] = []
    for position in range(committed, committed + drafts):
        above = position - width
        if above < 0:
            expected.append(committed - 1)  # the last committed token's value is its position
        elif above < committed:
            expected.append(above)
        else:
            expected.append(expected[above - committed])  # a slot of the window itself
    assert source.tokens[0].tolist() == expected
    assert torch.equal(source.q[0], torch.nn.functional.one_hot(source.tokens[0], state.model.vocab_size).float())


class _Proposals(JacobiDrafts):
    """Row-above Jacobi that keeps each proposal with the committed count it was made at."""

    def __init__(self, window: int) -> None:
        super().__init__(window, "row_above")
        self.proposals: list[tuple[int, list[int]]] = []

    def propose(self, state: DecodeState) -> DraftBlock:
        block = super().propose(state)
        self.proposals.append((int(state.committed[0]), block.tokens[0].tolist()))
        return block


def test_first_grid_row_slots_are_drafted_afresh_every_forward() -> None:
    """After a forward, Jacobi's slots hold samples given the drafts before them; in the first grid row, which
    nothing above anchors, each slot drafts the last committed token again instead. Past it, samples stay."""
    target = tiny_model(0)
    width = target.grid[1]
    settings = SamplingSettings(cfg_scale=2.0, seed=3)
    drafts = _Proposals(6)
    result = generate(target, Conditioning.classes([1]), settings, draft=drafts)
    tokens = result.tokens[0].tolist()
    in_first_row = [(c, d) for c, d in drafts.proposals if c < width]
    assert len(in_first_row) > 1
    for committed, proposal in in_first_row:
        slots_in_first_row = proposal[: width - committed]
        assert slots_in_first_row == [tokens[committed - 1]] * len(slots_in_first_row)
    # past the first row the window keeps its samples: some drafts differ from the row above
    later = [(c, d) for c, d in drafts.proposals if c > width]
    assert any(d[0] != tokens[c - width] for c, d in later)


def test_row_above_drafts_commit_the_demo_first_grid_row_in_few_forwards() -> None:
    """On the trained demo model, where a row runs in stretches of one code, the first grid row's drafts are
    accepted in runs: its 15 tokens after the first take a few forwards (drafts sampled given the drafts before
    them, with nothing above, take about one forward per token)."""
    target = load_model("demo", device="cpu")
    width = target.grid[1]
    forwards = 0
    for seed in range(4):
        settings = target.default_settings.with_(seed=seed)
        drafts = JacobiDrafts(17, "row_above", coupling=True)
        result = generate(target, Conditioning.classes([seed]), settings, draft=drafts)
        forwards += len(result.forward_index[0, 1:width].unique())
    assert forwards < 4 * (width - 1) / 3, forwards
