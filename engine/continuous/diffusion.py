"""The Gaussian diffusion process of MAR's per-token head, with every step's noise injectable.

MAR (Li et al. 2024, arXiv 2406.11838) samples each continuous token with a small denoising MLP
run as a DDPM: a cosine noise schedule of 1,000 training steps, respaced to ``num_sampling_steps``
for generation, epsilon prediction and a *learned-range* variance (the network's second output
interpolates, in log space, between the posterior variance and beta). This module is that
process in our own code, written for speculative decoding:

* every random draw is an argument (:class:`DiffusionNoise`): draft and target can follow the
  same denoising trajectory, which is CSpD's "trajectory alignment";
* the sampler returns the Gaussian ``N(mean, std^2)`` of its last step besides the sample, which
  is the density CSpD's acceptance test compares;
* the last step is stochastic (``x_0 = mean + std * noise``). DDPM usually makes it noise-free;
  here the draft token must be a genuine sample of the Gaussian its acceptance is computed on,
  otherwise the accept/resample pair cannot reproduce the target's distribution. The last step's
  std is tiny (about 0.02 on a [-1, 1] scale), so plain sampling quality does not change.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import torch

from ..errors import SettingsError

TRAIN_STEPS = 1000
MAX_BETA = 0.999
COSINE_OFFSET = 0.008

EpsModel = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
"""``model(x_t [N, C], t [N] in training-step units) -> [N, 2C]``: epsilon, then the variance
interpolation value v in [-1, 1]."""


def cosine_betas(steps: int = TRAIN_STEPS) -> torch.Tensor:
    """Betas of the cosine schedule (Nichol & Dhariwal 2021), float64."""

    def alpha_bar(t: float) -> float:
        return math.cos((t + COSINE_OFFSET) / (1 + COSINE_OFFSET) * math.pi / 2) ** 2

    return torch.tensor(
        [min(1 - alpha_bar((i + 1) / steps) / alpha_bar(i / steps), MAX_BETA) for i in range(steps)],
        dtype=torch.float64,
    )


def respaced_timesteps(train_steps: int, sampling_steps: int) -> list[int]:
    """``sampling_steps`` training steps spread evenly over ``0..train_steps-1`` (both ends kept)."""
    if not 1 <= sampling_steps <= train_steps:
        raise SettingsError(f"num_sampling_steps must be in 1..{train_steps}, got {sampling_steps}")
    if sampling_steps == 1:
        return [train_steps - 1]
    stride = (train_steps - 1) / (sampling_steps - 1)
    return sorted({round(i * stride) for i in range(sampling_steps)})


@dataclass(frozen=True)
class DiffusionNoise:
    """Every random draw of one denoising run: the start ``[N, C]`` and one draw per step ``[N, S, C]``.

    Step ``s`` of ``steps`` is used when going from sampling step ``S-1-s`` to the next, so
    ``steps[:, -1]`` is the last step's noise.
    """

    start: torch.Tensor
    steps: torch.Tensor

    @staticmethod
    def draw(
        n: int,
        num_steps: int,
        channels: int,
        generator: torch.Generator | None = None,
        device: torch.device | str = "cpu",
    ) -> "DiffusionNoise":
        start = torch.randn(n, channels, generator=generator, device=device)
        steps = torch.randn(n, num_steps, channels, generator=generator, device=device)
        return DiffusionNoise(start, steps)


@dataclass(frozen=True)
class HeadSample:
    """Tokens ``[N, C]`` and the Gaussian of the step that produced them (``mean``, ``std``: ``[N, C]``)."""

    tokens: torch.Tensor
    mean: torch.Tensor
    std: torch.Tensor


class GaussianDiffusion:
    """A DDPM over ``num_steps`` (respaced) steps of the cosine schedule, with learned-range variance."""

    def __init__(self, num_steps: int = TRAIN_STEPS, train_steps: int = TRAIN_STEPS) -> None:
        full = cosine_betas(train_steps)
        full_bar = torch.cumprod(1 - full, 0)
        self.timesteps = respaced_timesteps(train_steps, num_steps)
        bars = full_bar[self.timesteps]
        betas = 1 - bars / torch.cat([torch.ones(1, dtype=torch.float64), bars[:-1]])
        self.num_steps = len(self.timesteps)
        self.betas = betas
        self.alpha_bar = bars
        bar_prev = torch.cat([torch.ones(1, dtype=torch.float64), bars[:-1]])
        posterior_var = betas * (1 - bar_prev) / (1 - bars)
        # log of the posterior variance, with step 0's zero replaced by step 1's value (as in ADM).
        clipped = torch.cat([posterior_var[1:2], posterior_var[1:]]) if self.num_steps > 1 else betas.clone()
        self.posterior_log_var = torch.log(clipped)
        self.log_beta = torch.log(betas)
        self.mean_coef_x0 = betas * torch.sqrt(bar_prev) / (1 - bars)
        self.mean_coef_xt = (1 - bar_prev) * torch.sqrt(1 - betas) / (1 - bars)
        self.model_timesteps = torch.tensor(self.timesteps, dtype=torch.float32)

    def _at(self, table: torch.Tensor, index: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
        return table.to(like.device)[index].to(like.dtype).unsqueeze(-1)

    def mean_std(
        self, model_out: torch.Tensor, x_t: torch.Tensor, index: torch.Tensor, clip_x0: float | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The reverse step's Gaussian ``(mean, std)`` from the network output at sampling index ``index``.

        ``clip_x0`` clamps the implied clean token to ``[-clip_x0, clip_x0]`` (ADM's ``clip_denoised``).
        """
        channels = x_t.shape[-1]
        eps, v = model_out[..., :channels], model_out[..., channels:]
        bar = self._at(self.alpha_bar, index, x_t)
        x0 = (x_t - torch.sqrt(1 - bar) * eps) / torch.sqrt(bar)
        if clip_x0 is not None:
            x0 = x0.clamp(-clip_x0, clip_x0)
        mean = self._at(self.mean_coef_x0, index, x_t) * x0 + self._at(self.mean_coef_xt, index, x_t) * x_t
        frac = (v + 1) / 2
        log_var = frac * self._at(self.log_beta, index, x_t) + (1 - frac) * self._at(self.posterior_log_var, index, x_t)
        return mean, torch.exp(0.5 * log_var)

    def step(
        self,
        model: EpsModel,
        x: torch.Tensor,
        index: int,
        noise: torch.Tensor,
        temperature: float = 1.0,
        clip_x0: float | None = None,
    ) -> HeadSample:
        """One reverse step from sampling index ``index`` (``num_steps - 1`` is pure noise, 0 the last step).

        Returns the next ``x`` and the step's Gaussian: ``x = mean + std * noise``.
        """
        idx = torch.full((x.shape[0],), index, dtype=torch.long, device=x.device)
        out = model(x, self.model_timesteps.to(x.device)[idx])
        mean, std = self.mean_std(out.float(), x, idx, clip_x0)
        std = std * temperature
        return HeadSample(mean + std * noise, mean, std)

    def sample(
        self, model: EpsModel, noise: DiffusionNoise, temperature: float = 1.0, clip_x0: float | None = None
    ) -> HeadSample:
        """Run the reverse process from ``noise.start`` with ``noise.steps``; the last step is stochastic.

        ``temperature`` scales every step's std (MAR's sampling temperature). ``clip_x0`` bounds
        the clean-token estimate: at the schedule's pure-noise end (alpha-bar 2e-9) epsilon errors
        are amplified 20,000 times into that estimate, so models of bounded data (the demo's
        pixels in [-1, 1]) clip it; MAR leaves its latents unclipped. The result carries the last
        step's Gaussian (the density CSpD compares).
        """
        if noise.steps.shape[1] != self.num_steps:
            raise SettingsError(f"noise has {noise.steps.shape[1]} steps but the sampler runs {self.num_steps}")
        out = HeadSample(noise.start, noise.start, noise.start)
        for s, index in enumerate(reversed(range(self.num_steps))):
            out = self.step(model, out.tokens, index, noise.steps[:, s], temperature, clip_x0)
        return out

    def training_loss(
        self, model: EpsModel, x0: torch.Tensor, generator: torch.Generator | None = None
    ) -> torch.Tensor:
        """Per-token loss ``[N]``: epsilon MSE plus the variational bound that trains the variance.

        As in improved DDPM's hybrid loss, the bound sees the mean through a stop-gradient, so it
        trains only the variance output. At step 0 the bound is the Gaussian negative
        log-likelihood of ``x0`` (ADM uses a discretised likelihood for 8-bit pixels; continuous
        tokens have no bins).
        """
        n, channels = x0.shape
        index = torch.randint(0, self.num_steps, (n,), device=x0.device, generator=generator)
        eps = torch.randn(x0.shape, device=x0.device, dtype=x0.dtype, generator=generator)
        bar = self._at(self.alpha_bar, index, x0)
        x_t = torch.sqrt(bar) * x0 + torch.sqrt(1 - bar) * eps
        out = model(x_t, self.model_timesteps.to(x0.device)[index]).float()
        mse = ((out[:, :channels] - eps) ** 2).mean(-1)
        frozen = torch.cat([out[:, :channels].detach(), out[:, channels:]], -1)
        mean, std = self.mean_std(frozen, x_t, index)
        log_var = 2 * torch.log(std)
        true_mean = self._at(self.mean_coef_x0, index, x0) * x0 + self._at(self.mean_coef_xt, index, x0) * x_t
        true_log_var = self._at(self.posterior_log_var, index, x0)
        kl = 0.5 * (log_var - true_log_var + torch.exp(true_log_var - log_var) + (true_mean - mean) ** 2 / std**2 - 1)
        nll = 0.5 * (math.log(2 * math.pi) + log_var + (x0 - mean) ** 2 / std**2)
        vb = torch.where((index == 0).unsqueeze(-1), nll, kl).mean(-1) / math.log(2.0)
        return mse + vb


__all__ = ["GaussianDiffusion", "DiffusionNoise", "HeadSample", "cosine_betas", "respaced_timesteps", "TRAIN_STEPS"]
