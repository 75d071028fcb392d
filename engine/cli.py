"""The ``specar`` command: generate images with speculative decoding, or benchmark the methods.

    specar generate --model models/c2i_B_256 --class-id 207 --out dog.png --heatmap dog_heat.png
    specar bench --model models/c2i_B_256 --methods jacobi,mcsjd --images 8

This module only parses, loads and prints: decoding lives in :mod:`specar.loop`, pictures in
:mod:`specar.heatmap`; the lab commands (bench, pareto, forward-bench) run from :mod:`specar.lab.commands`.
User mistakes surface as one ``error: ...`` line and exit code 2; Ctrl-C during ``generate`` keeps what was
already decoded.
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import asdict
from pathlib import Path
from typing import Callable, Sequence

from . import __version__, entry
from . import cli_continuous
from .cli_continuous import refuse_continuous_options
from .cli_output import (
    StopOnInterrupt,
    check_outputs,
    refuse_pictures_without_pixels,
    require_an_output,
    write_json,
    write_pictures,
)
from .compile import compile_seconds
from .continuous.registry import is_continuous
from .drafts import DRAFTS, KNOBS, check_policy_fits, jacobi_method, unused_knobs
from .drafts.drafter import check_drafter_fits
from .drafts.jacobi import INITIALISATIONS, Q_CONVENTIONS
from .drafts.tree_drafts import TreeShape
from .drafts.tree_head import BUNDLED_HEAD, TreeHead, resolve_tree_head
from .errors import NonFiniteOutputError, SettingsError, SpecARError
from .loop import generate
from .methods import METHOD_SUMMARIES, MethodOptions, make_method_draft
from .models.base import ImageTokenModel
from .models.registry import DTYPE_CHOICES, FAMILIES, load_model
from .policies import POLICIES, parse_policy_options, recommendation, recommended_relaxation
from .progress import ProgressBar, summary_line
from .session import class_for_prompt
from .types import ConditionFn, Conditioning, GenerationResult, SamplingSettings, StepEvent

EXIT_USAGE = 2
EXIT_INTERRUPTED = entry.EXIT_INTERRUPTED
DEFAULT_BENCH_METHODS = "jacobi,jacobi-row,mcsjd"
DEFAULTS = MethodOptions()
KNOB_OPTIONS = {knob: "--" + knob.replace("_", "-") for knob in KNOBS}  # each draft knob's option
SEED_SPREAD = "plain AR again with other seeds: the seed-to-seed spread that quality metrics are read against"
# --draft: none, jacobi (the variant from --jacobi-init and --coupling), model (the drafter chain), and the
# registry's other sources by name
DRAFT_CHOICES = (
    "none",
    "jacobi",
    "model",
    *(name for name, kind in DRAFTS.items() if kind.jacobi is None and name != "drafter"),
)


# -- arguments ------------------------------------------------------------------------------------


def _int_at_least(minimum: int) -> Callable[[str], int]:
    """An argparse type, so a bad count is reported with the option's name before any model loads."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"must be a whole number, got {text!r}") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"must be >= {minimum}, got {value}")
        return value

    return parse


def _batch_sizes(text: str) -> list[int]:
    """``--batch`` of ``specar bench``: one size or a comma-separated list, e.g. 1,4,16,64."""
    parse = _int_at_least(1)
    sizes = [parse(part.strip()) for part in text.split(",") if part.strip()]
    if not sizes:
        raise argparse.ArgumentTypeError(f"must be a batch size or a list such as 1,4,16; got {text!r}")
    return list(dict.fromkeys(sizes))


def _listed(text: str) -> str:
    """A comma-separated list with at least one entry (an empty one would quietly mean the default list)."""
    if not any(part.strip() for part in text.split(",")):
        raise argparse.ArgumentTypeError(f"must list at least one entry; got {text!r}")
    return text


