"""Speed against quality: the relaxed policies' Pareto points, as a table and a plot.

A point is one (draft source, policy, relaxation) measured by ``specar bench --quality``: tokens
per target forward on one axis, FID-lite or class accuracy on the other. Plain AR runs with
different seeds (``ar`` and ``ar2`` rows) give the band that sampling noise alone moves the
quality metrics by; a point whose class accuracy and FID-lite sit inside that band costs no
quality that this many images can detect. Points are read from benchmark JSON files, so long
runs in separate processes combine into one picture. FID-lite shrinks as the sample grows, so
only runs with the same number of images are compared.
"""

from __future__ import annotations

import json
import math
import statistics
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Iterable, Sequence

from PIL import Image, ImageDraw, ImageFont

from .bench import AR_METHODS, SECOND_SEED_OFFSET, split_method
from ..drafts import DRAFTS, DraftOptions
from ..drafts.tree_drafts import TreeShape
from ..errors import SettingsError

EXACT = "exact"


@dataclass(frozen=True)
class ParetoPoint:
    """One measured setting; ``exact_tokens_per_forward`` is its draft source's lossless figure."""

    source: str  # draft source with its size knob, e.g. "drafter, gamma 6" or "jacobi-row, window 16"
    policy: str
    relaxation: float
    images: int
    tokens_per_forward: float
    acceptance_rate: float | None
    class_accuracy: float
    colour_accuracy: float
    shape_accuracy: float
    fid_lite: float
    expert_options: str = ""  # native parameters set beyond the knob, e.g. "tv_threshold=0.35"
    exact_tokens_per_forward: float | None = None
    seed: int = 0  # the run's seed: points of one setting on different seeds are different samples of it
    # The policy's native parameters with defaults resolved, as the run recorded them (runs before they were: none)
    parameters: tuple[tuple[str, float | None], ...] = ()

    @property
    def setting(self) -> tuple[str, str, float, str]:
        """What was run, whatever the seeds: draft source, policy, relaxation and expert options."""
        return self.source, self.policy, self.relaxation, self.expert_options

    @property
    def speedup_over_exact(self) -> float | None:
        """Tokens per forward relative to the exact policy with the same draft source."""
        if self.exact_tokens_per_forward is None:
            return None
        return self.tokens_per_forward / self.exact_tokens_per_forward


@dataclass(frozen=True)
class QualityBand:
    """The spread of plain AR runs with different seeds on the same number of images.

    Its edges are the worst of ``runs`` draws, so a run of any method with AR's distribution (a
    lossless one) clears each edge with probability ``runs / (runs + 1)`` (:attr:`coverage`): four AR
    runs reject one lossless run in five on class accuracy alone, twenty-four one in twenty-five.
    """

    runs: int
    class_low: float
    class_high: float
    fid_low: float
    fid_high: float
    images: int = 0  # AR images over all runs
    class_pooled: float = 0.0  # class accuracy over all of them
    fid_mean: float = 0.0
    fid_sd: float = 0.0  # run-to-run standard deviation of FID-lite (0 for one run)

    @property
    def coverage(self) -> float:
        """Chance that one more run of AR's distribution stays on the good side of one metric's edge
        (exchangeable runs: its rank among ``runs + 1`` is uniform)."""
        return self.runs / (self.runs + 1)

    def holds(self, point: ParetoPoint) -> bool | None:
        """Class accuracy no lower and FID-lite no higher than some AR run's (None: one AR run is no spread)."""
        if self.runs < 2:
            return None
        return point.class_accuracy >= self.class_low and point.fid_lite <= self.fid_high


def _source_label(base: str, options: dict[str, object]) -> str:
    """The draft source's own label, from the options a bench JSON recorded (the tree head by its
    weights' fingerprint; runs from before it was recorded: no name)."""
    tree = options.get("tree") or {}
    assert isinstance(tree, dict)
    shape = TreeShape(**{k: tuple(v) if isinstance(v, list) else v for k, v in tree.items()}) if tree else TreeShape()
    draft = DraftOptions(
        window=int(options.get("window") or 16),
        gamma=int(options.get("gamma") or 6),
        tree=shape,
        tree_branching=tuple(options.get("tree_branching") or ()),
    )
    head = options.get("tree_head")
    return DRAFTS[base].label(draft, head if isinstance(head, str) and DRAFTS[base].needs == "tree head" else "")


