"""``specar generate`` for continuous-token models (MAR, CSpD), and the options ``specar bench`` shares.

    specar generate --model mar-demo --class-id 3 --out ring.png --heatmap ring_heat.png
    specar bench --model mar-demo --methods cspd,mar2 --images 100 --batch 50 --quality

:mod:`specar.cli` hands over here when ``--model`` names a continuous model; the options the two
kinds share (classes, cfg, temperature, seed, outputs) mean the same, the MAR and CSpD knobs are
their own group.
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import asdict

from .continuous.acceptance import GaussianAcceptance, RECOMMENDED_RELAXATION
from .continuous.loop import generate_continuous
from .continuous.model import MARTokenModel
from .continuous.registry import load_continuous_model
from .continuous.types import RUN_GROWTH, ContinuousSettings, CSpDSettings
from .cli_output import StopOnInterrupt, write_json, write_pictures
from .drafts import KNOBS
from .errors import NonFiniteOutputError, SettingsError
from .progress import ProgressBar, summary_line
from .session import class_for_prompt
from .types import StepEvent

BUNDLED_DRAFTS = {"mar-demo": "mar-demo-drafter"}
DEFAULT_METHODS = "cspd"


def add_continuous_options(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("continuous-token models (MAR) and continuous speculative decoding (CSpD)")
    group.add_argument(
        "--mar-steps",
        type=int,
        metavar="N",
        help="MAR generation steps: each step predicts a cosine-scheduled set of tokens (default: the model's)",
    )
    group.add_argument(
        "--head-steps",
        type=int,
        metavar="N",
        help="denoising steps of the per-token diffusion head (default: the model's; MAR uses 100)",
    )
    group.add_argument(
        "--cfg-schedule",
        choices=("linear", "constant"),
        help="guidance grows with the share of known tokens (linear, MAR's default) or stays constant",
    )
    group.add_argument(
        "--draft-steps",
        type=int,
        metavar="N",
        help=f"CSpD: draft MAR steps verified by one target pass at relaxation 0 (default: "
        f"{CSpDSettings().draft_steps}); --relax lengthens the runs, up to {RUN_GROWTH + 1:g}x at 1",
    )
    group.add_argument(
        "--prefill-ratio",
        type=float,
        metavar="F",
        help=f"CSpD: share of the first steps the target runs alone (default: {CSpDSettings().prefill_ratio})",
    )
    group.add_argument(
        "--inner-temperature",
        type=float,
        metavar="T",
        help="CSpD experts: the acceptance test's inner temperature (1 = exact Gaussian ratio; "
        "overrides --relax, which maps 0..1 onto 1..42)",
    )
    group.add_argument(
        "--residual-tries",
        type=int,
        metavar="N",
        help="CSpD: tries of the residual sampler before it falls back to a target sample "
        f"(default: {GaussianAcceptance().max_tries})",
    )
    group.add_argument("--vae", metavar="PATH", help="MAR's KL-16 VAE (kl16.ckpt) for official MAR checkpoints")


CONTINUOUS_OPTIONS = {
    "--mar-steps": "mar_steps",
    "--head-steps": "head_steps",
    "--cfg-schedule": "cfg_schedule",
    "--draft-steps": "draft_steps",
    "--prefill-ratio": "prefill_ratio",
    "--inner-temperature": "inner_temperature",
    "--residual-tries": "residual_tries",
    "--vae": "vae",
}


def refuse_continuous_options(args: argparse.Namespace) -> None:
    """Refuse the MAR and CSpD options on a discrete-token model, rather than ignore them."""
    given = [option for option, name in CONTINUOUS_OPTIONS.items() if getattr(args, name, None) is not None]
    if given:
        raise SettingsError(
            f"{', '.join(given)} {_apply(given)} to continuous-token (MAR) models; "
            f"{args.model} is a discrete-token model"
        )


def _apply(options: list[str]) -> str:
    return "applies" if len(options) == 1 else "apply"


def refuse_discrete_options(args: argparse.Namespace) -> None:
    given = [
        opt
        for opt, name in (
            ("--policy", "policy"),
            ("--greedy", "greedy"),
            ("--top-k", "top_k"),
            ("--top-p", "top_p"),
            ("--tree-head", "tree_head"),
            ("--vq", "vq"),
            ("--image-size", "image_size"),
            ("--compile", "compile"),
            ("--jacobi-init", "jacobi_init"),
            ("--coupling", "coupling"),
            *((f"--{knob.replace('_', '-')}", knob) for knob in KNOBS),
        )
        if getattr(args, name, None) not in (None, False, "exact")
    ] + (["--dtype"] if getattr(args, "dtype", "auto") != "auto" else [])
    if given:
        raise SettingsError(
            f"{', '.join(given)} {_apply(given)} to discrete-token models; {args.model} is a continuous MAR model "
            "(see the CSpD options)"
        )


def continuous_settings(model: MARTokenModel, args: argparse.Namespace) -> ContinuousSettings:
    given = {
        "num_iter": args.mar_steps,
        "num_sampling_steps": args.head_steps,
        "cfg_scale": args.cfg,
        "cfg_schedule": args.cfg_schedule,
        "temperature": args.temperature,
        "seed": args.seed,
    }
    return model.default_settings.with_(**{k: v for k, v in given.items() if v is not None})


def speculation_settings(args: argparse.Namespace, relaxation: float | None = None) -> CSpDSettings:
    """CSpD settings from the options, moved along ``relaxation`` (default: ``--relax``, else the
    recommended one); ``--inner-temperature`` overrides the test's temperature."""
    defaults = CSpDSettings()
    tries = defaults.acceptance.max_tries if args.residual_tries is None else args.residual_tries
    relax = relaxation if relaxation is not None else RECOMMENDED_RELAXATION if args.relax is None else args.relax
    settings = CSpDSettings(
        defaults.prefill_ratio if args.prefill_ratio is None else args.prefill_ratio,
        defaults.draft_steps if args.draft_steps is None else args.draft_steps,
        GaussianAcceptance(max_tries=tries),
    ).relaxed(relax)
    return settings if args.inner_temperature is None else settings.with_inner_temperature(args.inner_temperature)


