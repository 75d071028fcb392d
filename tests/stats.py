"""Statistical helpers for the losslessness tests (seeded, so never flaky)."""

from __future__ import annotations

import torch

from specar.lab.fidelity import ks_pvalue


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


def ks_two_sample(a: torch.Tensor, b: torch.Tensor) -> tuple[float, float]:
    """Two-sample Kolmogorov-Smirnov statistic of 1-D samples and its asymptotic p-value."""
    a, b = a.double().flatten().sort().values, b.double().flatten().sort().values
    grid = torch.cat([a, b])
    cdf_a = torch.searchsorted(a, grid, right=True).double() / a.numel()
    cdf_b = torch.searchsorted(b, grid, right=True).double() / b.numel()
    d = float((cdf_a - cdf_b).abs().max())
    return d, ks_pvalue(d, a.numel() * b.numel() / (a.numel() + b.numel()))
