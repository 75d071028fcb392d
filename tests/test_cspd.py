"""Continuous speculative decoding: acceptance, residual sampling, the loop, and its lossless cases.

The statistical tests use fixed seeds and p-value floors of 1e-3, so they fail only when a
distribution is really off (a wrong residual, a mixed-up noise row, a wrong density).
"""

from __future__ import annotations

import math

import pytest
import torch

from specar.continuous.acceptance import Gaussian, GaussianAcceptance, inner_temperature_for
from specar.continuous.loop import generate_continuous
from specar.continuous.schedule import cfg_at, unknown_counts
from specar.continuous.types import RUN_GROWTH, ContinuousSettings, CSpDSettings
from specar.continuous.session import speculation_for
from specar.errors import IncompatibleDrafterError, SettingsError
from specar.session import DraftRecipe, PolicyRecipe
from specar.lab.fidelity import ks_uniform
from specar.types import TokenKind
from stats import ks_two_sample
from tiny import tiny_mar

SETTINGS = ContinuousSettings(num_iter=6, num_sampling_steps=8, cfg_scale=2.0, seed=0)


class RejectEverything(GaussianAcceptance):
    """Forces every draft to be rejected: the residual then is the target's Gaussian itself."""

    def log_alpha(self, x: torch.Tensor, p: Gaussian, q: Gaussian) -> torch.Tensor:
        return torch.full(x.shape[:-1], -math.inf, device=x.device)


class AcceptEverything(GaussianAcceptance):
    """A wrong test (every draft kept): the control that shows the distribution tests have power."""

    def log_alpha(self, x: torch.Tensor, p: Gaussian, q: Gaussian) -> torch.Tensor:
        return torch.zeros(x.shape[:-1], device=x.device)


def normal_cdf(x: torch.Tensor) -> torch.Tensor:
    return torch.special.ndtr(x.double())


def one_d(mean_p: float, std_p: float, mean_q: float, std_q: float, n: int) -> tuple[Gaussian, Gaussian]:
    def g(m: float, s: float) -> Gaussian:
        return Gaussian(torch.full((n, 1), m, dtype=torch.float64), torch.full((n, 1), s, dtype=torch.float64))

    return g(mean_p, std_p), g(mean_q, std_q)


def test_exact_test_and_residual_reproduce_the_target_density() -> None:
    """x ~ q, accepted with min(1, p/q) or resampled from the residual: the output is p (T = 1)."""
    n = 20_000
    p, q = one_d(0.0, 1.0, 1.2, 0.7, n)
    gen = torch.Generator().manual_seed(0)
    x = q.sample(gen)
    tokens, accepted, alpha, fell_back = GaussianAcceptance().decide(x, p, q, gen)
    assert 0.2 < float(accepted.double().mean()) < 0.8  # both branches are exercised
    assert not bool(fell_back.any())
    _, pval = ks_uniform(normal_cdf(tokens[:, 0]))
    assert pval > 1e-3
    # The acceptance rate is 1 - TV(p, q): check against a numerical integral.
    grid = torch.linspace(-8, 8, 20_001, dtype=torch.float64)
    pdf = lambda m, s: torch.exp(-0.5 * ((grid - m) / s) ** 2) / (s * math.sqrt(2 * math.pi))  # noqa: E731
    overlap = float(torch.minimum(pdf(0.0, 1.0), pdf(1.2, 0.7)).sum() * (grid[1] - grid[0]))
    assert abs(float(alpha.mean()) - overlap) < 0.02


def test_residual_sampler_matches_its_density() -> None:
    """The acceptance-rejection sampler draws from max(0, p - q) normalised (KS against its CDF)."""
    n = 8_000
    p, q = one_d(0.0, 1.0, 0.8, 1.0, n)
    tokens, fell_back = GaussianAcceptance().sample_residual(p, q, torch.Generator().manual_seed(1))
    assert not bool(fell_back.any())
    grid = torch.linspace(-9, 9, 40_001, dtype=torch.float64)
    density = (torch.exp(-0.5 * grid**2) - torch.exp(-0.5 * (grid - 0.8) ** 2)).clamp(min=0)
    cdf = torch.cumsum(density, 0)
    cdf = cdf / cdf[-1]
    pit = cdf[torch.searchsorted(grid, tokens[:, 0].double()).clamp(max=grid.numel() - 1)]
    _, pval = ks_uniform(pit)
    assert pval > 1e-3