ARKey = int
"""The seed of an AR row's first call: runs whose AR rows share it drew the very same AR images
(``ar2`` draws from the run's seed plus :data:`SECOND_SEED_OFFSET`, so seed S's ``ar2`` row is seed
S + offset's ``ar`` row and counts once)."""


def read_run(run: dict[str, object]) -> tuple[list[ParetoPoint], dict[ARKey, dict[str, float]]]:
    """The speculative points and the AR quality rows (by method and seed) of one
    ``specar bench --quality --json`` run."""
    options = run.get("options", {})
    settings = run.get("settings", {})
    assert isinstance(options, dict) and isinstance(settings, dict)
    points: list[ParetoPoint] = []
    ar_quality: dict[ARKey, dict[str, float]] = {}
    seed = int(settings.get("seed") or 0)
    for row in run.get("rows", []):
        quality = row.get("quality")
        if not quality:
            raise SettingsError(
                f"benchmark row {row.get('method')!r} has no quality scores: run specar bench with --quality"
            )
        base, policy, relax = split_method(row["method"])
        policy = policy or str(options.get("policy", EXACT))
        if base in AR_METHODS:
            ar_quality[seed + (SECOND_SEED_OFFSET if base == "ar2" else 0)] = quality
            continue
        points.append(
            ParetoPoint(
                source=_source_label(base, options),
                policy=policy,
                relaxation=float(relax if relax is not None else options.get("relaxation", 0.0)),
                images=int(row["images"]),
                tokens_per_forward=float(row["tokens_per_forward"]),
                acceptance_rate=row.get("acceptance_rate"),
                class_accuracy=quality["class_accuracy"],
                colour_accuracy=quality["colour_accuracy"],
                shape_accuracy=quality["shape_accuracy"],
                fid_lite=quality["fid_lite"],
                seed=seed,
                expert_options=_expert_options(options) if policy == options.get("policy") else "",
                parameters=tuple(sorted((row.get("policy_parameters") or {}).items())),
            )
        )
    return _attach_exact(points), ar_quality


def _expert_options(options: dict[str, object]) -> str:
    pairs = options.get("policy_options") or []
    return ", ".join(f"{name}={value:g}" for name, value in pairs)


def _format_parameter(value: float | None) -> str:
    return "off" if value is None else f"{value:g}"


def name_differing_parameters(points: Sequence[ParetoPoint]) -> list[ParetoPoint]:
    """Add to each point's expert options the recorded parameters on which runs of its setting (policy and
    expert options) differ: a policy default changed between two runs (``cascade 1`` under guard 0 and
    under guard 0.5) then shows as two settings, not one pooled across both. Runs that name a parameter
    are already a setting of their own, so they do not split runs that left it at its default; runs
    without recorded parameters (older JSONs) stay as they were."""

    def setting(point: ParetoPoint) -> tuple[str, str]:
        return point.policy, point.expert_options

    recorded: dict[tuple[str, str], list[dict[str, float | None]]] = {}
    for point in points:
        if point.parameters:
            recorded.setdefault(setting(point), []).append(dict(point.parameters))
    differing = {
        key: {name for run in runs for name in run if len({str(r.get(name)) for r in runs}) > 1}
        for key, runs in recorded.items()
    }
    named = []
    for point in points:
        extra = [
            f"{name}={_format_parameter(value)}"
            for name, value in point.parameters
            if name in differing.get(setting(point), ())
        ]
        named.append(replace(point, expert_options=", ".join(filter(None, [point.expert_options, *extra]))))
    return named


