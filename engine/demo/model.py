"""The bundled demo model: a small LlamaGen target and drafter over the patch codebook.

It needs no download and runs on a CPU (a batch of 16 images in about 4 s on one thread), so
examples and tests can measure acceptance, forward counts and quality costs on a model that was
actually trained.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from ..checkpoints import read_safetensors_metadata
from ..errors import CheckpointError
from ..models.llamagen.adapter import LlamaGenModel
from ..models.llamagen.checkpoint import read_gpt
from ..models.registry import resolve_device, resolve_dtype
from ..types import SamplingSettings
from .codebook import PatchCodebook
from .scenes import CLASS_NAMES
from .paths import WEIGHTS_DIR

# The sampling the feasibility study measured speculative decoding with.
DEMO_SETTINGS = SamplingSettings(cfg_scale=2.0, temperature=1.0, top_k=100, top_p=1.0)
TRAIN_HINT = {
    "target.safetensors": "train it with `python -m specar.demo.training.train --role target --threads 1 --minutes 100 "
    "--compile --out out/demo-target` and copy out/demo-target/target.safetensors here",
    "drafter.safetensors": "train it with `python -m specar.demo.training.train --role drafter --threads 1 "
    "--steps 1877 --compile --teacher engine/demo/weights/target.safetensors --out out/demo-drafter` and "
    "copy out/demo-drafter/drafter.safetensors here",
    "codebook.safetensors": "`python -m specar.demo.training.train` fits it here before training a model",
    "tree_head.safetensors": "train it with `specar train-head --model demo --images 10240 --steps 3000 --lr 2e-3 "
    "--out out/tree-head` and copy out/tree-head/tree_head.safetensors here",
}


def _require(path: Path) -> Path:
    if not path.is_file():
        raise CheckpointError(f"the demo weights are not built yet: {path} is missing; {TRAIN_HINT.get(path.name, '')}")
    return path


def _load(
    file_name: str,
    name: str,
    weights_dir: str | Path | None,
    device: str | torch.device,
    dtype: str | torch.dtype = "auto",
) -> LlamaGenModel:
    directory = Path(weights_dir) if weights_dir is not None else WEIGHTS_DIR
    weights = _require(directory / file_name)
    codebook = PatchCodebook.load(_require(directory / "codebook.safetensors"))
    gpt = read_gpt(weights, {})
    if gpt.cfg.vocab_size != codebook.size:
        raise CheckpointError(
            f"{weights} has {gpt.cfg.vocab_size} codes but the codebook beside it has {codebook.size}"
        )
    dev = resolve_device(device)
    gpt = gpt.to(dev, resolve_dtype(dtype, dev))
    gpt.reset_rope()
    model = LlamaGenModel(gpt, codebook.to(dev), name=name, default_settings=DEMO_SETTINGS)
    config = json.loads(read_safetensors_metadata(weights).get("config", "{}"))
    model.class_names = tuple(config.get("class_names", CLASS_NAMES))
    return model


def load_demo(
    weights_dir: str | Path | None = None, device: str | torch.device = "auto", dtype: str | torch.dtype = "auto"
) -> LlamaGenModel:
    """The demo target (4 layers, width 192) with its patch codebook as the pixel decoder."""
    return _load("target.safetensors", "specar-demo", weights_dir, device, dtype)


def load_demo_drafter(
    weights_dir: str | Path | None = None, device: str | torch.device = "auto", dtype: str | torch.dtype = "auto"
) -> LlamaGenModel:
    """The demo drafter (2 layers, width 128, distilled from the target); same codebook, classes and defaults."""
    return _load("drafter.safetensors", "specar-demo-drafter", weights_dir, device, dtype)


def demo_tree_head_path(weights_dir: str | Path | None = None) -> Path:
    """The bundled EAGLE-style head of the demo target (a checked path)."""
    return _require((Path(weights_dir) if weights_dir is not None else WEIGHTS_DIR) / "tree_head.safetensors")


__all__ = ["load_demo", "load_demo_drafter", "demo_tree_head_path", "DEMO_SETTINGS", "WEIGHTS_DIR"]
