"""Condition evidence of every code, read from one guided target forward at verification time.

Policies with ``needs_code_evidence`` (the clusters/CASCADE evidence guard) compare a draft's code with
the target's by how much each says about the condition: ``log p(x | c) - log p(x | no condition)``.
"""

from __future__ import annotations

import torch

EVIDENCE_BOUND = 1e4  # nats: a code one guidance half rules out gets this finite value, so sums stay defined


def code_evidence(logits: torch.Tensor) -> torch.Tensor:
    """``log p(x | c) - log p(x | no condition)`` for every code ``[B, k, V]`` from the paired raw logits
    ``[cond rows; uncond rows]`` ``[2B, k, V]``: how much each code would say about the condition (codes a
    half rules out get ``±EVIDENCE_BOUND``, so comparisons and sums stay defined)."""
    conditioned, unconditioned = logits.float().log_softmax(-1).chunk(2)
    return torch.nan_to_num(conditioned - unconditioned, nan=0.0, posinf=EVIDENCE_BOUND, neginf=-EVIDENCE_BOUND)
