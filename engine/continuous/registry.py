"""Finding and loading continuous-token models by name or path.

``mar-demo`` and ``mar-demo-drafter`` are the bundled pair; a ``.safetensors`` file written by
:func:`~.checkpoint.save_mar` loads with the pixel decoder its header names; an official MAR
``checkpoint-last.pth`` (family ``mar``) needs MAR's KL-16 VAE, found beside it or given with
``vae_path``.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import torch

from ..checkpoints import read_safetensors_metadata
from ..errors import CheckpointError
from ..models.registry import resolve_device
from .checkpoint import KIND, read_mar
from .kl_vae import load_kl_vae
from .model import MARTokenModel, PatchPixels

DEMO_ROLES = {"mar-demo": "target", "mar-demo-drafter": "drafter"}
VAE_NAMES = ("kl16.ckpt", "kl16.safetensors", "vae/kl16.ckpt", "vae/kl16.safetensors")


def is_continuous(spec: str | Path, family: str = "auto") -> bool:
    """Whether ``spec`` names a continuous-token model (so the MAR code path loads it)."""
    if family == "mar" or str(spec) in DEMO_ROLES:
        return True
    path = Path(spec)
    if path.suffix.lower() != ".safetensors" or not path.is_file():
        return False
    try:
        return json.loads(read_safetensors_metadata(path).get("config", "{}") or "{}").get("kind") == KIND
    except (CheckpointError, json.JSONDecodeError):
        return False


def _find_vae(checkpoint: Path, vae_path: str | Path | None) -> Path:
    if vae_path is not None:
        return Path(vae_path)
    for base in (checkpoint.parent, checkpoint.parent.parent):
        for name in VAE_NAMES:
            if (base / name).is_file():
                return base / name
    raise CheckpointError(
        f"{checkpoint.name} makes KL-16 VAE latents; give the VAE (MAR's kl16.ckpt) with --vae PATH "
        "or put it beside the checkpoint"
    )


def load_continuous_model(
    spec: str | Path, device: str | torch.device = "auto", vae_path: str | Path | None = None, heads: int | None = None
) -> MARTokenModel:
    """A :class:`MARTokenModel` for a bundled name, one of our files, or an official MAR checkpoint."""
    dev = resolve_device(device)
    if str(spec) in DEMO_ROLES:
        from ..demo.continuous import load_mar_demo

        return load_mar_demo(DEMO_ROLES[str(spec)], device=dev)
    path = Path(spec)
    if path.is_dir():
        candidates = sorted(path.glob("checkpoint*.pth")) + sorted(path.glob("*.safetensors"))
        if not candidates:
            raise CheckpointError(f"{path} holds no MAR checkpoint (checkpoint*.pth or *.safetensors)")
        path = candidates[0]
    mar, meta = read_mar(path, heads)
    if meta.get("pixels", "patch") == "patch" and path.suffix.lower() == ".safetensors":
        patch = math.isqrt(mar.cfg.token_dim // 3)
        if 3 * patch * patch != mar.cfg.token_dim:
            raise CheckpointError(
                f"{path.name}: {mar.cfg.token_dim}-channel tokens are not RGB patches; "
                "write the file with pixels='vae' and give --vae"
            )
        model = MARTokenModel(
            mar,
            PatchPixels(patch),
            name=path.stem,
            clip_x0=1.0,
            class_names=tuple(meta["class_names"]) if "class_names" in meta else None,
        )
    else:
        decoder = load_kl_vae(_find_vae(path, vae_path), dev)
        model = MARTokenModel(mar, decoder, name=path.stem)
    return model.to(dev)


__all__ = ["is_continuous", "load_continuous_model", "DEMO_ROLES"]
