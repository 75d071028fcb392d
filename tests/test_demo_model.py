"""The shipped demo pair through the real entry points: lossless on a trained model, CLI defaults."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from PIL import Image

from specar import Conditioning, DrafterModelDrafts, JacobiDrafts, generate, load_model
from specar import cli

GREEDY_CLASSES = Conditioning.classes([0, 5, 10, 15])


@pytest.fixture(scope="module")
def demo():
    return load_model("demo", device="cpu"), load_model("demo-drafter", device="cpu")


def test_greedy_speculative_decoding_equals_ar_on_the_trained_model(demo) -> None:
    target, drafter = demo
    settings = target.default_settings.with_(greedy=True)
    ar = generate(target, GREEDY_CLASSES, settings)
    for draft in (JacobiDrafts(16, init="row_above"), DrafterModelDrafts(drafter, gamma=4)):
        spec = generate(target, GREEDY_CLASSES, settings, draft=draft)
        assert torch.equal(spec.tokens, ar.tokens)
        assert spec.tokens_per_forward > 1.2  # a trained model really skips forwards


def test_generate_defaults_to_the_demo_pair(tmp_path: Path) -> None:
    stats = tmp_path / "stats.json"
    code = cli.main(
        [
            "generate",
            "--batch",
            "4",
            "--out",
            str(tmp_path / "grid.png"),
            "--heatmap",
            str(tmp_path / "heat.png"),
            "--stats",
            str(stats),
            "--quiet",
        ]
    )
    assert code == 0
    data = json.loads(stats.read_text())
    assert data["method"] == "auto" and data["model"] == "specar-demo" and data["drafter"] == "specar-demo-drafter"
    assert Image.open(tmp_path / "grid.png").size == Image.open(tmp_path / "heat.png").size
    # How much auto drafts depends on the costs it measures on this machine (tests/test_auto_drafts.py fixes them).
    assert data["tokens_per_forward"] >= 1.0 and data["draft_choices"]


def test_bench_quality_columns(capsys: pytest.CaptureFixture[str]) -> None:
    code = cli.main(
        ["bench", "--images", "8", "--batch", "8", "--methods", "ar2,jacobi-row,drafter", "--quality", "--quiet"]
    )
    assert code == 0
    out = capsys.readouterr().out
    assert "FID-lite" in out and "class acc" in out
    assert [line.split()[0] for line in out.splitlines()[-4:]] == ["ar", "ar2", "jacobi-row", "drafter"]
