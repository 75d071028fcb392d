"""Self-generated training data for the demo's tree head: images the demo target drew itself.

    python -m specar.demo.training.tree_head_data --images 6000 --out out/tree-head-data --threads 1

EAGLE-style heads learn to predict the target's next hidden state, so they are trained on what
the target actually generates at its sampling settings (LANTERN self-distils the same way). The
target draws ``--images`` images, an even share of every class, with the demo settings; tokens
and class ids are written in chunks (``chunk_00000.safetensors``...), so an interrupted run
resumes where it stopped. Hidden states are not stored: the trainer recomputes them with one
teacher-forced forward, which is cheaper than reading them from disk.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch

from ...checkpoints import read_state_dict, save_safetensors
from ...loop import generate
from ...types import Conditioning
from ..model import DEMO_SETTINGS, load_demo

CHUNK = 64  # images per generated batch and per file


def chunk_path(out: Path, index: int) -> Path:
    return out / f"chunk_{index:05d}.safetensors"


def generate_chunks(out: Path, images: int, seed: int, weights_dir: Path | None = None) -> None:
    """Write ``ceil(images / CHUNK)`` chunks of target samples to ``out``; existing chunks are kept."""
    out.mkdir(parents=True, exist_ok=True)
    target = load_demo(weights_dir, device="cpu")
    classes = target.num_classes or 1
    for index in range(-(-images // CHUNK)):
        path = chunk_path(out, index)
        if path.is_file():
            continue
        started = time.perf_counter()
        ids = [(index * CHUNK + i) % classes for i in range(CHUNK)]
        result = generate(target, Conditioning.classes(ids), DEMO_SETTINGS.with_(seed=seed + index))
        save_safetensors({"tokens": result.tokens.to(torch.int16), "class_ids": torch.tensor(ids)}, path)
        print(f"chunk {index}: {CHUNK} images in {time.perf_counter() - started:.1f} s", flush=True)


def read_chunks(directory: Path) -> tuple[torch.Tensor, torch.Tensor]:
    """All chunks of ``directory`` as (tokens [n, N] long, class ids [n] long)."""
    paths = sorted(directory.glob("chunk_*.safetensors"))
    if not paths:
        raise FileNotFoundError(
            f"no chunk_*.safetensors in {directory}: run python -m specar.demo.training.tree_head_data first"
        )
    parts = [read_state_dict(p) for p in paths]
    return (torch.cat([p["tokens"].long() for p in parts]), torch.cat([p["class_ids"].long() for p in parts]))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=6000)
    parser.add_argument("--out", type=Path, default=Path("out/tree-head-data"))
    parser.add_argument("--seed", type=int, default=100_000, help="seeds differ from every benchmark's (0..)")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    generate_chunks(args.out, args.images, args.seed)


if __name__ == "__main__":
    main()