def test_residual_fallback_is_bounded_and_counted() -> None:
    """Nearly equal p and q leave a tiny residual: one try mostly fails and falls back to a p sample."""
    p, q = one_d(0.0, 1.0, 0.01, 1.0, 2_000)
    tokens, fell_back = GaussianAcceptance(max_tries=1).sample_residual(p, q, torch.Generator().manual_seed(2))
    assert float(fell_back.double().mean()) > 0.9
    assert torch.isfinite(tokens).all()


def test_relaxation_raises_acceptance_monotonically() -> None:
    n = 20_000
    p, q = one_d(0.0, 0.05, 0.1, 0.05, n)
    x = q.sample(torch.Generator().manual_seed(3))
    rates = [
        float(GaussianAcceptance(inner_temperature_for(r)).log_alpha(x, p, q).exp().mean()) for r in (0, 0.25, 0.5, 1)
    ]
    assert rates == sorted(rates) and rates[-1] > rates[0] + 0.3
    assert inner_temperature_for(0) == 1.0 and abs(inner_temperature_for(1) - 42) < 1e-9


def test_draft_equal_to_target_is_fully_accepted_and_identical_to_plain() -> None:
    target = tiny_mar(0)
    plain = generate_continuous(target, [0, 1, 2], SETTINGS)
    spec = generate_continuous(target, [0, 1, 2], SETTINGS, draft=target, speculation=CSpDSettings(draft_steps=1))
    assert spec.drafted > 0 and spec.accepted == spec.drafted
    assert torch.equal(spec.tokens, plain.tokens)
    assert plain.target_forwards == SETTINGS.num_iter and spec.target_forwards == SETTINGS.num_iter


def test_relaxation_loosens_the_test_and_lengthens_the_runs_so_passes_fall() -> None:
    base = CSpDSettings(draft_steps=1)
    assert base.relaxed(0.0) == base
    full = base.relaxed(1.0)
    assert full.draft_steps == round(1 + RUN_GROWTH)
    assert full.acceptance.inner_temperature == pytest.approx(inner_temperature_for(1.0))
    assert base.relaxed(0.5).with_inner_temperature(3.0).acceptance.inner_temperature == 3.0
    target, draft = tiny_mar(0), tiny_mar(1)
    settings = SETTINGS.with_(num_iter=12)
    passes = [
        generate_continuous(target, [0, 1], settings, draft=draft, speculation=base.relaxed(r)).target_forwards
        for r in (0.0, 0.5, 1.0)
    ]
    assert passes[0] > passes[1] > passes[2]


def test_the_nodes_cspd_policy_moves_gamma_and_the_test_along_the_slider() -> None:
    drafter = DraftRecipe(method="drafter", gamma=4)
    assert speculation_for(drafter, None) == CSpDSettings(draft_steps=4)
    half = speculation_for(drafter, PolicyRecipe("cspd", 0.5))
    assert half == CSpDSettings(draft_steps=4).relaxed(0.5) and half.draft_steps == round(4 * (1 + RUN_GROWTH / 2))
    expert = speculation_for(drafter, PolicyRecipe("cspd", 0.5, None, (("inner_temperature", 2.0),)))
    assert expert.draft_steps == half.draft_steps and expert.acceptance.inner_temperature == 2.0


def test_verification_batches_draft_steps_into_one_target_pass() -> None:
    target, draft = tiny_mar(0), tiny_mar(1)
    settings = SETTINGS.with_(num_iter=12)
    result = generate_continuous(target, [0, 1], settings, draft=draft, speculation=CSpDSettings(draft_steps=4))
    prefill = sum(CSpDSettings().is_prefill(s, 12) for s in range(12))
    assert result.target_forwards == prefill + math.ceil((12 - prefill) / 4)
    assert result.drafter_forwards == 12 - prefill
    assert result.finished and bool((result.kinds >= 0).all())
    kinds = set(result.kinds.flatten().tolist())
    assert int(TokenKind.PLAIN) in kinds and kinds <= {int(k) for k in TokenKind}
    tested = ~torch.isnan(result.diagnostics["acceptance_prob"])
    assert int(tested.sum()) == result.drafted
    assert result.tokens_per_forward == pytest.approx(16 / result.target_forwards)


