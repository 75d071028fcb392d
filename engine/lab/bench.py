"""Benchmarks: plain AR and speculative methods on the same images and seeds, in one process.

Every method decodes the same calls (same conditioning, same seed per call), after a short
warm-up of its own, with precise timing, and the methods take turns call by call, so wall-time
ratios compare like with like on one machine in one run. Rows keep their :class:`GenerationResult`
objects, so quality metrics and Pareto sweeps can build on a run without decoding again.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field, replace
from typing import Callable, Sequence

import torch

from ..compile import compile_seconds
from ..drafts import DRAFTS, DraftOptions, check_policy_fits
from ..drafts.base import DraftSource
from ..drafts.drafter import check_drafter_fits
from ..errors import SettingsError
from ..loop import generate
from ..methods import METHOD_SUMMARIES, PLAIN_AR, MethodOptions, make_method_draft
from ..models.base import ImageTokenModel
from ..policies import POLICIES
from ..types import ConditionFn, GenerationResult, SamplingSettings, StepEvent
from ..scoring import teacher_forced_logits
from .evidence import evidence_of, images_per_pass
from .fidelity import ks_uniform, token_pit

METHODS: dict[str, str] = {
    **METHOD_SUMMARIES,
    "ar2": "plain AR again with other seeds: the seed-to-seed spread that quality metrics are read against",
}
SECOND_SEED_OFFSET = 1_000_003  # ar2's seeds: far from any seed the first AR run uses
AR_METHODS = (PLAIN_AR, "ar2")  # plain AR: no drafts, no acceptance policy
WARMUP_FORWARDS = 8  # enough to run every kernel shape once (prefill, blocks, drafter) without a whole image

Call = tuple[list[int], SamplingSettings]
"""One generate call of a benchmark: the indices of its images and its settings (seed)."""


def draft_for(method: str, options: DraftOptions, drafter: ImageTokenModel | None) -> DraftSource | None:
    """A fresh draft source for a bench method's base name (``None`` for both AR runs)."""
    return make_method_draft(PLAIN_AR if method in AR_METHODS else method, options, drafter)


def split_method(name: str) -> tuple[str, str | None, float | None]:
    """``"drafter:csd=0.5"`` -> ``("drafter", "csd", 0.5)``; a plain name has no policy of its own.

    A method may name its acceptance policy and relaxation, so one benchmark can sweep the
    speed/quality trade-off of several policies on the same images.
    """
    base, _, variant = name.partition(":")
    if not variant:
        return base, None, None
    policy, _, relax = variant.partition("=")
    try:
        return base, policy, float(relax or 0.0)
    except ValueError:
        raise SettingsError(f"method {name!r}: write METHOD:POLICY=RELAX, e.g. drafter:csd=0.5") from None


def options_for(method: str, options: MethodOptions) -> MethodOptions:
    """``options`` with the policy and relaxation a ``METHOD:POLICY=RELAX`` name asks for (expert
    options given for another policy do not carry over to it)."""
    _, policy, relax = split_method(method)
    if policy is None:
        return options
    kept = options.policy_options if policy == options.policy else ()
    return replace(options, policy=policy, relaxation=relax or 0.0, policy_options=kept)


def parse_methods(text: str) -> list[str]:
    """``"jacobi, drafter:csd=0.5"`` -> ``["ar", "jacobi", "drafter:csd=0.5"]``: AR always runs first."""
    names = [name.strip() for name in text.split(",") if name.strip()]
    for name in names:
        base, policy, _ = split_method(name)
        if base not in METHODS:
            raise SettingsError(f"unknown method {base!r}; available: {', '.join(METHODS)}")
        if policy is not None and policy not in POLICIES:
            raise SettingsError(f"unknown acceptance policy {policy!r} in {name!r}; available: {', '.join(POLICIES)}")
    return list(dict.fromkeys(["ar", *names]))


