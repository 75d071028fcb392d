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


def test_generate_defaults_to_the_demo_target_drafting_with_auto(tmp_path: Path) -> None:
    """The default method is auto; the bundled drafter joins it only when named (on the demo, auto's
    stints with it commit fewer tokens per second than its Jacobi and plain stints alone)."""
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
    assert data["method"] == "auto" and data["model"] == "specar-demo" and data["drafter"] is None
    assert Image.open(tmp_path / "grid.png").size == Image.open(tmp_path / "heat.png").size
    # How much auto drafts depends on the costs it measures on this machine (tests/test_auto_drafts.py fixes them).
    assert data["tokens_per_forward"] >= 1.0 and data["draft_choices"]
    assert "drafter" not in data["draft_choices"]  # neither priced nor chosen


def test_auto_drafts_with_the_bundled_drafter_when_it_is_named(tmp_path: Path) -> None:
    stats = tmp_path / "stats.json"
    code = cli.main(["generate", "--drafter", "demo-drafter", "--out", str(tmp_path / "a.png"), "--stats", str(stats)])
    data = json.loads(stats.read_text())
    assert code == 0 and data["method"] == "auto" and data["drafter"] == "specar-demo-drafter"
    assert "drafter" in data["draft_choices"]  # its costs were measured: it is one of auto's arms


def test_the_bench_gives_the_bundled_drafter_to_the_drafter_methods_and_to_auto_only_when_named(
    tmp_path: Path,
) -> None:
    for named in (False, True):
        out = tmp_path / f"named-{named}.json"
        extra = ["--drafter", "demo-drafter"] if named else []
        args = ["bench", "--images", "1", "--methods", "auto,drafter", "--quiet", "--json", str(out), *extra]
        assert cli.main(args) == 0
        rows = {row["method"]: row for row in json.loads(out.read_text())["rows"]}
        assert rows["drafter"]["drafter_forwards_per_call"] > 0
        assert ("drafter" in rows["auto"]["draft_summary"]) == named


def test_bench_quality_columns(capsys: pytest.CaptureFixture[str]) -> None:
    code = cli.main(
        ["bench", "--images", "8", "--batch", "8", "--methods", "ar2,jacobi-row,drafter", "--quality", "--quiet"]
    )
    assert code == 0
    out = capsys.readouterr().out
    assert "FID-lite" in out and "class acc" in out
    assert [line.split()[0] for line in out.splitlines()[-4:]] == ["ar", "ar2", "jacobi-row", "drafter"]
