"""Loader nodes: the target model, and a drafter model or a tree head as a draft source."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any

from ..engine.continuous.registry import DEMO_ROLES, is_continuous, load_continuous_model
from ..engine.continuous.session import is_continuous_model
from ..engine.drafts.drafter_tree import DEFAULT_BRANCHING
from ..engine.drafts.tree_drafts import TreeShape, branching_label
from ..engine.drafts.tree_head import BUNDLED_HEAD, resolve_tree_head
from ..engine.errors import SettingsError
from ..engine.models.base import ImageTokenModel
from ..engine.models.registry import (
    BUNDLED,
    DTYPE_CHOICES,
    FAMILIES,
    check_image_size,
    find_models,
    load_model,
    resolve_dtype,
)
from ..engine.session import DraftRecipe
from .host import Host
from .schema import BOOLEAN, CHOICE, COMBO, DRAFT, FLOAT, INT, MODEL, STRING, Case, Field, NodeSpec, Output

BUNDLED_TARGET, BUNDLED_DRAFTER = "demo", "demo-drafter"
BUNDLED_MAR, BUNDLED_MAR_DRAFTER = "mar-demo", "mar-demo-drafter"
_BRANCHING = branching_label(DEFAULT_BRANCHING, sep=",", repeat="*")  # "2,2,1*30", as the node shows it


def target_choices(folders: list[Path]) -> list[str]:
    return [BUNDLED_TARGET, BUNDLED_MAR, *find_models(folders)]


def drafter_choices(folders: list[Path]) -> list[str]:
    return [BUNDLED_DRAFTER, BUNDLED_MAR_DRAFTER, *find_models(folders)]


def load(host: Host, choice: str, dtype: str, family: str = "auto", image_size: int = 0) -> ImageTokenModel:
    """Load a bundled model or one from the model folders onto the offload device; the sampler has the
    host load it onto the compute device (ComfyUI: its model management, which keeps it there between
    runs while memory allows). Continuous-token (MAR)
    models come back as :class:`specar.continuous.model.MARTokenModel`, which the sampler knows."""
    found = find_models(host.model_folders())
    bundled = choice in BUNDLED or choice in DEMO_ROLES
    if not bundled and choice not in found:
        folders = ", ".join(str(folder) for folder in host.model_folders()) or "models/specar"
        raise SettingsError(
            f"model {choice!r} is not among the bundled models or those in {folders}: put each checkpoint in "
            "models/specar/<name>/ (or a single weights file there) and refresh the node"
        )
    spec: str | Path = choice if bundled else found[choice]
    if is_continuous(spec, family):
        check_image_size("a MAR model", image_size or None)
        return load_continuous_model(spec, host.offload_device())
    return load_model(
        spec, host.offload_device(), resolve_dtype(dtype, host.device()), family=family, image_size=image_size or None
    )


def _load_target(
    host: Host, model: str, dtype: str, family: str, image_size: int, compile: bool
) -> tuple[ImageTokenModel]:
    loaded = load(host, model, dtype, family, image_size)
    if compile:
        if is_continuous_model(loaded):
            raise SettingsError(
                "compiled forwards serve token models (LlamaGen, the demo); MAR models run eagerly: switch compile off"
            )
        loaded.set_compile(True)
    return (loaded,)


def _load_drafter(host: Host, drafter: str, dtype: str, shape: dict[str, Any]) -> tuple[DraftRecipe]:
    model = load(host, drafter, dtype)
    kind = DRAFTER_SHAPE.case(shape["shape"]).key
    if kind == "chain":
        return (DraftRecipe("drafter", gamma=shape["gamma"], drafter=model),)
    if is_continuous_model(model):
        raise SettingsError("a MAR drafter drafts continuous tokens as a chain (CSpD): set shape to chain")
    if kind == "auto":
        return (DraftRecipe("auto", drafter=model),)
    tree = TreeShape(kind="static", branching=TreeShape.parse_branching(shape["branching"]))
    return (DraftRecipe("drafter-tree", drafter=model, tree=tree),)


def head_choices(folders: list[Path]) -> list[str]:
    return [BUNDLED_HEAD, *find_models(folders)]


def _load_tree_head(host: Host, head: str, tree: dict[str, Any]) -> tuple[DraftRecipe]:
    located = head if head == BUNDLED_HEAD else find_models(host.model_folders()).get(head) or Path(head)
    kind = HEAD_TREE.case(tree["tree"]).key
    if kind == "auto":
        return (DraftRecipe("auto", tree_head=resolve_tree_head(located)),)
    if kind == "dynamic":
        shape = TreeShape(kind=kind, top_k=tree["top_k"], depth=tree["depth"], nodes=tree["nodes"])
    else:
        shape = TreeShape(kind=kind, branching=TreeShape.parse_branching(tree["branching"]))
    shape = replace(shape, guidance=tree["guidance"] or None)
    loaded = resolve_tree_head(located)
    return (DraftRecipe("tree" if kind == "dynamic" else "tree-static", tree_head=loaded, tree=shape),)


_DTYPE_FIELD = Field(
    "dtype",
    COMBO,
    "number format of the weights: auto is bf16 on GPUs that support it, else fp32",
    default="auto",
    options=DTYPE_CHOICES,
)

LOAD_MODEL = NodeSpec(
    node_id="SpecARModelLoader",
    display_name="SpecAR Load Model",
    search_aliases=(
        "speculative decoding",
        "autoregressive image model",
        "LlamaGen",
        "Janus-Pro",
        "Lumina-mGPT",
        "Emu3",
        "MAR",
    ),
    description="Loads an autoregressive image model: 'demo' is the small bundled model (no download), 'mar-demo' its "
    "continuous-token (MAR) counterpart; other entries are files and model directories in "
    "ComfyUI/models/specar/ (LlamaGen, Janus-Pro, Lumina-mGPT, Anole, Emu3-Gen, MAR; see the README for "
    "each family's folder layout).",
    inputs=(
        Field(
            "model",
            COMBO,
            "the bundled demo, or a weights file / model directory from models/specar/",
            default=BUNDLED_TARGET,
            options=target_choices,
        ),
        _DTYPE_FIELD,
        Field(
            "family",
            COMBO,
            "the model family; auto reads it from the folder's config.json",
            default="auto",
            options=("auto", *FAMILIES, "mar"),
        ),
        Field(
            "image_size",
            INT,
            "pixels per side for families that draw several sizes (Lumina-mGPT: multiples of 32; Anole: of 16; "
            "Emu3: of 8); 0 takes the checkpoint's usual size, the only one the others draw",
            default=0,
            min=0,
            max=4096,
            step=16,
        ),
        Field(
            "compile",
            BOOLEAN,
            "run the model's forwards, its drafter's, and on GPUs its tree head's, through torch.compile "
            "(LlamaGen and the demo; others stay eager): each new block size compiles once on first use; whether "
            "it is faster depends on the machine (docs/benchmarks.md); without a C compiler it stays eager with a "
            "notice",
            default=False,
        ),
    ),
    outputs=(Output(MODEL, "model", "the target model, for SpecAR Sampler and SpecAR Compare"),),
    run=_load_target,
)

DRAFTER_SHAPE = Field(
    "shape",
    CHOICE,
    "chain: one line of gamma guesses; static tree: a tree of sampled guesses (branching), which the cascade "
    "policy relaxes (README, tree section); auto: every few forwards this drafter or row-above Jacobi, and the "
    "number of guesses, whichever commits the most tokens per second on this machine",
    default="chain",
    cases=(
        Case(
            "chain",
            (
                Field(
                    "gamma",
                    INT,
                    "tokens the drafter proposes per target forward (MAR: draft steps per target pass at "
                    "relaxation 0; the cspd policy's relaxation lengthens the runs)",
                    default=6,
                    min=1,
                    max=32,
                ),
            ),
        ),
        Case(
            "static tree",
            (
                Field(
                    "branching",
                    STRING,
                    "children of every node at each depth; B*N repeats B for N depths (2,2,1*30: four paths of 32 "
                    "guesses)",
                    default=_BRANCHING,
                ),
            ),
        ),
        Case("auto"),
    ),
)

DRAFTER_MODEL = NodeSpec(
    node_id="SpecARDrafterModel",
    display_name="SpecAR Drafter Model",
    search_aliases=("draft model", "speculative decoding", "small model drafts", "CSpD"),
    description="Speculative decoding with a small drafter model of the same family: it proposes gamma tokens, the "
    "target checks them all in one forward. Lossless with the exact policy. With a continuous (MAR) "
    "target this is CSpD: the drafter runs gamma MAR steps, one target pass verifies them.",
    inputs=(
        Field(
            "drafter",
            COMBO,
            "a small model with the same vocabulary and token grid as the target",
            default=BUNDLED_DRAFTER,
            options=drafter_choices,
        ),
        _DTYPE_FIELD,
        DRAFTER_SHAPE,
    ),
    outputs=(Output(DRAFT, "draft", "a draft source for the sampler"),),
    run=_load_drafter,
)

_DYNAMIC = TreeShape()

_GUIDANCE = Field(
    "guidance",
    FLOAT,
    "the CFG scale the head drafts with; 0 = the sampler's. Higher makes the head's picks more specific to the "
    "prompt (docs/benchmarks.md: measured with cascade, not a default); lossless with exact",
    default=0.0,
    min=0.0,
    max=20.0,
    step=0.5,
)

HEAD_TREE = Field(
    "tree",
    CHOICE,
    "dynamic grows the tree where the head is confident; static always drafts the same shape; auto: every few "
    "forwards a chain from this head or row-above Jacobi, and the number of guesses, whichever commits the most "
    "tokens per second on this machine",
    default="dynamic",
    cases=(
        Case(
            "dynamic",
            (
                Field("top_k", INT, "children kept per node and nodes expanded per depth", _DYNAMIC.top_k, 1, 32),
                Field("depth", INT, "deepest guess, in tokens", default=_DYNAMIC.depth, min=1, max=16),
                Field("nodes", INT, "guesses checked per target forward", default=_DYNAMIC.nodes, min=1, max=256),
                _GUIDANCE,
            ),
        ),
        Case(
            "static",
            (
                Field(
                    "branching",
                    STRING,
                    "children of every node at each depth, e.g. 4,2,2,1,1,1; B*N repeats B for N depths",
                    default=",".join(map(str, _DYNAMIC.branching)),
                ),
                _GUIDANCE,
            ),
        ),
        Case("auto"),
    ),
)

TREE_HEAD = NodeSpec(
    node_id="SpecARTreeHead",
    display_name="SpecAR Tree Head Drafts",
    search_aliases=("EAGLE", "LANTERN", "draft tree", "draft head"),
    description="An EAGLE-style head reads the target's own hidden states and drafts a whole tree of guesses, which "
    "the target checks in one forward. dynamic grows the tree where the head is confident (EAGLE-2, "
    "LANTERN); static always drafts the same shape with sampled children (LANTERN++). Lossless with the "
    "exact policy; cascade (and clusters) relax it, best on a deep tree (depth 16, 80 nodes in the README).",
    inputs=(
        Field(
            "head",
            COMBO,
            "the bundled demo head, our .safetensors head or a LANTERN drafter folder from models/specar/",
            default=BUNDLED_HEAD,
            options=head_choices,
        ),
        HEAD_TREE,
    ),
    outputs=(Output(DRAFT, "draft", "a draft source for the sampler"),),
    run=_load_tree_head,
)