def _attach_exact(points: list[ParetoPoint]) -> list[ParetoPoint]:
    """Give every point still without one the exact policy's tokens per forward for its draft source:
    from the same seeds where an exact run has them, else the mean over that source's exact runs."""
    exact = [p for p in points if p.policy == EXACT or p.relaxation == 0.0]
    same_seeds = {(p.source, p.seed): p.tokens_per_forward for p in exact}
    runs_of: dict[str, list[float]] = {}
    for p in exact:
        runs_of.setdefault(p.source, []).append(p.tokens_per_forward)
    return [
        p
        if p.exact_tokens_per_forward is not None or p.source not in runs_of
        else replace(
            p, exact_tokens_per_forward=same_seeds.get((p.source, p.seed), statistics.fmean(runs_of[p.source]))
        )
        for p in points
    ]


def load_runs(paths: Sequence[str | Path]) -> list[dict[str, object]]:
    """Benchmark runs from ``specar bench --quality --json`` files."""
    runs = []
    for path in paths:
        try:
            data = json.loads(Path(path).read_text())
        except (OSError, ValueError) as exc:  # ValueError: not JSON, or not text at all
            raise SettingsError(f"cannot read benchmark results {path}: {exc}") from None
        found = data["runs"] if isinstance(data, dict) and "runs" in data else [data]  # several batch sizes
        if not all(isinstance(run, dict) and isinstance(run.get("rows"), list) for run in found):
            raise SettingsError(f"{path} holds no benchmark results (write them with specar bench --json)")
        runs.extend(found)
    return runs


def collect(runs: Sequence[dict[str, object]], images: int | None = None) -> tuple[list[ParetoPoint], QualityBand]:
    """Points and AR band of the runs with ``images`` images (default: the largest count found).
    A run without its source's exact point borrows it from another run."""
    if not runs:
        raise SettingsError("give at least one benchmark JSON file (specar bench --quality --json OUT.json)")
    counts = sorted({int(run.get("images", 0)) for run in runs})
    wanted = counts[-1] if images is None else images
    if wanted not in counts:
        raise SettingsError(f"no run has {wanted} images; runs have {', '.join(map(str, counts))}")
    points: list[ParetoPoint] = []
    ar_rows: dict[ARKey, dict[str, float]] = {}
    for run in runs:
        if int(run.get("images", 0)) == wanted:
            run_points, run_ar = read_run(run)
            points += run_points
            ar_rows.update(run_ar)
    if not ar_rows:
        raise SettingsError("the runs hold no plain AR row to read quality against")
    unique = list(dict.fromkeys(name_differing_parameters(_attach_exact(points))))  # one point in two runs counts once
    return unique, quality_band(ar_rows.values())


def quality_band(ar_rows: Iterable[dict[str, float]]) -> QualityBand:
    rows = list(ar_rows)
    classes = [r["class_accuracy"] for r in rows]
    fids = [r["fid_lite"] for r in rows]
    images = [int(r.get("n", 0)) for r in rows]
    return QualityBand(
        len(rows),
        min(classes),
        max(classes),
        min(fids),
        max(fids),
        images=sum(images),
        class_pooled=sum(c * n for c, n in zip(classes, images)) / max(sum(images), 1),
        fid_mean=statistics.fmean(fids),
        fid_sd=statistics.stdev(fids) if len(fids) > 1 else 0.0,
    )


def sorted_points(points: Iterable[ParetoPoint]) -> list[ParetoPoint]:
    """Table order: by draft source, its exact point first, then by policy, options and relaxation."""
    return sorted(points, key=lambda p: (p.source, p.policy != EXACT, p.policy, p.expert_options, p.relaxation, p.seed))


