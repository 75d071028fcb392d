"""The demo model's data side: scene generator, prompts, patch codebook, training script, loader."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from specar import Conditioning, generate, load_model
from specar.checkpoints import read_safetensors_metadata, read_state_dict
from specar.demo.training import train
from specar.demo.codebook import PatchCodebook, fit_codebook, psnr
from specar.demo.model import DEMO_SETTINGS, WEIGHTS_DIR as WEIGHTS, load_demo, load_demo_drafter
from specar.demo.scenes import (
    CLASS_NAMES,
    COLOUR_RGB,
    NUM_CLASSES,
    SHAPES,
    class_id,
    colour_of,
    parse_prompt,
    render_batch,
    sample_scenes,
    shape_of,
)
from specar.errors import CheckpointError, SettingsError
from specar.models.base import to_uint8

SATURATED = 85  # max-min channel spread: objects are above it, the desaturated backgrounds below


def _object_mask(image: np.ndarray) -> np.ndarray:
    spread = image.astype(int).max(-1) - image.astype(int).min(-1)
    return spread > SATURATED


def _measured_shape(mask: np.ndarray) -> str:
    """Shape from the object's mask: a ring is empty at its centre, the rest differ in box fill."""
    ys, xs = np.nonzero(mask)
    cy, cx = (ys.min() + ys.max()) // 2, (xs.min() + xs.max()) // 2
    if not mask[cy, cx]:
        return "ring"
    fill = mask.sum() / ((np.ptp(ys) + 1) * (np.ptp(xs) + 1))
    return "square" if fill > 0.88 else "circle" if fill > 0.66 else "triangle"


def test_scenes_are_deterministic_in_the_seed() -> None:
    ids = list(range(NUM_CLASSES))
    a, b = render_batch(ids, seed=7), render_batch(ids, seed=7)
    assert a.dtype == np.uint8 and a.shape == (NUM_CLASSES, 32, 32, 3)
    assert np.array_equal(a, b)
    assert not np.array_equal(a, render_batch(ids, seed=8))
    images, labels = sample_scenes(32, seed=3)
    again, labels_again = sample_scenes(32, seed=3)
    assert np.array_equal(images, again) and np.array_equal(labels, labels_again)
    assert np.array_equal(images, render_batch(labels, seed=3))


@pytest.mark.parametrize("cid", range(NUM_CLASSES))
def test_each_class_draws_its_colour_and_shape(cid: int) -> None:
    for image in render_batch([cid] * 6, seed=100 + cid):
        mask = _object_mask(image)
        assert mask.sum() > 20, "the object is visible"
        ys, xs = np.nonzero(mask)
        mean = image[mask].astype(np.float32).mean(0)
        assert int(np.argmin(np.abs(COLOUR_RGB - mean).sum(1))) == colour_of(cid)
        assert _measured_shape(mask) == SHAPES[shape_of(cid)]
        background = image[~mask].astype(int)
        assert (background.max(-1) - background.min(-1)).mean() < 55, "background is desaturated"


def test_prompts_map_to_classes() -> None:
    assert CLASS_NAMES[class_id("red", "ring")] == "red ring"
    assert parse_prompt("red ring") == class_id("red", "ring")
    assert parse_prompt("  A  Yellow   Triangle ") == class_id("yellow", "triangle")
    assert [parse_prompt(name) for name in CLASS_NAMES] == list(range(NUM_CLASSES))
    with pytest.raises(SettingsError, match="valid prompts: red circle"):
        parse_prompt("purple ring")


@pytest.fixture(scope="module")
def small_codebook(tmp_path_factory: pytest.TempPathFactory) -> Path:
    images, _ = sample_scenes(200, seed=11)
    path = tmp_path_factory.mktemp("codebook") / "codebook.safetensors"
    fit_codebook(images, k=64, seed=0, iterations=8).save(path)
    return path


def test_codebook_round_trip(small_codebook: Path) -> None:
    codebook = PatchCodebook.load(small_codebook)
    held_out, _ = sample_scenes(8, seed=12)
    codes = codebook.encode(held_out)
    assert codes.shape == (8, 256) and codes.dtype == torch.long and int(codes.max()) < 64
    pixels = codebook.decode(codes, (16, 16))
    assert pixels.shape == (8, 3, 32, 32) and float(pixels.abs().max()) <= 1.0
    assert psnr(to_uint8(pixels), held_out) > 25.0
    assert codebook.codebook_vectors(codes).shape == (8, 256, 12)
    assert torch.equal(codebook.encode(to_uint8(pixels)), codes), "decoded codes re-encode to themselves"


def test_fitting_is_deterministic() -> None:
    images, _ = sample_scenes(40, seed=5)
    a, b = fit_codebook(images, k=16, seed=1, iterations=3), fit_codebook(images, k=16, seed=1, iterations=3)
    assert torch.equal(a.centroids, b.centroids)


