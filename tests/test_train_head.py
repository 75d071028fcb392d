"""``specar train-head`` end to end for every discrete family: draw, train, write, load, draft losslessly.

Each tiny random-weight target draws a few images, a head trains for a few steps, and the written
file loads with ``load_tree_head`` and drafts: greedy tokens equal plain AR's exactly (a head of any
quality must not change them). The demo run also covers CASCADE's redundancy variant, resuming, and
the refusals.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Callable

import pytest
import torch
from tiny import TINY, tiny_gpt, tiny_model_dir
from tiny_hf import build_tiny_chameleon, build_tiny_emu3, build_tiny_janus, build_tiny_llamagen_t2i

from specar import Conditioning, SamplingSettings, TreeHeadDrafts, TreeShape, generate, load_model, load_tree_head
from specar.checkpoints import read_safetensors_metadata
from specar.cli import main
from specar.lab.self_drawn import chunk_path, read_drawn

# family -> (tiny model folder builder, image size asked for: the smallest these families draw)
FAMILIES: dict[str, tuple[Callable[[Path], Path], int | None]] = {
    "llamagen-c2i": (lambda root: tiny_model_dir(root, tiny_gpt(0), TINY["n_head"], with_vq=True), None),
    "llamagen-t2i": (lambda root: build_tiny_llamagen_t2i(root / "t2i"), None),
    "janus": (lambda root: build_tiny_janus(root / "janus"), None),
    "lumina-mgpt": (lambda root: build_tiny_chameleon(root / "lumina", lumina=True), 128),
    "anole": (lambda root: build_tiny_chameleon(root / "anole", lumina=False), 128),
    "emu3": (lambda root: build_tiny_emu3(root / "emu3"), 16),
}
PROMPTS = "a red cat on the grass\nblue sky\n\n"
SMALL_RUN = "--images 6 --val-images 2 --steps 2 --batch 2 --draw-batch 4 --lr 1e-3 --check-images 1".split()


def _train(tmp_path: Path, model: str, *extra: str) -> Path:
    out = tmp_path / "head"
    assert main(["train-head", "--model", model, "--device", "cpu", *SMALL_RUN, "--out", str(out), *extra]) == 0
    return out


def _condition(model: object) -> Conditioning:
    if getattr(model, "conditioning_kind") == "class":
        return Conditioning.classes([1, 0])
    return Conditioning(prompts=("a red cat on the grass", "blue sky"))


@pytest.mark.parametrize("family", list(FAMILIES))
def test_a_trained_head_loads_and_drafts_losslessly_for_every_family(family: str, tmp_path: Path) -> None:
    build, image_size = FAMILIES[family]
    folder = build(tmp_path / "model")
    extra = [] if image_size is None else ["--image-size", str(image_size)]
    if family != "llamagen-c2i":
        (tmp_path / "prompts.txt").write_text(PROMPTS)
        extra += ["--prompts", str(tmp_path / "prompts.txt")]
    out = _train(tmp_path, str(folder), *extra)
    record = json.loads((out / "training.json").read_text())
    assert record["train_steps"] == 2 and 0.0 <= record["validation"]["top1"] <= 1.0
    assert record["drafting_check"]["tokens_per_forward"] >= 1.0
    header = json.loads(read_safetensors_metadata(out / "tree_head.safetensors")["config"])
    assert header["kind"] == "specar-tree-head" and header["validation"] == record["validation"]

    target = load_model(folder, device="cpu", dtype="fp32", image_size=image_size)
    head = load_tree_head(out / "tree_head.safetensors", target)
    cond = _condition(target)
    greedy = SamplingSettings(greedy=True, cfg_scale=target.default_settings.cfg_scale)
    plain = generate(target, cond, greedy)
    drafted = generate(target, cond, greedy, TreeHeadDrafts(head, TreeShape(nodes=8)))
    assert torch.equal(drafted.tokens, plain.tokens)
    assert drafted.drafter_forwards > 0


def test_demo_recipe_resumes_and_trains_cascade_s_variant(tmp_path: Path) -> None:
    out = _train(tmp_path, "demo", "--redundancy", "0.95", "--alternatives", "2", "--check-images", "0")
    assert (out / "redundancy-tau0.95-m2.safetensors").is_file()
    tokens, conditions = read_drawn(out / "data", 6)
    assert tokens.shape == (6, 256) and conditions.tolist() == [0, 1, 2, 3, 4, 5]
    first = (out / "tree_head.safetensors").read_bytes()

    again = ["train-head", *SMALL_RUN, "--out", str(out), "--redundancy", "0.95", "--alternatives", "2"]
    again += ["--check-images", "0"]
    assert main(again) == 2  # a checkpoint is there: resume it or choose another folder, never overwrite it
    chunk = chunk_path(out / "data", 0).stat().st_mtime_ns
    assert main([*again, "--resume"]) == 0  # drawn chunks and the finished checkpoint are kept
    assert chunk_path(out / "data", 0).stat().st_mtime_ns == chunk
    assert (out / "tree_head.safetensors").read_bytes() == first


def test_refusals_are_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = str(tmp_path / "head")
    cases = [
        (["--images", "4", "--val-images", "4"], "hold out at least one image and leave at least one"),
        (["--prompts", str(tmp_path / "p.txt")], "is class-conditional: give --class-id numbers"),
        (["--class-id", "99"], "has classes 0..15; got 99"),
        (["--model", "mar-demo"], "generates continuous tokens"),
        (["--redundancy", "1.5"], "--redundancy is a cosine similarity in (0, 1]"),
    ]
    for extra, message in cases:
        args = ["train-head", "--steps", "1", "--out", out, *extra]
        assert main(args) == 2, extra
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and message in err[0], err
    _train(tmp_path, "demo", "--check-images", "0")
    drawn_again = ["train-head", *SMALL_RUN, "--seed", "5", "--out", out]
    assert main(drawn_again) == 2
    assert "holds images drawn with another --seed: choose another --out" in capsys.readouterr().err


def test_a_loss_that_turns_nan_stops_the_run_before_a_head_is_written(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A head of NaN weights must never be written as if trained: a diverging run stops with one line."""
    out = tmp_path / "head"
    args = ["train-head", "--model", "demo", "--device", "cpu", *SMALL_RUN, "--steps", "4", "--out", str(out)]
    assert main([*args, "--lr", "1e30"]) == 2
    errors = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "the head's loss became NaN or infinite at step 2: training diverged" in errors[0]
    assert not (out / "tree_head.safetensors").exists()
