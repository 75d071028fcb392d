"""MAR's per-token diffusion head ("DiffLoss"): a small AdaLN MLP that denoises one token.

The network sees the noisy token, the diffusion timestep and the transformer's output ``z`` for
that position, and returns epsilon plus the variance interpolation value. Parameter names follow
MAR's ``models/diffloss.py`` (``net.time_embed.mlp.0``, ``net.res_blocks.<i>.adaLN_modulation.1``,
...), so official checkpoints load as they are.

Classifier-free guidance happens inside every denoising step, as in MAR: the batch holds the
conditional rows then the unconditional rows of the *same* noisy tokens; epsilon is guided, the
variance output is the conditional one.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

from .diffusion import DiffusionNoise, GaussianDiffusion, HeadSample

FREQUENCY_DIM = 256
MAX_PERIOD = 10_000


def modulate(x: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    return x * (1 + scale) + shift


class TimestepEmbedder(nn.Module):
    """Sinusoidal features of the (training-step) timestep, then a two-layer MLP."""

    def __init__(self, width: int) -> None:
        super().__init__()
        self.mlp = nn.Sequential(nn.Linear(FREQUENCY_DIM, width), nn.SiLU(), nn.Linear(width, width))

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        half = FREQUENCY_DIM // 2
        freqs = torch.exp(-math.log(MAX_PERIOD) * torch.arange(half, device=t.device, dtype=torch.float32) / half)
        args = t.float().unsqueeze(-1) * freqs
        return self.mlp(torch.cat([torch.cos(args), torch.sin(args)], -1).to(self.mlp[0].weight.dtype))


class ResBlock(nn.Module):
    """LayerNorm -> AdaLN shift/scale -> MLP, added back through an AdaLN gate."""

    def __init__(self, width: int) -> None:
        super().__init__()
        self.in_ln = nn.LayerNorm(width, eps=1e-6)
        self.mlp = nn.Sequential(nn.Linear(width, width), nn.SiLU(), nn.Linear(width, width))
        self.adaLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(width, 3 * width))

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        shift, scale, gate = self.adaLN_modulation(y).chunk(3, dim=-1)
        return x + gate * self.mlp(modulate(self.in_ln(x), shift, scale))


class FinalLayer(nn.Module):
    def __init__(self, width: int, out_channels: int) -> None:
        super().__init__()
        self.norm_final = nn.LayerNorm(width, elementwise_affine=False, eps=1e-6)
        self.linear = nn.Linear(width, out_channels)
        self.adaLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(width, 2 * width))

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        shift, scale = self.adaLN_modulation(y).chunk(2, dim=-1)
        return self.linear(modulate(self.norm_final(x), shift, scale))


class SimpleMLPAdaLN(nn.Module):
    """The denoiser: ``(x_t [N, C], t [N], z [N, D]) -> [N, 2C]`` (epsilon, variance value)."""

    def __init__(self, channels: int, z_channels: int, width: int, depth: int) -> None:
        super().__init__()
        self.channels = channels
        self.time_embed = TimestepEmbedder(width)
        self.cond_embed = nn.Linear(z_channels, width)
        self.input_proj = nn.Linear(channels, width)
        self.res_blocks = nn.ModuleList(ResBlock(width) for _ in range(depth))
        self.final_layer = FinalLayer(width, 2 * channels)

    def init_weights(self, generator: torch.Generator | None = None) -> None:
        """MAR's initialisation: Xavier linears, N(0, 0.02) time MLP, zero AdaLN and output layers."""
        for module in self.modules():
            if isinstance(module, nn.Linear):
                nn.init.xavier_uniform_(module.weight, generator=generator)
                nn.init.zeros_(module.bias)
        for layer in (self.time_embed.mlp[0], self.time_embed.mlp[2]):
            nn.init.normal_(layer.weight, std=0.02, generator=generator)
        for block in self.res_blocks:
            nn.init.zeros_(block.adaLN_modulation[-1].weight)
            nn.init.zeros_(block.adaLN_modulation[-1].bias)
        for layer in (self.final_layer.adaLN_modulation[-1], self.final_layer.linear):
            nn.init.zeros_(layer.weight)
            nn.init.zeros_(layer.bias)

    def forward(self, x: torch.Tensor, t: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        y = self.time_embed(t) + self.cond_embed(z)
        h = self.input_proj(x)
        for block in self.res_blocks:
            h = block(h, y)
        return self.final_layer(h, y)

    def guided(self, x: torch.Tensor, t: torch.Tensor, z: torch.Tensor, cfg_scale: float) -> torch.Tensor:
        """``z`` is ``[cond; uncond]`` (2N rows), ``x`` and ``t`` are N rows: guided epsilon, conditional variance."""
        out = self.forward(torch.cat([x, x]), torch.cat([t, t]), z)
        cond, uncond = out.chunk(2)
        eps = uncond[:, : self.channels] + cfg_scale * (cond[:, : self.channels] - uncond[:, : self.channels])
        return torch.cat([eps, cond[:, self.channels :]], -1)


@dataclass(frozen=True)
class HeadConfig:
    channels: int
    z_channels: int
    width: int
    depth: int


class DiffLoss(nn.Module):
    """Holds the denoiser as ``net`` (MAR's layout); trains with the 1,000-step process, samples respaced."""

    def __init__(self, config: HeadConfig) -> None:
        super().__init__()
        self.config = config
        self.net = SimpleMLPAdaLN(config.channels, config.z_channels, config.width, config.depth)
        self.train_process = GaussianDiffusion()

    def loss(self, tokens: torch.Tensor, z: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """Mean diffusion loss of ``tokens [N, C]`` given ``z [N, D]``."""
        return self.train_process.training_loss(lambda x, t: self.net(x, t, z), tokens, generator).mean()

    def sample(
        self,
        z: torch.Tensor,
        noise: DiffusionNoise,
        process: GaussianDiffusion,
        cfg_scale: float = 1.0,
        temperature: float = 1.0,
        clip_x0: float | None = None,
    ) -> HeadSample:
        """Denoise one token per row of ``z`` (``[cond; uncond]`` rows when ``cfg_scale != 1``)."""
        guided = cfg_scale != 1.0
        if guided and z.shape[0] != 2 * noise.start.shape[0]:
            raise ValueError("guided sampling needs z with [cond; uncond] rows, twice the noise rows")

        def model(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
            return self.net.guided(x, t, z, cfg_scale) if guided else self.net(x, t, z)

        return process.sample(model, noise, temperature, clip_x0)


__all__ = ["DiffLoss", "HeadConfig", "SimpleMLPAdaLN"]