def _position_values(result_tokens: torch.Tensor) -> torch.Tensor:
    return result_tokens[:, 5, 0]


@pytest.mark.parametrize("acceptance", [RejectEverything(), GaussianAcceptance()], ids=["forced-rejection", "exact"])
def test_speculative_output_distribution_equals_plain_target_sampling(acceptance: GaussianAcceptance) -> None:
    """With one draft step per verification, CSpD at T = 1 (and with every draft rejected) samples the target."""
    target, draft = tiny_mar(0), tiny_mar(0, perturb=3e-4)
    classes = [1] * 600
    plain = generate_continuous(target, classes, SETTINGS.with_(seed=10))
    spec = generate_continuous(
        target,
        classes,
        SETTINGS.with_(seed=11),
        draft=draft,
        speculation=CSpDSettings(draft_steps=1, acceptance=acceptance),
    )
    if isinstance(acceptance, RejectEverything):
        assert spec.accepted == 0
    else:
        assert 0.1 < spec.acceptance_rate < 0.9
    for position in (3, 9):
        _, pval = ks_two_sample(plain.tokens[:, position, 0], spec.tokens[:, position, 0])
        assert pval > 1e-3, position


def test_a_wrong_draft_is_detected_by_the_test() -> None:
    """Control for the test above: keeping every draft of another model changes the distribution."""
    target, draft = tiny_mar(0), tiny_mar(1)
    classes = [1] * 600
    plain = generate_continuous(target, classes, SETTINGS.with_(seed=10))
    spec = generate_continuous(
        target,
        classes,
        SETTINGS.with_(seed=11),
        draft=draft,
        speculation=CSpDSettings(draft_steps=1, acceptance=AcceptEverything()),
    )
    pvals = [ks_two_sample(plain.tokens[:, pos, 0], spec.tokens[:, pos, 0])[1] for pos in range(16)]
    assert min(pvals) < 1e-3


def test_interrupted_generation_keeps_what_was_decided() -> None:
    target, draft = tiny_mar(0), tiny_mar(1)
    seen: list[int] = []

    def stop_after_two(event) -> bool:
        seen.append(event.target_forwards)
        return event.target_forwards < 2

    result = generate_continuous(target, [0, 2], SETTINGS.with_(num_iter=10), draft=draft, observer=stop_after_two)
    assert seen == [1, 2] and not result.finished
    decided = result.kinds >= 0
    assert 0 < int(decided.sum()) < decided.numel()
    assert bool(torch.isnan(torch.tensor(result.stats()["tokens"]))[~decided].all())


def test_bad_settings_and_mismatched_drafts_give_clear_errors() -> None:
    target = tiny_mar(0)
    with pytest.raises(IncompatibleDrafterError, match="token channels"):
        generate_continuous(target, [0], SETTINGS, draft=tiny_mar(1, token_dim=6))
    with pytest.raises(SettingsError, match="classes 0..2"):
        generate_continuous(target, [5], SETTINGS)
    with pytest.raises(SettingsError, match="num_iter"):
        generate_continuous(target, [0], SETTINGS.with_(num_iter=17))
    for bad in (dict(prefill_ratio=1.0), dict(draft_steps=0)):
        with pytest.raises(SettingsError):
            CSpDSettings(**bad)
    with pytest.raises(SettingsError, match="inner_temperature"):
        GaussianAcceptance(0.5)
    with pytest.raises(SettingsError, match="cfg_schedule"):
        ContinuousSettings(cfg_schedule="cosine")


def test_mask_schedule_matches_mar() -> None:
    counts = unknown_counts(256, 64)
    assert counts[0] == 256 and counts[-1] == 0 and len(counts) == 65
    assert all(a > b for a, b in zip(counts, counts[1:]))
    assert counts[1] == math.floor(256 * math.cos(math.pi / 2 / 64))
    assert cfg_at(3.0, "linear", 256, 256) == 1.0 and cfg_at(3.0, "linear", 0, 256) == 3.0
