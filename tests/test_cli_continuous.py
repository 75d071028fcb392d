"""``specar generate`` / ``specar bench`` with continuous-token (MAR) models, on tiny files we write."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from PIL import Image

from specar import cli
from specar.continuous.checkpoint import save_mar
from tiny import tiny_mar

FAST = ["--mar-steps", "6", "--head-steps", "5", "--quiet"]


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("mar")
    target, draft = root / "target.safetensors", root / "draft.safetensors"
    save_mar(tiny_mar(0).mar, target, {"class_names": ["red", "green", "blue"]}, half=False)
    save_mar(tiny_mar(0, perturb=3e-4).mar, draft, {"class_names": ["red", "green", "blue"]}, half=False)
    return {"target": target, "draft": draft}


def test_generate_with_cspd_writes_images_heatmap_and_stats(files: dict[str, Path], tmp_path: Path) -> None:
    out, heat, stats = tmp_path / "x.png", tmp_path / "h.png", tmp_path / "s.json"
    code = cli.main(
        [
            "generate",
            "--model",
            str(files["target"]),
            "--drafter",
            str(files["draft"]),
            "--prompt",
            "green",
            "--batch",
            "4",
            "--draft-steps",
            "2",
            "--relax",
            "0",
            "--out",
            str(out),
            "--heatmap",
            str(heat),
            "--stats",
            str(stats),
            *FAST,
        ]
    )
    assert code == 0
    assert Image.open(out).size == Image.open(heat).size == (16, 16)  # 2x2 grid of 8x8-pixel images
    data = json.loads(stats.read_text())
    assert data["classes"] == [1, 1, 1, 1] and data["drafter_forwards"] > 0
    assert data["target_forwards"] < 6 and data["cspd"]["draft_steps"] == 2
    assert data["settings"]["num_iter"] == 6 and data["settings"]["num_sampling_steps"] == 5


def test_plain_generation_and_relaxation(files: dict[str, Path], tmp_path: Path) -> None:
    stats = tmp_path / "s.json"
    assert (
        cli.main(
            [
                "generate",
                "--model",
                str(files["target"]),
                "--draft",
                "none",
                "--class-id",
                "2",
                "--out",
                str(tmp_path / "x.png"),
                "--stats",
                str(stats),
                *FAST,
            ]
        )
        == 0
    )
    assert json.loads(stats.read_text())["target_forwards"] == 6
    rates = []
    for relax in ("0", "1"):
        assert (
            cli.main(
                [
                    "generate",
                    "--model",
                    str(files["target"]),
                    "--drafter",
                    str(files["draft"]),
                    "--batch",
                    "8",
                    "--draft-steps",
                    "1",
                    "--relax",
                    relax,
                    "--out",
                    str(tmp_path / "x.png"),
                    "--stats",
                    str(stats),
                    *FAST,
                ]
            )
            == 0
        )
        rates.append(json.loads(stats.read_text())["acceptance_rate"])
    assert rates[1] > rates[0]


def test_bench_rows_for_plain_and_speculative_methods(
    files: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "b.json"
    assert (
        cli.main(
            [
                "bench",
                "--model",
                str(files["target"]),
                "--drafter",
                str(files["draft"]),
                "--methods",
                "cspd,cspd=1,mar2,mar@3,draft",
                "--images",
                "4",
                "--batch",
                "2",
                "--json",
                str(out),
                *FAST,
            ]
        )
        == 0
    )
    rows = {row["method"]: row for row in json.loads(out.read_text())["rows"]}
    assert list(rows) == ["mar", "cspd", "cspd=1", "mar2", "mar@3", "draft"]
    assert rows["mar"]["target_forwards_per_image"] == 6 and rows["mar@3"]["target_forwards_per_image"] == 3
    assert rows["cspd"]["target_forwards_per_image"] < 6
    assert rows["mar"]["acceptance_rate"] is None and rows["cspd"]["acceptance_rate"] is not None
    assert "cspd=1" in capsys.readouterr().out


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--policy", "csd"], "discrete-token models"),
        (["--draft", "jacobi"], "drafts discrete tokens"),
        (["--draft-steps", "0"], "draft_steps"),
        (["--relax", "2"], "relaxation"),
        (["--mar-steps", "99"], "num_iter"),
    ],
)
def test_bad_continuous_options_exit_2(
    files: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str], argv: list[str], message: str
) -> None:
    code = cli.main(
        [
            "generate",
            "--model",
            str(files["target"]),
            "--drafter",
            str(files["draft"]),
            "--out",
            str(tmp_path / "x.png"),
            "--quiet",
            *argv,
        ]
    )
    assert code == 2
    assert message in capsys.readouterr().err


def test_drafter_over_other_tokens_is_refused(
    files: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    other = tmp_path / "other.safetensors"
    save_mar(tiny_mar(1, seq_h=2, seq_w=2).mar, other)
    code = cli.main(
        ["generate", "--model", str(files["target"]), "--drafter", str(other), "--out", str(tmp_path / "x.png"), *FAST]
    )
    assert code == 2 and "grid" in capsys.readouterr().err


def test_mar_demo_bench_scores_quality(capsys: pytest.CaptureFixture[str]) -> None:
    """The continuous bench's rows carry the demo classifier's scores and no condition evidence or
    token fidelity (discrete-model columns): the table shows the columns its rows have."""
    assert (
        cli.main(
            [
                "bench",
                "--model",
                "mar-demo",
                "--methods",
                "cspd",
                "--images",
                "2",
                "--batch",
                "2",
                "--quality",
                "--mar-steps",
                "4",
                "--head-steps",
                "3",
            ]
        )
        == 0
    )
    header = next(line for line in capsys.readouterr().out.splitlines() if line.startswith("method "))
    assert "FID-lite" in header and "class acc" in header and "evidence" not in header