def markdown_table(points: Sequence[ParetoPoint], band: QualityBand) -> str:
    """Every point, with its seed, its speed-up over the exact policy (on the same seeds where that ran)
    and whether it stays in the AR band (plus a column of expert options where any point set some)."""
    seeds = (
        (
            f"{band.runs} AR runs with different seeds; a lossless method's run clears each edge with "
            f"probability {band.coverage:.0%}"
        )
        if band.runs > 1
        else "one AR run only (add ar2 to --methods for the seed-to-seed spread)"
    )
    expert = any(p.expert_options for p in points)
    columns = (
        ["draft source", "policy", "relax"]
        + (["expert options"] if expert else [])
        + [
            "seed",
            "tokens / forward",
            "x exact",
            "acceptance",
            "class acc",
            "colour acc",
            "shape acc",
            "FID-lite",
            "in AR band",
        ]
    )
    lines = [
        f"AR band ({seeds}, {points[0].images if points else 0} images each): class accuracy "
        f"{band.class_low:.3f}-{band.class_high:.3f}, FID-lite {band.fid_low:.1f}-{band.fid_high:.1f}",
        "",
        "| " + " | ".join(columns) + " |",
        "|" + "---|" * len(columns),
    ]
    for p in sorted_points(points):
        cells = (
            [p.source, p.policy, f"{p.relaxation:g}"]
            + ([p.expert_options or "-"] if expert else [])
            + [
                str(p.seed),
                f"{p.tokens_per_forward:.2f}",
                "-" if p.speedup_over_exact is None else f"{p.speedup_over_exact:.2f}x",
                "-" if p.acceptance_rate is None else f"{100 * p.acceptance_rate:.1f}%",
                f"{p.class_accuracy:.3f}",
                f"{p.colour_accuracy:.3f}",
                f"{p.shape_accuracy:.3f}",
                f"{p.fid_lite:.1f}",
                {True: "yes", False: "no", None: "-"}[band.holds(p)],
            ]
        )
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


# -- the plot -------------------------------------------------------------------------------------

POLICY_COLORS: dict[str, tuple[int, int, int]] = {
    "exact": (30, 30, 30),
    "lantern": (40, 100, 200),
    "gsd": (30, 150, 70),
    "csd": (225, 120, 20),
    "clusters": (200, 40, 60),
}
OTHER_COLOR = (150, 60, 170)
BAND_COLOR = (222, 222, 222)
PANEL_SIZE = (520, 380)
MARGIN = (64, 24, 24, 48)  # left, top, right, bottom of each panel's plotting area
MAX_SOURCES = 4  # marker shapes: circle, square, triangle, diamond


def _nice_ticks(low: float, high: float, count: int = 5) -> list[float]:
    step = 10 ** math.floor(math.log10(max(high - low, 1e-9) / count))
    for factor in (1, 2, 2.5, 5, 10):
        if (high - low) / (step * factor) <= count:
            step *= factor
            break
    first = math.ceil(low / step) * step
    return [first + i * step for i in range(int((high - first) / step + 1e-9) + 1)]


def _marker(draw: ImageDraw.ImageDraw, x: float, y: float, shape: int, color: tuple[int, int, int]) -> None:
    r = 5
    if shape == 0:
        draw.ellipse([x - r, y - r, x + r, y + r], fill=color, outline=(0, 0, 0))
    elif shape == 1:
        draw.rectangle([x - r, y - r, x + r, y + r], fill=color, outline=(0, 0, 0))
    elif shape == 2:
        draw.polygon([(x, y - r - 1), (x - r - 1, y + r), (x + r + 1, y + r)], fill=color, outline=(0, 0, 0))
    else:
        draw.polygon([(x, y - r - 1), (x + r + 1, y), (x, y + r + 1), (x - r - 1, y)], fill=color, outline=(0, 0, 0))


