"""The LlamaGen VQ-16 image-token decoder (also the Janus-Pro image tokenizer), decode side only.

Generation produces codebook indices; turning them into pixels needs only the codebook, the
``post_quant_conv`` projection and the convolutional decoder, so the encoder and ``quant_conv``
of the official checkpoints (``vq_ds16_c2i.pt``, ``vq_ds16_t2i.pt``) are skipped at load time.
Submodule names reproduce the official state-dict keys, so those files load strictly without a
key map:

* ``quantize.embedding.weight`` - codebook ``[codebook_size, codebook_dim]``; rows are
  l2-normalised at lookup (the model was trained with a cosine-similarity codebook).
* ``post_quant_conv`` - 1x1 conv ``codebook_dim -> z_channels``.
* ``decoder.conv_in``, ``decoder.mid.{0,1,2}`` (resnet, attention, resnet),
  ``decoder.conv_blocks.{i}.res.{j}`` / ``.attn.{j}`` / ``.upsample.conv``, ``decoder.norm_out``,
  ``decoder.conv_out``. ``conv_blocks`` run from the lowest resolution upward: block 0 is the
  widest (``ch * ch_mult[-1]``) and the only one with attention; the last block does not upsample.
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

# Parts of the official file that decoding never runs; ``codebook_used`` is a training statistic.
IGNORED_PREFIXES = ("encoder.", "quant_conv.", "quantize.codebook_used")
# Keys whose presence and rank identify the layout (name -> tensor dims).
REQUIRED_KEYS = {
    "quantize.embedding.weight": 2,
    "post_quant_conv.weight": 4,
    "decoder.conv_in.weight": 4,
    "decoder.mid.1.q.weight": 4,
    "decoder.conv_out.weight": 4,
}
GROUPS = 32  # GroupNorm groups everywhere in the network
_LEVEL_KEY = re.compile(r"decoder\.conv_blocks\.(\d+)\.res\.(\d+)\.conv1\.weight")


@dataclass
class VQ16Config:
    """Decoder hyper-parameters; the defaults are the official VQ-16 (16x downsampling)."""

    codebook_size: int = 16384
    codebook_dim: int = 8
    z_channels: int = 256
    ch: int = 128
    ch_mult: tuple[int, ...] = (1, 1, 2, 2, 4)
    num_res_blocks: int = 2


def group_norm(channels: int) -> nn.GroupNorm:
    return nn.GroupNorm(GROUPS, channels, eps=1e-6, affine=True)


class ResBlock(nn.Module):
    """Pre-norm residual block; a 1x1 ``nin_shortcut`` projects the skip when the width changes."""

    def __init__(self, in_ch: int, out_ch: int) -> None:
        super().__init__()
        self.norm1 = group_norm(in_ch)
        self.conv1 = nn.Conv2d(in_ch, out_ch, 3, padding=1)
        self.norm2 = group_norm(out_ch)
        self.conv2 = nn.Conv2d(out_ch, out_ch, 3, padding=1)
        self.nin_shortcut = nn.Conv2d(in_ch, out_ch, 1) if in_ch != out_ch else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv1(F.silu(self.norm1(x)))
        h = self.conv2(F.silu(self.norm2(h)))
        skip = x if self.nin_shortcut is None else self.nin_shortcut(x)
        return skip + h


class SpatialAttention(nn.Module):
    """Single-head self-attention over all pixels of a feature map, with a residual connection."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.norm = group_norm(channels)
        self.q = nn.Conv2d(channels, channels, 1)
        self.k = nn.Conv2d(channels, channels, 1)
        self.v = nn.Conv2d(channels, channels, 1)
        self.proj_out = nn.Conv2d(channels, channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, height, width = x.shape
        h = self.norm(x)
        # [B, C, H, W] -> [B, 1, HW, C]: one head whose tokens are the pixels (scale C^-0.5).
        q, k, v = (proj(h).flatten(2).transpose(1, 2).unsqueeze(1) for proj in (self.q, self.k, self.v))
        out = F.scaled_dot_product_attention(q, k, v)
        out = out.squeeze(1).transpose(1, 2).reshape(b, c, height, width)
        return x + self.proj_out(out)


class Upsample(nn.Module):
    """Nearest-neighbour x2, then a 3x3 conv to smooth the blocky result."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(F.interpolate(x, scale_factor=2.0, mode="nearest"))


class _Level(nn.Module):
    """One resolution of the decoder: ``res`` blocks (each followed by ``attn`` where present)."""

    def __init__(self, in_ch: int, out_ch: int, n_blocks: int, attention: bool, upsample: bool) -> None:
        super().__init__()
        self.res = nn.ModuleList(ResBlock(in_ch if j == 0 else out_ch, out_ch) for j in range(n_blocks))
        self.attn = nn.ModuleList(SpatialAttention(out_ch) for _ in range(n_blocks if attention else 0))
        self.upsample = Upsample(out_ch) if upsample else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for j, block in enumerate(self.res):
            x = block(x)
            if self.attn:
                x = self.attn[j](x)
        return x if self.upsample is None else self.upsample(x)


class _Decoder(nn.Module):
    """Latent ``[B, z_channels, h, w]`` -> unclamped RGB ``[B, 3, h * 2**(L-1), w * 2**(L-1)]``."""

    def __init__(self, cfg: VQ16Config) -> None:
        super().__init__()
        widths = [cfg.ch * m for m in cfg.ch_mult]
        top = len(widths) - 1
        self.conv_in = nn.Conv2d(cfg.z_channels, widths[top], 3, padding=1)
        self.mid = nn.ModuleList(
            [ResBlock(widths[top], widths[top]), SpatialAttention(widths[top]), ResBlock(widths[top], widths[top])]
        )
        levels = []
        in_ch = widths[top]
        for level in range(top, -1, -1):  # lowest resolution (widest) first
            levels.append(
                _Level(in_ch, widths[level], cfg.num_res_blocks + 1, attention=level == top, upsample=level != 0)
            )
            in_ch = widths[level]
        self.conv_blocks = nn.ModuleList(levels)
        self.norm_out = group_norm(widths[0])
        self.conv_out = nn.Conv2d(widths[0], 3, 3, padding=1)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        h = self.conv_in(z)
        for block in self.mid:
            h = block(h)
        for level in self.conv_blocks:
            h = level(h)
        return self.conv_out(F.silu(self.norm_out(h)))


class Codebook(nn.Module):
    """Holds the code table under the official ``quantize.embedding`` name."""

    def __init__(self, size: int, dim: int) -> None:
        super().__init__()
        self.embedding = nn.Embedding(size, dim)


class VQ16Decoder(nn.Module):
    """Codebook indices in raster order -> images in [-1, 1]."""

    def __init__(self, cfg: VQ16Config) -> None:
        super().__init__()
        self.cfg = cfg
        self.quantize = Codebook(cfg.codebook_size, cfg.codebook_dim)
        self.post_quant_conv = nn.Conv2d(cfg.codebook_dim, cfg.z_channels, 1)
        self.decoder = _Decoder(cfg)

    @property
    def downsample(self) -> int:
        """Pixels per code along each side (16 for VQ-16)."""
        return 2 ** (len(self.cfg.ch_mult) - 1)

    def codebook_vectors(self, codes: torch.LongTensor) -> torch.Tensor:
        """``[..., codebook_dim]`` unit-length code vectors, as the quantizer used them in training."""
        return F.normalize(self.quantize.embedding(codes), p=2, dim=-1)

    @torch.no_grad()
    def decode(self, codes: torch.LongTensor, grid: tuple[int, int]) -> torch.Tensor:
        """``codes [B, h*w]`` (row-major over ``grid = (h, w)``) -> images ``[B, 3, h*s, w*s]`` clamped to [-1, 1]."""
        h, w = grid
        if codes.dim() != 2 or codes.shape[1] != h * w:
            raise ValueError(f"codes must be [batch, {h * w}] for a {h}x{w} grid, got {tuple(codes.shape)}")
        if codes.numel() and (int(codes.min()) < 0 or int(codes.max()) >= self.cfg.codebook_size):
            raise ValueError(
                f"codes must lie in [0, {self.cfg.codebook_size}), got [{int(codes.min())}, {int(codes.max())}]"
            )
        z = self.codebook_vectors(codes).view(codes.shape[0], h, w, -1).permute(0, 3, 1, 2)
        return self.decoder(self.post_quant_conv(z)).clamp_(-1.0, 1.0)


def infer_vq16_config(state: dict[str, torch.Tensor]) -> VQ16Config:
    """The :class:`VQ16Config` whose decoder fits the tensor shapes of an official-layout state dict.

    Only the products ``ch * ch_mult[i]`` are observable, so ``ch`` is taken as their greatest
    common divisor (128 and (1, 1, 2, 2, 4) for the official files).
    """
    missing = [k for k in REQUIRED_KEYS if k not in state]
    if missing:
        hint = " (this looks like a LlamaGen GPT, not the VQ tokenizer)" if "tok_embeddings.weight" in state else ""
        raise CheckpointError(f"not a LlamaGen VQ16 decoder checkpoint{hint}: missing {', '.join(missing)}")
    bad_rank = [f"{k} {tuple(state[k].shape)}" for k, dims in REQUIRED_KEYS.items() if state[k].dim() != dims]
    if bad_rank:
        raise CheckpointError(f"not a LlamaGen VQ16 decoder checkpoint: unexpected shapes {', '.join(bad_rank)}")
    levels: dict[int, set[int]] = {}
    for key in state:
        if match := _LEVEL_KEY.fullmatch(key):
            levels.setdefault(int(match.group(1)), set()).add(int(match.group(2)))
    if not levels or sorted(levels) != list(range(len(levels))):
        raise CheckpointError(
            "not a LlamaGen VQ16 decoder checkpoint: decoder.conv_blocks.{i}.res.{j} are "
            f"missing or not numbered 0..n-1 (found levels {sorted(levels)})"
        )
    n_blocks = {len(blocks) for blocks in levels.values()}
    if len(n_blocks) != 1 or any(blocks != set(range(len(blocks))) for blocks in levels.values()):
        raise CheckpointError(
            "decoder.conv_blocks levels hold different numbers of res blocks: "
            + ", ".join(f"{i}: {sorted(b)}" for i, b in sorted(levels.items()))
        )
    # conv_blocks.0 is the lowest resolution, so reverse to get ch_mult's full-resolution-first order.
    widths = [int(state[f"decoder.conv_blocks.{i}.res.0.conv1.weight"].shape[0]) for i in reversed(range(len(levels)))]
    if any(width % GROUPS for width in widths):
        raise CheckpointError(f"decoder widths {widths} are not multiples of {GROUPS} (GroupNorm groups)")
    ch = math.gcd(*widths)
    codebook_size, codebook_dim = state["quantize.embedding.weight"].shape
    return VQ16Config(
        codebook_size=int(codebook_size),
        codebook_dim=int(codebook_dim),
        z_channels=int(state["post_quant_conv.weight"].shape[0]),
        ch=ch,
        ch_mult=tuple(width // ch for width in widths),
        num_res_blocks=n_blocks.pop() - 1,
    )


def load_vq16(path: str | Path, device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32) -> VQ16Decoder:
    """An eval-mode :class:`VQ16Decoder` from an official ``.pt`` or a ``.safetensors`` file."""
    path = Path(path)
    state = read_state_dict(path)
    try:
        cfg = infer_vq16_config(state)
    except CheckpointError as exc:
        raise CheckpointError(f"{path.name}: {exc}") from exc
    model = VQ16Decoder(cfg)
    load_into(model, state, source=path.name, ignore=IGNORED_PREFIXES)
    return model.to(device=device, dtype=dtype).eval().requires_grad_(False)
