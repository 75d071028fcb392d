"""Bad input gets a one-line error naming the field, outputs are written whole or not at all, and output paths
are checked before any model loads."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
from PIL import Image

from specar import SettingsError, cli
from specar.cli_output import write_json
from specar.continuous.types import ContinuousSettings
from specar.heatmap import save_png
from specar.types import SamplingSettings

BAD_SAMPLING = [  # (field, value, what the error says)
    ("cfg_scale", float("nan"), "cfg_scale must be a finite number"),
    ("cfg_scale", float("inf"), "cfg_scale must be a finite number"),
    ("cfg_scale", -1.0, "cfg_scale must be in"),
    ("cfg_scale", "2", "cfg_scale must be a number"),
    ("temperature", float("nan"), "temperature must be a finite number"),
    ("temperature", -0.5, "temperature must be in"),
    ("top_k", 2.5, "top_k must be a whole number"),
    ("top_k", True, "top_k must be a whole number"),
    ("top_k", -1, "top_k must be in"),
    ("top_p", float("nan"), "top_p must be a finite number"),
    ("top_p", 1.5, "top_p must be in"),
    ("seed", 2**70, "seed must be in"),
    ("seed", "7", "seed must be a whole number"),
    ("seed", 1.5, "seed must be a whole number"),
    ("greedy", "yes", "greedy must be True or False"),
]
BAD_CONTINUOUS = [
    ("cfg_scale", float("nan"), "cfg_scale must be a finite number"),
    ("temperature", float("inf"), "temperature must be a finite number"),
    ("temperature", 0.0, "temperature must be > 0"),
    ("num_iter", 2.5, "num_iter must be a whole number"),
    ("num_sampling_steps", 0, "num_sampling_steps must be in"),
    ("seed", -(2**70), "seed must be in"),
]


@pytest.mark.parametrize(("field", "value", "message"), BAD_SAMPLING, ids=lambda v: repr(v)[:20])
def test_sampling_settings_refuse_bad_values(field: str, value: object, message: str) -> None:
    with pytest.raises(SettingsError, match=message):
        SamplingSettings(**{field: value})


@pytest.mark.parametrize(("field", "value", "message"), BAD_CONTINUOUS, ids=lambda v: repr(v)[:20])
def test_continuous_settings_refuse_bad_values(field: str, value: object, message: str) -> None:
    with pytest.raises(SettingsError, match=message):
        ContinuousSettings(**{field: value})


def test_good_edge_values_pass() -> None:
    SamplingSettings(cfg_scale=0.0, temperature=0.0, greedy=True, top_k=0, top_p=1.0, seed=-(2**63))
    ContinuousSettings(num_iter=1, num_sampling_steps=1, seed=2**64 - 1)


@pytest.mark.parametrize(
    ("options", "message"),
    [
        (["--cfg", "nan"], "error: cfg_scale must be a finite number, got nan"),
        (["--temperature", "inf"], "error: temperature must be a finite number, got inf"),
        (["--model", "mar-demo", "--cfg", "nan"], "error: cfg_scale must be a finite number, got nan"),
    ],
)
def test_the_cli_refuses_non_finite_settings_in_one_line(
    options: list[str], message: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code = cli.main(["generate", "--out", str(tmp_path / "x.png"), "--quiet", *options])
    err = capsys.readouterr().err.strip()
    assert code == cli.EXIT_USAGE and err == message
    assert not (tmp_path / "x.png").exists()


@pytest.mark.parametrize(
    ("outputs", "message"),
    [
        (["--out", "{d}/x.png", "--stats", "{d}/x.png"], "--out and --stats both name"),
        (["--out", "{d}/x.jpg"], "SpecAR writes PNG pictures; name the file .png"),
        (["--out", "{d}/x.png", "--heatmap", "{d}/file.txt/heat.png"], "is not a writable folder"),
        (["--out", "{d}"], "is a folder; name a file in it"),
    ],
)
def test_output_paths_are_checked_before_any_model_loads(
    outputs: list[str], message: str, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch
) -> None:
    (tmp_path / "file.txt").write_text("not a folder")

    def no_loading(*args: object, **kwargs: object) -> None:
        raise AssertionError("a model was loaded before the outputs were checked")

    monkeypatch.setattr(cli, "load_model", no_loading)
    code = cli.main(["generate", "--quiet", *(part.format(d=tmp_path) for part in outputs)])
    assert code == cli.EXIT_USAGE and message in capsys.readouterr().err


def test_a_failed_picture_write_leaves_the_previous_file_whole(tmp_path: Path, monkeypatch) -> None:
    out = tmp_path / "out.png"
    save_png(Image.new("RGB", (4, 4), "red"), out)
    before = out.read_bytes()
    real_save = Image.Image.save

    def disk_full(self: Image.Image, fp: object, *args: object, **kwargs: object) -> None:
        real_save(self, fp, *args, **kwargs)
        Path(str(fp)).write_bytes(Path(str(fp)).read_bytes()[:10])  # a truncated write, then the error
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(Image.Image, "save", disk_full)
    with pytest.raises(OSError, match="No space left"):
        save_png(Image.new("RGB", (4, 4), "blue"), out)
    assert out.read_bytes() == before and sorted(p.name for p in tmp_path.iterdir()) == ["out.png"]


def test_stats_json_is_strict(tmp_path: Path) -> None:
    path = tmp_path / "stats.json"
    write_json(str(path), {"rate": float("nan"), "rows": [{"speed": math.inf}, 1.5], "name": "x"})

    def refuse(constant: str) -> None:
        raise ValueError(f"non-standard JSON constant {constant}")

    assert json.loads(path.read_text(), parse_constant=refuse) == {
        "rate": None,
        "rows": [{"speed": None}, 1.5],
        "name": "x",
    }
