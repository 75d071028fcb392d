"""The continuous-token model adapter: what the CSpD loop needs from a MAR-style model.

Discrete models hand the loop logits over a vocabulary (:class:`specar.models.base.ImageTokenModel`);
continuous models hand it a condition ``z`` per position and a diffusion head that turns ``z`` and
injected noise into a token plus the Gaussian of its last denoising step. :class:`ContinuousTokenModel`
is that small protocol; :class:`MARTokenModel` implements it for :class:`~.mar.MAR` with a pixel
decoder (the demo's 2x2 patches, or MAR's KL-16 VAE).
"""

from __future__ import annotations

from typing import Protocol

import torch

from ..errors import SettingsError
from ..models.base import attribute_networks
from .diffusion import DiffusionNoise, GaussianDiffusion, HeadSample
from .mar import MAR
from .types import ContinuousSettings


class PixelDecoder(Protocol):
    """Tokens ``[B, L, C]`` on the model's grid -> ``uint8 [B, H, W, 3]``."""

    def __call__(self, tokens: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor: ...


class PatchPixels:
    """Tokens that *are* pixel patches (the continuous demo): ``C = patch^2 * 3`` values in [-1, 1]."""

    def __init__(self, patch: int = 2) -> None:
        self.patch = patch

    def tokens(self, images: torch.Tensor) -> torch.Tensor:
        """The inverse: ``uint8 [B, H, W, 3]`` -> ``[B, (H/p)*(W/p), 3p^2]`` in [-1, 1], raster order."""
        x = torch.as_tensor(images).float() / 127.5 - 1.0
        (b, h, w, c), p = x.shape, self.patch
        x = x.view(b, h // p, p, w // p, p, c).permute(0, 1, 3, 2, 4, 5)
        return x.reshape(b, (h // p) * (w // p), p * p * c)

    def __call__(self, tokens: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
        (h, w), p, b = grid, self.patch, tokens.shape[0]
        x = tokens.float().view(b, h, w, p, p, 3).permute(0, 1, 3, 2, 4, 5).reshape(b, h * p, w * p, 3)
        return ((x.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).cpu()


class ContinuousTokenModel(Protocol):
    """A masked-AR model over continuous tokens, as the continuous loop uses it."""

    name: str
    grid: tuple[int, int]
    token_dim: int
    num_classes: int
    class_names: tuple[str, ...] | None
    default_settings: ContinuousSettings

    @property
    def device(self) -> torch.device: ...

    def class_rows(self, class_ids: torch.Tensor, guided: bool) -> torch.Tensor:
        """Class conditioning rows ``[B, D]``, or ``[2B, D]`` (conditional, then "no class") when guided."""

    def condition(self, tokens: torch.Tensor, unknown: torch.Tensor, class_rows: torch.Tensor) -> torch.Tensor:
        """One forward pass: the head's condition ``z [B', L, D]`` given the known tokens (``unknown`` False)."""

    def head_sample(
        self, z: torch.Tensor, noise: DiffusionNoise, process: GaussianDiffusion, cfg_scale: float, temperature: float
    ) -> HeadSample:
        """Denoise one token per row of ``z`` (``[cond; uncond]`` rows when guided) with the given noise."""

    def decode(self, tokens: torch.Tensor) -> torch.Tensor:
        """``uint8 [B, H, W, 3]`` pixels of tokens ``[B, L, C]``."""

    def networks(self) -> list[torch.nn.Module]:
        """The torch modules holding the weights (what a memory-accounting host loads and offloads)."""

    def to(self, device: torch.device | str) -> "ContinuousTokenModel":
        """Move the weights to ``device``."""


class MARTokenModel:
    """:class:`ContinuousTokenModel` for :class:`MAR` weights and a pixel decoder."""

    def __init__(
        self,
        mar: MAR,
        decoder: PixelDecoder,
        name: str = "mar",
        class_names: tuple[str, ...] | None = None,
        clip_x0: float | None = None,
        default_settings: ContinuousSettings = ContinuousSettings(),
    ) -> None:
        self.mar = mar.eval()
        self.default_settings = default_settings
        self.clip_x0 = clip_x0  # bound of the data: 1.0 for pixel patches, the demo VAE's latent range
        self.decoder = decoder
        self.name = name
        self.grid = (mar.cfg.seq_h, mar.cfg.seq_w)
        self.token_dim = mar.cfg.token_dim
        self.num_classes = mar.cfg.num_classes
        self.class_names = class_names

    @property
    def device(self) -> torch.device:
        return self.mar.fake_latent.device

    @property
    def seq_len(self) -> int:
        return self.mar.cfg.seq_len

    def networks(self) -> list[torch.nn.Module]:
        """The torch modules holding the weights (see :meth:`specar.ImageTokenModel.networks`)."""
        return attribute_networks(self)

    def to(self, device: torch.device | str) -> "MARTokenModel":
        self.mar.to(device)
        if isinstance(self.decoder, torch.nn.Module):
            self.decoder.to(device)
        return self

    def class_rows(self, class_ids: torch.Tensor, guided: bool) -> torch.Tensor:
        if class_ids.numel() and (int(class_ids.min()) < 0 or int(class_ids.max()) >= self.num_classes):
            raise SettingsError(f"{self.name} has classes 0..{self.num_classes - 1}; got {class_ids.tolist()}")
        rows = self.mar.class_embedding(class_ids, class_ids.shape[0])
        return torch.cat([rows, self.mar.class_embedding(None, class_ids.shape[0])]) if guided else rows

    @torch.no_grad()
    def condition(self, tokens: torch.Tensor, unknown: torch.Tensor, class_rows: torch.Tensor) -> torch.Tensor:
        repeat = class_rows.shape[0] // tokens.shape[0]
        return self.mar.condition(tokens.repeat(repeat, 1, 1), unknown.repeat(repeat, 1), class_rows)

    @torch.no_grad()
    def head_sample(
        self, z: torch.Tensor, noise: DiffusionNoise, process: GaussianDiffusion, cfg_scale: float, temperature: float
    ) -> HeadSample:
        return self.mar.diffloss.sample(z, noise, process, cfg_scale, temperature, self.clip_x0)

    def decode(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.decoder(tokens, self.grid)


def is_continuous_model(model: object) -> bool:
    """Whether ``model`` decodes continuous tokens (a MAR), which have a loop of their own."""
    return hasattr(model, "head_sample")


__all__ = ["ContinuousTokenModel", "MARTokenModel", "PatchPixels", "PixelDecoder", "is_continuous_model"]
