"""Token fidelity: do a method's tokens follow the target's own distribution, token by token?

Each emitted token ``x_t`` is mapped through the target's processed distribution ``p(. | x_<t)``
(teacher-forced, with the run's CFG, temperature, top-k and top-p) by a randomised probability
integral transform (PIT). For samples of the target (plain AR, or any lossless method) the values
are i.i.d. uniform on [0, 1], also along a sequence, so a Kolmogorov-Smirnov test against the
uniform law checks losslessness on the real model at the run's own settings, not only on the tiny
models of the test suite. For a relaxed method the KS distance ``D`` measures how far its tokens
moved from the target's; codes are ordered by decreasing target probability, so a mean above 0.5
says the method emits codes the target finds less likely than its own draws.

Why: a 1,000-image quality score cannot tell a lossless method from one with a small bias (its
seed-to-seed spread is wider than the bias), while every token of every image enters this test.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from ..sampling import Constraint, DistributionProcessor
from ..types import SamplingSettings


def randomized_pit(p: torch.Tensor, tokens: torch.Tensor, seed: int = 7) -> torch.Tensor:
    """Randomised PIT values of discrete draws ``tokens [...]`` under ``p [..., V]``, flattened.

    Codes are ranked by decreasing probability, codes of equal probability forming one rank: a value is
    the mass above the token's rank plus a uniform share of its rank's mass. A sampler that favours
    likely (drafted) codes pushes the values towards 0, one that emits unlikely codes towards 1.
    """
    own = p.gather(-1, tokens.unsqueeze(-1))
    above = (p * (p > own)).sum(-1)
    level = (p * (p == own)).sum(-1)
    # From numpy's PCG64, not torch's generator: the sampler draws each token with a uniform from a torch
    # generator seeded with its image's seed, and a PIT seeded alike would reuse that very uniform for it.
    uniform = torch.from_numpy(np.random.default_rng(seed).random(tuple(above.shape)))
    return (above + uniform.to(above.device, above.dtype) * level).flatten()


def token_pit(
    logits: torch.Tensor,
    tokens: torch.Tensor,
    settings: SamplingSettings,
    constrain: Constraint | None = None,
    seed: int = 7,
) -> torch.Tensor:
    """PIT values ``[B * N]`` of ``tokens [B, N]`` under the target's processed distributions, from its raw
    teacher-forced logits ``[R, N, V]`` (both CFG halves where ``settings`` guide; see :mod:`specar.evidence`)."""
    positions = torch.arange(tokens.shape[1], device=tokens.device).expand(tokens.shape[0], -1)
    p = DistributionProcessor(settings, constrain)(logits, positions)
    return randomized_pit(p, tokens.to(p.device), seed).cpu()


def ks_pvalue(distance: float, n: float) -> float:
    """Asymptotic p-value of a Kolmogorov-Smirnov distance over an effective sample size ``n``."""
    lam = (math.sqrt(n) + 0.12 + 0.11 / math.sqrt(n)) * distance
    pval = 2 * sum((-1) ** (k - 1) * math.exp(-2 * k * k * lam * lam) for k in range(1, 101))
    return min(max(pval, 0.0), 1.0)


def ks_uniform(values: torch.Tensor) -> tuple[float, float]:
    """Kolmogorov-Smirnov distance of ``values`` from U(0, 1) and its asymptotic p-value."""
    x, _ = values.double().flatten().clamp(0, 1).sort()
    n = x.numel()
    i = torch.arange(1, n + 1, dtype=torch.float64, device=x.device)
    distance = float(torch.maximum(i / n - x, x - (i - 1) / n).max())
    return distance, ks_pvalue(distance, n)
