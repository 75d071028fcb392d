"""Demo quality evaluator: the shipped classifier, FID-lite's sensitivity, the Fréchet maths, training.

Fresh scenes use seeds the training script never draws from (it uses 10^7 and up).
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from specar.checkpoints import save_safetensors
from specar.demo.training import train_classifier
from specar.lab.demo_evaluator import (
    CLASSIFIER_FILE,
    QualityEvaluator,
    frechet_distance,
    load_classifier,
    load_evaluator,
    to_model_input,
)
from specar.demo.scenes import class_id, render_batch, sample_scenes
from specar.errors import CheckpointError, SettingsError

N_FID = 512


@pytest.fixture(scope="module")
def evaluator() -> QualityEvaluator:
    return load_evaluator()


def test_shipped_classifier_is_accurate_on_fresh_real_scenes(evaluator: QualityEvaluator) -> None:
    images, ids = sample_scenes(256, seed=777)
    report = evaluator.evaluate(images, ids)
    assert report.n == 256
    assert report.class_accuracy >= 0.97
    assert report.colour_accuracy >= report.class_accuracy and report.shape_accuracy >= report.class_accuracy
    assert set(report.to_dict()) == {"class_accuracy", "colour_accuracy", "shape_accuracy", "fid_lite", "n"}


def test_colour_and_shape_accuracy_are_derived_from_the_class(evaluator: QualityEvaluator) -> None:
    """Red circles scored as green circles: the colour is wrong every time, the shape right."""
    images = render_batch([class_id("red", "circle")] * 64, seed=778)
    report = evaluator.evaluate(images, [class_id("green", "circle")] * 64)
    assert report.class_accuracy <= 0.05 and report.colour_accuracy <= 0.05
    assert report.shape_accuracy >= 0.95


def test_fid_lite_is_small_for_real_and_large_for_broken_sets(evaluator: QualityEvaluator) -> None:
    real = evaluator.fid_lite(sample_scenes(N_FID, seed=779)[0])
    one_class = evaluator.fid_lite(render_batch([class_id("blue", "ring")] * N_FID, seed=780))
    noise = evaluator.fid_lite(np.random.default_rng(781).integers(0, 256, (N_FID, 32, 32, 3), dtype=np.uint8))
    assert real < 8.0  # the noise floor at n=512 is about 4
    assert one_class > 10 * real and noise > 10 * real


def test_uint8_and_float_inputs_give_the_same_features(evaluator: QualityEvaluator) -> None:
    images, _ = sample_scenes(8, seed=782)
    as_float = torch.from_numpy(images).float().permute(0, 3, 1, 2) / 127.5 - 1.0  # codebook decode layout
    torch.testing.assert_close(evaluator.features(as_float), evaluator.features(images))
    with pytest.raises(SettingsError):
        to_model_input(np.zeros((2, 16, 16, 3), dtype=np.uint8))
    with pytest.raises(SettingsError, match="uint8"):
        to_model_input(torch.from_numpy(images).float())


def test_frechet_distance_matches_hand_computation_in_2d() -> None:
    # Commuting (diagonal) covariances: tr sqrt(C1 C2) = sqrt(1*4) + sqrt(4*9) = 8.
    mu1, mu2 = torch.tensor([0.0, 0.0]), torch.tensor([1.0, 2.0])
    c1, c2 = torch.diag(torch.tensor([1.0, 4.0])), torch.diag(torch.tensor([4.0, 9.0]))
    assert frechet_distance(mu1, c1, mu2, c2) == pytest.approx(5 + 5 + 13 - 2 * 8, abs=1e-9)
    # Non-commuting: for 2x2 M with positive eigenvalues, (tr sqrt M)^2 = tr M + 2 sqrt(det M).
    # C1 C2 = [[2, 4], [1, 8]], tr 10, det 3 * 4 = 12 -> tr sqrt(C1 C2) = sqrt(10 + 4 sqrt 3).
    c1 = torch.tensor([[2.0, 1.0], [1.0, 2.0]])
    c2 = torch.diag(torch.tensor([1.0, 4.0]))
    expected = 5 + 4 + 5 - 2 * math.sqrt(10 + 4 * math.sqrt(3))
    assert frechet_distance(mu1, c1, mu2, c2) == pytest.approx(expected, abs=1e-9)
    assert frechet_distance(mu2, c1, mu2, c1) == pytest.approx(0.0, abs=1e-9)


def test_training_script_runs_and_its_output_loads(tmp_path) -> None:
    train_classifier.main(
        [
            "--out",
            str(tmp_path),
            "--train-size",
            "48",
            "--heldout-size",
            "16",
            "--reference-size",
            "32",
            "--batch-size",
            "16",
            "--max-steps",
            "2",
            "--codebook-size",
            "16",
            "--threads",
            str(torch.get_num_threads()),
        ]
    )
    images, ids = sample_scenes(8, seed=783)
    report = load_evaluator(tmp_path).evaluate(images, ids)
    assert report.n == 8 and math.isfinite(report.fid_lite)


def test_a_file_of_another_kind_is_refused(tmp_path) -> None:
    save_safetensors({"centroids": torch.zeros(4, 12)}, tmp_path / CLASSIFIER_FILE, config={"kind": "patch_codebook"})
    with pytest.raises(CheckpointError, match="scene_classifier"):
        load_classifier(tmp_path / CLASSIFIER_FILE)
