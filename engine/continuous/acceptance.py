"""CSpD's acceptance test for continuous tokens and the resampling of rejected ones.

Draft and target denoise a position from the same noise (trajectory alignment), so each ends in
a diagonal Gaussian: ``q = N(mu_q, sigma_q^2)`` for the draft, ``p = N(mu_p, sigma_p^2)`` for the
target. A draft token ``x ~ q`` is accepted with probability ``alpha(x) = min(1, p(x) / q(x))``;
a rejected one is replaced by a draw from the residual ``r ∝ max(0, p - q * alpha)``.

* ``inner_temperature`` T divides the squared Mahalanobis terms of both densities by ``T^2``
  before the ratio (the reference code's "approximated acceptance criterion", T = 42 there).
  T = 1 is the exact Gaussian ratio; larger T pushes the ratio towards ``prod(sigma_q / sigma_p)``
  and accepts more, at a cost in fidelity the benchmark measures.
* The residual has no closed form, so it is sampled by acceptance-rejection with the target's
  Gaussian as proposal: ``y ~ p`` is kept with probability ``max(0, 1 - q(y) alpha(y) / p(y))``
  (at most 1, so the bound M = 1 holds). For T = 1 this is ``max(0, 1 - q(y)/p(y))`` and the
  accepted-or-resampled token is *exactly* ``p``-distributed; for T > 1 the same construction
  keeps the output as close to ``p`` as a non-negative residual allows.
* The tries are bounded (``max_tries``). When all fail, the last proposal (a plain ``p`` sample)
  is used: the output is then off by at most ``beta * (1 - beta)^K`` in total variation for a
  residual of mass ``beta`` and K tries, at most ``1 / (e K)`` (0.37 % for K = 100). The
  reference code leaves a zero vector instead, which is a wrong token.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from ..errors import SettingsError
from ..validation import finite_number, whole_number

REFERENCE_INNER_TEMPERATURE = 42.0  # CSpD's code default
RECOMMENDED_RELAXATION = 0.5  # the demo benchmark's largest setting inside plain MAR's FID-lite range


@dataclass(frozen=True)
class Gaussian:
    """A diagonal Gaussian per row: ``mean``, ``std`` ``[N, C]``."""

    mean: torch.Tensor
    std: torch.Tensor

    def log_density(self, x: torch.Tensor, inner_temperature: float = 1.0) -> torch.Tensor:
        """``log N(x; mean, std^2)`` per row ``[N]``, with the squared term divided by ``T^2``, up to a constant."""
        z = (x - self.mean) / self.std
        return -0.5 * (z * z).sum(-1) / inner_temperature**2 - torch.log(self.std).sum(-1)

    def sample(self, generator: torch.Generator) -> torch.Tensor:
        noise = torch.randn(self.mean.shape, generator=generator, device=self.mean.device, dtype=self.mean.dtype)
        return self.mean + self.std * noise


MAX_INNER_TEMPERATURE = 1e4  # 1 is the exact Gaussian ratio, the reference's loosest 42; squared, this stays finite
MAX_TRIES = 10_000  # residual-sampler tries per token before its bounded fallback


@dataclass(frozen=True)
class GaussianAcceptance:
    """The CSpD test with its two parameters (see the module docstring)."""

    inner_temperature: float = 1.0
    max_tries: int = 100

    def __post_init__(self) -> None:
        finite_number("inner_temperature", self.inner_temperature, low=1.0, high=MAX_INNER_TEMPERATURE)
        whole_number("max_tries", self.max_tries, low=1, high=MAX_TRIES)

    def log_alpha(self, x: torch.Tensor, p: Gaussian, q: Gaussian) -> torch.Tensor:
        """``log alpha(x) = min(0, log p~(x) - log q~(x))`` per row, with the tempered densities."""
        t = self.inner_temperature
        return (p.log_density(x, t) - q.log_density(x, t)).clamp(max=0.0)

    def decide(
        self, x: torch.Tensor, p: Gaussian, q: Gaussian, generator: torch.Generator
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """Accept or resample each draft row: ``(tokens, accepted [N] bool, alpha [N], fell_back [N] bool)``."""
        log_alpha = self.log_alpha(x, p, q)
        u = torch.rand(log_alpha.shape, generator=generator, device=x.device)
        accepted = torch.log(u) < log_alpha
        tokens = x.clone()
        fell_back = torch.zeros_like(accepted)
        rejected = (~accepted).nonzero().squeeze(-1)
        if rejected.numel():
            rows = Gaussian(p.mean[rejected], p.std[rejected]), Gaussian(q.mean[rejected], q.std[rejected])
            tokens[rejected], fell_back[rejected] = self.sample_residual(*rows, generator)
        return tokens, accepted, log_alpha.exp(), fell_back

    def sample_residual(
        self, p: Gaussian, q: Gaussian, generator: torch.Generator
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Draws from ``r ∝ max(0, p - q * alpha)`` by acceptance-rejection from ``p``; ``(tokens, fell_back)``."""
        out = torch.empty_like(p.mean)
        pending = torch.ones(p.mean.shape[0], dtype=torch.bool, device=p.mean.device)
        for _ in range(self.max_tries):
            y = p.sample(generator)
            log_ratio = q.log_density(y) - p.log_density(y) + self.log_alpha(y, p, q)  # log(q alpha / p)
            keep_prob = (1 - log_ratio.clamp(max=0.0).exp()).clamp(min=0.0)
            u = torch.rand(keep_prob.shape, generator=generator, device=y.device)
            take = pending & (u < keep_prob)
            out[take] = y[take]
            pending &= ~take
            if not bool(pending.any()):
                return out, pending
        out[pending] = y[pending]  # bounded fallback: a plain sample of p
        return out, pending


def inner_temperature_for(relaxation: float) -> float:
    """The relaxation knob in [0, 1] mapped log-linearly onto T in [1, 42] (0 = exact, 1 = the reference's 42)."""
    if not 0.0 <= relaxation <= 1.0:
        raise SettingsError(f"relaxation must be in [0, 1], got {relaxation}")
    return math.exp(relaxation * math.log(REFERENCE_INNER_TEMPERATURE))


__all__ = [
    "Gaussian",
    "GaussianAcceptance",
    "inner_temperature_for",
    "REFERENCE_INNER_TEMPERATURE",
    "RECOMMENDED_RELAXATION",
]
