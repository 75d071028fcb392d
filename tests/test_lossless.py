"""Lossless decoding is proven here: greedy equality with plain AR, and sampled distributions.

Tiny random LlamaGen models (init std 0.2) stand in for real ones; every test is seeded.
"""

from __future__ import annotations

import pytest
import torch
from tiny import tiny_auto_drafts, tiny_drafter, tiny_model, tiny_tree_head
from stats import noise_floor, total_variation

from specar import Conditioning, DrafterModelDrafts, JacobiDrafts, SamplingSettings, generate
from specar.drafts.drafter_tree import DrafterTreeDrafts
from specar.drafts.tree_drafts import TreeHeadDrafts, TreeShape
from specar.lab.fidelity import ks_uniform, randomized_pit
from specar.models.llamagen.adapter import LlamaGenModel
from specar.policies.base import AcceptancePolicy, PolicyContext
from specar.policies.exact import ExactPolicy, token_probs
from specar.sampling import DistributionProcessor
from specar.types import TokenKind

SOURCES = {
    "jacobi-random": lambda: JacobiDrafts(window=16),
    "jacobi-uniform-q": lambda: JacobiDrafts(window=8, q_init="uniform"),
    "jacobi-row-above": lambda: JacobiDrafts(window=16, init="row_above"),
    "mc-sjd": lambda: JacobiDrafts(window=6, coupling=True),
    "mc-sjd-row-above": lambda: JacobiDrafts(window=16, init="row_above", coupling=True),
    "drafter": lambda: DrafterModelDrafts(tiny_drafter(), gamma=4),
    "drafter-self": lambda: DrafterModelDrafts(tiny_model(0, "self"), gamma=5),
    "tree-dynamic": lambda: TreeHeadDrafts(tiny_tree_head(tiny_model(0)), TreeShape(top_k=4, depth=4, nodes=12)),
    "tree-static": lambda: TreeHeadDrafts(tiny_tree_head(tiny_model(0)), TreeShape(kind="static", branching=(3, 2, 1))),
    "tree-chain": lambda: TreeHeadDrafts(tiny_tree_head(tiny_model(0)), TreeShape(kind="static", branching=(1,) * 5)),
    "drafter-tree": lambda: DrafterTreeDrafts(tiny_drafter(), branching=(3, 2, 1, 1)),
    # the head drafts at its own CFG scale (CFG only); the target verifies at the run's
    "tree-guided": lambda: TreeHeadDrafts(
        tiny_tree_head(tiny_model(0)), TreeShape(top_k=4, depth=4, nodes=12, guidance=5.0)
    ),
    "auto": tiny_auto_drafts,
    "auto-head": lambda: tiny_auto_drafts(head=True),
}
UNGUIDED_SOURCES = [name for name in SOURCES if name != "tree-guided"]

COND = Conditioning.classes([1, 4, 7])


@pytest.fixture(scope="module")
def target() -> LlamaGenModel:
    return tiny_model(0)