def sweep_methods(methods: Sequence[str], policies: Sequence[str], relaxations: Sequence[float]) -> list[str]:
    """Each speculative method as given, then at every policy and relaxation: the points of a
    speed/quality sweep, all drawn on the same images (``drafter`` ->
    ``drafter, drafter:csd=0.25, drafter:csd=0.5, ...``)."""
    for policy in policies:
        if policy not in POLICIES or policy == "exact":
            raise SettingsError(
                f"cannot sweep {policy!r}: sweep the relaxed policies, "
                f"{', '.join(name for name in POLICIES if name != 'exact')}"
            )
    for relax in relaxations:
        if not 0.0 < relax <= 1.0:
            raise SettingsError(
                f"sweep relaxations must lie in (0, 1] (0 is the exact policy, always run), got {relax:g}"
            )
    swept: list[str] = []
    for method in methods:
        swept.append(method)
        base = split_method(method)[0]
        if base not in AR_METHODS:
            swept += [f"{base}:{policy}={relax:g}" for policy in policies for relax in relaxations]
    return list(dict.fromkeys(swept))


@dataclass
class BenchRow:
    """One method's numbers. Forward counts are per image (from the per-token records), so they do
    not depend on how images were batched; seconds are wall time per image at the run's batch size."""

    method: str
    images: int
    calls: int
    target_forwards_per_image: float  # mean over images of the forwards that committed its tokens
    tokens_per_forward: float
    acceptance_rate: float | None  # None for plain AR (nothing drafted)
    drafter_forwards_per_call: float  # drafter forwards per generate call (one serves the call's whole batch)
    seconds_per_image: float
    speedup: float  # AR seconds per image / this method's, same run
    tokens_per_verify: float  # mean block a target forward reads (pending token and drafts): what its cost depends on
    block_sizes: dict[int, int]  # target forwards after the prefill by block size, over all calls (per row)
    draft_summary: str  # what a choosing draft source (auto) chose in the last call, and by which costs
    loop_overhead: float  # share of wall time outside model forwards
    results: list[GenerationResult] = field(default_factory=list, repr=False, compare=False)
    quality: dict[str, float] | None = None  # class/colour/shape accuracy, FID-lite (demo model), condition evidence
    # The acceptance policy's native parameters, defaults resolved (AcceptancePolicy.parameters): with these a
    # later reader tells apart runs of one method name made under different defaults.
    policy_parameters: dict[str, float | None] = field(default_factory=dict)

    def to_dict(self) -> dict[str, object]:
        return {name: getattr(self, name) for name in self.__dataclass_fields__ if name != "results"}


def add_quality(
    rows: Sequence[BenchRow],
    model: ImageTokenModel,
    conditions: ConditionFn,
    evaluate: Callable[[object, list[int]], dict[str, float]],
    settings: SamplingSettings,
) -> None:
    """Decode every row's images and score them with ``evaluate(images, class_ids)``; add the target's
    condition evidence per image (:mod:`specar.evidence`: mean and standard error) and the token fidelity
    test (:mod:`specar.fidelity`: KS distance of every token's PIT under the target's ``settings``, its
    p-value and mean), both read from one teacher-forced target pass.

    The same image indices (and so classes) were drawn by every method, so rows compare like
    with like; two AR runs with different seeds give the noise floor to read them against.
    """
    for row in rows:
        images, classes, evidence, pit = [], [], [], []
        offset = 0
        for result in row.results:
            indices = list(range(offset, offset + result.batch_size))
            offset += result.batch_size
            images.append(model.decode(result.tokens))
            classes.extend(conditions(indices).class_ids or ())
            step = images_per_pass(model, result.batch_size)
            for start in range(0, result.batch_size, step):
                tokens = result.tokens[start : start + step]
                logits = teacher_forced_logits(model, conditions(indices[start : start + step]), tokens)
                evidence.append(evidence_of(logits, tokens))
                pit.append(token_pit(logits, tokens, settings, model.constrain, seed=indices[start]))
        per_image, values = torch.cat(evidence), torch.cat(pit)
        distance, pvalue = ks_uniform(values)
        row.quality = {
            **evaluate(torch.cat(images), classes),
            "condition_evidence": float(per_image.mean()),
            "condition_evidence_se": float(per_image.std() / len(per_image) ** 0.5) if len(per_image) > 1 else 0.0,
            "token_pit_ks": distance,
            "token_pit_p": pvalue,
            "token_pit_mean": float(values.mean()),
        }


