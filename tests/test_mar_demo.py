"""The shipped continuous demo pair (MAR target and draft) through the real entry points."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from specar import cli
from specar.continuous.loop import generate_continuous
from specar.continuous.types import CSpDSettings
from specar.continuous.acceptance import GaussianAcceptance, inner_temperature_for
from specar.continuous.registry import load_continuous_model
from specar.lab.demo_evaluator import load_evaluator

CLASSES = list(range(16))


def test_the_demo_vae_reconstructs_scenes_the_evaluator_recognises() -> None:
    from specar.continuous.kl_vae import load_kl_vae
    from specar.demo.continuous import VAE_FILE
    from specar.demo.paths import WEIGHTS_DIR
    from specar.demo.scenes import sample_scenes
    from specar.demo.training.train import init_from
    from specar.demo.training.train_vae import KLAutoencoder, psnr, to_pixels

    decoder = load_kl_vae(WEIGHTS_DIR / VAE_FILE)
    autoencoder = KLAutoencoder()
    init_from(WEIGHTS_DIR / VAE_FILE, autoencoder)
    images, ids = sample_scenes(32, 77)
    pixels = to_pixels(images)
    latents = autoencoder.eval().encode(pixels)
    decoded = decoder((latents * decoder.latent_scale).flatten(2).transpose(1, 2), (8, 8))
    assert psnr(to_pixels(decoded.numpy()), pixels) >= 33.0
    assert load_evaluator().evaluate(decoded, ids).class_accuracy == 1.0


@pytest.fixture(scope="module")
def pair():
    return load_continuous_model("mar-demo", "cpu"), load_continuous_model("mar-demo-drafter", "cpu")


def test_the_trained_pair_draws_its_classes_and_cspd_saves_target_passes(pair) -> None:
    target, draft = pair
    settings = target.default_settings.with_(seed=4)
    plain = generate_continuous(target, CLASSES, settings)
    relaxed = CSpDSettings(acceptance=GaussianAcceptance(inner_temperature_for(1.0)))
    spec = generate_continuous(target, CLASSES, settings, draft, relaxed)
    assert plain.target_forwards == settings.num_iter
    assert spec.target_forwards * 1.8 <= plain.target_forwards
    assert spec.acceptance_rate > 0.1  # the trained draft is accepted where the test is relaxed
    evaluator = load_evaluator()
    for result in (plain, spec):  # 16 images: the asked-for colour, and the shape with at most two misses
        report = evaluator.evaluate(target.decode(result.tokens), CLASSES)
        assert report.colour_accuracy >= 0.9 and report.class_accuracy >= 0.85


def test_cli_generates_with_the_bundled_draft_by_default(tmp_path: Path) -> None:
    stats = tmp_path / "stats.json"
    code = cli.main(
        [
            "generate",
            "--model",
            "mar-demo",
            "--prompt",
            "blue ring",
            "--batch",
            "2",
            "--out",
            str(tmp_path / "grid.png"),
            "--heatmap",
            str(tmp_path / "heat.png"),
            "--stats",
            str(stats),
            "--quiet",
        ]
    )
    assert code == 0
    data = json.loads(stats.read_text())
    assert data["drafter"] == "specar-mar-demo-drafter" and data["classes"] == [11, 11]
    assert data["target_forwards"] < data["settings"]["num_iter"]
