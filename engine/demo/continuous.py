"""The continuous demo pair: a small MAR target and a smaller MAR draft over 4x4 RGB patches.

Tokens are 48-d pixel patches in [-1, 1] on the 8x8 grid of a 32x32 scene, so images come out of
a reshape (no VAE). Both were trained by :mod:`.training.train_mar` on the procedural scenes; the
evaluator of the discrete demo (class accuracy, FID-lite) reads their pixels unchanged.
"""

from __future__ import annotations

from pathlib import Path

import torch

from ..continuous.checkpoint import read_mar
from ..continuous.model import MARTokenModel, PatchPixels
from ..continuous.types import ContinuousSettings
from ..errors import CheckpointError
from ..models.registry import resolve_device
from .scenes import CLASS_NAMES
from .paths import WEIGHTS_DIR

FILES = {"target": "mar_target.safetensors", "drafter": "mar_drafter.safetensors"}
# MAR's ratio of steps to tokens (64 steps for 256 tokens) and 25 head denoising steps (MAR: 100).
DEMO_CONTINUOUS_SETTINGS = ContinuousSettings(num_iter=16, num_sampling_steps=25, cfg_scale=4.0, temperature=1.0)


def load_mar_demo(
    role: str = "target", weights_dir: str | Path | None = None, device: str | torch.device = "auto"
) -> MARTokenModel:
    """The shipped continuous demo ``target`` or ``drafter``."""
    if role not in FILES:
        raise CheckpointError(f"the continuous demo has roles {', '.join(FILES)}, not {role!r}")
    path = (Path(weights_dir) if weights_dir is not None else WEIGHTS_DIR) / FILES[role]
    if not path.is_file():
        raise CheckpointError(
            f"the continuous demo weights are not built yet: {path} is missing; train them with "
            f"`python -m specar.demo.training.train_mar --role {role} ...` (see that module) and copy "
            f"out/mar-{role}/{FILES[role]} here"
        )
    mar, meta = read_mar(path)
    names = tuple(meta.get("class_names", CLASS_NAMES))
    model = MARTokenModel(
        mar,
        PatchPixels(int(meta.get("patch", 2))),
        name=f"specar-mar-demo-{role}",
        class_names=names,
        clip_x0=1.0,
        default_settings=DEMO_CONTINUOUS_SETTINGS,
    )
    return model.to(resolve_device(device))


__all__ = ["load_mar_demo", "DEMO_CONTINUOUS_SETTINGS"]
