"""The lab commands of ``specar``: ``bench`` (discrete and continuous models), ``pareto`` and ``forward-bench``.

:mod:`specar.cli` parses their options and imports this module only when one of them runs; the option
handling they share with ``generate`` (models, conditioning, sampling, methods) is the CLI's own.
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import asdict, replace
from pathlib import Path
from typing import Callable

from ..cli import (
    DEFAULT_BENCH_METHODS,
    conditions_for,
    dtype_name,
    load_drafter,
    load_target,
    load_tree_head,
    method_options,
    refuse_unused_knobs,
    sampling_settings,
    use_bundled_drafter,
    use_bundled_head,
)
from ..cli_continuous import (
    DEFAULT_METHODS as DEFAULT_CONTINUOUS_METHODS,
    classes_for,
    continuous_settings,
    draft_model,
    refuse_continuous_options,
    refuse_discrete_options,
    speculation_settings,
)
from ..cli_output import check_output_folder, check_outputs, write_json, write_text
from ..compile import compile_seconds
from ..continuous.registry import is_continuous, load_continuous_model
from ..continuous.types import RUN_GROWTH
from ..drafts import DRAFTS
from ..drafts.tree_head import head_fingerprint
from ..errors import SettingsError
from ..heatmap import save_png
from ..methods import MethodOptions
from ..models.base import ImageTokenModel
from ..models.registry import load_model, resolve_device, resolve_dtype
from ..types import SamplingSettings
from .bench import (
    BenchInterrupted,
    BenchRow,
    add_quality,
    parse_methods,
    run_bench,
    split_method,
    sweep_methods,
    table_lines,
)
from .continuous_bench import parse_continuous_methods, run_continuous_bench
from .forward_bench import markdown_table as forward_table, projection_table, time_forwards
from .pareto import collect, load_runs, markdown_table as pareto_table, pareto_plot
from .pooled import markdown_table as pooled_table, pool
from .self_drawn import draw_images, plan_for, read_drawn
from .train_head import HeadTrainer, HeadTrainingOptions, check_held_out, head_config, step_bytes

QualityFn = Callable[[object, list[int]], dict[str, float]]


def _demo_quality(is_demo: bool, model_name: str) -> QualityFn:
    """The demo evaluator as ``(images, class_ids) -> metrics``; other models have no such metric."""
    if not is_demo:
        raise SettingsError(f"--quality scores the bundled demo model's scenes; there is no metric for {model_name}")
    from .demo_evaluator import load_evaluator

    evaluator = load_evaluator()
    return lambda images, classes: evaluator.evaluate(images, classes).to_dict()


def _options_record(options: MethodOptions) -> dict[str, object]:
    """``options`` as JSON-ready values (the head by its weights' fingerprint, ``None`` without one)."""
    head = None if options.tree_head is None else head_fingerprint(options.tree_head)
    return {**asdict(replace(options, tree_head=None)), "tree_head": head}


# -- bench ----------------------------------------------------------------------------------------


def bench(args: argparse.Namespace) -> int:
    check_outputs(args)
    if is_continuous(args.model, args.family):
        return continuous_bench(args)
    requested = {split_method(m)[0] for m in parse_methods(args.methods)} if args.methods else set()
    takes_drafter = {name for name, kind in DRAFTS.items() if kind.takes_drafter}
    head_drafts = {name for name, kind in DRAFTS.items() if kind.uses_head}
    needs_head = {name for name, kind in DRAFTS.items() if kind.needs == "tree head"}
    needs_drafter = {name for name, kind in DRAFTS.items() if kind.needs == "drafter"}
    head_named = args.tree_head is not None  # auto drafts with a head named, not one loaded for the tree methods
    drafter_named = args.drafter is not None  # the same for the drafter
    use_bundled_drafter(args, args.methods is None or bool(requested & needs_drafter))
    use_bundled_head(args, bool(requested & needs_head))
    default = DEFAULT_BENCH_METHODS + (",drafter" if args.drafter else "")
    methods = parse_methods(args.methods or default)
    if args.sweep:
        methods = sweep_methods(methods, _names(args.sweep), _numbers(args.relax_steps, "--relax-steps"))
    if args.drafter and not any(split_method(m)[0] in takes_drafter for m in methods):
        raise SettingsError("--drafter is given but --methods does not include drafter, drafter-tree or auto")
    if (args.plot or args.table) and not args.quality:
        raise SettingsError("--plot and --table show quality against speed: add --quality")
    refuse_unused_knobs(args, [split_method(m)[0] for m in methods], "--methods " + ",".join(methods[1:]))
    refuse_continuous_options(args)
    if args.tree_head and not any(split_method(m)[0] in head_drafts for m in methods):
        raise SettingsError("--tree-head is given but --methods does not include tree, tree-static or auto")
    method_options(args)
    model = load_target(args)
    drafter = load_drafter(args, model) if args.drafter else None
    options = method_options(args, load_tree_head(args, model), auto_head=head_named, auto_drafter=drafter_named)
    settings = sampling_settings(model, args)
    log = None if args.quiet else (lambda line: print(f"bench: {line}", file=sys.stderr))
    evaluate = _demo_quality(model.name == "specar-demo", model.name) if args.quality else None
    conditions = conditions_for(model, args.class_ids, args.prompt)
    runs: list[dict[str, object]] = []

    def record(rows: list[BenchRow], batch: int) -> dict[str, object]:
        return {
            "model": model.name,
            "drafter": drafter.name if drafter else None,
            "device": str(model.device),
            "dtype": dtype_name(model),
            "images": rows[0].images,
            "batch": batch,
            "settings": asdict(settings),
            "options": _options_record(options),
            "rows": [row.to_dict() for row in rows],
        }

    for batch in args.batch:
        try:
            rows = run_bench(model, conditions, methods, args.images, batch, settings, options, drafter, log=log)
        except BenchInterrupted as stopped:  # keep what every method finished, then report the cause
            print(format_table(stopped.rows, model, settings, batch))
            runs.append({**record(stopped.rows, batch), "stopped": str(stopped.cause) or type(stopped.cause).__name__})
            if args.json:
                write_json(args.json, runs[0] if len(runs) == 1 else {"runs": runs})
            print(
                f"bench: stopped after {stopped.rows[0].images} of {args.images} images; the rows above"
                + (f" (and {args.json})" if args.json else "")
                + " hold what every method finished",
                file=sys.stderr,
            )
            raise stopped.cause
        if evaluate is not None:
            add_quality(rows, model, conditions, evaluate, settings)
        print(format_table(rows, model, settings, batch) + ("\n" if batch != args.batch[-1] else ""))
        runs.append(record(rows, batch))
    compiled = _report_compile(compile_seconds(model, drafter, options.tree_head), log)
    for run in runs:
        run["compile_seconds"] = compiled
    if args.json:
        write_json(args.json, runs[0] if len(runs) == 1 else {"runs": runs})
    if args.plot or args.table:
        _write_pareto(runs, args.plot, args.table)
    return 0


def _report_compile(seconds: float, log: Callable[[str], None] | None) -> float | None:
    """Say how long compiling took (first calls, outside the timed runs); ``None`` if nothing was compiled."""
    if not seconds:
        return None
    if log is not None:
        log(f"compiled forwards: {seconds:.1f} s of compiling on first calls (not in the timings)")
    return round(seconds, 2)


def _names(text: str) -> list[str]:
    return [name.strip() for name in text.split(",") if name.strip()]


def _numbers(text: str, option: str) -> list[float]:
    try:
        return [float(value) for value in _names(text)]
    except ValueError:
        raise SettingsError(f"{option} takes comma-separated numbers, e.g. 0.25,0.5,1; got {text!r}") from None


def _write_pareto(runs: list[dict[str, object]], plot: str | None, table: str | None, images: int | None = None) -> str:
    points, band = collect(runs, images)
    text = "\n\n".join(filter(None, [pareto_table(points, band), pooled_table(pool(points, band), band)]))
    if table:
        Path(table).parent.mkdir(parents=True, exist_ok=True)
        Path(table).write_text(text + "\n")
    if plot:
        save_png(pareto_plot(points, band), plot)
    return text


# -- pareto ---------------------------------------------------------------------------------------


def pareto(args: argparse.Namespace) -> int:
    check_outputs(args)
    print(_write_pareto(load_runs(args.runs), args.plot, args.table, args.images))
    return 0


def format_table(rows: list[BenchRow], model: ImageTokenModel, settings: SamplingSettings, batch: int) -> str:
    """The benchmark table with a header that says how to read it."""
    forwards = "target forwards per image" + (
        ""
        if batch == 1
        else f" (counted per image from its tokens; a batched forward of {batch} images serves them all at once)"
    )
    mode = (
        "greedy"
        if settings.greedy
        else f"temperature {settings.temperature}, top-k {settings.top_k}, top-p {settings.top_p}"
    )
    header = [
        f"{model.describe()} on {model.device}, cfg {settings.cfg_scale}, {mode}, seed {settings.seed}",
        f"fwd/img: {forwards}",
        "speed-up: AR's s/img over the method's, measured in this run",
        "loop overhead: share of wall time outside model forwards",
    ]
    if rows and rows[0].quality is not None:
        header.append(
            "token KS: distance of every token's PIT under the target from uniform (within noise of 0 for the "
            "target's own "
            "samples); KS p: its p-value, small where tokens do not follow the target"
        )
    choices = [f"{row.method}, last call: {row.draft_summary}" for row in rows if row.draft_summary]
    return "\n".join(header + [""] + table_lines(rows) + ([""] + choices if choices else []))


def forward_bench(args: argparse.Namespace) -> int:
    check_outputs(args)
    if args.drafter_model and not args.project:
        raise SettingsError("--drafter-model is for --project: give the benchmark JSON to project")
    runs = load_runs([args.project]) if args.project else []
    if runs and any(int(run.get("batch", 1)) != 1 for run in runs):
        raise SettingsError(f"{args.project}: project a batch-1 benchmark (specar bench --batch 1 --json)")
    device = resolve_device(args.device)
    dtype = resolve_dtype(args.dtype, device)
    rows = [time_forwards(name.strip(), device, dtype, args.context, args.repeats) for name in args.models.split(",")]
    drafter = (
        time_forwards(args.drafter_model, device, dtype, args.context, args.repeats) if args.drafter_model else None
    )
    table = forward_table(rows + ([drafter] if drafter else []))
    if runs:
        table += "\n\nProjected wall-clock speed-up over plain AR (demo tokens per forward / cost of its verify):\n\n"
        table += projection_table([row for run in runs for row in run["rows"]], rows, drafter)
    print(table)
    if args.table:
        write_text(args.table, table + "\n")
    return 0


# -- continuous-token bench -----------------------------------------------------------------------


def continuous_bench(args: argparse.Namespace) -> int:
    refuse_discrete_options(args)
    methods = parse_continuous_methods(args.methods or DEFAULT_CONTINUOUS_METHODS)
    if args.plot or args.table or args.sweep:
        raise SettingsError(
            "--sweep, --plot and --table belong to the discrete policies; list cspd=RELAX methods instead"
        )
    if len(args.batch) > 1:
        raise SettingsError("a continuous-token bench takes one --batch size")
    batch = args.batch[0]
    speculation = speculation_settings(args, relaxation=0.0)  # each cspd=R method moves it to R
    model = load_continuous_model(args.model, args.device, args.vae)
    needs_draft = any(m.split("=")[0] in ("cspd", "draft") for m in methods)
    draft = draft_model(args, needs_draft)
    settings = continuous_settings(model, args)
    evaluate = _demo_quality(model.name.startswith("specar-mar-demo"), model.name) if args.quality else None
    log = None if args.quiet else (lambda line: print(f"bench: {line}", file=sys.stderr))
    classes = classes_for(model, args, args.images)
    rows = run_continuous_bench(model, draft, methods, classes, batch, settings, speculation, evaluate, log)
    header = [
        f"{model.name} vs draft {draft.name if draft else '-'}, {settings.num_iter} MAR steps, "
        f"{settings.num_sampling_steps} head steps, cfg {settings.cfg_scale} ({settings.cfg_schedule}), "
        f"temperature {settings.temperature}, seed {settings.seed}",
        f"CSpD: prefill {speculation.prefill_ratio}, {speculation.draft_steps} draft steps per verification at "
        f"relaxation 0; cspd=R: inner temperature 42^R, runs {RUN_GROWTH + 1:g}x as long at R = 1",
        "fwd/img: target passes per image; tok/fwd: image tokens per target pass; speed-up: wall time vs mar",
    ]
    print("\n".join(header + [""] + table_lines(rows)))
    if args.json:
        write_json(
            args.json,
            {
                "model": model.name,
                "drafter": draft.name if draft else None,
                "images": args.images,
                "batch": batch,
                "settings": asdict(settings),
                "cspd": asdict(speculation),
                "rows": [row.to_dict() for row in rows],
            },
        )
    return 0


def train_head(args: argparse.Namespace) -> int:
    """``specar train-head``: draw, train, validate, check drafting, write OUT/tree_head.safetensors."""
    if is_continuous(args.model, args.family):
        raise SettingsError(f"{args.model} generates continuous tokens; tree heads draft discrete codes")
    check_output_folder("--out", args.out)
    if args.redundancy is not None and not 0.0 < args.redundancy <= 1.0:
        raise SettingsError(f"--redundancy is a cosine similarity in (0, 1], got {args.redundancy}")
    if not args.lr > 0 or args.lr != args.lr or args.lr == float("inf"):
        raise SettingsError(f"--lr must be a positive number, got {args.lr}")
    val_images = args.val_images or max(1, min(256, args.images // 10))
    check_held_out(args.images, val_images)
    options = HeadTrainingOptions(
        steps=args.steps,
        batch=args.batch,
        lr=args.lr,
        warmup=args.warmup,
        seed=args.seed,
        val_images=val_images,
        redundancy=args.redundancy,
        alternatives=args.alternatives,
        save_minutes=args.save_minutes,
        check_images=args.check_images,
    )
    model = load_model(args.model, args.device, args.dtype, family=args.family, image_size=args.image_size)
    plan = plan_for(model, args.class_ids, args.prompts)
    head_config(model)  # refuse a model no head fits before drawing anything
    data = args.out / "data"
    draw_images(model, plan, args.images, data, model.default_settings, args.seed, args.draw_batch)
    tokens, conditions = read_drawn(data, args.images)
    trainer = HeadTrainer(model, plan, tokens, conditions, options, args.out)
    print(
        f"train-head: {model.describe()}; head {sum(p.numel() for p in trainer.head.parameters()) / 1e6:.2f}M "
        f"parameters; {trainer.train_count} training and {val_images} held-out images; about "
        f"{step_bytes(model, trainer.cfg, args.batch, trainer.guided) / 2**30:.2f} GiB per step besides the weights",
        file=sys.stderr,
    )
    path, record = trainer.run(args.resume)
    validation, check = record["validation"], record["drafting_check"]
    assert isinstance(validation, dict) and isinstance(check, dict)
    drafting = (
        f"; drafting {check['tokens_per_forward']:.2f} tokens per target forward ({check['images']} images, "
        "dynamic tree)"
        if check
        else ""
    )
    print(f"wrote {path}: top-1 agreement with the model {validation['top1']:.3f} on held-out images{drafting}")
    return 0