def plan_calls(images: int, batch: int, settings: SamplingSettings) -> list[Call]:
    """Image indices and settings of every call: call starting at image ``i`` uses seed ``seed + i``."""
    if images < 1 or batch < 1:
        raise SettingsError(f"images and batch must be >= 1, got images={images}, batch={batch}")
    return [
        (list(range(start, min(start + batch, images))), settings.with_(seed=settings.seed + start))
        for start in range(0, images, batch)
    ]


def _stop_after(forwards: int) -> Callable[[StepEvent], bool]:
    return lambda event: event.target_forwards < forwards


def run_call(
    model: ImageTokenModel,
    method: str,
    conditions: ConditionFn,
    call: Call,
    options: MethodOptions,
    drafter: ImageTokenModel | None = None,
    observer: Callable[[StepEvent], bool] | None = None,
) -> GenerationResult:
    """One generate call of the plan with ``method``, precisely timed. Compiling is not decoding: the
    seconds a call spends compiling (the first block of a size past the warm-up) are taken off its times,
    and reported apart."""
    indices, settings = call
    if method == "ar2":
        settings = settings.with_(seed=settings.seed + SECOND_SEED_OFFSET)
    base, options = split_method(method)[0], options_for(method, options)
    compiled_before = compile_seconds(model, drafter, options.tree_head)
    result = generate(
        model,
        conditions(indices),
        settings,
        draft_for(base, options, drafter),
        options.make_policy(model),
        observer,
        precise_timing=True,
    )
    compiling = compile_seconds(model, drafter, options.tree_head) - compiled_before
    if not compiling:
        return result
    return replace(result, wall_seconds=result.wall_seconds - compiling, model_seconds=result.model_seconds - compiling)


def summarize(method: str, results: list[GenerationResult], baseline_seconds_per_image: float | None) -> BenchRow:
    """Aggregate one method's calls into a row; ``baseline_seconds_per_image`` is AR's (None: this is AR)."""
    calls = len(results)
    images = sum(r.batch_size for r in results)
    wall = sum(r.wall_seconds for r in results)
    drafted = sum(r.drafted for r in results)
    per_image = wall / images
    block_sizes = dict(sorted(sum((Counter(r.block_sizes) for r in results), Counter()).items()))
    return BenchRow(
        method=method,
        images=images,
        calls=calls,
        target_forwards_per_image=sum(int(r.forwards_per_image.sum()) for r in results) / images,
        tokens_per_forward=sum(int(r.committed.sum()) for r in results)
        / sum(int(r.forwards_per_image.sum()) for r in results),
        acceptance_rate=sum(r.accepted for r in results) / drafted
        if drafted
        else (None if method in AR_METHODS else 0.0),
        drafter_forwards_per_call=sum(r.drafter_forwards for r in results) / calls,
        seconds_per_image=per_image,
        speedup=(baseline_seconds_per_image or per_image) / per_image,
        tokens_per_verify=sum(size * count for size, count in block_sizes.items()) / max(1, sum(block_sizes.values())),
        block_sizes=block_sizes,
        draft_summary=results[-1].draft_summary,
        loop_overhead=1.0 - sum(r.model_seconds for r in results) / wall,
        results=results,
    )


def validate(
    model: ImageTokenModel, methods: Sequence[str], options: MethodOptions, drafter: ImageTokenModel | None
) -> None:
    """Fail on bad settings before any method runs, not after minutes of the first ones."""
    for method in methods:
        variant = options_for(method, options)
        draft_for(split_method(method)[0], variant, drafter)
        check_policy_fits(variant.make_policy(model), split_method(method)[0])
    takes_drafter = [DRAFTS[base].takes_drafter for base in (split_method(m)[0] for m in methods) if base in DRAFTS]
    if any(takes_drafter) and drafter is not None:
        check_drafter_fits(model, drafter)


class BenchInterrupted(Exception):
    """A benchmark stopped part-way (an error, Ctrl-C): ``rows`` hold the calls every method finished."""

    def __init__(self, rows: list[BenchRow], cause: BaseException) -> None:
        super().__init__(f"the benchmark stopped after {rows[0].images} images: {cause}")
        self.rows, self.cause = rows, cause


