"""MAR's KL-16 VAE decoder (the LDM ``AutoencoderKL`` with ``ch_mult (1, 1, 2, 2, 4)``), decode side only.

MAR trains on the VAE's 16-channel latents scaled by 0.2325 (one token per 16x16 pixel patch),
so decoding divides by that factor, runs ``post_quant_conv`` and the decoder, and maps [-1, 1] to
8-bit pixels. The decoder network is the taming/LDM decoder Chameleon's VQGAN uses too (same
layout: ``mid.block_1``, ``up.<level>.block.<j>``, ...), here without attention outside the middle
and with 16 latent channels. The encoder is never run, so its weights are skipped when loading.
"""

from __future__ import annotations

import re
from pathlib import Path

import torch
from torch import nn

from ..checkpoints import load_into, read_state_dict
from ..errors import CheckpointError
from ..models.chameleon_vqgan import TamingDecoder, VQGANConfig

LATENT_SCALE = 0.2325  # MAR's scaling of the KL-16 latents
IGNORED_PREFIXES = ("encoder.", "quant_conv.", "loss.")
_LEVEL_KEY = re.compile(r"decoder\.up\.(\d+)\.block\.(\d+)\.conv1\.weight")


class KL16Decoder(nn.Module):
    """Tokens ``[B, h*w, C]`` (MAR's scaled latents) -> ``uint8 [B, 16h, 16w, 3]``; a :class:`~.model.PixelDecoder`."""

    def __init__(
        self, embed_dim: int = 16, ch: int = 128, ch_mult: tuple[int, ...] = (1, 1, 2, 2, 4), num_res_blocks: int = 2
    ) -> None:
        super().__init__()
        self.embed_dim = embed_dim
        self.post_quant_conv = nn.Conv2d(embed_dim, embed_dim, 1)
        self.decoder = TamingDecoder(
            VQGANConfig(z_channels=embed_dim, ch=ch, ch_mult=ch_mult, num_res_blocks=num_res_blocks)
        )

    @torch.no_grad()
    def forward(self, tokens: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
        b, (h, w) = tokens.shape[0], grid
        if tokens.shape[-1] != self.embed_dim:
            raise CheckpointError(f"tokens have {tokens.shape[-1]} channels but the VAE takes {self.embed_dim}")
        param = self.post_quant_conv.weight
        z = tokens.to(param.device, param.dtype).transpose(1, 2).reshape(b, self.embed_dim, h, w) / LATENT_SCALE
        pixels = self.decoder(self.post_quant_conv(z))
        return ((pixels.float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).permute(0, 2, 3, 1).cpu()


def load_kl16(path: str | Path, device: str | torch.device = "cpu") -> KL16Decoder:
    """The decoder half of MAR's ``kl16.ckpt`` (``{"model": state}``, read with ``weights_only=True``)
    or a safetensors copy."""
    path = Path(path)
    state = read_state_dict(path)
    if "post_quant_conv.weight" not in state:
        raise CheckpointError(f"{path.name} is not a KL VAE checkpoint (no post_quant_conv.weight)")
    embed_dim = int(state["post_quant_conv.weight"].shape[0])
    ch = int(state["decoder.conv_out.weight"].shape[1]) if "decoder.conv_out.weight" in state else 128
    levels: dict[int, int] = {}  # level -> its last block index
    for key in state:
        if match := _LEVEL_KEY.match(key):
            level, block = int(match.group(1)), int(match.group(2))
            levels[level] = max(levels.get(level, 0), block)
    if not levels:
        raise CheckpointError(f"{path.name} has no decoder.up.* blocks")
    ch_mult = tuple(int(state[f"decoder.up.{i}.block.0.conv1.weight"].shape[0]) // ch for i in sorted(levels))
    blocks = max(levels.values())  # blocks per level are num_res_blocks + 1, indices 0..num_res_blocks
    model = KL16Decoder(embed_dim, ch, ch_mult, blocks)
    load_into(model, {k: v.float() for k, v in state.items()}, path.name, ignore=IGNORED_PREFIXES)
    return model.to(device).eval().requires_grad_(False)


__all__ = ["KL16Decoder", "load_kl16", "LATENT_SCALE"]
