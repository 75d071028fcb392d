"""The continuous decoding loop: plain MAR sampling, or CSpD when a draft model is given.

One loop serves both, so a plain run and a speculative run with the same seed share the random
order and every denoising noise of every position (drawn once, up front): their images differ only
where the draft changed a token. Per MAR step:

* **target step** (plain sampling, or CSpD's pre-fill): one target pass predicts the step's
  positions from the known tokens;
* **draft step**: one draft pass does the same, provisionally, recording each token's last-step
  Gaussian ``q``;
* **verification** after ``draft_steps`` draft steps (and at the last step): one target pass,
  conditioned on the tokens known at the previous verification, predicts every position drafted
  since, from the same noise, giving ``p``; each drafted token is accepted or resampled on its own
  (MAR predicts those positions in parallel from one context, so a rejection does not invalidate
  the others).

The observer sees a :class:`specar.types.StepEvent` after every target pass and may stop the run;
what was decided so far is returned (``finished=False``), never lost.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Callable

import torch

from ..errors import IncompatibleDrafterError, NonFiniteOutputError
from ..sampling import make_generator
from ..types import Observer, StepEvent, TokenKind
from .acceptance import Gaussian
from .diffusion import DiffusionNoise, GaussianDiffusion, HeadSample
from .model import ContinuousTokenModel
from .schedule import MaskSchedule, cfg_at, random_orders
from .types import ContinuousResult, ContinuousSettings, CSpDSettings

DECISION_STREAM = 1  # seed offset of the acceptance and residual draws (the shared noise uses the seed itself)


def check_draft_fits(target: ContinuousTokenModel, draft: ContinuousTokenModel) -> None:
    """A CSpD draft must predict the same token space on the same grid for the same classes."""
    problems = [
        f"{what} {a} vs {b}"
        for what, a, b in (
            ("grid", target.grid, draft.grid),
            ("token channels", target.token_dim, draft.token_dim),
            ("classes", target.num_classes, draft.num_classes),
        )
        if a != b
    ]
    if problems:
        raise IncompatibleDrafterError(f"{draft.name} cannot draft for {target.name}: " + "; ".join(problems))


@dataclass
class _Run:
    """The state of one batch: tokens, which are known, and the bookkeeping behind the heatmaps."""

    tokens: torch.Tensor  # [B, L, C]
    unknown: torch.Tensor  # [B, L] bool: not decided (or only drafted) yet
    kinds: torch.Tensor  # [B, L] int8 TokenKind, -1 until decided by the target
    forward_index: torch.Tensor  # [B, L] int32
    alpha: torch.Tensor  # [B, L] float, NaN where no draft was tested
    noise: DiffusionNoise  # per position: start [B, L, C], steps [B, L, S, C]

    def rows(self, positions: torch.Tensor) -> DiffusionNoise:
        """The shared noise of ``positions [B, k]``, flattened to ``B*k`` rows."""
        b, k = positions.shape
        start = self.noise.start.gather(1, positions[..., None].expand(-1, -1, self.noise.start.shape[-1]))
        idx = positions[..., None, None].expand(-1, -1, *self.noise.steps.shape[2:])
        return DiffusionNoise(
            start.reshape(b * k, -1), self.noise.steps.gather(1, idx).reshape(b * k, *self.noise.steps.shape[2:])
        )


def _predict(
    model: ContinuousTokenModel,
    run: _Run,
    unknown: torch.Tensor,
    class_rows: torch.Tensor,
    positions: torch.Tensor,
    process: GaussianDiffusion,
    cfg_scale: float,
    temperature: float,
) -> HeadSample:
    """One pass of ``model`` given the tokens known in ``unknown``, then its head at ``positions``."""
    z = model.condition(run.tokens, unknown, class_rows)
    rows = positions.repeat(z.shape[0] // positions.shape[0], 1)
    picked = z.gather(1, rows[..., None].expand(-1, -1, z.shape[-1])).reshape(-1, z.shape[-1])
    return model.head_sample(picked, run.rows(positions), process, cfg_scale, temperature)


class _NonFinite(Exception):
    """Internal: a model's tokens came out NaN or infinite (``args[0]`` names the model)."""