def classes_for(model: MARTokenModel, args: argparse.Namespace, count: int) -> list[int]:
    if args.prompt is not None:
        return [class_for_prompt(model, args.prompt)] * count
    ids = args.class_ids or []
    return [ids[i % len(ids)] for i in range(count)] if ids else [i % model.num_classes for i in range(count)]


def draft_model(args: argparse.Namespace, wanted: bool) -> MARTokenModel | None:
    name = args.drafter or (BUNDLED_DRAFTS.get(args.model) if wanted else None)
    return load_continuous_model(name, args.device, args.vae) if name else None


def generate(args: argparse.Namespace) -> int:
    refuse_discrete_options(args)
    if args.draft not in (None, "none", "model"):
        raise SettingsError(
            f"--draft {args.draft} drafts discrete tokens; continuous models draft with a smaller MAR "
            "(--draft model, the default when a drafter is known) or not at all (--draft none)"
        )
    if args.explain:
        raise SettingsError("--explain shows what a discrete policy decided on; for CSpD use --stats (acceptance_prob)")
    speculation = speculation_settings(args)
    model = load_continuous_model(args.model, args.device, args.vae)
    draft = draft_model(args, args.draft != "none")
    if args.draft == "model" and draft is None:
        raise SettingsError("--draft model needs --drafter PATH (a smaller MAR over the same tokens)")
    settings = continuous_settings(model, args)
    ids = args.class_ids or []
    batch = args.batch or len(ids) or 1
    if len(ids) > 1 and len(ids) != batch:
        raise SettingsError(
            f"--class-id got {len(ids)} classes for --batch {batch}: give one per image, or one for all"
        )
    classes = classes_for(model, args, batch)
    progress = ProgressBar(enabled=not args.quiet)
    with StopOnInterrupt() as stop:

        def observer(event: StepEvent) -> bool:
            progress(event)
            return not stop.requested

        try:
            result = generate_continuous(model, classes, settings, draft, speculation, observer)
        except NonFiniteOutputError as failed:  # keep what was decided before it, then report
            progress.finish()
            write_pictures(args, model, failed.result)
            raise
    progress.finish(summary_line(result))
    write_pictures(args, model, result)
    if args.stats:
        stats = {
            **result.stats(),
            "model": model.name,
            "drafter": draft.name if draft else None,
            "classes": classes,
            "settings": asdict(settings),
            "cspd": asdict(speculation) if draft else None,
        }
        stats["acceptance_prob"] = result.diagnostics["acceptance_prob"].tolist() if draft else None
        write_json(args.stats, stats)
    if not result.finished:
        print("interrupted: wrote the tokens decided so far (black where none)", file=sys.stderr)
        return 130
    return 0


__all__ = ["add_continuous_options", "generate"]
