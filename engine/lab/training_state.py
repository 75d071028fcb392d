"""What every training run here shares: seeded random streams, the learning-rate schedule, and
checkpoints that a resumed run continues from exactly."""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ..atomic import replace_atomically
from ..checkpoints import read_safetensors_metadata, read_state_dict, save_safetensors

MIN_LR_RATIO = 0.05


def stream_seed(seed: int, stream: int, index: int = 0) -> int:
    """A 32-bit seed for item ``index`` of random stream ``stream``; independent across both."""
    return int(np.random.SeedSequence([seed, stream, index]).generate_state(1)[0])


@dataclass
class Schedule:
    """Linear warmup then cosine decay to MIN_LR_RATIO of the peak, over ``total`` steps."""

    peak: float
    warmup: int
    total: int

    def lr(self, step: int) -> float:
        if step < self.warmup:
            return self.peak * (step + 1) / self.warmup
        progress = min(1.0, (step - self.warmup) / max(1, self.total - self.warmup))
        return self.peak * (MIN_LR_RATIO + (1 - MIN_LR_RATIO) * 0.5 * (1 + math.cos(math.pi * progress)))


def save_state(
    path: Path,
    model: torch.nn.Module,
    opt: torch.optim.Optimizer,
    meta: dict[str, object],
    ema: torch.nn.Module | None = None,
) -> None:
    """Model + AdamW moments (+ EMA weights) as safetensors, the rest as JSON in its header; replaced atomically."""
    tensors = {f"model.{k}": v.float() for k, v in model.state_dict().items()}
    if ema is not None:
        tensors.update({f"ema.{k}": v.float() for k, v in ema.state_dict().items()})
    names = [n for n, _ in model.named_parameters()]
    by_param = dict(zip(names, model.parameters()))
    for name in names:
        state = opt.state.get(by_param[name], {})
        for key in ("exp_avg", "exp_avg_sq"):
            if key in state:
                tensors[f"optim.{name}.{key}"] = state[key]
    replace_atomically(path, lambda partial: save_safetensors(tensors, partial, config=meta))


def load_state(
    path: Path, model: torch.nn.Module, opt: torch.optim.Optimizer, ema: torch.nn.Module | None = None
) -> dict[str, object]:
    """Restore what :func:`save_state` wrote; returns its JSON metadata."""
    tensors = read_state_dict(path)
    meta = json.loads(read_safetensors_metadata(path)["config"])
    device = next(model.parameters()).device
    model.load_state_dict({k[len("model.") :]: v for k, v in tensors.items() if k.startswith("model.")})
    if ema is not None:
        ema.load_state_dict({k[len("ema.") :]: v for k, v in tensors.items() if k.startswith("ema.")})
    for name, param in model.named_parameters():
        if f"optim.{name}.exp_avg" in tensors:
            opt.state[param] = {
                "step": torch.tensor(float(meta["step"])),
                "exp_avg": tensors[f"optim.{name}.exp_avg"].to(device),
                "exp_avg_sq": tensors[f"optim.{name}.exp_avg_sq"].to(device),
            }
    return meta