@pytest.mark.parametrize("source, cfg", [(s, c) for s in UNGUIDED_SOURCES for c in (1.0, 3.0)] + [("tree-guided", 3.0)])
def test_greedy_equals_plain_ar(target: LlamaGenModel, source: str, cfg: float) -> None:
    settings = SamplingSettings(cfg_scale=cfg, greedy=True, seed=5)
    ar = generate(target, COND, settings)
    spec = generate(target, COND, settings, draft=SOURCES[source]())
    assert torch.equal(spec.tokens, ar.tokens)
    assert spec.finished and int(spec.committed.min()) == target.num_image_tokens
    assert ar.target_forwards == target.num_image_tokens
    assert spec.target_forwards <= ar.target_forwards
    if source == "drafter-self":  # a drafter identical to the target is always right
        assert spec.acceptance_rate == 1.0
        assert spec.target_forwards <= 1 + -(-(target.num_image_tokens - 1) // 6)


def test_sampling_is_reproducible_and_seed_dependent(target: LlamaGenModel) -> None:
    settings = SamplingSettings(cfg_scale=2.0, top_k=20, seed=11)
    a = generate(target, COND, settings, draft=JacobiDrafts(window=8))
    b = generate(target, COND, settings, draft=JacobiDrafts(window=8))
    c = generate(target, COND, settings.with_(seed=12), draft=JacobiDrafts(window=8))
    assert torch.equal(a.tokens, b.tokens) and torch.equal(a.kinds, b.kinds)
    assert not torch.equal(a.tokens, c.tokens)


def test_records_say_how_each_token_was_committed(target: LlamaGenModel) -> None:
    result = generate(
        target,
        COND,
        SamplingSettings(cfg_scale=2.0, top_k=20, seed=3),
        draft=DrafterModelDrafts(tiny_model(0, "self"), gamma=3),
    )
    N = target.num_image_tokens
    assert result.kinds.min() >= 0 and result.forward_index.min() >= 0
    assert int(result.forward_index.max()) == result.target_forwards - 1
    # with a perfect drafter every forward commits gamma accepted drafts and one bonus token
    assert (result.kinds == TokenKind.ACCEPTED).sum() == result.accepted
    per_forward = torch.bincount(result.forward_index[0], minlength=result.target_forwards)
    assert per_forward[0] == 1 and per_forward[1:-1].eq(4).all()
    assert result.drafter_forwards > 0 and 0 < result.model_seconds <= result.wall_seconds
    # each image counts the forwards that committed its tokens; the slowest one sets the batch's
    assert int(result.forwards_per_image.max()) == result.target_forwards
    assert N == result.tokens.shape[1]


def _target_distributions(
    gpt_model: LlamaGenModel, cond: Conditioning, tokens: torch.Tensor, settings: SamplingSettings
) -> torch.Tensor:
    """Processed target p at every position of ``tokens``, teacher-forced without any cache."""
    gpt = gpt_model.gpt
    ids = torch.tensor(cond.class_ids)
    with torch.no_grad():
        logits = gpt(ids, tokens)
        if settings.uses_cfg:
            logits = torch.cat([logits, gpt(torch.full_like(ids, gpt.cfg.num_classes), tokens)])
    N = tokens.shape[1]
    return DistributionProcessor(settings).__call__(logits, torch.arange(N).expand(len(ids), -1))


class BiasedPolicy(AcceptancePolicy):
    """A deliberately lossy rule (accepts 3x more often), to show the tests can fail."""

    def acceptance(self, p, q, tokens, ctx: PolicyContext):
        return (3 * token_probs(p, tokens) / token_probs(q, tokens).clamp_min(1e-10)).clamp_max(1.0), {}

    def residual(self, p, q, tokens, ctx):
        return ExactPolicy().residual(p, q, tokens, ctx)


SAMPLING = SamplingSettings(cfg_scale=2.0, top_k=24, seed=2024)


def _pit_pvalue(target: LlamaGenModel, source: str, policy: AcceptancePolicy | None = None) -> float:
    """KS p-value of the randomised PIT of every token of 48 whole images (3072 values)."""
    cond = Conditioning.classes([i % 10 for i in range(48)])
    result = generate(target, cond, SAMPLING, draft=SOURCES[source](), policy=policy)
    p = _target_distributions(target, cond, result.tokens, SAMPLING)
    return ks_uniform(randomized_pit(p, result.tokens))[1]


@pytest.mark.parametrize(
    "source",
    [
        "jacobi-random",
        "jacobi-row-above",
        "mc-sjd",
        "mc-sjd-row-above",
        "drafter",
        "tree-dynamic",
        "tree-static",
        "tree-chain",
        "tree-guided",
        "drafter-tree",
        "auto",
        "auto-head",
    ],
)
def test_whole_images_follow_the_target_distribution(target: LlamaGenModel, source: str) -> None:
    """Every token of every image, refined Jacobi drafts included, is distributed as the target's p."""
    assert _pit_pvalue(target, source) > 0.001


def test_pit_test_detects_a_biased_sampler(target: LlamaGenModel) -> None:
    assert _pit_pvalue(target, "drafter", BiasedPolicy()) < 1e-4


def _first_token_counts(
    target: LlamaGenModel, source: str, prefix: torch.Tensor, draws: int, policy: AcceptancePolicy | None = None
) -> torch.Tensor:
    cond = Conditioning.classes([3] * draws)
    P = prefix.shape[1]
    until_position_p_is_committed = lambda event: bool((event.committed <= P).any())  # noqa: E731
    result = generate(
        target,
        cond,
        SAMPLING,
        draft=SOURCES[source](),
        policy=policy,
        observer=until_position_p_is_committed,
        prefix=prefix.expand(draws, -1),
    )
    assert int(result.committed.min()) > P
    return torch.bincount(result.tokens[:, prefix.shape[1]], minlength=target.vocab_size)


@pytest.fixture(scope="module")
def high_entropy_prefix(target: LlamaGenModel) -> tuple[torch.Tensor, torch.Tensor]:
    """A fixed AR prefix ending where the target's processed distribution is widest."""
    cond = Conditioning.classes([3])
    tokens = generate(target, cond, SAMPLING.with_(seed=1)).tokens
    p = _target_distributions(target, cond, tokens, SAMPLING)[0]
    entropy = -(p * p.clamp_min(1e-30).log()).sum(-1)
    entropy[:8] = 0  # keep some context
    position = int(entropy.argmax())
    return tokens[:, :position], p[position]


@pytest.mark.parametrize(
    "source",
    [
        "jacobi-random",
        "jacobi-uniform-q",
        "jacobi-row-above",
        "mc-sjd-row-above",
        "drafter",
        "tree-dynamic",
        "tree-static",
        "tree-chain",
        "drafter-tree",
        "auto",
        "auto-head",
    ],
)
def test_token_at_a_fixed_prefix_follows_p(target: LlamaGenModel, high_entropy_prefix, source: str) -> None:
    prefix, p = high_entropy_prefix
    draws = 3000
    counts = _first_token_counts(target, source, prefix, draws)
    # about the 99.9th percentile of direct sampling: each of these sources is one fixed random stream, redrawn
    # by any change to how a source uses the generator
    assert total_variation(counts, p) <= noise_floor(p, draws, trials=1000)


def test_fixed_prefix_test_rejects_a_lossy_rule(target: LlamaGenModel, high_entropy_prefix) -> None:
    prefix, p = high_entropy_prefix
    draws = 3000
    biased = _first_token_counts(target, "drafter", prefix, draws, BiasedPolicy())
    assert total_variation(biased, p) > 1.5 * noise_floor(p, draws, trials=1000)


def test_score_reads_each_token_s_log_probability_under_the_processed_target() -> None:
    """score() is the log of the processed distribution the loop samples from, at each given token: 0 for
    greedy tokens, finite for sampled ones, -inf outside top-k; bad tokens are one-line errors."""
    from specar import processed_distributions, score
    from specar.errors import SettingsError

    model = tiny_model(5)
    cond = Conditioning.classes([1, 4])
    greedy = SamplingSettings(cfg_scale=2.0, greedy=True)
    tokens = generate(model, cond, greedy).tokens
    assert torch.equal(score(model, cond, tokens, greedy), torch.zeros(tokens.shape))
    sampled_settings = SamplingSettings(cfg_scale=2.0, top_k=5, seed=3)
    sampled = generate(model, cond, sampled_settings, draft=JacobiDrafts(4)).tokens
    logp = score(model, cond, sampled, sampled_settings)
    p = processed_distributions(model, cond, sampled, sampled_settings)
    assert torch.isfinite(logp).all() and torch.allclose(logp.exp(), p.gather(-1, sampled[..., None])[..., 0])
    excluded = p[0, 0].argmin()  # outside the top 5 at the first position
    changed = sampled.clone()
    changed[0, 0] = excluded
    assert score(model, cond, changed, sampled_settings)[0, 0] == float("-inf")
    for bad, message in ((sampled[:1], "scores codes \\[2 images"), (sampled.float(), "integer codes")):
        with pytest.raises(SettingsError, match=message):
            score(model, cond, bad, sampled_settings)
