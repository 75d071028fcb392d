"""Cheap quality metrics for demo-model samples: class / colour / shape accuracy and FID-lite.

A small CNN trained on the scene generator (``train_classifier.py``) is shipped with the Gaussian
statistics of its 64-d penultimate features over 10,000 real held-out scenes. Accuracy says whether
a sample shows what was asked for; FID-lite (a Fréchet distance on those features) says whether the
samples as a set look like real scenes. Both are noisy below ~1,000 samples per arm.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path

import json

import numpy as np
import torch
from torch import nn

from ..checkpoints import load_into, read_safetensors_metadata, read_state_dict
from ..errors import CheckpointError, SettingsError
from ..demo.scenes import IMAGE_SIZE, NUM_CLASSES, colour_of, shape_of
from ..demo.paths import WEIGHTS_DIR

CLASSIFIER_FILE = "classifier.safetensors"
REFERENCE_FILE = "classifier_reference.safetensors"
CLASSIFIER_KIND = "scene_classifier"
REFERENCE_KIND = "scene_classifier_reference"
WIDTHS = (32, 64, 64)
BATCH = 512  # images per classifier forward in evaluation


def _block(c_in: int, c_out: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(c_in, c_out, 3, padding=1, bias=False), nn.BatchNorm2d(c_out), nn.ReLU(inplace=True))


class SceneClassifier(nn.Module):
    """3 conv blocks (the first two followed by 2x2 max-pool), global max-pool, linear 16-way head.

    Global max-pooling makes the features position-invariant: the object can be anywhere.
    Input: float ``[B, 3, 32, 32]`` in [-1, 1] (see :func:`to_model_input`).
    """

    def __init__(self, widths: tuple[int, ...] = WIDTHS, num_classes: int = NUM_CLASSES) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        c_in = 3
        for i, width in enumerate(widths):
            layers.append(_block(c_in, width))
            if i < len(widths) - 1:
                layers.append(nn.MaxPool2d(2))
            c_in = width
        self.body = nn.Sequential(*layers)
        self.head = nn.Linear(widths[-1], num_classes)

    def features(self, images: torch.Tensor) -> torch.Tensor:
        """Penultimate features ``[B, widths[-1]]``: the space FID-lite is measured in."""
        return self.body(images).amax(dim=(2, 3))

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(images))


def to_model_input(images: np.ndarray | torch.Tensor) -> torch.Tensor:
    """The one normalisation used in training and evaluation -> float ``[B, 3, 32, 32]`` in [-1, 1].

    ``uint8`` images are ``[B, 32, 32, 3]`` in 0..255 (what ``scenes`` renders). Float images are
    taken to be in [-1, 1] already (what the codebook decodes to), channels first or last.
    """
    x = torch.as_tensor(images)
    if x.dim() != 4 or 3 not in (x.shape[1], x.shape[-1]):
        raise SettingsError(f"expected images [B, {IMAGE_SIZE}, {IMAGE_SIZE}, 3] or [B, 3, H, W], got {list(x.shape)}")
    if x.dtype == torch.uint8:
        x = x.float() / 127.5 - 1.0
    elif x.numel() and float(x.abs().max()) > 1.5:  # 0..255 floats would silently saturate
        raise SettingsError("float images must be in [-1, 1]; pass 0..255 images as uint8")
    x = x.float()
    if x.shape[1] != 3:
        x = x.permute(0, 3, 1, 2)
    if tuple(x.shape[2:]) != (IMAGE_SIZE, IMAGE_SIZE):
        raise SettingsError(f"the scene classifier takes {IMAGE_SIZE}x{IMAGE_SIZE} images, got {tuple(x.shape[2:])}")
    return x.clamp(-1.0, 1.0).contiguous()


def gaussian_stats(features: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean and (unbiased) covariance of ``features [N, D]`` in float64."""
    if features.shape[0] < 2:
        raise SettingsError("FID-lite needs at least 2 images")
    f = features.double()
    return f.mean(0), torch.cov(f.T)


def _psd_sqrt(matrix: torch.Tensor) -> torch.Tensor:
    """Square root of a symmetric PSD matrix by eigendecomposition (tiny negative eigenvalues clipped)."""
    vals, vecs = torch.linalg.eigh((matrix + matrix.T) / 2)
    return (vecs * vals.clamp_min(0).sqrt()) @ vecs.T


def frechet_distance(mu1: torch.Tensor, cov1: torch.Tensor, mu2: torch.Tensor, cov2: torch.Tensor) -> float:
    """``|mu1-mu2|^2 + tr(C1 + C2 - 2 (C1 C2)^1/2)`` between two Gaussians, in float64.

    ``tr (C1 C2)^1/2 = tr (C1^1/2 C2 C1^1/2)^1/2``, and the right-hand product is symmetric PSD, so
    two eigendecompositions replace a general (scipy) matrix square root.
    """
    mu1, mu2, cov1, cov2 = (t.double() for t in (mu1, mu2, cov1, cov2))
    root1 = _psd_sqrt(cov1)
    middle = root1 @ cov2 @ root1
    tr_cross = torch.linalg.eigvalsh((middle + middle.T) / 2).clamp_min(0).sqrt().sum()
    value = (mu1 - mu2).pow(2).sum() + torch.trace(cov1) + torch.trace(cov2) - 2 * tr_cross
    return max(float(value), 0.0)


