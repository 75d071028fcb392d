"""The distribution processor and the samplers built on it.

One processor turns raw model logits into the distribution a token is drawn from, for the target
and for every draft alike, so the ``q`` an acceptance test divides by is exactly the distribution
the draft was sampled from. All work is in float32 on the logits' device, vectorised over batch
and block positions.

Order: classifier-free guidance, then the model's constraints (image-vocabulary restriction,
forced structural tokens), then temperature, top-k, top-p, softmax. Constraints come straight
after guidance, as in Lumina-mGPT's processor list: masking before guidance would give
``-inf - -inf = nan``, and masking after top-k could leave no allowed token at all.
"""

from __future__ import annotations

from typing import Callable

import numpy as np
import torch

from .types import SamplingSettings

Constraint = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
"""``constrain(logits [B, k, V], positions [B, k]) -> logits``; positions are the image-token
indices being predicted. Returns logits with disallowed entries set to ``-inf``."""

NEG_INF = float("-inf")

Q_FLOOR = 1e-10  # a drafted token always has q(x) > 0; the floor only guards divisions by q
MASS_EPSILON = 1e-12  # leftover probability below this is rounding, not a distribution to draw from
DIVISOR_FLOOR = 1e-30  # the least divisor when normalising, so an all-zero row gives zeros, never NaN


class DistributionProcessor:
    """CFG -> constraints -> temperature -> top-k -> top-p -> softmax, in float32."""

    def __init__(self, settings: SamplingSettings, constrain: Constraint | None = None) -> None:
        self.settings = settings
        self.constrain = constrain

    def guide(self, logits: torch.Tensor) -> torch.Tensor:
        """Combine the paired batch ``[cond rows; uncond rows]`` into guided logits ``[B, k, V]``."""
        if logits.dtype != torch.float32:
            logits = logits.float()
        if not self.settings.uses_cfg:
            return logits
        half = logits.shape[0] // 2
        cond, uncond = logits[:half], logits[half:]
        return torch.lerp(uncond, cond, self.settings.cfg_scale)  # uncond + scale * (cond - uncond), one kernel

    def __call__(self, logits: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        """Processed probabilities ``[B, k, V]`` for raw model logits ``[R, k, V]``."""
        guided = self.guide(logits)
        if self.constrain is not None:
            guided = self.constrain(guided, positions)
        return self.finish(guided)

    def finish(self, logits: torch.Tensor) -> torch.Tensor:
        """Temperature, top-k, top-p and softmax of already guided and constrained logits."""
        s = self.settings
        if s.greedy:
            return point_mass(logits.argmax(dim=-1), logits.shape[-1])
        if s.temperature != 1.0:  # dividing by 1 changes nothing and would cost a pass over the logits
            logits = logits / s.temperature
        if s.top_k and s.top_k < logits.shape[-1]:
            # ``where`` rather than ``masked_fill``: the same values in fewer passes on a CPU
            logits = torch.where(logits < _kth_largest(logits, s.top_k), NEG_INF, logits)
        if s.top_p < 1.0:
            logits = _nucleus(logits, s.top_p)
        return torch.softmax(logits, dim=-1)


# NumPy 2 sorts with SIMD kernels on x86 (AVX2 and up) and ARM, and a SIMD sort of a row of logits beats a selection in
# it; NumPy 1 has them on few CPUs, and a scalar sort costs more than a selection
_NUMPY_SORTS_IN_SIMD = int(np.__version__.split(".")[0]) >= 2


def _kth_largest(logits: torch.Tensor, k: int) -> torch.Tensor:
    """The ``k``-th largest entry of every row, ``[..., 1]``.

    On a CPU, NumPy's: a SIMD sort of the rows where NumPy has one for the CPU, else a selection
    (``np.partition``). ``torch.kthvalue`` and ``topk`` select by quickselect, which branches on every
    comparison, and every step brings new logits, so their branches are mispredicted throughout.
    Elsewhere ``topk`` (MPS lacks ``kthvalue`` before torch 2.9). All give the same value, so the same
    tokens.
    """
    if logits.is_cpu:
        at = logits.shape[-1] - k
        values = logits if logits.dtype == torch.float32 and not logits.requires_grad else logits.detach().float()
        rows = values.numpy()
        ordered = np.sort(rows, axis=-1) if _NUMPY_SORTS_IN_SIMD else np.partition(rows, at, axis=-1)
        return torch.from_numpy(ordered[..., at : at + 1])
    return torch.topk(logits, k, dim=-1).values[..., -1:]


def _nucleus(logits: torch.Tensor, top_p: float) -> torch.Tensor:
    """Keep the smallest set of tokens whose mass reaches ``top_p`` (always at least the top one)."""
    sorted_logits, order = torch.sort(logits, dim=-1, descending=True)
    probs = torch.softmax(sorted_logits, dim=-1)
    mass_before = probs.cumsum(dim=-1) - probs
    drop_sorted = mass_before >= top_p
    drop = torch.zeros_like(drop_sorted).scatter(-1, order, drop_sorted)
    return logits.masked_fill(drop, NEG_INF)


def point_mass(tokens: torch.Tensor, vocab: int) -> torch.Tensor:
    """One-hot float32 distributions for ``tokens`` (any shape) over ``vocab`` entries."""
    out = torch.zeros(*tokens.shape, vocab, dtype=torch.float32, device=tokens.device)
    return out.scatter_(-1, tokens.unsqueeze(-1), 1.0)


def sample(probs: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Draw one token per distribution in ``probs [..., V]`` by inverting its CDF.

    One uniform per row and a binary search: exact, no host sync, and far cheaper than drawing a
    random number per vocabulary entry. ``right=True`` skips zero-mass entries, whose CDF step
    is empty, so they can never be drawn.
    """
    cdf = probs.cumsum(dim=-1)
    u = torch.rand(*probs.shape[:-1], 1, generator=generator, device=probs.device, dtype=cdf.dtype)
    index = torch.searchsorted(cdf, u * cdf[..., -1:], right=True)
    return index.squeeze(-1).clamp_(max=probs.shape[-1] - 1)


def _left_over(p: torch.Tensor, q: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``max(0, p - q)`` along the last axis and its total."""
    r = (p - q).clamp_min_(0.0)
    return r, r.sum(dim=-1, keepdim=True)


def residual(p: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
    """``norm(max(0, p - q))`` along the last axis, falling back to ``p`` where that is all zero.

    This is the distribution a correction is drawn from after a draft drawn from ``q`` was
    rejected; with a one-hot ``q`` it is ``p`` with the rejected token removed.
    """
    r, mass = _left_over(p, q)
    return torch.where(mass > MASS_EPSILON, r.div_(mass), p)  # where the mass is ~0 the quotient is not used


def residual_weights(p: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
    """:func:`residual` left unnormalised, for drawing from (:func:`sample` scales by each row's total): one pass
    over the distributions fewer."""
    r, mass = _left_over(p, q)
    return torch.where(mass > MASS_EPSILON, r, p)


def make_generator(seed: int, device: torch.device | str) -> torch.Generator:
    """A generator on ``device`` seeded with ``seed``: same seed, same settings, same image."""
    gen = torch.Generator(device=torch.device(device))
    gen.manual_seed(int(seed))
    return gen