def _add_model_options(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("model")
    group.add_argument(
        "--model",
        metavar="NAME|PATH",
        default="demo",
        help=(
            "the target model: demo (the bundled model, the default), mar-demo (the bundled continuous-token MAR), a "
            "LlamaGen weights file, or a model directory: LlamaGen (weights, optional config.json, the VQ tokenizer "
            "vq*.pt), a transformers checkpoint of Janus-Pro, Lumina-mGPT, Anole or Emu3-Gen, or an official MAR "
            "checkpoint with --family mar (see the README for each layout)"
        ),
    )
    group.add_argument(
        "--family",
        default="auto",
        choices=("auto", *FAMILIES, "mar"),
        help="the model family (default: auto, read from the directory's config.json)",
    )
    group.add_argument(
        "--image-size",
        type=_int_at_least(16),
        metavar="PX",
        help="pixels per side for families that draw several sizes (Lumina-mGPT, Anole, Emu3; default: the "
        "checkpoint's usual size; the other families draw only that one)",
    )
    group.add_argument(
        "--vq",
        metavar="PATH",
        help="the VQ tokenizer that turns tokens into pixels, if it is not in the model directory",
    )
    group.add_argument(
        "--drafter",
        metavar="NAME|PATH",
        help=(
            "a small model of the same family (same vocabulary and token grid) that proposes tokens for the target to "
            "check (default with --model demo: demo-drafter, the bundled one, for the drafter methods; auto drafts "
            "with a drafter only when one is named)"
        ),
    )
    group.add_argument(
        "--tree-head",
        metavar="NAME|PATH",
        help=(
            "the EAGLE-style head for tree drafts and auto's head chains: our .safetensors or a LANTERN drafter "
            "folder (default with --model demo: demo-tree-head, the bundled one)"
        ),
    )
    group.add_argument(
        "--device",
        default="auto",
        help="where to run: auto (a CUDA GPU, else Apple MPS, else CPU), cpu, cuda, cuda:N or mps (default: auto)",
    )
    group.add_argument(
        "--compile",
        action=argparse.BooleanOptionalAction,
        default=False,
        help=(
            "run target and drafter forwards (and a tree head's, on GPUs) through torch.compile with static "
            "shapes (LlamaGen and the demo; needs a C compiler on CPUs; falls back to eager with a notice; "
            "default: off)"
        ),
    )
    group.add_argument(
        "--dtype",
        default="auto",
        choices=DTYPE_CHOICES,
        help="number format of the weights: auto is bf16 on GPUs that support it, else fp32 (default: auto)",
    )


def _add_conditioning_options(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("what to draw").add_mutually_exclusive_group()
    group.add_argument(
        "--class-id",
        dest="class_ids",
        metavar="N",
        type=_int_at_least(0),
        nargs="+",
        help=(
            "class number(s) for class-conditional models (ImageNet: 0..999); one per image, or one for all "
            "images (default: image i draws class i)"
        ),
    )
    group.add_argument(
        "--prompt",
        metavar="TEXT",
        help=(
            "what to draw, in words: for models that read text, or a class name for class-conditional models "
            "that know their class names"
        ),
    )


def _add_sampling_options(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("sampling (unset options take the model's defaults)")
    group.add_argument(
        "--cfg",
        type=float,
        metavar="F",
        help="classifier-free guidance scale: higher follows the class or prompt more closely; 1 turns guidance off",
    )
    group.add_argument(
        "--temperature", type=float, metavar="F", help="randomness of each token: below 1 is safer, above 1 wilder"
    )
    group.add_argument(
        "--top-k", type=_int_at_least(0), metavar="N", help="sample only among the N likeliest tokens (0: all)"
    )
    group.add_argument(
        "--top-p",
        type=float,
        metavar="F",
        help="sample only among the likeliest tokens that together hold this much probability (1: all)",
    )
    group.add_argument("--greedy", action="store_true", help="always take the likeliest token (no randomness)")
    group.add_argument(
        "--seed",
        type=int,
        metavar="N",
        help="random seed; the same seed and settings give the same images (default: 0)",
    )


def _add_method_options(parser: argparse.ArgumentParser) -> argparse._ArgumentGroup:
    group = parser.add_argument_group("speculative decoding")
    group.add_argument(
        "--policy",
        default="exact",
        choices=sorted(POLICIES),
        help="how drafts are accepted: exact keeps the output distribution identical to plain decoding; "
        "lantern, gsd, csd and (tree drafts only) cascade accept more drafts at a quality cost set by --relax "
        "(default: exact)",
    )
    group.add_argument(
        "--relax",
        type=float,
        default=None,
        metavar="F",
        help="relaxed policies: 0 = lossless (the exact policy's tokens), towards 1 = faster, less faithful "
        "(default: the policy's recommended setting from the benchmark, measured with one draft source: "
        + "; ".join(f"{name} {recommendation(name)}" for name in POLICIES if name != "exact")
        + ")",
    )
    group.add_argument(
        "--policy-option",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="experts: set a policy's native parameter, e.g. --policy-option tv_threshold=0.5 for csd "
        "(see each policy's class in engine/policies); repeatable",
    )
    group.add_argument(
        "--window",
        type=_int_at_least(1),
        default=None,
        metavar="N",
        help="Jacobi decoding: tokens fed to the target per forward, the pending one plus N-1 guesses "
        f"(default: {DEFAULTS.window})",
    )
    group.add_argument(
        "--q-init",
        default=None,
        choices=Q_CONVENTIONS,
        help=(
            "Jacobi decoding: how a fresh random guess is weighed when accepting it; both are exact (default: "
            "one_hot, as in SJD)"
        ),
    )
    group.add_argument(
        "--gamma",
        type=_int_at_least(1),
        default=None,
        metavar="N",
        help=f"drafter decoding: tokens the drafter proposes per target forward (default: {DEFAULTS.gamma})",
    )
    dynamic = TreeShape()
    group.add_argument(
        "--tree-top-k",
        type=_int_at_least(1),
        default=None,
        metavar="N",
        help=f"dynamic tree: children kept per node and nodes expanded per depth (default: {dynamic.top_k})",
    )
    group.add_argument(
        "--tree-depth",
        type=_int_at_least(1),
        default=None,
        metavar="N",
        help=f"dynamic tree: deepest draft, in tokens (default: {dynamic.depth})",
    )
    group.add_argument(
        "--tree-nodes",
        type=_int_at_least(1),
        default=None,
        metavar="N",
        help=f"dynamic tree: nodes verified per target forward (default: {dynamic.nodes})",
    )
    group.add_argument(
        "--tree-branching",
        default=None,
        metavar="B1,B2,...",
        help=f"static tree: children of every node at each depth (default: {','.join(map(str, dynamic.branching))})",
    )
    group.add_argument(
        "--tree-guidance",
        type=float,
        default=None,
        metavar="F",
        help=(
            "both trees: the CFG scale the head drafts with (default: the target's); higher makes the head's "
            "picks more "
            "specific to the condition (docs/benchmarks.md: measured with CASCADE, not a default); lossless either way"
        ),
    )
    return group


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="specar",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Speculative decoding for autoregressive image models: the same images as plain "
        "decoding, in fewer model forwards.",
        epilog="Run 'specar COMMAND --help' (generate, bench, pareto, forward-bench, train-head) for their options.",
    )
    parser.add_argument("--version", action="version", version=f"specar {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    gen = commands.add_parser(
        "generate",
        help="draw images and write them as a PNG",
        description="Draw images with speculative decoding and write them as one PNG grid.",
    )
    _add_model_options(gen)
    _add_conditioning_options(gen)
    _add_sampling_options(gen)
    drafting = _add_method_options(gen)
    drafting.add_argument(
        "--draft",
        choices=DRAFT_CHOICES,
        help=(
            "where guesses come from: none is plain one-token-at-a-time decoding, jacobi lets the model guess "
            "for itself, "
            "auto picks row-above Jacobi, --drafter or --tree-head and the number of guesses each step by costs "
            "measured on this machine, "
            "model uses --drafter, tree and tree-static let --tree-head draft a tree of guesses, drafter-tree lets "
            "--drafter draft a static tree (--tree-branching) (default: auto)"
        ),
    )
    drafting.add_argument(
        "--jacobi-init",
        default=None,
        choices=INITIALISATIONS,
        help=(
            "Jacobi decoding: first guess for a new position, a random token or the token one row above "
            "(default: random)"
        ),
    )
    drafting.add_argument(
        "--coupling",
        action="store_true",
        help="Jacobi decoding: MC-SJD coupled resampling, which keeps guesses stable between forwards",
    )
    out = gen.add_argument_group("output")
    out.add_argument(
        "--batch",
        type=_int_at_least(1),
        metavar="N",
        help="images drawn together (default: the number of --class-id values, else 1)",
    )
    out.add_argument(
        "--out",
        metavar="IMAGE.png",
        help="where to write the images, tiled into one PNG (give --out, --stats or both; a model without a VQ "
        "tokenizer writes tokens only, to --stats)",
    )
    out.add_argument(
        "--heatmap",
        metavar="HEAT.png",
        help=(
            "also write an acceptance heatmap, laid out like --out: grey = target only, green = accepted guess "
            "(brighter = longer accepted run), red = corrected, amber = bonus, black = not generated"
        ),
    )
    out.add_argument(
        "--compare", metavar="BOTH.png", help="also write each image beside its heatmap, with a colour legend"
    )
    out.add_argument(
        "--explain",
        metavar="WHY.png",
        help=(
            "also write why drafts were accepted: each image, its heatmap and a map of every quantity the relaxed "
            "policy decided on (csd: entropy and TV; lantern: neighbour mass; gsd: group size)"
        ),
    )
    out.add_argument(
        "--stats",
        metavar="STATS.json",
        help="also write the tokens, forward counts, acceptance rate, timings and settings as JSON",
    )
    out.add_argument("--quiet", action="store_true", help="print nothing but errors")
    cli_continuous.add_continuous_options(gen)
    gen.set_defaults(run=_generate)

    bench = commands.add_parser(
        "bench",
        help="compare plain decoding with speculative methods",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Time plain decoding and each method on the same images and seeds, in one process.\n"
        "Methods:\n"
        + "\n".join(f"  {name:<11} {text}" for name, text in {**METHOD_SUMMARIES, "ar2": SEED_SPREAD}.items()),
    )
    _add_model_options(bench)
    _add_conditioning_options(bench)
    _add_sampling_options(bench)
    _add_method_options(bench)
    runs = bench.add_argument_group("benchmark")
    runs.add_argument(
        "--methods",
        type=_listed,
        metavar="LIST",
        help=(
            f"comma-separated methods to compare with plain decoding (ar), which always runs; METHOD:POLICY=RELAX "
            f"gives a method its own acceptance policy, e.g. drafter,drafter:csd=0.5,drafter:lantern=0.25 sweeps the "
            f"speed/quality trade-off on the same images (default: {DEFAULT_BENCH_METHODS}, plus drafter when "
            "--drafter is given)"
        ),
    )
    runs.add_argument("--images", type=_int_at_least(1), default=8, metavar="N", help="images per method (default: 8)")
    runs.add_argument(
        "--batch",
        type=_batch_sizes,
        default=[1],
        metavar="N[,N...]",
        help=(
            "images per generate call; the call starting at image i uses seed + i; a list such as 1,4,16,64 runs the "
            "whole benchmark at each size, to show where speculation stops paying (default: 1)"
        ),
    )
    runs.add_argument(
        "--quality",
        action="store_true",
        help=(
            "also score every method's images (demo model only): class, colour and shape accuracy from the shipped "
            "classifier and FID-lite against real scenes; add ar2 to --methods for the AR seed-to-seed spread"
        ),
    )
    runs.add_argument("--json", metavar="OUT.json", help="also write every row of the table, and the settings, as JSON")
    runs.add_argument("--quiet", action="store_true", help="print only the table")
    sweep = bench.add_argument_group("speed/quality sweep (with --quality)")
    sweep.add_argument(
        "--sweep",
        metavar="POLICIES",
        help=(
            "run every method also with each of these relaxed policies (comma-separated, e.g. csd,gsd,lantern) at each "
            "--relax-steps value, on the same images"
        ),
    )
    sweep.add_argument(
        "--relax-steps", default="0.25,0.5,1", metavar="LIST", help="relaxations a sweep visits (default: 0.25,0.5,1)"
    )
    sweep.add_argument(
        "--plot",
        metavar="PARETO.png",
        help="write tokens per forward against FID-lite and class accuracy, with the AR seed spread",
    )
    sweep.add_argument("--table", metavar="PARETO.md", help="write the points as a Markdown table")
    cli_continuous.add_continuous_options(bench)
    bench.set_defaults(run=_lab_command("bench"))

    plot = commands.add_parser(
        "pareto",
        help="plot and tabulate the speed/quality points of saved benchmark runs",
        description="Combine 'specar bench --quality --json' files into one Pareto table and "
        "plot (runs with the same number of images; FID-lite depends on it).",
    )
    plot.add_argument("runs", nargs="+", metavar="RUN.json", help="benchmark results written by specar bench --json")
    plot.add_argument(
        "--images",
        type=_int_at_least(1),
        metavar="N",
        help="use the runs with N images (default: the largest count among the files)",
    )
    plot.add_argument("--plot", metavar="PARETO.png", help="write the plot")
    plot.add_argument("--table", metavar="PARETO.md", help="write the Markdown table (it is printed too)")
    plot.set_defaults(run=_lab_command("pareto"))

    timing = commands.add_parser(
        "forward-bench",
        help="time one target forward of 1, 4, 16 tokens and a 60-node tree",
        description="Time target forwards of real-size random-weight models (no download): "
        "what a given tokens-per-forward buys on this machine.",
    )
    timing.add_argument(
        "--models",
        default="janus-pro-1b,llamagen-xl",
        metavar="A,B",
        help="comma-separated: janus-pro-1b, janus-pro-7b, llamagen-xl, llamagen-xxl, llamagen-b, tiny-janus, "
        "tiny-llamagen (default: janus-pro-1b,llamagen-xl)",
    )
    timing.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N or mps (default: auto)")
    timing.add_argument(
        "--dtype",
        default="auto",
        choices=DTYPE_CHOICES,
        help="auto is bf16 on GPUs that support it, else fp32 (default: auto)",
    )
    timing.add_argument(
        "--context",
        type=_int_at_least(1),
        default=256,
        metavar="N",
        help="image tokens already cached when a block is timed (default: 256)",
    )
    timing.add_argument("--repeats", type=_int_at_least(1), default=20, metavar="N", help="timed forwards per shape")
    timing.add_argument("--table", metavar="TIMES.md", help="also write the Markdown table here")
    timing.add_argument(
        "--project",
        metavar="BENCH.json",
        help=(
            "a 'specar bench --batch 1 --json' file of the demo: print each method's projected speed-up on the timed "
            "models, its tokens per forward over the measured cost of the block it verifies (a projection)"
        ),
    )
    timing.add_argument(
        "--drafter-model",
        metavar="NAME",
        help=("with --project: also time this model (e.g. llamagen-b) as the drafter of the drafter methods"),
    )
    timing.set_defaults(run=_lab_command("forward_bench"))
    _add_train_head_parser(commands)
    return parser


def _add_train_head_parser(commands: argparse._SubParsersAction) -> None:
    head = commands.add_parser(
        "train-head",
        help="train an EAGLE-style tree head for a model on images it draws itself",
        description="Self-distillation as EAGLE and LANTERN do it: the model draws images for your classes or "
        "prompts, and a head of one decoder layer learns to predict its hidden states. The result, "
        "OUT/tree_head.safetensors, drafts with --draft tree --tree-head and in the Tree Head node.",
    )
    model = head.add_argument_group("model")
    model.add_argument("--model", metavar="NAME|PATH", default="demo", help="the target, as in generate")
    model.add_argument("--family", default="auto", choices=("auto", *FAMILIES), help="the model family (default: auto)")
    model.add_argument("--image-size", type=_int_at_least(16), metavar="PX", help="pixels per side (as in generate)")
    model.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N or mps (default: auto)")
    model.add_argument(
        "--dtype", default="auto", choices=DTYPE_CHOICES, help="the target's number format: auto is bf16 on GPUs"
    )
    draw = head.add_argument_group("what the model draws").add_mutually_exclusive_group()
    draw.add_argument(
        "--class-id",
        dest="class_ids",
        metavar="N",
        type=_int_at_least(0),
        nargs="+",
        help="classes to draw, in turn (class-conditional models; default: every class)",
    )
    draw.add_argument("--prompts", type=Path, metavar="FILE", help="a text file with one prompt per line, used in turn")
    data = head.add_argument_group("training")
    data.add_argument(
        "--images", type=_int_at_least(2), default=2000, metavar="N", help="images to draw (default: 2000)"
    )
    data.add_argument(
        "--steps", type=_int_at_least(1), default=3000, metavar="N", help="training steps (default: 3000)"
    )
    data.add_argument("--batch", type=_int_at_least(1), default=16, metavar="N", help="images per step (default: 16)")
    data.add_argument(
        "--draw-batch", type=_int_at_least(1), default=32, metavar="N", help="images drawn at once (default: 32)"
    )
    data.add_argument("--lr", type=float, default=3e-4, help="peak learning rate, cosine decay (default: 3e-4)")
    data.add_argument("--warmup", type=_int_at_least(0), default=100, metavar="N", help="warm-up steps (default: 100)")
    data.add_argument(
        "--val-images",
        type=_int_at_least(1),
        metavar="N",
        help="drawn images held out to measure agreement with the model (default: a tenth, at most 256)",
    )
    data.add_argument("--seed", type=_int_at_least(0), default=0, help="seeds the drawing and the training")
    data.add_argument(
        "--redundancy",
        type=float,
        metavar="TAU",
        help="CASCADE's variant: alternatives leaving the model's state at cosine >= TAU count as the real token",
    )
    data.add_argument(
        "--alternatives", type=_int_at_least(1), default=4, metavar="M", help="alternatives per position (--redundancy)"
    )
    data.add_argument(
        "--check-images",
        type=_int_at_least(0),
        default=4,
        metavar="N",
        help="held-out conditions the finished head drafts, to report its tokens per forward (0: none; default: 4)",
    )
    data.add_argument("--out", type=Path, default=Path("out/tree-head"), help="folder for data, checkpoint and head")
    data.add_argument("--resume", action="store_true", help="continue the training checkpoint in --out")
    data.add_argument(
        "--save-minutes", type=float, default=5.0, metavar="M", help="minutes between checkpoints (default: 5)"
    )
    head.set_defaults(run=_lab_command("train_head"))


# -- shared steps ---------------------------------------------------------------------------------


def use_bundled_drafter(args: argparse.Namespace, wanted: bool) -> None:
    """The demo target comes with its drafter: use it where a drafter is wanted and none was named."""
    if wanted and args.model == "demo" and args.drafter is None:
        args.drafter = "demo-drafter"


def load_target(args: argparse.Namespace) -> ImageTokenModel:
    model = load_model(args.model, args.device, args.dtype, args.vq, family=args.family, image_size=args.image_size)
    model.set_compile(args.compile)  # its drafter or tree head follows it (place_drafter, place_head)
    return model


def use_bundled_head(args: argparse.Namespace, wanted: bool) -> None:
    if wanted and args.model == "demo" and args.tree_head is None:
        args.tree_head = BUNDLED_HEAD


def load_tree_head(args: argparse.Namespace, target: ImageTokenModel) -> TreeHead | None:
    return resolve_tree_head(args.tree_head, target) if args.tree_head else None


def load_drafter(args: argparse.Namespace, target: ImageTokenModel) -> ImageTokenModel:
    """``--drafter``, loaded straight onto the target's device and in its dtype, and checked against it."""
    drafter = load_model(args.drafter, target.device, target.dtype, image_size=args.image_size)
    check_drafter_fits(target, drafter)
    return drafter


def method_options(
    args: argparse.Namespace, head: TreeHead | None = None, auto_head: bool = True, auto_drafter: bool = True
) -> MethodOptions:
    """The draft and policy knobs; a relaxed policy without --relax runs at its recommended setting.
    ``auto_head``, ``auto_drafter``: auto drafts with ``head`` and the drafter too (not where they were loaded
    only for the tree and drafter methods)."""
    relax = recommended_relaxation(args.policy) if args.relax is None else args.relax
    policy_options = tuple(parse_policy_options(args.policy_option).items())
    given = DEFAULTS.tree
    tree = TreeShape(
        top_k=given.top_k if args.tree_top_k is None else args.tree_top_k,
        depth=given.depth if args.tree_depth is None else args.tree_depth,
        nodes=given.nodes if args.tree_nodes is None else args.tree_nodes,
        guidance=args.tree_guidance,
    )
    branching = (
        DEFAULTS.tree_branching if args.tree_branching is None else TreeShape.parse_branching(args.tree_branching)
    )
    return MethodOptions(
        window=DEFAULTS.window if args.window is None else args.window,
        gamma=DEFAULTS.gamma if args.gamma is None else args.gamma,
        q_init=DEFAULTS.q_init if args.q_init is None else args.q_init,
        tree=tree,
        tree_branching=branching,
        tree_head=head,
        auto_head=auto_head,
        auto_drafter=auto_drafter,
        policy=args.policy,
        relaxation=relax,
        policy_options=policy_options,
    )


def sampling_settings(model: ImageTokenModel, args: argparse.Namespace) -> SamplingSettings:
    given = {
        "cfg_scale": args.cfg,
        "temperature": args.temperature,
        "top_k": args.top_k,
        "top_p": args.top_p,
        "seed": args.seed,
        "greedy": args.greedy or None,
    }
    return model.default_settings.with_(**{k: v for k, v in given.items() if v is not None})


def conditions_for(model: ImageTokenModel, class_ids: list[int] | None, prompt: str | None) -> ConditionFn:
    """Conditioning for images by index: class ids cycle, a prompt repeats, default image i -> class i."""
    kind = model.conditioning_kind
    if kind == "prompt":
        if prompt is None:
            raise SettingsError(f"{model.name} draws from text: give --prompt TEXT")
        return lambda indices: Conditioning(prompts=tuple(prompt for _ in indices))
    if kind != "class":
        raise SettingsError(
            f"{model.name} is conditioned on {kind} embeddings from a text encoder, "
            "which the command line cannot compute yet; use a class-conditional model"
        )
    ids = [class_for_prompt(model, prompt)] if prompt is not None else class_ids
    if ids:
        return lambda indices: Conditioning.classes([ids[i % len(ids)] for i in indices])
    count = model.num_classes or 1
    return lambda indices: Conditioning.classes([i % count for i in indices])


# -- generate -------------------------------------------------------------------------------------


def refuse_unused_knobs(args: argparse.Namespace, methods: list[str], used_by: str) -> None:
    """Refuse draft options that none of ``methods`` reads, rather than ignore them."""
    given = {knob for knob in KNOBS if getattr(args, knob, None) is not None}
    unused = [KNOB_OPTIONS[knob] for knob in unused_knobs(methods, given)]
    if unused:
        raise SettingsError(f"{', '.join(unused)} {'is' if len(unused) == 1 else 'are'} not used by {used_by}")


def _method(kind: str | None, args: argparse.Namespace) -> str:
    """The method ``--draft`` names: ``none`` is plain AR, ``model`` the drafter chain, ``jacobi``
    the SJD variant of ``--jacobi-init`` and ``--coupling``; the rest are registry names."""
    kind = kind or "auto"
    if kind == "jacobi":
        return jacobi_method(args.jacobi_init or "random", args.coupling)
    if args.jacobi_init is not None or args.coupling:
        raise SettingsError(
            f"--jacobi-init and --coupling choose the Jacobi variant; they are not used by --draft {kind}"
        )
    return {"none": "ar", "model": "drafter"}.get(kind, kind)


def _checked_method(args: argparse.Namespace) -> str:
    method = _method(args.draft, args)
    kind = DRAFTS.get(method)
    if args.tree_head and (kind is None or not kind.uses_head):
        raise SettingsError(
            f"--tree-head is only used with --draft tree, tree-static or auto, not with --draft {args.draft}"
        )
    if kind is not None and kind.needs == "drafter" and not args.drafter:
        raise SettingsError(f"--draft {args.draft} needs --drafter PATH (a small model of the same family)")
    if args.drafter and (kind is None or not kind.takes_drafter):
        raise SettingsError(
            f"--drafter is only used with --draft model, drafter-tree or auto, not with --draft {args.draft}"
        )
    return method


def _batch_size(args: argparse.Namespace) -> int:
    ids = args.class_ids or []
    batch = args.batch or len(ids) or 1
    if len(ids) > 1 and len(ids) != batch:
        raise SettingsError(
            f"--class-id got {len(ids)} classes for --batch {batch}: give one per image, or one for all"
        )
    return batch


def _generate(args: argparse.Namespace) -> int:
    check_outputs(args)
    require_an_output(args)
    if is_continuous(args.model, args.family):
        return cli_continuous.generate(args)
    wanted = DRAFTS.get(_method(args.draft, args))
    use_bundled_drafter(args, wanted is not None and wanted.needs == "drafter")  # auto takes one only when named
    use_bundled_head(args, wanted is not None and wanted.needs == "tree head")  # auto takes a head only when named
    method = _checked_method(args)
    refuse_unused_knobs(args, [method], "plain decoding" if method == "ar" else f"the {method} draft")
    refuse_continuous_options(args)
    batch = _batch_size(args)
    method_options(args)  # bad settings fail before the model loads
    model = load_target(args)
    refuse_pictures_without_pixels(args, model)
    drafter = load_drafter(args, model) if args.drafter else None
    options = method_options(args, load_tree_head(args, model))
    policy = options.make_policy(model)
    check_policy_fits(policy, method)
    settings = sampling_settings(model, args)
    cond = conditions_for(model, args.class_ids, args.prompt)(range(batch))
    model.check_conditioning(cond)
    progress = ProgressBar(enabled=not args.quiet)
    with StopOnInterrupt() as stop:

        def observer(event: StepEvent) -> bool:
            progress(event)
            return not stop.requested

        try:
            result = generate(model, cond, settings, make_method_draft(method, options, drafter), policy, observer)
        except NonFiniteOutputError as failed:  # keep what was decoded before it, then report
            progress.finish()
            write_pictures(args, model, failed.result)
            raise
    progress.finish(summary_line(result))
    if result.draft_summary and not args.quiet:
        print(result.draft_summary, file=sys.stderr)
    compiling = compile_seconds(model, drafter, options.tree_head)
    if compiling and not args.quiet:
        print(f"compiled forwards: {compiling:.1f} s of this run was compiling (first calls only)", file=sys.stderr)
    if args.stats:
        write_json(
            args.stats,
            {
                **_stats(
                    result,
                    method,
                    DRAFTS[method].record(options) if method in DRAFTS else {},
                    args.policy,
                    model,
                    drafter,
                    cond,
                    settings,
                    compiling,
                ),
                "relaxation": options.relaxation,
                "policy_options": dict(options.policy_options),
                "policy_parameters": policy.parameters(),
            },
        )
    write_pictures(args, model, result)
    if not result.finished:
        done, total = int(result.committed.sum()), result.tokens.numel()
        print(f"interrupted: wrote the {done} of {total} tokens decoded so far (black where none)", file=sys.stderr)
        return EXIT_INTERRUPTED
    return 0


def _stats(
    result: GenerationResult,
    method: str,
    method_options: dict[str, object],
    policy: str,
    model: ImageTokenModel,
    drafter: ImageTokenModel | None,
    cond: Conditioning,
    settings: SamplingSettings,
    compiling: float,
) -> dict[str, object]:
    """The result's own stats plus everything needed to reproduce it (``compiling``: seconds of it spent
    compiling)."""
    conditioning = (
        {"class_ids": list(cond.class_ids)} if cond.class_ids is not None else {"prompts": list(cond.prompts or ())}
    )
    return {
        **result.stats(),
        "method": method,
        "method_options": method_options,
        "policy": policy,
        "model": model.name,
        "drafter": drafter.name if drafter else None,
        "conditioning": conditioning,
        "settings": asdict(settings),
        "device": str(model.device),
        "dtype": dtype_name(model),
        "compile_seconds": round(compiling, 2),
    }


def dtype_name(model: ImageTokenModel) -> str:
    return str(model.dtype).removeprefix("torch.")


# -- entry point ----------------------------------------------------------------------------------


def _lab_command(name: str) -> Callable[[argparse.Namespace], int]:
    """The handler of a lab command, imported when that command runs (sampling never loads the lab)."""

    def run(args: argparse.Namespace) -> int:
        from .lab import commands

        return int(getattr(commands, name)(args))

    return run


def main(argv: Sequence[str] | None = None) -> int:
    """Run the ``specar`` command; returns the exit code (2: bad input, 130: interrupted)."""
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # --help, --version or a usage error that argparse already printed
        return int(exc.code or 0)
    try:
        return int(args.run(args))
    except SpecARError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED


if __name__ == "__main__":
    raise SystemExit(main())
