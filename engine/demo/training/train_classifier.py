"""Train the scene classifier behind the demo quality metrics, and its real-data reference statistics.

    python -m specar.demo.training.train_classifier --out out/classifier   # then copy it into engine/demo/weights

Deterministic for a given seed and thread count: images come from ``scenes`` with fixed seeds
(training, held-out and reference sets use disjoint ones), and torch is seeded. Every model sample
is a codebook decode, so half of each batch goes through a 2x2-patch k-means round trip; the
classifier then judges content rather than tokenizer artefacts. The reference statistics are
computed on clean real images, which the metrics compare samples against.
"""

from __future__ import annotations

import argparse
import math
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn

from ...checkpoints import save_safetensors
from ..codebook import PatchCodebook, fit_codebook
from ...lab.demo_evaluator import (
    CLASSIFIER_FILE,
    CLASSIFIER_KIND,
    REFERENCE_FILE,
    REFERENCE_KIND,
    WIDTHS,
    SceneClassifier,
    frechet_distance,
    gaussian_stats,
    to_model_input,
)
from ..scenes import IMAGE_SIZE, sample_scenes

TRAIN_SEED, HELDOUT_SEED, REFERENCE_SEED = 1_000, 2_000, 3_000  # offsets added to --seed
CODEBOOK_IMAGES = 4_000  # images the augmentation codebook is fitted on
CHUNK = 2_000  # images per rendering / round-trip / inference call, to bound memory
PATCH_GRID = (IMAGE_SIZE // 2, IMAGE_SIZE // 2)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="python -m specar.demo.training.train_classifier", description=__doc__.split("\n")[0]
    )
    p.add_argument("--out", type=Path, default=Path("out/classifier"), help="output folder (copy it to ship it)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--train-size", type=int, default=24_000)
    p.add_argument("--heldout-size", type=int, default=4_000)
    p.add_argument("--reference-size", type=int, default=10_000)
    p.add_argument("--epochs", type=int, default=6)
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--lr", type=float, default=3e-3)
    p.add_argument("--max-steps", type=int, default=None, help="stop early (smoke tests)")
    p.add_argument("--codebook", type=Path, default=None, help="patch codebook for the round trip; default: fit one")
    p.add_argument("--codebook-size", type=int, default=512, help="codes when fitting the round-trip codebook")
    p.add_argument("--threads", type=int, default=1)
    return p.parse_args(argv)


def render(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """``n`` real scenes in chunks with derived seeds -> ``(uint8 [n,32,32,3], class ids [n])``."""
    parts = [sample_scenes(min(CHUNK, n - start), seed * 10_000 + i) for i, start in enumerate(range(0, n, CHUNK))]
    return np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts])


def _chunks(images: np.ndarray) -> list[np.ndarray]:
    return np.array_split(images, max(1, math.ceil(len(images) / CHUNK)))


def round_trip(images: np.ndarray, codebook: PatchCodebook) -> np.ndarray:
    """Encode and decode through the patch codebook, back to ``uint8 [B,32,32,3]``."""
    out = []
    for chunk in _chunks(images):
        x = codebook.decode(codebook.encode(chunk), PATCH_GRID)
        out.append(((x + 1) * 127.5).round().clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1).numpy())
    return np.concatenate(out)


