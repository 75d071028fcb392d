"""The demo tokenizer: a k-means codebook of 2x2 RGB patches.

A 32x32 image becomes a 16x16 grid of codes (256 tokens, LlamaGen's sequence length at 256 px).
Encoding is nearest-centroid, decoding is a table lookup, and the centroids themselves are the
code vectors that latent-proximity policies compare; there is no decoder network to ship. On
these scenes a 512-code table reconstructs at about 32 dB PSNR and fits in seconds.

Patch vectors are 12 numbers in [-1, 1], ordered (row in patch, column in patch, channel).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch

from ..checkpoints import read_safetensors_metadata, read_state_dict, save_safetensors
from ..continuous.model import PatchPixels
from ..errors import CheckpointError
from ..sampling import MASS_EPSILON

PATCH = 2
CHANNELS = 3
PATCH_DIM = PATCH * PATCH * CHANNELS
MIN_SQUARED_ERROR = 1e-10  # identical images score a finite PSNR (about 148 dB)
CHUNK = 16384  # rows per distance computation; bounds memory at CHUNK x K floats


def images_to_patches(images: np.ndarray | torch.Tensor) -> torch.Tensor:
    """``uint8 [B, H, W, 3]`` -> patch vectors ``[B, (H/2)*(W/2), 12]`` in [-1, 1], raster order."""
    return PatchPixels(PATCH).tokens(torch.as_tensor(images))


def _nearest(points: torch.Tensor, centroids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Index of and squared distance to the nearest centroid for every row of ``points [N, D]``."""
    c_sq = (centroids * centroids).sum(1)
    idx, dist = [], []
    for chunk in points.split(CHUNK):
        best, arg = torch.addmm(c_sq, chunk, centroids.T, alpha=-2.0).min(1)
        idx.append(arg)
        dist.append((best + (chunk * chunk).sum(1)).clamp_min(0))
    return torch.cat(idx), torch.cat(dist)


class PatchCodebook:
    """K x 12 patch centroids implementing the engine's PixelDecoder protocol."""

    def __init__(self, centroids: torch.Tensor) -> None:
        if centroids.dim() != 2 or centroids.shape[1] != PATCH_DIM:
            raise CheckpointError(f"patch codebook must be [K, {PATCH_DIM}], got {list(centroids.shape)}")
        self.centroids = centroids.float()

    @property
    def size(self) -> int:
        return self.centroids.shape[0]

    def to(self, device: torch.device | str) -> "PatchCodebook":
        return PatchCodebook(self.centroids.to(device))

    def codebook_vectors(self, codes: torch.Tensor) -> torch.Tensor:
        return self.centroids[codes.to(self.centroids.device)]

    def encode(self, images: np.ndarray | torch.Tensor) -> torch.Tensor:
        """``uint8 [B, H, W, 3]`` -> codes ``int64 [B, (H/2)*(W/2)]`` (nearest centroid)."""
        patches = images_to_patches(images).to(self.centroids.device)
        idx, _ = _nearest(patches.flatten(0, 1), self.centroids)
        return idx.view(patches.shape[0], patches.shape[1])

    def decode(self, codes: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
        """Codes ``[B, h*w]`` -> float images ``[B, 3, 2h, 2w]`` in [-1, 1]."""
        h, w = grid
        x = self.codebook_vectors(codes).view(-1, h, w, PATCH, PATCH, CHANNELS)
        x = x.permute(0, 5, 1, 3, 2, 4).reshape(-1, CHANNELS, h * PATCH, w * PATCH)
        return x.clamp(-1.0, 1.0)

    def save(self, path: str | Path) -> None:
        save_safetensors({"centroids": self.centroids}, path, config={"kind": "patch_codebook", "patch": PATCH})

    @staticmethod
    def load(path: str | Path) -> "PatchCodebook":
        state = read_state_dict(path)
        config = json.loads(read_safetensors_metadata(path).get("config", "{}"))
        if "centroids" not in state or config.get("kind") != "patch_codebook":
            raise CheckpointError(
                f"{Path(path).name} is not a demo patch codebook (no 'centroids' / patch_codebook config)"
            )
        return PatchCodebook(state["centroids"])


def _kmeans_pp(points: torch.Tensor, k: int, gen: torch.Generator) -> torch.Tensor:
    """k-means++ seeding: each new centre is drawn with probability proportional to D^2."""
    first = int(torch.randint(len(points), (1,), generator=gen))
    centres = [points[first]]
    dist = ((points - points[first]) ** 2).sum(1)
    for _ in range(k - 1):
        pick = int(torch.multinomial(dist + MASS_EPSILON, 1, generator=gen))  # all-zero distances still draw
        centres.append(points[pick])
        dist = torch.minimum(dist, ((points - points[pick]) ** 2).sum(1))
    return torch.stack(centres)


def _lloyd(points: torch.Tensor, centres: torch.Tensor, iterations: int) -> torch.Tensor:
    """Full-batch Lloyd updates; an empty cluster is re-seeded at the worst-fitted point."""
    k = centres.shape[0]
    for _ in range(iterations):
        idx, dist = _nearest(points, centres)
        counts = torch.bincount(idx, minlength=k).float()
        sums = torch.zeros_like(centres).index_add_(0, idx, points)
        new = sums / counts.clamp_min(1)[:, None]
        for empty in torch.nonzero(counts == 0).flatten().tolist():
            worst = int(dist.argmax())
            new[empty], dist[worst] = points[worst], 0.0
        centres = new
    return centres


def fit_codebook(
    images: np.ndarray | torch.Tensor,
    k: int = 512,
    seed: int = 0,
    max_patches: int = 200_000,
    iterations: int = 15,
    seed_patches: int = 20_000,
) -> PatchCodebook:
    """Fit a patch codebook on ``images uint8 [B, H, W, 3]``; deterministic in (images, k, seed).

    k-means++ seeds from a ``seed_patches`` subsample (its cost grows with k x points), then Lloyd
    refines on up to ``max_patches`` patches.
    """
    gen = torch.Generator().manual_seed(seed)
    points = images_to_patches(images).flatten(0, 1)
    points = points[torch.randperm(len(points), generator=gen)[:max_patches]]
    if len(points) < k:
        raise CheckpointError(f"cannot fit {k} codes on {len(points)} patches; give more images")
    centres = _kmeans_pp(points[:seed_patches], k, gen)
    return PatchCodebook(_lloyd(points, centres, iterations))


def psnr(a: np.ndarray | torch.Tensor, b: np.ndarray | torch.Tensor) -> float:
    """Peak signal-to-noise ratio in dB between two uint8 image batches."""
    err = (torch.as_tensor(a).float() - torch.as_tensor(b).float()).pow(2).mean()
    return float(10 * torch.log10(255.0**2 / err.clamp_min(MIN_SQUARED_ERROR)))


__all__ = ["PatchCodebook", "fit_codebook", "images_to_patches", "psnr"]
