"""Decoder of Chameleon's image tokenizer (the VQGAN that Lumina-mGPT and Anole draw with).

transformers' ``ChameleonVQVAE`` has only the encoder, so pixels need this. The network is a
taming-transformers decoder: the same blocks as LlamaGen's VQ-16 (:mod:`.vq16`), under taming's
names, with a plain (not l2-normalised) codebook of 8192 x 256. The official ``vqgan.ckpt`` is a
Lightning checkpoint whose ``state_dict`` holds plain tensors, so it loads with
``weights_only=True``; the encoder, ``quant_conv`` and the training loss are skipped.

Key layout read (all others are refused with a message):

* ``quantize.embedding.weight`` ``[codes, dim]``, ``post_quant_conv`` (1x1, dim -> z_channels);
* ``decoder.conv_in``, ``decoder.mid.{block_1, attn_1, block_2}``;
* ``decoder.up.{i}.block.{j}`` and, at resolutions with attention, ``decoder.up.{i}.attn.{j}``;
  ``decoder.up.{i}.upsample.conv`` for ``i > 0``. ``up.0`` is the full resolution and runs last.
* ``decoder.norm_out``, ``decoder.conv_out``.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from ..checkpoints import load_into, read_state_dict
from ..errors import CheckpointError
from .vq16 import GROUPS, Codebook, ResBlock, SpatialAttention, Upsample, group_norm

# Parts of the checkpoint decoding never runs (quantizer buffers of the legacy index remap included).
IGNORED_PREFIXES = ("encoder.", "quant_conv.", "loss.", "quantize.used", "quantize.re_embed")
_BLOCK_KEY = re.compile(r"decoder\.up\.(\d+)\.block\.(\d+)\.conv1\.weight")
_ATTN_KEY = re.compile(r"decoder\.up\.(\d+)\.attn\.0\.q\.weight")


@dataclass
class VQGANConfig:
    """Decoder hyper-parameters; the defaults are Chameleon's released tokenizer."""

    codebook_size: int = 8192
    codebook_dim: int = 256
    z_channels: int = 256
    ch: int = 128
    ch_mult: tuple[int, ...] = (1, 1, 2, 2, 4)
    num_res_blocks: int = 2
    attention_levels: tuple[int, ...] = ()  # indices into ch_mult (0 = full resolution)


class _UpLevel(nn.Module):
    """One taming ``up`` level: ``block`` res blocks, each followed by ``attn`` where present."""

    def __init__(self, in_ch: int, out_ch: int, n_blocks: int, attention: bool, upsample: bool) -> None:
        super().__init__()
        self.block = nn.ModuleList(ResBlock(in_ch if j == 0 else out_ch, out_ch) for j in range(n_blocks))
        self.attn = nn.ModuleList(SpatialAttention(out_ch) for _ in range(n_blocks if attention else 0))
        if upsample:
            self.upsample = Upsample(out_ch)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for j, block in enumerate(self.block):
            x = block(x)
            if len(self.attn):
                x = self.attn[j](x)
        return self.upsample(x) if hasattr(self, "upsample") else x


