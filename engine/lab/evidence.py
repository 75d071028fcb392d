"""Condition evidence: how strongly images follow their condition, as the target itself reads them.

For one image of tokens ``x`` drawn for condition ``c`` it is

    sum_t  log p(x_t | x_<t, c) - log p(x_t | x_<t, no condition)

from the target's two CFG halves, teacher-forced on the tokens: the log-likelihood ratio of the
condition against none. Samples of the target (AR, or any lossless method) have one expected
value; a relaxation that emits generic codes where the target would have drawn condition-specific
ones lowers it. Why it exists: class accuracy sees only the few images that fail outright, so it
needs thousands of images to tell a 0.015 difference; this sum is read from every token of every
image, and on the demo its standard error at 100 images is about 4% of its mean.
"""

from __future__ import annotations

import torch

from ..models.base import ImageTokenModel
from ..policies.evidence import code_evidence
from ..scoring import teacher_forced_logits
from ..types import Conditioning

LOGIT_BUDGET = 1 << 27  # logits (two halves x images x tokens x codes) one pass may hold, about 0.5 GB


def images_per_pass(model: ImageTokenModel, batch: int) -> int:
    """How many images one teacher-forced pass scores (its logits stay under ``LOGIT_BUDGET``)."""
    return max(1, min(batch, LOGIT_BUDGET // (2 * model.num_image_tokens * model.vocab_size)))


def condition_evidence(model: ImageTokenModel, cond: Conditioning, tokens: torch.Tensor) -> torch.Tensor:
    """Per-image condition evidence ``[B]`` (nats) of ``tokens [B, N]`` drawn for ``cond``."""
    return evidence_of(teacher_forced_logits(model, cond, tokens), tokens)


def evidence_of(logits: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
    """Per-image condition evidence ``[B]`` from :func:`teacher_forced_logits` of ``tokens [B, N]``."""
    per_code = code_evidence(logits)
    return per_code.gather(-1, tokens.to(per_code.device)[..., None])[..., 0].sum(-1).cpu()
