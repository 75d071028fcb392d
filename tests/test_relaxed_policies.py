"""LANTERN, GSD and CSD: lossless at relaxation 0 (bit for bit), monotone in the knob, region
masks that keep parts exact, and clear errors for impossible parameters."""

from __future__ import annotations

import pytest
import torch

from engine import Conditioning, generate, load_model
from engine.drafts.drafter import DrafterModelDrafts
from engine.drafts.jacobi import JacobiDrafts
from engine.errors import SettingsError
from engine.policies import POLICIES, PolicyContext, make_policy
from engine.policies.exact import ExactPolicy
from engine.types import TokenKind

RELAXED = ("lantern", "gsd", "csd")


@pytest.fixture(scope="module")
def demo() -> tuple:
    return load_model("demo", device="cpu"), load_model("demo-drafter", device="cpu")


def _drafts(kind: str, drafter):  # type: ignore[no-untyped-def]
    return JacobiDrafts(16, init="row_above") if kind == "jacobi" else DrafterModelDrafts(drafter, 6)


@pytest.mark.parametrize("kind", ["jacobi", "drafter"])
def test_relaxation_zero_is_the_exact_policy_bit_for_bit(demo, kind: str) -> None:  # type: ignore[no-untyped-def]
    target, drafter = demo
    cond, settings = Conditioning.classes([0, 7, 13]), target.default_settings.with_(seed=11)
    exact = generate(target, cond, settings, _drafts(kind, drafter), ExactPolicy())
    for name in RELAXED:
        relaxed = generate(target, cond, settings, _drafts(kind, drafter), make_policy(name, 0.0, model=target))
        assert torch.equal(relaxed.tokens, exact.tokens) and torch.equal(relaxed.kinds, exact.kinds), name
        masked_out = make_policy(name, 1.0, torch.zeros(1, 256), model=target)  # relaxed nowhere
        assert torch.equal(generate(target, cond, settings, _drafts(kind, drafter), masked_out).tokens, exact.tokens)


def _random_case(vocab: int, seed: int, point_mass: bool) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Target rows, draft rows (a roughly aligned full q, or one-hot Jacobi-style drafts) and drafted tokens."""
    g = torch.Generator().manual_seed(seed)
    p = torch.softmax(torch.randn(4, 6, vocab, generator=g) * 2, -1)
    q = torch.softmax(p.log() + 0.7 * torch.randn(4, 6, vocab, generator=g), -1)
    tokens = torch.multinomial(q.flatten(0, 1), 1, generator=g).reshape(4, 6)
    if point_mass:
        q = torch.nn.functional.one_hot(tokens, vocab).float()
    return p, q, tokens


@pytest.mark.parametrize("name", RELAXED)
def test_acceptance_rises_with_the_knob_and_the_region_keeps_zero_parts_exact(demo, name: str) -> None:  # type: ignore[no-untyped-def]
    target, _ = demo
    # GSD's group ratio grows with the group only for point-mass drafts (its paper's setting, Jacobi decoding).
    p, q, tokens = _random_case(target.vocab_size, seed=3, point_mass=name == "gsd")
    ctx = PolicyContext(torch.arange(6).expand(4, -1))
    exact, _ = ExactPolicy().acceptance(p, q, tokens, ctx)
    previous = exact
    for relaxation in (0.1, 0.3, 0.6, 1.0):
        alpha, _ = make_policy(name, relaxation, model=target).acceptance(p, q, tokens, ctx)
        assert bool((alpha >= previous - 1e-7).all()), relaxation  # never below the step before
        previous = alpha
    assert float(previous.mean()) > float(exact.mean())  # and it does relax something
    region = torch.zeros(1, 256)
    region[0, 3:] = 1.0  # positions 0..2 exact, 3..5 relaxed
    alpha, _ = make_policy(name, 1.0, region, model=target).acceptance(p, q, tokens, ctx)
    assert torch.equal(alpha[:, :3], exact[:, :3])


def test_sampled_acceptance_rate_rises_with_the_knob(demo) -> None:  # type: ignore[no-untyped-def]
    target, drafter = demo
    cond, settings = Conditioning.classes(list(range(8))), target.default_settings.with_(seed=5)
    for name, kind in (("lantern", "drafter"), ("csd", "drafter"), ("gsd", "jacobi"), ("lantern", "jacobi")):
        rates = [generate(target, cond, settings, _drafts(kind, drafter),
                          make_policy(name, r, model=target)).acceptance_rate for r in (0.0, 0.5, 1.0)]
        assert rates[2] > rates[0] + 0.02 and rates[1] > rates[0], (name, kind, rates)


def test_impossible_parameters_are_refused(demo) -> None:  # type: ignore[no-untyped-def]
    target, _ = demo
    with pytest.raises(SettingsError, match="0..1"):
        make_policy("csd", 1.5)
    with pytest.raises(SettingsError, match="needs the target model"):
        make_policy("lantern", 0.5)
    with pytest.raises(SettingsError, match="delta"):
        make_policy("lantern", 0.5, model=target, delta_at_full=2.0)
    with pytest.raises(SettingsError, match="tau"):
        make_policy("csd", 0.5, tv_threshold=-0.1)
    with pytest.raises(SettingsError, match="does not take"):
        make_policy("gsd", 0.5, model=target, temperature=3.0)
    assert set(RELAXED) < set(POLICIES)


@pytest.mark.parametrize("name,keys", [("lantern", {"neighbour_mass"}), ("gsd", {"group_size"}), ("csd", {"entropy", "tv"})])
def test_the_loop_records_what_each_policy_decided_on(demo, name: str, keys: set) -> None:  # type: ignore[no-untyped-def]
    target, drafter = demo
    result = generate(target, Conditioning.classes([2, 9]), target.default_settings.with_(seed=4),
                      DrafterModelDrafts(drafter, 6), make_policy(name, 0.5, model=target))
    assert set(result.diagnostics) == keys
    decided = result.kinds.long()
    tested_kinds = (decided == int(TokenKind.ACCEPTED)) | (decided == int(TokenKind.CORRECTED))
    for values in result.diagnostics.values():
        assert values.shape == result.tokens.shape
        assert torch.equal(torch.isfinite(values), tested_kinds)  # exactly the tokens whose draft was tested
    assert int(tested_kinds.sum()) == result.drafted
    exact = generate(target, Conditioning.classes([2]), target.default_settings, DrafterModelDrafts(drafter, 6))
    assert exact.diagnostics == {}


def test_bench_sweeps_policies_as_method_variants(capsys) -> None:  # type: ignore[no-untyped-def]
    from engine import cli

    code = cli.main(["bench", "--images", "2", "--batch", "2", "--methods", "jacobi-row,jacobi-row:lantern=0.5,drafter:csd=0",
                     "--quiet"])
    assert code == 0
    rows = [line.split()[0] for line in capsys.readouterr().out.splitlines()[-4:]]
    assert rows == ["ar", "jacobi-row", "jacobi-row:lantern=0.5", "drafter:csd=0"]
    for bad, message in (("drafter:fast=0.5", "unknown acceptance policy 'fast'"), ("drafter:csd=lots", "METHOD:POLICY=RELAX"),
                         ("drafter:csd=2", "0..1")):
        assert cli.main(["bench", "--images", "1", "--methods", bad, "--quiet"]) == 2
        assert message in capsys.readouterr().err
