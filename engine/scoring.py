"""Scoring given tokens under the target: what the target would have sampled them from.

One teacher-forced pass reads a whole image's tokens (no drafts, no cache reuse) and gives, at every
position, the raw logits, the processed distribution the loop samples from (guidance, the model's
constraints, temperature, top-k, top-p), or the log-probability of the token that is there. Fidelity
checks (do a method's tokens follow the target?) and likelihood comparisons read these.
"""

from __future__ import annotations

import torch

from .errors import SettingsError
from .memory import check_fits
from .models.base import ImageTokenModel, ModelOutput
from .sampling import DistributionProcessor
from .types import Conditioning, SamplingSettings


@torch.inference_mode()
def teacher_forced_states(
    model: ImageTokenModel, cond: Conditioning, tokens: torch.Tensor, guided: bool = True
) -> ModelOutput:
    """The target read over ``tokens [B, N]`` drawn for ``cond`` in one pass: logits ``[R, N + 1, V]`` and
    last-layer hidden states ``[R, N + 1, D]``, slot 0 after the condition (predicting token 0) and slot
    ``t + 1`` after token ``t`` (``R = 2B``, conditional rows then unconditional ones, when ``guided``)."""
    tokens = _checked_tokens(model, cond, tokens)
    batch, n = tokens.shape
    rows = (2 if guided else 1) * batch
    check_fits(
        f"teacher-forced logits ({rows} rows x {n} tokens x {model.vocab_size:,} codes)",
        3 * rows * (n + 1) * (model.vocab_size + model.hidden_size) * 4,  # outputs, float copies, distributions
        torch.device(model.device),
        "score fewer images at once",
    )
    try:
        first = model.prefill(cond, guided)
        positions = torch.arange(n, device=model.device).expand(batch, -1)
        rest = model.forward(tokens, positions)  # token t predicts t + 1
    finally:
        model.release()
    return ModelOutput(torch.cat([first.logits, rest.logits], 1), torch.cat([first.hidden, rest.hidden], 1))


def teacher_forced_logits(
    model: ImageTokenModel, cond: Conditioning, tokens: torch.Tensor, guided: bool = True
) -> torch.Tensor:
    """Raw logits ``[R, N, V]`` predicting each of ``tokens [B, N]`` drawn for ``cond`` (``R = 2B``, conditional
    rows then unconditional ones, when ``guided``), in one pass over the tokens."""
    return teacher_forced_states(model, cond, tokens, guided).logits[:, :-1]


def processed_distributions(
    model: ImageTokenModel, cond: Conditioning, tokens: torch.Tensor, settings: SamplingSettings | None = None
) -> torch.Tensor:
    """The distribution ``[B, N, V]`` the target samples each position of ``tokens [B, N]`` from under
    ``settings`` (the model's defaults if none), given the tokens before it."""
    settings = settings or model.default_settings
    logits = teacher_forced_logits(model, cond, tokens, settings.uses_cfg)
    positions = torch.arange(tokens.shape[1], device=logits.device).expand(tokens.shape[0], -1)
    return DistributionProcessor(settings, model.constraint)(logits, positions)


def score(
    model: ImageTokenModel, cond: Conditioning, tokens: torch.Tensor, settings: SamplingSettings | None = None
) -> torch.Tensor:
    """Log-probability ``[B, N]`` (natural log, float32, on the CPU) of each of ``tokens [B, N]`` under the
    target's processed distribution at its position: ``-inf`` where that distribution forbids the token
    (outside top-k or top-p, a forbidden code, every token but the argmax when greedy)."""
    p = processed_distributions(model, cond, tokens, settings)
    return p.gather(-1, tokens.to(p.device)[..., None]).squeeze(-1).log().cpu()


def _checked_tokens(model: ImageTokenModel, cond: Conditioning, tokens: torch.Tensor) -> torch.Tensor:
    if not isinstance(tokens, torch.Tensor) or tokens.is_floating_point() or tokens.is_complex():
        raise SettingsError(f"{model.name} scores a tensor of integer codes, got {type(tokens).__name__}")
    if tokens.dim() != 2 or tokens.shape != (cond.batch_size, model.num_image_tokens):
        raise SettingsError(
            f"{model.name} scores codes [{cond.batch_size} images, {model.num_image_tokens} tokens] for this "
            f"conditioning, got shape {list(tokens.shape)}"
        )
    if int(tokens.min()) < 0 or int(tokens.max()) >= model.vocab_size:
        raise SettingsError(f"{model.name} has codes 0..{model.vocab_size - 1}; got codes outside them")
    model.check_conditioning(cond)
    return tokens.to(model.device)