class _Mid(nn.Module):
    def __init__(self, channels: int) -> None:
        super().__init__()
        self.block_1 = ResBlock(channels, channels)
        self.attn_1 = SpatialAttention(channels)
        self.block_2 = ResBlock(channels, channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.block_2(self.attn_1(self.block_1(x)))


class TamingDecoder(nn.Module):
    def __init__(self, cfg: VQGANConfig) -> None:
        super().__init__()
        widths = [cfg.ch * m for m in cfg.ch_mult]
        top = len(widths) - 1
        self.conv_in = nn.Conv2d(cfg.z_channels, widths[top], 3, padding=1)
        self.mid = _Mid(widths[top])
        inputs = [widths[i + 1] if i < top else widths[top] for i in range(len(widths))]
        self.up = nn.ModuleList(
            _UpLevel(inputs[i], widths[i], cfg.num_res_blocks + 1, i in cfg.attention_levels, upsample=i != 0)
            for i in range(len(widths))
        )
        self.norm_out = group_norm(widths[0])
        self.conv_out = nn.Conv2d(widths[0], 3, 3, padding=1)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        h = self.mid(self.conv_in(z))
        for level in reversed(self.up):  # lowest resolution first
            h = level(h)
        return self.conv_out(F.silu(self.norm_out(h)))


class ChameleonVQGANDecoder(nn.Module):
    """Codebook indices in raster order -> images in [-1, 1]."""

    def __init__(self, cfg: VQGANConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.quantize = Codebook(cfg.codebook_size, cfg.codebook_dim)
        self.post_quant_conv = nn.Conv2d(cfg.codebook_dim, cfg.z_channels, 1)
        self.decoder = TamingDecoder(cfg)

    def codebook_vectors(self, codes: torch.Tensor) -> torch.Tensor:
        """``[..., codebook_dim]`` code vectors as the quantizer stores them (no normalisation)."""
        return self.quantize.embedding(codes)

    @torch.no_grad()
    def decode(self, codes: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
        h, w = grid
        if codes.dim() != 2 or codes.shape[1] != h * w:
            raise ValueError(f"codes must be [batch, {h * w}] for a {h}x{w} grid, got {tuple(codes.shape)}")
        z = self.codebook_vectors(codes).view(codes.shape[0], h, w, -1).permute(0, 3, 1, 2)
        return self.decoder(self.post_quant_conv(z)).clamp_(-1.0, 1.0)


def infer_vqgan_config(state: dict[str, torch.Tensor]) -> VQGANConfig:
    """The :class:`VQGANConfig` whose decoder fits a taming-layout state dict."""
    required = (
        "quantize.embedding.weight",
        "post_quant_conv.weight",
        "decoder.conv_in.weight",
        "decoder.mid.attn_1.q.weight",
        "decoder.conv_out.weight",
    )
    missing = [k for k in required if k not in state]
    if missing:
        hint = " (this looks like the language model, not the VQGAN)" if any("embed_tokens" in k for k in state) else ""
        raise CheckpointError(f"not a Chameleon VQGAN checkpoint{hint}: missing {', '.join(missing)}")
    levels: dict[int, set[int]] = {}
    for key in state:
        if match := _BLOCK_KEY.fullmatch(key):
            levels.setdefault(int(match.group(1)), set()).add(int(match.group(2)))
    if not levels or sorted(levels) != list(range(len(levels))):
        raise CheckpointError(f"not a Chameleon VQGAN checkpoint: decoder.up levels {sorted(levels)} are not 0..n-1")
    counts = {len(blocks) for blocks in levels.values()}
    if len(counts) != 1:
        raise CheckpointError("decoder.up levels hold different numbers of res blocks")
    widths = [int(state[f"decoder.up.{i}.block.0.conv1.weight"].shape[0]) for i in range(len(levels))]
    if any(width % GROUPS for width in widths):
        raise CheckpointError(f"decoder widths {widths} are not multiples of {GROUPS} (GroupNorm groups)")
    ch = math.gcd(*widths)
    codebook_size, codebook_dim = state["quantize.embedding.weight"].shape
    attention = tuple(sorted(int(m.group(1)) for k in state if (m := _ATTN_KEY.fullmatch(k))))
    return VQGANConfig(
        codebook_size=int(codebook_size),
        codebook_dim=int(codebook_dim),
        z_channels=int(state["post_quant_conv.weight"].shape[0]),
        ch=ch,
        ch_mult=tuple(width // ch for width in widths),
        num_res_blocks=counts.pop() - 1,
        attention_levels=attention,
    )


def load_chameleon_vqgan(
    path: str | Path, device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32
) -> ChameleonVQGANDecoder:
    """An eval-mode decoder from ``vqgan.ckpt`` (Lightning layout) or a ``.safetensors`` copy."""
    path = Path(path)
    state = read_state_dict(path)
    try:
        cfg = infer_vqgan_config(state)
    except CheckpointError as exc:
        raise CheckpointError(f"{path.name}: {exc}") from exc
    model = ChameleonVQGANDecoder(cfg)
    load_into(model, state, source=path.name, ignore=IGNORED_PREFIXES)
    return model.to(device=device, dtype=dtype).eval().requires_grad_(False)
