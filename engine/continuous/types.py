"""Settings and results of continuous-token generation.

The result is a :class:`specar.types.GenerationResult` whose tokens are vectors, so heatmaps,
live frames, progress bars and the session code read it like a discrete result: ``kinds`` says
per token whether the target sampled it (prefill, or plain MAR), whether a draft was accepted, or
whether it was resampled from the residual; ``forward_index`` is the target pass that decided it.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import torch

from ..errors import SettingsError
from ..validation import finite_number, seed, whole_number
from ..types import GenerationResult
from .acceptance import GaussianAcceptance, inner_temperature_for
from .schedule import CFG_SCHEDULES

CONTINUOUS_POLICIES = ("exact", "cspd")  # how a MAR target may accept drafts: exactly, or by CSpD's relaxed test

RUN_GROWTH = 3.0  # relaxation 1 makes a draft run (1 + RUN_GROWTH) times as many MAR steps as relaxation 0


@dataclass(frozen=True)
class ContinuousSettings:
    """How a MAR-style model samples: its steps, guidance, head temperature and the run's seed."""

    num_iter: int = 64  # MAR generation steps (MAR's default)
    num_sampling_steps: int = 100  # denoising steps of the diffusion head (MAR's default)
    cfg_scale: float = 1.0
    cfg_schedule: str = "linear"
    temperature: float = 1.0  # the head's sampling temperature (scales every step's std)
    seed: int = 0

    def __post_init__(self) -> None:
        whole_number("num_iter", self.num_iter, low=1)
        whole_number("num_sampling_steps", self.num_sampling_steps, low=1)
        finite_number("cfg_scale", self.cfg_scale, low=0.0)
        if self.cfg_schedule not in CFG_SCHEDULES:
            raise SettingsError(f"cfg_schedule must be one of {', '.join(CFG_SCHEDULES)}, got {self.cfg_schedule!r}")
        if finite_number("temperature", self.temperature) <= 0:
            raise SettingsError(f"temperature must be > 0, got {self.temperature}")
        seed(self.seed)

    @property
    def uses_cfg(self) -> bool:
        return self.cfg_scale != 1.0

    def with_(self, **changes: object) -> "ContinuousSettings":
        return replace(self, **changes)


@dataclass(frozen=True)
class CSpDSettings:
    """Continuous speculative decoding (Wang et al., arXiv 2411.11925), with the reference defaults.

    ``prefill_ratio``: the steps ``s <= prefill_ratio * num_iter`` are run by the target alone, to
    give the draft a context. ``draft_steps``: draft MAR steps per target verification (also
    verified at the last step). ``acceptance``: the Gaussian test and the residual sampler.
    """

    prefill_ratio: float = 0.15
    draft_steps: int = 4
    acceptance: GaussianAcceptance = GaussianAcceptance()

    def __post_init__(self) -> None:
        if not 0.0 <= self.prefill_ratio < 1.0:
            raise SettingsError(f"prefill_ratio must be in [0, 1), got {self.prefill_ratio}")
        if self.draft_steps < 1:
            raise SettingsError(f"draft_steps must be >= 1, got {self.draft_steps}")

    def is_prefill(self, step: int, num_iter: int) -> bool:
        return step <= self.prefill_ratio * num_iter

    def relaxed(self, relaxation: float) -> "CSpDSettings":
        """These settings moved along the relaxation knob (0 = themselves): the Gaussian test's inner
        temperature becomes ``42^relaxation``, and each draft run lengthens to
        ``round(draft_steps * (1 + RUN_GROWTH * relaxation))`` MAR steps per target pass.

        The test alone would trade only fidelity: one target pass verifies a run however many drafts
        it accepts, so the passes per image are set by the run length. Lengthening the runs is what
        turns relaxation into speed: fewer target passes, each judging more tokens from an older
        context, at the quality cost the benchmark measures.
        """
        temperature = inner_temperature_for(relaxation)
        steps = max(1, round(self.draft_steps * (1 + RUN_GROWTH * relaxation)))
        return replace(self, draft_steps=steps).with_inner_temperature(temperature)

    def with_inner_temperature(self, temperature: float) -> "CSpDSettings":
        """The same settings with the Gaussian test at inner temperature ``temperature`` (experts' override)."""
        return replace(self, acceptance=replace(self.acceptance, inner_temperature=temperature))


@dataclass
class ContinuousResult(GenerationResult):
    """``tokens [B, L, C]`` float; every image advances together, one token set per MAR step.

    ``diagnostics`` holds ``acceptance_prob`` (alpha of each tested draft, NaN elsewhere).
    ``residual_fallbacks`` counts resampled tokens whose bounded residual sampler ran out of tries.
    """

    residual_fallbacks: int = 0

    def _committed_tokens(self) -> torch.Tensor:
        return self.tokens.masked_fill((self.kinds < 0).unsqueeze(-1), float("nan"))

    def stats(self) -> dict[str, object]:
        stats = super().stats()
        stats["residual_fallbacks"] = self.residual_fallbacks
        return stats


__all__ = ["ContinuousSettings", "CSpDSettings", "ContinuousResult"]