TINY_ARGS = [
    "--role",
    "drafter",
    "--steps",
    "3",
    "--batch",
    "4",
    "--dim",
    "32",
    "--n-head",
    "2",
    "--ffn-hidden",
    "64",
    "--val-images",
    "8",
    "--no-compile",
]


def test_training_script_runs_and_resumes(tmp_path: Path, small_codebook: Path) -> None:
    runs = []
    for name in ("a", "b"):
        train.main(TINY_ARGS + ["--out", str(tmp_path / name), "--codebook", str(small_codebook)])
        runs.append(read_state_dict(tmp_path / name / "drafter.safetensors"))
    assert runs[0].keys() == runs[1].keys()
    assert all(torch.equal(runs[0][k], runs[1][k]) for k in runs[0]), "training is deterministic"
    model = load_model(tmp_path / "a" / "drafter.safetensors", device="cpu")
    assert model.vocab_size == 64 and model.grid == (16, 16) and model.num_classes == NUM_CLASSES
    train.main(TINY_ARGS + ["--out", str(tmp_path / "a"), "--codebook", str(small_codebook), "--resume"])
    resumed = read_state_dict(tmp_path / "a" / "drafter.safetensors")
    assert all(torch.equal(resumed[k], runs[0][k]) for k in resumed), "a finished run resumes as finished"
    train.main(
        TINY_ARGS
        + [
            "--out",
            str(tmp_path / "c"),
            "--codebook",
            str(small_codebook),
            "--seed",
            "1",
            "--init",
            str(tmp_path / "a" / "drafter-state.safetensors"),
        ]
    )
    assert read_state_dict(tmp_path / "c" / "drafter.safetensors").keys() == resumed.keys()


def test_distillation_from_a_teacher(tmp_path: Path, small_codebook: Path) -> None:
    train.main(TINY_ARGS + ["--out", str(tmp_path / "teacher"), "--codebook", str(small_codebook)])
    teacher = tmp_path / "teacher" / "drafter.safetensors"
    args = TINY_ARGS + ["--codebook", str(small_codebook), "--teacher", str(teacher)]
    train.main(args + ["--out", str(tmp_path / "student")])
    meta = json.loads(read_safetensors_metadata(tmp_path / "student" / "drafter-state.safetensors")["config"])
    assert meta["teacher"] == "drafter.safetensors"
    plain = read_state_dict(tmp_path / "teacher" / "drafter.safetensors")
    distilled = read_state_dict(tmp_path / "student" / "drafter.safetensors")
    assert not torch.equal(plain["output.weight"], distilled["output.weight"]), "the soft targets changed training"
    with pytest.raises(SystemExit, match="vocab_size"):  # the shipped target has 512 codes, this codebook 64
        train.main(args[:-1] + [str(WEIGHTS / "target.safetensors"), "--out", str(tmp_path / "bad")])


def test_load_demo(tmp_path: Path, small_codebook: Path) -> None:
    with pytest.raises(CheckpointError, match="not built yet"):
        load_demo(tmp_path)
    train.main(TINY_ARGS + ["--out", str(tmp_path), "--codebook", str(small_codebook)])
    shutil.copy(small_codebook, tmp_path / "codebook.safetensors")
    drafter = load_demo_drafter(tmp_path, device="cpu")
    assert drafter.class_names == CLASS_NAMES
    assert drafter.default_settings == DEMO_SETTINGS
    out = generate(drafter, Conditioning.classes([parse_prompt("blue square")]), DEMO_SETTINGS.with_(seed=1))
    assert drafter.decode(out.tokens).shape == (1, 32, 32, 3)


def test_bf16_autocast_defaults_to_where_the_device_multiplies_bf16_natively(small_codebook: Path) -> None:
    """Emulated bf16 is many times slower than fp32, so the trainers autocast by default only on hardware with
    bf16 matmuls; ``--bf16``/``--no-bf16`` choose either way."""
    from specar.demo.training import native_bf16, train_mar

    cpu = torch.device("cpu")
    base = TINY_ARGS + ["--codebook", str(small_codebook)]
    assert train.Trainer(train.parse_args(base)).amp == native_bf16(cpu)
    assert train.Trainer(train.parse_args(base + ["--bf16"])).amp is True
    assert train.Trainer(train.parse_args(base + ["--no-bf16"])).amp is False
    mar = ["--role", "drafter", "--steps", "2"]
    assert train_mar.MARTrainer(train_mar.parse_args(mar)).amp == native_bf16(cpu)
    assert train_mar.MARTrainer(train_mar.parse_args(mar + ["--bf16"])).amp is True
    assert native_bf16(torch.device("meta")) is False
