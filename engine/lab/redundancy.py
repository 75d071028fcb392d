"""CASCADE's drafter-training variant: the alternatives the target itself cannot tell from the real token.

For every position of a drawn image, the target's ``m`` likeliest other tokens are fed in the real
token's place after the same prefix, all in one tree forward: the real tokens causally, and each
alternative seeing only the real tokens before its position and itself. Alternatives that leave the
target's last hidden state with cosine similarity >= ``tau`` to the real token's count as
interchangeable with it. A head trained with their probability moved onto the real token (the
conditional half's soft target) learns the target's distribution up to tokens the target cannot tell
apart, which is what CASCADE's acceptance rule forgives (see ``specar.policies.cascade``).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ..models.base import ImageTokenModel
from ..scoring import teacher_forced_states
from ..types import Conditioning


@torch.inference_mode()
def interchangeable_tokens(
    model: ImageTokenModel, cond: Conditioning, tokens: torch.Tensor, alternatives: int, tau: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """The target's top ``alternatives`` other tokens at every position of ``tokens [B, N]`` (conditional
    distribution) and which of them are interchangeable with the real token. Returns ``alt [B, N, m]``
    (long) and ``similar [B, N, m]`` (bool)."""
    batch, n = tokens.shape
    m = alternatives
    tokens = tokens.to(model.device)
    read = teacher_forced_states(model, cond, tokens, guided=False)
    p = read.logits[:, :-1].float().softmax(-1)  # [B, N, V]: slot t predicts token t
    alt = p.masked_fill(F.one_hot(tokens, p.shape[-1]).bool(), -1.0).topk(m, dim=-1).indices
    real = n - 1  # real tokens fed: 0 .. N-2, the prefixes of every position
    alt_position = torch.arange(n, device=model.device).repeat_interleave(m)
    size = real + n * m
    mask = torch.zeros(size, size, dtype=torch.bool, device=model.device)
    mask[:real, :real] = torch.ones(real, real, dtype=torch.bool, device=model.device).tril()
    alt_rows = real + torch.arange(n * m, device=model.device)
    mask[alt_rows, :real] = torch.arange(real, device=model.device)[None, :] < alt_position[:, None]
    mask[alt_rows, alt_rows] = True
    inputs = torch.cat([tokens[:, :real], alt.flatten(1)], 1)
    positions = torch.cat([torch.arange(real, device=model.device), alt_position]).expand(batch, -1)
    try:
        model.prefill(cond, guided=False)
        hidden = model.forward(inputs, positions, mask).hidden
    finally:
        model.release()
    alt_states = hidden[:, real:].reshape(batch, n, m, -1).float()
    real_states = read.hidden[:, 1:].float()  # [B, N, D]: the state after real token t
    similar = F.cosine_similarity(alt_states, real_states[:, :, None], dim=-1) >= tau
    return alt, similar


def merge_interchangeable(
    p: torch.Tensor, tokens: torch.Tensor, alt: torch.Tensor, similar: torch.Tensor
) -> torch.Tensor:
    """``p [B, N, V]`` with the mass of the alternatives interchangeable with the real token moved onto it."""
    moved = (p.gather(-1, alt) * similar).sum(-1)
    soft = p.scatter(-1, alt, p.gather(-1, alt) * ~similar)
    return soft.scatter_add(-1, tokens[..., None], moved[..., None])
