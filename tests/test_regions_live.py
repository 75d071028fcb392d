"""Region masks on the token grid, per-token relaxation strength, and throttled live heatmap frames."""

from __future__ import annotations

import pytest
import torch

from specar.errors import SettingsError
from specar.heatmap import cell_colors
from specar.live import HeatmapFrames, hex_cells
from specar.policies.base import AcceptancePolicy
from specar.policies.exact import ExactPolicy
from specar.regions import mask_to_token_weights
from specar.types import StepEvent, TokenKind


def test_mask_is_area_averaged_per_token() -> None:
    mask = torch.zeros(8, 8)
    mask[:, :3] = 1.0  # columns 0-2: token column 0 fully, token column 1 half (pixels 2-3)
    weights = mask_to_token_weights(mask, (4, 4)).reshape(4, 4)
    assert torch.allclose(weights[:, 0], torch.ones(4)) and torch.allclose(weights[:, 1], torch.full((4,), 0.5))
    assert float(weights[:, 2:].abs().sum()) == 0.0
    assert mask_to_token_weights(torch.ones(3, 16, 16), (4, 4)).shape == (3, 16)
    with pytest.raises(SettingsError, match="mask"):
        mask_to_token_weights(torch.ones(1, 1, 4, 4), (2, 2))


class HalfPolicy(ExactPolicy):
    """An exact policy that accepts relaxation, to test the shared per-token strength."""

    def __init__(self, relaxation: float, region: torch.Tensor | None = None) -> None:
        AcceptancePolicy.__init__(self, relaxation, region)


def test_relaxation_at_scales_by_region() -> None:
    region = torch.tensor([[0.0, 0.5, 1.0, 1.0]])
    policy = HalfPolicy(0.8, region)
    strength = policy.relaxation_at(torch.tensor([[0, 1, 2], [1, 2, 3]]))
    assert torch.allclose(strength, torch.tensor([[0.0, 0.4, 0.8], [0.4, 0.8, 0.8]]))
    assert torch.allclose(HalfPolicy(0.3).relaxation_at(torch.zeros(2, 2, dtype=torch.long)), torch.full((2, 2), 0.3))
    with pytest.raises(SettingsError, match="one per image"):
        HalfPolicy(0.5, torch.ones(3, 4)).relaxation_at(torch.zeros(2, 1, dtype=torch.long))
    with pytest.raises(SettingsError, match="0..1"):
        HalfPolicy(1.5)


def _event(committed: int) -> StepEvent:
    kinds = torch.full((2, 4), -1, dtype=torch.int8)
    kinds[:, :committed] = int(TokenKind.ACCEPTED)
    kinds[:, 0] = int(TokenKind.PLAIN)
    index = torch.where(kinds >= 0, 1, -1).int()
    index[:, 0] = 0
    return StepEvent(1, torch.zeros(2, 4, dtype=torch.long), torch.tensor([committed, committed]), kinds, index, 2, 4)


def test_frames_are_throttled_and_carry_their_colours() -> None:
    now = [0.0]
    frames = HeatmapFrames((2, 2), run="r1", min_interval=0.5, clock=lambda: now[0])
    first = frames.frame(_event(2))
    assert first is not None and first["run"] == "r1" and first["committed"] == 2 and not first["done"]
    now[0] = 0.2
    assert frames.frame(_event(3)) is None  # too soon
    last = frames.frame(_event(4), final=True)  # the last frame always goes out
    assert last is not None and last["done"] and last["tokens_per_forward"] == 2.0
    event = _event(4)
    expected = cell_colors(event.kinds[:1], event.forward_index[:1])[0].round().to(torch.uint8)
    assert bytes.fromhex(hex_cells(event)) == expected.numpy().tobytes()
    assert all(color.startswith("#") and len(color) == 7 for _, color in last["legend"])


def test_every_report_shows_one_tokens_per_forward() -> None:
    """Rows of a batch advance apart, so batched forwards and per-image forwards differ; the stats line, the
    last live frame and the result all show committed tokens over per-image forwards, and the stats line's own
    numbers agree with it."""
    from specar import Conditioning, JacobiDrafts, generate
    from specar.progress import summary_line
    from tiny import tiny_model

    events: list[StepEvent] = []
    result = generate(
        tiny_model(0), Conditioning.classes([1, 2, 3, 4]), draft=JacobiDrafts(window=6), observer=events.append
    )
    per_image = result.forwards_per_image.float()
    assert result.target_forwards > float(per_image.mean())  # the rows did drift apart
    assert events[-1].tokens_per_forward == result.tokens_per_forward
    assert result.tokens_per_forward == pytest.approx(64 / float(per_image.mean()))
    line = summary_line(result)
    assert (
        f"{float(per_image.mean()):.1f} per image" in line and f"{result.tokens_per_forward:.2f} tokens/forward" in line
    )