def _panel(
    points: Sequence[ParetoPoint], band: tuple[float, float], metric: str, title: str, sources: list[str]
) -> Image.Image:
    width, height = PANEL_SIZE
    left, top, right, bottom = MARGIN
    font = ImageFont.load_default(size=13)
    image = Image.new("RGB", PANEL_SIZE, (255, 255, 255))
    draw = ImageDraw.Draw(image)
    xs = [p.tokens_per_forward for p in points]
    ys = [getattr(p, metric) for p in points] + list(band)
    x_low, x_high = max(0.0, math.floor(min(xs) - 0.3)), math.ceil(max(xs) + 0.3)
    pad = 0.08 * (max(ys) - min(ys) or 1.0)
    y_low, y_high = min(ys) - pad, max(ys) + pad

    def at(x: float, y: float) -> tuple[float, float]:
        return (
            left + (x - x_low) / (x_high - x_low) * (width - left - right),
            height - bottom - (y - y_low) / (y_high - y_low) * (height - top - bottom),
        )

    draw.rectangle([*at(x_low, band[1]), *at(x_high, band[0])], fill=BAND_COLOR)
    label_x, label_y = at(x_low, band[1])
    draw.text((label_x + 4, label_y - 2), "plain AR, seed spread", fill=(110, 110, 110), font=font, anchor="lb")
    for tick in _nice_ticks(x_low, x_high):
        x, y = at(tick, y_low)
        draw.line([x, y, x, y + 4], fill=(0, 0, 0))
        draw.text((x, y + 6), f"{tick:g}", fill=(0, 0, 0), font=font, anchor="mt")
    for tick in _nice_ticks(y_low, y_high):
        x, y = at(x_low, tick)
        draw.line([x - 4, y, x, y], fill=(0, 0, 0))
        draw.text((x - 6, y), f"{tick:.3g}", fill=(0, 0, 0), font=font, anchor="rm")
    draw.rectangle([left, top, width - right, height - bottom], outline=(0, 0, 0))
    draw.text(
        ((left + width - right) / 2, height - 16), "tokens per target forward", fill=(0, 0, 0), font=font, anchor="mm"
    )
    draw.text((left, 4), title, fill=(0, 0, 0), font=font)
    for source in sources:
        mine = [p for p in points if p.source == source]
        exact = [p for p in mine if p.policy == EXACT]
        for policy in sorted({p.policy for p in mine if p.policy != EXACT}):
            curve = exact[:1] + sorted((p for p in mine if p.policy == policy), key=lambda p: p.relaxation)
            if len(curve) > 1:
                draw.line(
                    [at(p.tokens_per_forward, getattr(p, metric)) for p in curve],
                    fill=POLICY_COLORS.get(policy, OTHER_COLOR),
                    width=2,
                )
        for p in mine:
            x, y = at(p.tokens_per_forward, getattr(p, metric))
            _marker(draw, x, y, sources.index(source), POLICY_COLORS.get(p.policy, OTHER_COLOR))
            if p.policy != EXACT:
                draw.text((x + 7, y - 7), f"{p.relaxation:g}", fill=(60, 60, 60), font=font)
    return image


def pareto_plot(points: Sequence[ParetoPoint], band: QualityBand) -> Image.Image:
    """Two panels (FID-lite, class accuracy against tokens per forward), the AR band shaded,
    one line per draft source and policy from its exact point through the relaxations; the
    numbers beside the markers are the relaxation. Draft sources with relaxed points are shown
    (at most three); the table lists every point."""
    if not points:
        raise SettingsError("no speculative points to plot")
    relaxed = sorted({p.source for p in points if p.policy != EXACT})  # sources with only exact points add no curve
    sources = (relaxed or sorted({p.source for p in points}))[:MAX_SOURCES]
    shown = [p for p in points if p.source in sources]
    images = shown[0].images
    fid = _panel(
        shown, (band.fid_low, band.fid_high), "fid_lite", f"FID-lite (lower is better), {images} images", sources
    )
    acc = _panel(
        shown, (band.class_low, band.class_high), "class_accuracy", "class accuracy (higher is better)", sources
    )
    font = ImageFont.load_default(size=13)
    legend_height = 28
    canvas = Image.new("RGB", (fid.width + acc.width, fid.height + legend_height), (255, 255, 255))
    canvas.paste(fid, (0, 0))
    canvas.paste(acc, (fid.width, 0))
    draw = ImageDraw.Draw(canvas)
    x = 12
    for shape, source in enumerate(sources):
        _marker(draw, x + 5, fid.height + 14, shape, (255, 255, 255))
        draw.text((x + 14, fid.height + 14), source, fill=(0, 0, 0), font=font, anchor="lm")
        x += 24 + int(draw.textlength(source, font=font))
    for policy in sorted({p.policy for p in shown}, key=lambda name: (name != EXACT, name)):
        color = POLICY_COLORS.get(policy, OTHER_COLOR)
        draw.line([x, fid.height + 14, x + 18, fid.height + 14], fill=color, width=3)
        draw.text((x + 22, fid.height + 14), policy, fill=(0, 0, 0), font=font, anchor="lm")
        x += 34 + int(draw.textlength(policy, font=font))
    return canvas
