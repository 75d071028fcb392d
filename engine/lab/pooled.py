"""One setting over several seed sets, against every AR run at once.

The AR band of :mod:`specar.pareto` (the worst and best of the AR runs) answers "could this one run
have come from AR?", and with few AR runs it answers no too often: its edges are the extremes of a
small sample, so even a lossless method's run misses each edge with probability ``1 / (runs + 1)``:
with four AR runs, class accuracy or FID-lite rejects up to two lossless runs in five. Pooling asks
the sharper question, "does this setting cost quality that this many images can see?": its class
accuracy over all its images against AR's
over all of AR's (a two-proportion z), and its mean FID-lite against AR's mean in units of AR's own
run-to-run spread (FID-lite is a statistic of a whole run, so its noise is read from AR's runs).
A difference within about two standard errors is what sampling alone gives.
"""

from __future__ import annotations

import math
import statistics
from dataclasses import dataclass
from typing import Sequence

from .pareto import EXACT, ParetoPoint, QualityBand, sorted_points

MIN_AR_RUNS = 3  # FID-lite's run-to-run spread needs a few AR runs to be read at all


@dataclass(frozen=True)
class PooledSetting:
    """A setting's points on ``seed_sets`` seed sets, pooled, and how far each metric lies from AR's."""

    point: ParetoPoint  # the setting's first point (for its labels)
    seed_sets: int
    images: int
    tokens_per_forward: float  # mean over the seed sets
    exact_tokens_per_forward: float | None  # the same source's exact policy, mean over its seed sets
    class_accuracy: float  # over all images
    fid_lite: float  # mean over the seed sets
    class_z: float  # (class accuracy - AR's) / standard error of the difference; negative is worse
    fid_z: float  # (FID-lite - AR's mean) / standard error of the difference; positive is worse

    @property
    def speedup_over_exact(self) -> float | None:
        return (
            None if self.exact_tokens_per_forward is None else self.tokens_per_forward / self.exact_tokens_per_forward
        )


def class_z(accuracy: float, images: int, ar_accuracy: float, ar_images: int) -> float:
    """Two-proportion z of ``accuracy`` over ``images`` against AR's, with the pooled proportion's variance."""
    both = (accuracy * images + ar_accuracy * ar_images) / (images + ar_images)
    error = math.sqrt(both * (1 - both) * (1 / images + 1 / ar_images))
    return (accuracy - ar_accuracy) / error if error > 0 else 0.0


def fid_z(fid_mean: float, seed_sets: int, band: QualityBand) -> float:
    """Mean FID-lite over ``seed_sets`` runs against AR's mean, in standard errors of the difference
    (both read with AR's run-to-run standard deviation: under no cost the runs share one distribution)."""
    error = band.fid_sd * math.sqrt(1 / seed_sets + 1 / band.runs)
    return (fid_mean - band.fid_mean) / error if error > 0 else 0.0


def pool(points: Sequence[ParetoPoint], band: QualityBand) -> list[PooledSetting]:
    """Every setting of ``points``, its seed sets pooled, in table order; empty with fewer than
    :data:`MIN_AR_RUNS` AR runs."""
    if band.runs < MIN_AR_RUNS:
        return []
    by_setting: dict[tuple[str, str, float, str], list[ParetoPoint]] = {}
    for point in sorted_points(points):
        by_setting.setdefault(point.setting, []).append(point)
    exact = {
        setting[0]: statistics.fmean(p.tokens_per_forward for p in runs)
        for setting, runs in by_setting.items()
        if setting[1] == EXACT or setting[2] == 0.0
    }
    pooled = []
    for setting, runs in by_setting.items():
        images = sum(p.images for p in runs)
        accuracy = sum(p.class_accuracy * p.images for p in runs) / images
        fid = statistics.fmean(p.fid_lite for p in runs)
        pooled.append(
            PooledSetting(
                point=runs[0],
                seed_sets=len(runs),
                images=images,
                tokens_per_forward=statistics.fmean(p.tokens_per_forward for p in runs),
                exact_tokens_per_forward=exact.get(setting[0]),
                class_accuracy=accuracy,
                fid_lite=fid,
                class_z=class_z(accuracy, images, band.class_pooled, band.images),
                fid_z=fid_z(fid, len(runs), band),
            )
        )
    return pooled


def markdown_table(settings: Sequence[PooledSetting], band: QualityBand) -> str:
    """The pooled settings under a line giving AR's pooled figures ("" when there is nothing to pool)."""
    if not settings:
        return ""
    expert = any(s.point.expert_options for s in settings)
    columns = (
        ["draft source", "policy", "relax"]
        + (["expert options"] if expert else [])
        + ["seed sets", "tokens / forward", "x exact", "class acc", "class vs AR", "FID-lite", "FID-lite vs AR"]
    )
    lines = [
        f"Pooled against all {band.runs} AR runs ({band.images} images: class accuracy {band.class_pooled:.3f}, "
        f"FID-lite {band.fid_mean:.2f} with a run-to-run standard deviation of {band.fid_sd:.2f}); "
        "'vs AR' is the difference in standard errors, within about 2 for sampling noise alone",
        "",
        "| " + " | ".join(columns) + " |",
        "|" + "---|" * len(columns),
    ]
    for s in settings:
        p = s.point
        cells = (
            [p.source, p.policy, f"{p.relaxation:g}"]
            + ([p.expert_options or "-"] if expert else [])
            + [
                str(s.seed_sets),
                f"{s.tokens_per_forward:.2f}",
                "-" if s.speedup_over_exact is None else f"{s.speedup_over_exact:.2f}x",
                f"{s.class_accuracy:.3f}",
                f"{s.class_z:+.1f}",
                f"{s.fid_lite:.2f}",
                f"{s.fid_z:+.1f}",
            ]
        )
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)
