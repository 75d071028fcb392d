"""The continuous demo pair: a small MAR target and a smaller MAR draft over a small KL VAE's latents.

Tokens are the 4-d latents of 4x4 patches on the 8x8 grid of a 32x32 scene, decoded by the demo's
KL VAE as MAR's tokens are by its KL-16 VAE. All three were trained by :mod:`.training.train_vae`
and :mod:`.training.train_mar` on the procedural scenes; the evaluator of the discrete demo (class
accuracy, FID-lite) reads the decoded pixels.
"""

from __future__ import annotations

from pathlib import Path

import torch

from ..continuous.checkpoint import read_mar
from ..continuous.kl_vae import load_kl_vae
from ..continuous.model import MARTokenModel
from ..continuous.types import ContinuousSettings
from ..errors import CheckpointError
from ..models.registry import resolve_device
from .scenes import CLASS_NAMES
from .paths import WEIGHTS_DIR

FILES = {"target": "mar_target.safetensors", "drafter": "mar_drafter.safetensors"}
VAE_FILE = "mar_vae.safetensors"
# Two tokens per MAR step (MAR draws 256 tokens in 64 steps), where the target's passes rather than its head
# dominate the time, as with real MAR sizes; 10 head denoising steps (MAR: 100) draw these 4-value latents as
# well as 25 do (docs/benchmarks.md).
DEMO_CONTINUOUS_SETTINGS = ContinuousSettings(num_iter=32, num_sampling_steps=10, cfg_scale=4.0, temperature=1.0)


def load_mar_demo(
    role: str = "target", weights_dir: str | Path | None = None, device: str | torch.device = "auto"
) -> MARTokenModel:
    """The shipped continuous demo ``target`` or ``drafter``."""
    if role not in FILES:
        raise CheckpointError(f"the continuous demo has roles {', '.join(FILES)}, not {role!r}")
    folder = Path(weights_dir) if weights_dir is not None else WEIGHTS_DIR
    for path, trainer in ((folder / FILES[role], "train_mar"), (folder / VAE_FILE, "train_vae")):
        if not path.is_file():
            raise CheckpointError(
                f"the continuous demo weights are not built yet: {path} is missing; train them with "
                f"`python -m specar.demo.training.{trainer} ...` (see that module) and copy its output here"
            )
    mar, meta = read_mar(folder / FILES[role])
    if meta.get("pixels") != "vae":
        raise CheckpointError(f"{FILES[role]} does not make the demo VAE's latents; retrain it with train_mar")
    dev = resolve_device(device)
    vae = load_kl_vae(folder / VAE_FILE, dev)
    model = MARTokenModel(
        mar,
        vae,
        name=f"specar-mar-demo-{role}",
        class_names=tuple(meta.get("class_names", CLASS_NAMES)),
        clip_x0=vae.latent_bound,
        default_settings=DEMO_CONTINUOUS_SETTINGS,
    )
    return model.to(dev)


__all__ = ["load_mar_demo", "DEMO_CONTINUOUS_SETTINGS"]
