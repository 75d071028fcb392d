"""The tree head's data and training scripts run end to end on a few of the demo target's samples."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from specar import Conditioning, generate
from specar.demo.model import DEMO_SETTINGS, load_demo
from specar.demo.training.train_tree_head import main as train_main
from specar.demo.training.tree_head_data import CHUNK, generate_chunks, read_chunks
from specar.drafts.tree_drafts import TreeHeadDrafts, TreeShape
from specar.drafts.tree_head import load_tree_head


def test_data_then_training_then_drafting(tmp_path: Path) -> None:
    data = tmp_path / "data"
    generate_chunks(data, CHUNK, seed=7)
    tokens, class_ids = read_chunks(data)
    assert tokens.shape == (CHUNK, 256) and class_ids.tolist()[:3] == [0, 1, 2]
    generate_chunks(data, CHUNK, seed=7)  # resumes: the existing chunk is kept, not redrawn
    assert torch.equal(read_chunks(data)[0], tokens)
    out = tmp_path / "head"
    train_main(
        [
            "--data",
            str(data),
            "--out",
            str(out),
            "--steps",
            "2",
            "--batch",
            "4",
            "--val-images",
            "8",
            "--redundancy",
            "0.95",
            "--alternatives",
            "2",
            "--log-seconds",
            "0",
        ]
    )
    assert (out / "redundancy-tau0.95-m2.safetensors").is_file()
    target = load_demo(device="cpu")
    head = load_tree_head(out / "tree_head.safetensors", target)
    result = generate(target, Conditioning.classes([1]), DEMO_SETTINGS, draft=TreeHeadDrafts(head, TreeShape(nodes=12)))
    assert result.finished and result.drafter_forwards > 0
    with pytest.raises(SystemExit, match=f"error: .* holds {CHUNK} images: --val-images {CHUNK} must leave some"):
        train_main(["--data", str(data), "--out", str(out), "--steps", "1", "--val-images", str(CHUNK)])
