"""The decoder of a KL-regularised VAE (the LDM ``AutoencoderKL``), decode side only.

MAR trains on the latents of its KL-16 VAE (16 channels, one token per 16x16 pixel patch, ``ch_mult
(1, 1, 2, 2, 4)``) scaled by 0.2325; the continuous demo uses a small VAE of the same layout (4
channels per 4x4 patch) whose file records its own scale. Decoding divides by the scale, runs
``post_quant_conv`` and the decoder, and maps [-1, 1] to 8-bit pixels. The decoder network is the
taming/LDM decoder Chameleon's VQGAN uses too (same layout: ``mid.block_1``, ``up.<level>.block.<j>``,
...), here without attention outside the middle. The encoder is never run, so its weights are
skipped when loading.
"""

from __future__ import annotations

import json
import re
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from torch import nn

from ..checkpoints import load_into, read_safetensors_metadata, read_state_dict
from ..errors import CheckpointError
from ..models.base import to_uint8
from ..models.chameleon_vqgan import TamingDecoder, VQGANConfig

LATENT_SCALE = 0.2325  # MAR's scaling of the KL-16 latents
IGNORED_PREFIXES = ("encoder.", "quant_conv.", "loss.")
_LEVEL_KEY = re.compile(r"decoder\.up\.(\d+)\.block\.(\d+)\.conv1\.weight")


@dataclass(frozen=True)
class KLDecoderConfig:
    """Latent channels and decoder widths; the defaults are MAR's KL-16 VAE."""

    embed_dim: int = 16
    ch: int = 128
    ch_mult: tuple[int, ...] = (1, 1, 2, 2, 4)
    num_res_blocks: int = 2

    @property
    def downsampling(self) -> int:
        """Pixels per latent along each side."""
        return 2 ** (len(self.ch_mult) - 1)

    def to_dict(self) -> dict[str, object]:
        return {**asdict(self), "ch_mult": list(self.ch_mult)}


class KLDecoder(nn.Module):
    """Tokens ``[B, h*w, C]`` (scaled latents) -> ``uint8 [B, f*h, f*w, 3]``; a :class:`~.model.PixelDecoder`."""

    def __init__(
        self,
        cfg: KLDecoderConfig = KLDecoderConfig(),
        latent_scale: float = LATENT_SCALE,
        latent_bound: float | None = None,
    ) -> None:
        super().__init__()
        self.cfg = cfg
        self.latent_scale = latent_scale
        self.latent_bound = latent_bound  # |scaled latent| of the training data, where a file records it
        self.post_quant_conv = nn.Conv2d(cfg.embed_dim, cfg.embed_dim, 1)
        self.decoder = TamingDecoder(
            VQGANConfig(z_channels=cfg.embed_dim, ch=cfg.ch, ch_mult=cfg.ch_mult, num_res_blocks=cfg.num_res_blocks)
        )

    def pixels(self, latents: torch.Tensor) -> torch.Tensor:
        """Unscaled latents ``[B, C, h, w]`` -> pixels ``[B, 3, f*h, f*w]`` in about [-1, 1]."""
        return self.decoder(self.post_quant_conv(latents))

    @torch.no_grad()
    def forward(self, tokens: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
        b, (h, w) = tokens.shape[0], grid
        if tokens.shape[-1] != self.cfg.embed_dim:
            raise CheckpointError(f"tokens have {tokens.shape[-1]} channels but the VAE takes {self.cfg.embed_dim}")
        param = self.post_quant_conv.weight
        z = tokens.to(param.device, param.dtype).transpose(1, 2).reshape(b, self.cfg.embed_dim, h, w)
        return to_uint8(self.pixels(z / self.latent_scale))


def _latent_range(path: Path) -> tuple[float, float | None]:
    """The scale and bound a file's header records (the demo's VAE), else MAR's scale and no bound."""
    if path.suffix.lower() != ".safetensors":
        return LATENT_SCALE, None
    try:
        config = json.loads(read_safetensors_metadata(path).get("config", "{}"))
    except json.JSONDecodeError as exc:
        raise CheckpointError(f"{path.name} has an unreadable header config ({exc})") from exc
    config = config if isinstance(config, dict) else {}
    scale, bound = config.get("latent_scale", LATENT_SCALE), config.get("latent_bound")
    for name, value in (("latent_scale", scale), ("latent_bound", bound)):
        if value is not None and (not isinstance(value, (int, float)) or not 0 < value < float("inf")):
            raise CheckpointError(f"{path.name} records {name} {value!r}; it must be a positive number")
    return float(scale), None if bound is None else float(bound)


def load_kl_vae(path: str | Path, device: str | torch.device = "cpu") -> KLDecoder:
    """The decoder half of a KL VAE: MAR's ``kl16.ckpt`` (``{"model": state}``, read with
    ``weights_only=True``), a safetensors copy, or the continuous demo's VAE."""
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
    model = KLDecoder(KLDecoderConfig(embed_dim, ch, ch_mult, blocks), *_latent_range(path))
    load_into(model, {k: v.float() for k, v in state.items()}, path.name, ignore=IGNORED_PREFIXES)
    return model.to(device).eval().requires_grad_(False)


__all__ = ["KLDecoder", "KLDecoderConfig", "load_kl_vae", "LATENT_SCALE"]