def _require_finite(tokens: torch.Tensor, who: str) -> None:
    """Stop before non-finite tokens are written (one small read-back per MAR step, which syncs anyway)."""
    if not bool(torch.isfinite(tokens).all()):
        raise _NonFinite(who)


def _scatter(target: torch.Tensor, positions: torch.Tensor, values: torch.Tensor) -> None:
    """``target[b, positions[b, j]] = values[b*k + j]`` for ``[B, L]`` or ``[B, L, C]`` targets."""
    b, k = positions.shape
    vals = values.reshape(b, k, *target.shape[2:]).to(target.dtype)
    idx = positions if target.dim() == 2 else positions[..., None].expand(-1, -1, target.shape[-1])
    target.scatter_(1, idx, vals)


def generate_continuous(
    target: ContinuousTokenModel,
    class_ids: torch.Tensor | list[int],
    settings: ContinuousSettings | None = None,
    draft: ContinuousTokenModel | None = None,
    speculation: CSpDSettings | None = None,
    observer: Observer | None = None,
) -> ContinuousResult:
    """Sample one image per class id with ``target`` (MAR steps), speculatively when ``draft`` is given."""
    settings = settings or ContinuousSettings()
    speculation = speculation or CSpDSettings()
    if draft is not None:
        check_draft_fits(target, draft)
    dev = target.device
    ids = torch.as_tensor(class_ids, dtype=torch.long, device=dev).reshape(-1)
    B, L, C = ids.shape[0], target.grid[0] * target.grid[1], target.token_dim
    shared = make_generator(settings.seed, dev)
    decisions = make_generator(settings.seed + DECISION_STREAM, dev)
    process = GaussianDiffusion(settings.num_sampling_steps)
    schedule = MaskSchedule(random_orders(B, L, shared), settings.num_iter)
    run = _Run(
        tokens=torch.zeros(B, L, C, device=dev),
        unknown=torch.ones(B, L, dtype=torch.bool, device=dev),
        kinds=torch.full((B, L), -1, dtype=torch.int8),
        forward_index=torch.full((B, L), -1, dtype=torch.int32),
        alpha=torch.full((B, L), float("nan")),
        noise=DiffusionNoise(
            torch.randn(B, L, C, generator=shared, device=dev),
            torch.randn(B, L, process.num_steps, C, generator=shared, device=dev),
        ),
    )
    target_rows = target.class_rows(ids, settings.uses_cfg)
    draft_rows = draft.class_rows(ids, settings.uses_cfg) if draft is not None else None
    q_mean, q_std = torch.zeros(B, L, C, device=dev), torch.ones(B, L, C, device=dev)
    verified_unknown = run.unknown.clone()  # what the target's last pass knew
    passes = {"target": 0, "draft": 0, "drafted": 0, "accepted": 0, "fallbacks": 0}
    model_seconds, started = 0.0, time.perf_counter()
    finished = True

    def notify() -> bool:
        if observer is None:
            return True
        committed = (run.kinds >= 0).sum(1).long()
        event = StepEvent(
            passes["target"] - 1, run.tokens, committed, run.kinds, run.forward_index, passes["target"], L
        )
        return observer(event) is not False

    def timed(call: Callable[[], HeadSample]) -> HeadSample:
        nonlocal model_seconds
        t0 = time.perf_counter()
        out = call()
        model_seconds += time.perf_counter() - t0
        return out

    drafted_since = 0
    failure = ""  # why the run stopped early on non-finite model output
    try:
        for step in range(settings.num_iter):
            positions = schedule.positions(step)
            cfg = cfg_at(settings.cfg_scale, settings.cfg_schedule, schedule.unknown_after(step), L)
            if draft is None or speculation.is_prefill(step, settings.num_iter):
                out = timed(
                    lambda: _predict(
                        target, run, run.unknown, target_rows, positions, process, cfg, settings.temperature
                    )
                )
                _require_finite(out.tokens, "target")
                _scatter(run.tokens, positions, out.tokens)
                _scatter(run.kinds, positions.cpu(), torch.full((positions.numel(),), int(TokenKind.PLAIN)))
                _scatter(run.forward_index, positions.cpu(), torch.full((positions.numel(),), passes["target"]))
                run.unknown.scatter_(1, positions, False)
                verified_unknown = run.unknown.clone()
                passes["target"] += 1
            else:
                assert draft_rows is not None
                out = timed(
                    lambda: _predict(draft, run, run.unknown, draft_rows, positions, process, cfg, settings.temperature)
                )
                _require_finite(out.tokens, "draft model")
                _scatter(run.tokens, positions, out.tokens)
                _scatter(q_mean, positions, out.mean)
                _scatter(q_std, positions, out.std)
                run.unknown.scatter_(1, positions, False)
                passes["draft"] += 1
                drafted_since += 1
                if drafted_since < speculation.draft_steps and step < settings.num_iter - 1:
                    continue
                drafted_since = 0
                _verify(
                    target,
                    run,
                    verified_unknown,
                    target_rows,
                    process,
                    cfg,
                    settings.temperature,
                    Gaussian(q_mean, q_std),
                    speculation,
                    decisions,
                    passes,
                    timed,
                )
                verified_unknown = run.unknown.clone()
            if not notify():
                finished = step == settings.num_iter - 1
                break
    except _NonFinite as bad:
        failure = (
            f"the MAR {bad.args[0]} returned NaN or infinite values at step {step + 1} of {settings.num_iter}; "
            "the tokens decided before it are kept"
        )
        finished = False
    decided = run.kinds >= 0
    result = ContinuousResult(
        tokens=run.tokens.cpu(),
        kinds=run.kinds,
        forward_index=run.forward_index,
        committed=decided.sum(1).long(),
        target_forwards=passes["target"],
        drafter_forwards=passes["draft"],
        drafted=passes["drafted"],
        accepted=passes["accepted"],
        wall_seconds=time.perf_counter() - started,
        model_seconds=model_seconds,
        finished=finished and bool(decided.all()),
        diagnostics={"acceptance_prob": run.alpha} if draft is not None else {},
        residual_fallbacks=passes["fallbacks"],
    )
    if failure:
        raise NonFiniteOutputError(failure, result)
    return result


