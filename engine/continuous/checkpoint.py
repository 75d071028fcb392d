"""Reading and writing MAR weights: our safetensors files and the official checkpoint layout.

Our files carry the :class:`MARConfig` as JSON in the safetensors header (``kind: specar-mar``).
The official ``checkpoint-last.pth`` files (LTH14/mar) are dicts with ``model`` and
``model_ema`` state dicts; they are read with ``torch.load(weights_only=True)`` and the EMA
weights are used, as MAR's evaluation does. Their sizes are inferred from the tensors (widths,
depths, token channels, class count, buffer size, head width and depth); only the head count,
which no tensor shape holds, comes from the published presets by width.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import torch

from ..checkpoints import load_into, read_safetensors_metadata, read_state_dict, save_safetensors
from ..errors import CheckpointError
from .mar import MAR, MARConfig

KIND = "specar-mar"
HEADS_BY_WIDTH = {768: 12, 1024: 16, 1280: 16}
OFFICIAL_WRAPPERS = ("model_ema", "model", "state_dict")


def save_mar(model: MAR, path: str | Path, extra: dict[str, object] | None = None, half: bool = True) -> None:
    """Write ``model`` with its config (and ``extra`` such as class names) in the header."""
    tensors = {k: (v.half() if half and v.is_floating_point() else v) for k, v in model.state_dict().items()}
    save_safetensors(tensors, path, config={"kind": KIND, **model.cfg.to_dict(), **(extra or {})})


def read_mar(path: str | Path, heads: int | None = None) -> tuple[MAR, dict[str, object]]:
    """A float32 MAR in eval mode from our safetensors or an official ``.pth``, and the file's extra config."""
    path = Path(path)
    if path.suffix.lower() == ".safetensors":
        meta = json.loads(read_safetensors_metadata(path).get("config", "{}") or "{}")
        if meta.get("kind") != KIND:
            raise CheckpointError(
                f"{path.name} is not a SpecAR MAR file (header kind {meta.get('kind')!r}); "
                "official MAR checkpoints are the .pth files of LTH14/mar"
            )
        tensors = read_state_dict(path)
        cfg = MARConfig.from_dict(meta)
    else:
        tensors = read_state_dict(path, wrapper_keys=OFFICIAL_WRAPPERS)
        cfg = infer_config(tensors, path.name, heads)
        meta = {}
    model = MAR(cfg)
    load_into(model, {k: v.float() for k, v in tensors.items()}, path.name)
    return model.eval(), meta


def infer_config(tensors: dict[str, torch.Tensor], source: str, heads: int | None = None) -> MARConfig:
    """The MARConfig an official state dict was trained with."""
    required = (
        "z_proj.weight",
        "class_emb.weight",
        "encoder_pos_embed_learned",
        "decoder_embed.weight",
        "diffusion_pos_embed_learned",
        "diffloss.net.input_proj.weight",
    )
    missing = [k for k in required if k not in tensors]
    if missing:
        raise CheckpointError(f"{source} is not a MAR checkpoint (missing {', '.join(missing)})")
    encoder_dim, token_dim = tensors["z_proj.weight"].shape
    decoder_dim = tensors["decoder_embed.weight"].shape[0]
    seq_len = tensors["diffusion_pos_embed_learned"].shape[1]
    side = int(round(seq_len**0.5))
    if side * side != seq_len:
        raise CheckpointError(f"{source}: {seq_len} positions is not a square token grid")

    def depth(prefix: str) -> int:
        found = {int(m.group(1)) for k in tensors if (m := re.match(rf"{prefix}\.(\d+)\.", k))}
        return max(found) + 1 if found else 0

    def heads_for(width: int) -> int:
        if heads is not None:
            return heads
        if width not in HEADS_BY_WIDTH:
            raise CheckpointError(f"{source}: no published MAR has width {width}; pass the number of attention heads")
        return HEADS_BY_WIDTH[width]

    hidden = (
        tensors["encoder_blocks.0.mlp.fc1.weight"].shape[0]
        if "encoder_blocks.0.mlp.fc1.weight" in tensors
        else 4 * encoder_dim
    )
    return MARConfig(
        seq_h=side,
        seq_w=side,
        token_dim=int(token_dim),
        encoder_dim=int(encoder_dim),
        encoder_depth=depth("encoder_blocks"),
        encoder_heads=heads_for(int(encoder_dim)),
        decoder_dim=int(decoder_dim),
        decoder_depth=depth("decoder_blocks"),
        decoder_heads=heads_for(int(decoder_dim)),
        mlp_ratio=hidden / encoder_dim,
        num_classes=int(tensors["class_emb.weight"].shape[0]),
        buffer_size=int(tensors["encoder_pos_embed_learned"].shape[1] - seq_len),
        head_width=int(tensors["diffloss.net.input_proj.weight"].shape[0]),
        head_depth=depth("diffloss.net.res_blocks"),
    )


__all__ = ["save_mar", "read_mar", "infer_config", "KIND"]