def train(
    model: SceneClassifier, clean: np.ndarray, coded: np.ndarray, labels: np.ndarray, args: argparse.Namespace
) -> int:
    """AdamW with cosine decay; each sample is drawn clean or round-tripped with probability 1/2."""
    gen = torch.Generator().manual_seed(args.seed)
    steps_per_epoch = math.ceil(len(clean) / args.batch_size)
    total = steps_per_epoch * args.epochs
    if args.max_steps is not None:
        total = min(total, args.max_steps)
    opt = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=1e-4)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 0.5 * (1 + math.cos(math.pi * s / total)))
    clean_t, coded_t, labels_t = torch.from_numpy(clean), torch.from_numpy(coded), torch.from_numpy(labels)
    loss_fn = nn.CrossEntropyLoss()
    model.train()
    step = 0
    while step < total:
        for idx in torch.randperm(len(clean), generator=gen).split(args.batch_size):
            use_coded = (torch.rand(len(idx), generator=gen) < 0.5)[:, None, None, None]
            x = to_model_input(torch.where(use_coded, coded_t[idx], clean_t[idx]))
            loss = loss_fn(model(x), labels_t[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            step += 1
            if step % 200 == 0 or step == total:
                print(f"step {step}/{total} loss {loss.item():.4f}", flush=True)
            if step == total:
                break
    model.eval()
    return step


@torch.no_grad()
def infer(model: SceneClassifier, images: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
    """Features and predicted class ids of ``images``, batched."""
    feats = torch.cat([model.features(to_model_input(c)) for c in _chunks(images)])
    return feats, model.head(feats).argmax(1)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    start = time.perf_counter()
    train_x, train_y = render(args.train_size, args.seed + TRAIN_SEED)
    held_x, held_y = render(args.heldout_size, args.seed + HELDOUT_SEED)
    ref_x, _ = render(args.reference_size, args.seed + REFERENCE_SEED)
    if args.codebook is not None:
        codebook, codebook_note = PatchCodebook.load(args.codebook), args.codebook.name
    else:
        codebook = fit_codebook(train_x[:CODEBOOK_IMAGES], k=args.codebook_size, seed=args.seed)
        codebook_note = f"fitted: k={args.codebook_size}, seed={args.seed}, {CODEBOOK_IMAGES} training images"
    train_coded, held_coded = round_trip(train_x, codebook), round_trip(held_x, codebook)
    print(f"data ready in {time.perf_counter() - start:.1f} s", flush=True)

    model = SceneClassifier()
    steps = train(model, train_x, train_coded, train_y, args)
    held_y_t = torch.from_numpy(held_y)
    acc_clean = float((infer(model, held_x)[1] == held_y_t).double().mean())
    acc_coded = float((infer(model, held_coded)[1] == held_y_t).double().mean())
    ref_mean, ref_cov = gaussian_stats(infer(model, ref_x)[0])
    fid_held = frechet_distance(*gaussian_stats(infer(model, held_x)[0]), ref_mean, ref_cov)
    fid_coded = frechet_distance(*gaussian_stats(infer(model, held_coded)[0]), ref_mean, ref_cov)
    elapsed = time.perf_counter() - start

    args.out.mkdir(parents=True, exist_ok=True)
    config = {
        "kind": CLASSIFIER_KIND,
        "widths": list(WIDTHS),
        "input": "uint8 RGB / 127.5 - 1, NCHW",
        "seed": args.seed,
        "train_size": args.train_size,
        "epochs": args.epochs,
        "steps": steps,
        "batch_size": args.batch_size,
        "lr": args.lr,
        "round_trip_codebook": codebook_note,
        "heldout_size": args.heldout_size,
        "heldout_accuracy": acc_clean,
        "heldout_accuracy_round_trip": acc_coded,
    }
    save_safetensors(model.state_dict(), args.out / CLASSIFIER_FILE, config=config)
    save_safetensors(
        {"mean": ref_mean, "cov": ref_cov},
        args.out / REFERENCE_FILE,
        config={
            "kind": REFERENCE_KIND,
            "n": args.reference_size,
            "render_seed": args.seed + REFERENCE_SEED,
            "images": "clean real scenes from train_classifier.render(n, render_seed)",
        },
    )
    print(f"held-out accuracy: {acc_clean:.4f} clean, {acc_coded:.4f} round-trip (n={args.heldout_size})")
    print(f"FID-lite vs reference: held-out {fid_held:.3f}, held-out round-trip {fid_coded:.3f}")
    print(f"wrote {args.out / CLASSIFIER_FILE} and {args.out / REFERENCE_FILE} in {elapsed:.0f} s ({steps} steps)")


if __name__ == "__main__":
    main()
