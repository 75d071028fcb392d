"""Loading LlamaGen GPT checkpoints (official ``.pt`` layouts and our ``.safetensors``).

The official files hold a plain state dict under ``model`` (DDP: B/L/XL), ``module``
(DeepSpeed), ``state_dict``, or at the top level (FSDP: XXL/3B), sometimes with a stale
``freqs_cis`` buffer. The architecture is read from tensor shapes; what shapes cannot tell
(the number of heads, the grid) comes from a ``config.json`` beside the weights (SpecAR's keys, or
LlamaGen's own ``model_args``: ``block_size``, ``model_type``, ``cls_token_num`` ...), from the size
presets, or from the file or folder name (``c2i_XL_384.pt`` -> 24x24 tokens). Sources that disagree
are refused, and a grid nothing tells is refused rather than guessed.
"""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

import torch

from ...checkpoints import allocate, load_into, read_json, read_safetensors_metadata, read_state_dict
from ...errors import CheckpointError
from ...validation import whole_number
from .gpt import GPT, GPT_PRESETS, GPTConfig

IGNORED_KEY_PARTS = ("freqs_cis", "causal_mask", ".kv_cache.")
VQ_DOWNSAMPLE = 16


def is_llamagen_state(state: dict[str, torch.Tensor]) -> bool:
    return "tok_embeddings.weight" in state and "layers.0.attention.wqkv.weight" in state