def _verify(
    target: ContinuousTokenModel,
    run: _Run,
    verified_unknown: torch.Tensor,
    target_rows: torch.Tensor,
    process: GaussianDiffusion,
    cfg: float,
    temperature: float,
    q: Gaussian,
    speculation: CSpDSettings,
    decisions: torch.Generator,
    passes: dict[str, int],
    timed: Callable[[Callable[[], HeadSample]], HeadSample],
) -> None:
    """One target pass over every position drafted since the last verification; accept or resample each."""
    B = run.tokens.shape[0]
    fresh = verified_unknown & ~run.unknown  # drafted since, the same count in every row
    positions = fresh.nonzero()[:, 1].view(B, -1)
    out = timed(lambda: _predict(target, run, verified_unknown, target_rows, positions, process, cfg, temperature))
    flat = positions[..., None].expand(-1, -1, run.tokens.shape[-1])
    drafted = run.tokens.gather(1, flat).reshape(-1, run.tokens.shape[-1])
    q_rows = Gaussian(q.mean.gather(1, flat).reshape(drafted.shape), q.std.gather(1, flat).reshape(drafted.shape))
    tokens, accepted, alpha, fell_back = speculation.acceptance.decide(
        drafted, Gaussian(out.mean, out.std), q_rows, decisions
    )
    _require_finite(tokens, "target")
    _scatter(run.tokens, positions, tokens)
    kinds = torch.where(accepted, int(TokenKind.ACCEPTED), int(TokenKind.CORRECTED)).cpu()
    _scatter(run.kinds, positions.cpu(), kinds)
    _scatter(run.forward_index, positions.cpu(), torch.full((positions.numel(),), passes["target"]))
    _scatter(run.alpha, positions.cpu(), alpha.float().cpu())
    passes["target"] += 1
    passes["drafted"] += int(accepted.numel())
    passes["accepted"] += int(accepted.sum())
    passes["fallbacks"] += int(fell_back.sum())


__all__ = ["generate_continuous", "check_draft_fits"]