def run_bench(
    model: ImageTokenModel,
    conditions: ConditionFn,
    methods: Sequence[str],
    images: int,
    batch: int,
    settings: SamplingSettings,
    options: MethodOptions = MethodOptions(),
    drafter: ImageTokenModel | None = None,
    warmup: bool = True,
    log: Callable[[str], None] | None = None,
) -> list[BenchRow]:
    """Run plain AR and ``methods`` on the same calls; one row each, AR first.

    Methods take turns call by call, so a machine that slows down or speeds up during the run
    (thermal limits, other processes) affects every method alike.
    """
    methods = list(dict.fromkeys(["ar", *methods]))
    validate(model, methods, options, drafter)
    calls = plan_calls(images, batch, settings)
    for indices, _ in calls:
        model.check_conditioning(conditions(indices))
    if warmup:
        for method in methods:
            run_call(model, method, conditions, calls[0], options, drafter, _stop_after(WARMUP_FORWARDS))
    results: dict[str, list[GenerationResult]] = {method: [] for method in methods}
    done = 0  # calls every method finished
    try:
        for call in calls:
            for method in methods:
                results[method].append(run_call(model, method, conditions, call, options, drafter))
            done += 1
            if log is not None:
                log(f"{call[0][-1] + 1}/{images} images done by every method")
    except (Exception, KeyboardInterrupt) as exc:
        if not done:
            raise
        finished = _rows(model, methods, {m: r[:done] for m, r in results.items()}, options)
        raise BenchInterrupted(finished, exc) from exc
    return _rows(model, methods, results, options)


def _rows(
    model: ImageTokenModel, methods: Sequence[str], results: dict[str, list[GenerationResult]], options: MethodOptions
) -> list[BenchRow]:
    """One row per method from its calls' results, AR first, with the policy parameters resolved."""
    baseline = summarize("ar", results["ar"], None)
    rows = [baseline] + [summarize(m, results[m], baseline.seconds_per_image) for m in methods[1:]]
    for row in rows:
        if row.method not in AR_METHODS:  # plain AR runs no policy: its rows keep none
            row.policy_parameters = options_for(row.method, options).make_policy(model).parameters()
    return rows


# quality columns: (header, key in BenchRow.quality, format); a table shows those its rows were scored on
QUALITY_COLUMNS: tuple[tuple[str, str, str], ...] = (
    ("class acc", "class_accuracy", ".3f"),
    ("colour acc", "colour_accuracy", ".3f"),
    ("shape acc", "shape_accuracy", ".3f"),
    ("FID-lite", "fid_lite", ".1f"),
    ("evidence", "condition_evidence", ".1f"),
    ("token KS", "token_pit_ks", ".4f"),
    ("KS p", "token_pit_p", ".2g"),
)
TABLE_COLUMNS = (
    "method",
    "images",
    "fwd/img",
    "tok/fwd",
    "accept",
    "drafter fwd/call",
    "s/img",
    "speed-up",
    "loop overhead",
)


def row_cells(row: BenchRow, quality: Sequence[tuple[str, str, str]] = ()) -> tuple[str, ...]:
    """A row's cells: the timing columns, then ``quality`` columns ("-" where the row has no such score)."""
    accept = "-" if row.acceptance_rate is None else f"{100 * row.acceptance_rate:.1f}%"
    cells = (
        row.method,
        str(row.images),
        f"{row.target_forwards_per_image:.1f}",
        f"{row.tokens_per_forward:.2f}",
        accept,
        f"{row.drafter_forwards_per_call:.1f}",
        f"{row.seconds_per_image:.3f}",
        f"{row.speedup:.2f}x",
        f"{100 * row.loop_overhead:.1f}%",
    )
    scores = row.quality or {}
    return cells + tuple(format(scores[key], fmt) if key in scores else "-" for _, key, fmt in quality)


def table_lines(rows: Sequence[BenchRow]) -> list[str]:
    """The rows as aligned text lines, a header line first, with the quality columns any row was scored on
    (the continuous models' rows have no condition evidence or token fidelity)."""
    quality = [column for column in QUALITY_COLUMNS if any(column[1] in (row.quality or {}) for row in rows)]
    columns = TABLE_COLUMNS + tuple(header for header, _, _ in quality)
    table = [columns, *(row_cells(row, quality) for row in rows)]
    widths = [max(len(line[i]) for line in table) for i in range(len(columns))]
    return [
        "  ".join(cell.ljust(w) if i == 0 else cell.rjust(w) for i, (cell, w) in enumerate(zip(line, widths)))
        for line in table
    ]