@dataclass(frozen=True)
class QualityReport:
    """Accuracies are fractions in [0, 1]; ``fid_lite`` is 0 for identical feature Gaussians."""

    class_accuracy: float
    colour_accuracy: float
    shape_accuracy: float
    fid_lite: float
    n: int

    def to_dict(self) -> dict[str, float | int]:
        return asdict(self)


class QualityEvaluator:
    """The shipped classifier plus the reference feature statistics of real scenes."""

    def __init__(
        self,
        classifier: SceneClassifier,
        ref_mean: torch.Tensor,
        ref_cov: torch.Tensor,
        device: torch.device | str = "cpu",
    ) -> None:
        self.device = torch.device(device)
        self.classifier = classifier.to(self.device).eval()
        self.ref_mean = ref_mean.double().cpu()
        self.ref_cov = ref_cov.double().cpu()

    @torch.no_grad()
    def _run(self, images: np.ndarray | torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Features ``[B, D]`` and predicted class ids ``[B]`` (on the CPU), batched."""
        x = to_model_input(images)
        feats, preds = [], []
        for chunk in x.split(BATCH):
            f = self.classifier.features(chunk.to(self.device))
            feats.append(f.cpu())
            preds.append(self.classifier.head(f).argmax(1).cpu())
        return torch.cat(feats), torch.cat(preds)

    def features(self, images: np.ndarray | torch.Tensor) -> torch.Tensor:
        return self._run(images)[0]

    def predict(self, images: np.ndarray | torch.Tensor) -> torch.Tensor:
        return self._run(images)[1]

    def fid_lite(self, images: np.ndarray | torch.Tensor) -> float:
        """Fréchet distance of these images' features to the real reference."""
        return frechet_distance(*gaussian_stats(self.features(images)), self.ref_mean, self.ref_cov)

    def evaluate(
        self, images: np.ndarray | torch.Tensor, class_ids: np.ndarray | torch.Tensor | list[int]
    ) -> QualityReport:
        """Score samples against the classes they were asked for."""
        target = torch.as_tensor(class_ids).to("cpu", torch.int64).flatten()
        feats, pred = self._run(images)
        if len(target) != len(pred):
            raise SettingsError(f"{len(pred)} images but {len(target)} class ids")
        mean, cov = gaussian_stats(feats)
        return QualityReport(
            class_accuracy=float((pred == target).double().mean()),
            colour_accuracy=float((colour_of(pred) == colour_of(target)).double().mean()),
            shape_accuracy=float((shape_of(pred) == shape_of(target)).double().mean()),
            fid_lite=frechet_distance(mean, cov, self.ref_mean, self.ref_cov),
            n=len(pred),
        )


def _checked(path: Path, kind: str) -> tuple[dict[str, torch.Tensor], dict[str, object]]:
    """Tensors and header config of one of our files, refusing a file of another kind."""
    tensors = read_state_dict(path)
    try:
        config = json.loads(read_safetensors_metadata(path).get("config", "{}"))
    except json.JSONDecodeError as exc:
        raise CheckpointError(f"{path.name} has an unreadable header config ({exc})") from exc
    if not isinstance(config, dict) or config.get("kind") != kind:
        raise CheckpointError(f"{path.name} is not a {kind} file (its header config lacks kind={kind!r})")
    return tensors, config


def load_classifier(path: str | Path) -> SceneClassifier:
    """A classifier written by ``train_classifier``, built with the widths its header records."""
    tensors, config = _checked(Path(path), CLASSIFIER_KIND)
    model = SceneClassifier(tuple(config.get("widths", WIDTHS)))
    load_into(model, tensors, Path(path).name)
    return model.eval()


def load_evaluator(weights_dir: str | Path | None = None, device: torch.device | str = "cpu") -> QualityEvaluator:
    """The shipped evaluator (``engine/demo/weights``) or one written by ``train_classifier --out DIR``."""
    root = Path(weights_dir) if weights_dir is not None else WEIGHTS_DIR
    ref, _ = _checked(root / REFERENCE_FILE, REFERENCE_KIND)
    return QualityEvaluator(load_classifier(root / CLASSIFIER_FILE), ref["mean"], ref["cov"], device)


__all__ = [
    "SceneClassifier",
    "QualityEvaluator",
    "QualityReport",
    "load_evaluator",
    "load_classifier",
    "frechet_distance",
    "gaussian_stats",
    "to_model_input",
]