def infer_gpt_config(state: dict[str, torch.Tensor], hints: dict[str, object], source: str) -> GPTConfig:
    """A :class:`GPTConfig` that fits ``state``; ``hints`` may fix n_head, grid_size, block_size, image_size..."""
    hints = {**hints.get("model_args", {}), **hints} if isinstance(hints.get("model_args"), dict) else hints
    if not is_llamagen_state(state):
        raise CheckpointError(
            f"{source} is not a LlamaGen GPT checkpoint (no tok_embeddings / layers.0.attention.wqkv)"
        )
    vocab, dim = state["tok_embeddings.weight"].shape
    n_layer = 1 + max(int(m.group(1)) for k in state if (m := re.match(r"layers\.(\d+)\.", k)))
    known = {"n_layer": n_layer, "dim": dim, "vocab_size": vocab}
    for key, value in known.items():
        if key in hints and hints[key] != value:
            raise CheckpointError(f"{source}: config says {key}={hints[key]} but the weights have {value}")
    fields: dict[str, object] = dict(known, ffn_hidden=state["layers.0.feed_forward.w1.weight"].shape[0])
    if "cls_embedding.embedding_table.weight" in state:
        fields.update(
            model_type="c2i", num_classes=state["cls_embedding.embedding_table.weight"].shape[0] - 1, cls_token_num=1
        )
    elif "cls_embedding.cap_proj.fc1.weight" in state:
        uncond = state.get("cls_embedding.uncond_embedding")
        fields.update(
            model_type="t2i",
            caption_dim=state["cls_embedding.cap_proj.fc1.weight"].shape[1],
            cls_token_num=uncond.shape[0] if uncond is not None else 120,
        )
    else:
        raise CheckpointError(f"{source} has neither a class table nor a caption projection (cls_embedding.*)")
    for key in ("model_type", "cls_token_num", "num_classes", "caption_dim"):
        if key in hints and key in fields and hints[key] != fields[key]:
            raise CheckpointError(f"{source}: config says {key}={hints[key]!r} but the weights are {fields[key]!r}")
    for key in ("n_head", "image_size", "downsample", "grid_size", "block_size"):
        if key in hints:
            whole_number(f"{source}: config {key}", hints[key], low=1, error=CheckpointError)
    n_head = hints.get("n_head") or _heads_from_presets(dim, n_layer)
    if n_head is None:
        raise CheckpointError(
            f"{source}: cannot tell the number of attention heads of a {n_layer}-layer, {dim}-wide GPT; "
            'put {"n_head": ...} in a config.json next to the weights'
        )
    head_dim = dim // int(n_head)
    fields["n_head"] = int(n_head)
    fields["n_kv_head"] = (state["layers.0.attention.wqkv.weight"].shape[0] // head_dim - int(n_head)) // 2
    for key in ("rope_base", "norm_eps"):
        if key in hints:
            fields[key] = hints[key]
    fields["grid_size"] = grid_from(hints, source)
    try:
        return GPTConfig(**fields)
    except CheckpointError as exc:
        raise CheckpointError(f"{source}: {exc}") from None


def grid_from(hints: dict[str, object], source: str) -> int:
    """Image tokens per side, from every source that tells it: ``grid_size``, ``block_size`` (LlamaGen's
    sequence length, the grid squared), ``image_size`` over the VQ's downsampling (config), and the size in
    the weights' file or folder name (``name_image_size``), used only where the config tells nothing."""
    told: dict[str, tuple[int, str]] = {}  # source key -> (grid, how to say it)
    if "grid_size" in hints:
        told["grid_size"] = (int(hints["grid_size"]), f"grid_size {hints['grid_size']}")
    if "block_size" in hints:
        block = int(hints["block_size"])
        side = math.isqrt(block)
        if side * side != block:
            raise CheckpointError(f"{source}: config block_size {block} is not a square grid of image tokens")
        told["block_size"] = (side, f"block_size {block} ({side}x{side})")
    if "image_size" in hints:
        downsample = int(hints.get("downsample", VQ_DOWNSAMPLE))
        side = int(hints["image_size"]) // downsample
        if side == 0:
            raise CheckpointError(f"{source}: config image_size {hints['image_size']} is smaller than one token")
        told["image_size"] = (side, f"image_size {hints['image_size']} ({side}x{side} at downsampling {downsample})")
    if not told and "name_image_size" in hints:
        side = int(hints["name_image_size"]) // int(hints.get("downsample", VQ_DOWNSAMPLE))
        told["name"] = (side, f"the name's size {hints['name_image_size']}")
    if not told:
        raise CheckpointError(
            f"{source}: cannot tell the token grid: put grid_size, block_size or image_size in a config.json next to "
            "the weights, or the image size in the file name (e.g. c2i_XL_384.pt)"
        )
    (first, first_said), *others = told.values()
    for grid, said in others:
        if grid != first:
            raise CheckpointError(f"{source}: {said} disagrees with {first_said}")
    return first


def _heads_from_presets(dim: int, n_layer: int) -> int | None:
    for layers, heads, width in GPT_PRESETS.values():
        if width == dim and layers == n_layer:
            return heads
    return None


def hints_from_name(path: Path) -> dict[str, object]:
    """``c2i_XL_384.pt`` (or a folder ``LlamaGen-XL-384/``) -> image size 384: names of official files carry
    the resolution. A weaker hint than a config's, and the file's name is read before its folder's."""
    for name in (path.name, path.parent.name):
        sizes = [int(s) for s in re.findall(r"(?:^|[_\-])(256|384|448|512|768|1024)(?=[_\-.]|$)", name)]
        if sizes:
            return {"name_image_size": sizes[-1]}
    return {}


def read_gpt(path: Path, hints: dict[str, object]) -> GPT:
    """Build a GPT from ``path`` (weights) with ``hints`` (config.json content, name hints)."""
    state = read_state_dict(path)
    if path.suffix == ".safetensors":
        meta = read_safetensors_metadata(path)
        if "config" in meta:
            try:
                hints = {**json.loads(meta["config"]), **hints}
            except json.JSONDecodeError as exc:
                raise CheckpointError(f"{path.name}: config in the safetensors header is not JSON ({exc})") from exc
    hints = {**hints_from_name(path), **hints}
    state = {k: v for k, v in state.items() if not any(part in k for part in IGNORED_KEY_PARTS)}
    cfg = infer_gpt_config(state, hints, path.name)
    with torch.device("meta"):
        gpt = GPT(cfg)
    gpt = allocate(gpt, "cpu")
    gpt.reset_rope()  # a non-persistent buffer: allocate() left it without values
    load_into(gpt, state, path.name)
    return gpt


def read_config_json(directory: Path) -> dict[str, object]:
    config = directory / "config.json"
    return read_json(config) if config.is_file() else {}
