"""Statistical helpers for the losslessness tests (seeded, so never flaky)."""

from __future__ import annotations

import math

import torch


def total_variation(counts: torch.Tensor, p: torch.Tensor) -> float:
    """TV distance between the empirical distribution of ``counts`` and ``p``."""
    return 0.5 * float((counts.double() / counts.sum() - p.double()).abs().sum())


def noise_floor(p: torch.Tensor, draws: int, trials: int = 40, seed: int = 123) -> float:
    """99th-percentile-ish TV of ``draws`` direct samples from ``p`` (max over ``trials``)."""
    gen = torch.Generator().manual_seed(seed)
    worst = 0.0
    for _ in range(trials):
        x = torch.multinomial(p.double(), draws, replacement=True, generator=gen)
        worst = max(worst, total_variation(torch.bincount(x, minlength=p.numel()), p))
    return worst


def randomized_pit(p: torch.Tensor, tokens: torch.Tensor, seed: int = 7) -> torch.Tensor:
    """Randomised probability integral transform of discrete draws ``tokens`` under ``p [..., V]``.

    Tokens are ordered by decreasing probability, so a sampler that favours likely (drafted)
    tokens pushes values towards 0. Under the null (each token drawn from its own ``p`` given the
    past) the values are i.i.d. uniform, also along a sequence.
    """
    order = p.argsort(dim=-1, descending=True)
    sorted_p = p.gather(-1, order)
    rank = order.argsort(dim=-1).gather(-1, tokens.unsqueeze(-1)).squeeze(-1)
    below = (sorted_p.cumsum(-1) - sorted_p).gather(-1, rank.unsqueeze(-1)).squeeze(-1)
    own = sorted_p.gather(-1, rank.unsqueeze(-1)).squeeze(-1)
    v = torch.rand(own.shape, generator=torch.Generator().manual_seed(seed), dtype=own.dtype)
    return (below + v * own).flatten()


def ks_uniform(values: torch.Tensor) -> tuple[float, float]:
    """Kolmogorov-Smirnov statistic against U(0, 1) and its asymptotic p-value."""
    x, _ = values.double().clamp(0, 1).sort()
    n = x.numel()
    i = torch.arange(1, n + 1, dtype=torch.float64)
    d = float(torch.maximum(i / n - x, x - (i - 1) / n).max())
    lam = (math.sqrt(n) + 0.12 + 0.11 / math.sqrt(n)) * d
    pval = 2 * sum((-1) ** (k - 1) * math.exp(-2 * k * k * lam * lam) for k in range(1, 101))
    return d, min(max(pval, 0.0), 1.0)


def ks_two_sample(a: torch.Tensor, b: torch.Tensor) -> tuple[float, float]:
    """Two-sample Kolmogorov-Smirnov statistic of 1-D samples and its asymptotic p-value."""
    a, b = a.double().flatten().sort().values, b.double().flatten().sort().values
    grid = torch.cat([a, b])
    cdf_a = torch.searchsorted(a, grid, right=True).double() / a.numel()
    cdf_b = torch.searchsorted(b, grid, right=True).double() / b.numel()
    d = float((cdf_a - cdf_b).abs().max())
    n = a.numel() * b.numel() / (a.numel() + b.numel())
    lam = (math.sqrt(n) + 0.12 + 0.11 / math.sqrt(n)) * d
    pval = 2 * sum((-1) ** (k - 1) * math.exp(-2 * k * k * lam * lam) for k in range(1, 101))
    return d, min(max(pval, 0.0), 1.0)
