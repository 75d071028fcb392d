"""Condition evidence: the teacher-forced sum equals the token-by-token one and reads the condition; the token
fidelity test the bench reports beside it."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from specar import Conditioning, generate, load_model
from specar import cli
from specar.lab.evidence import condition_evidence, images_per_pass
from specar.lab.fidelity import ks_uniform, randomized_pit
from specar.models.base import ImageTokenModel
from specar.sampling import make_generator, sample
from tiny import tiny_model


def _token_by_token(model: ImageTokenModel, cond: Conditioning, tokens: torch.Tensor) -> torch.Tensor:
    """The same sum, one cached forward per token (how generation reads the target)."""
    out = model.prefill(cond, guided=True)
    total = torch.zeros(tokens.shape[0], dtype=torch.float64)
    for t in range(tokens.shape[1]):
        log_p = out.logits[:, -1].double().log_softmax(-1)
        conditioned, unconditioned = log_p.chunk(2)
        x = tokens[:, t : t + 1]
        total += (conditioned.gather(-1, x) - unconditioned.gather(-1, x))[:, 0].cpu()
        out = model.forward(x, torch.full_like(x, t))
    return total


@pytest.mark.parametrize("name", ["demo", "tiny"])
def test_evidence_is_the_token_by_token_log_ratio(name: str) -> None:
    model = load_model("demo", device="cpu") if name == "demo" else tiny_model(0)
    cond = Conditioning.classes([0, 3, 7])
    tokens = generate(model, cond, model.default_settings.with_(seed=4)).tokens
    assert torch.allclose(
        condition_evidence(model, cond, tokens).double(), _token_by_token(model, cond, tokens), atol=1e-2
    )


def test_evidence_reads_the_condition_the_images_were_drawn_for() -> None:
    model = load_model("demo", device="cpu")
    classes = list(range(16))
    tokens = generate(model, Conditioning.classes(classes), model.default_settings.with_(seed=1)).tokens
    right = condition_evidence(model, Conditioning.classes(classes), tokens)
    wrong = condition_evidence(model, Conditioning.classes([(c + 5) % 16 for c in classes]), tokens)
    assert float(right.mean()) > 5.0 and bool((right > wrong).all())
    assert images_per_pass(model, 1000) >= 100  # the demo scores a bench call's images in one pass


def test_the_pit_s_uniforms_are_not_the_sampler_s_when_their_seeds_match() -> None:
    """The bench seeds each image's sampler and its PIT with the image's number: tokens drawn one per step with seed
    3, as plain AR draws them, pass the PIT test with seed 3 (were the PIT to reuse the sampler's uniforms, each
    token's randomisation would follow from the draw that picked it, and the test would fail its own target)."""
    p = torch.softmax(torch.randn(16384, 64, generator=torch.Generator().manual_seed(0)) * 3, -1)
    tokens = sample(p, make_generator(3, "cpu"))  # one uniform per token, in order, as a one-image run draws them
    assert ks_uniform(randomized_pit(p, tokens, seed=3))[1] > 0.001


def test_bench_quality_reports_evidence_and_tests_every_token_against_the_target(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """On the demo at the run's own settings, the tokens of AR and of the lossless drafter pass the PIT test
    (:mod:`specar.lab.fidelity`); cluster acceptance's tokens sit further from the target's and lean towards codes
    it finds less likely (PIT mean above 0.5)."""
    out = tmp_path / "run.json"
    assert (
        cli.main(
            [
                "bench",
                "--images",
                "32",
                "--batch",
                "32",
                "--methods",
                "drafter,drafter:clusters=1",
                "--quality",
                "--quiet",
                "--json",
                str(out),
            ]
        )
        == 0
    )
    assert "token KS" in capsys.readouterr().out
    quality = {row["method"]: row["quality"] for row in json.loads(out.read_text())["rows"]}
    for q in quality.values():
        assert q["condition_evidence"] > 0 and q["condition_evidence_se"] > 0
    lossless = [quality["ar"], quality["drafter"]]
    for q in lossless:
        assert q["token_pit_p"] > 0.001 and abs(q["token_pit_mean"] - 0.5) < 0.01
    relaxed = quality["drafter:clusters=1"]
    assert relaxed["token_pit_ks"] > 2 * max(q["token_pit_ks"] for q in lossless)
    assert relaxed["token_pit_mean"] > 0.5 + 0.005, relaxed
