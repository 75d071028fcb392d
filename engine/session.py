"""One sampling job as a host application asks for it: what to draw, how to draft, how to accept.

ComfyUI nodes (and scripts) describe a job with two small recipes that travel between nodes,
:class:`DraftRecipe` and :class:`PolicyRecipe`, and call :func:`run_job`, which returns pictures
ready to show (float RGB in 0..1, as ComfyUI's IMAGE) and a short stats line. Draft sources and
policies hold per-call state, so recipes build fresh ones for every call.
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass

import numpy as np
import torch

from .compile import compile_seconds
from .continuous.types import CONTINUOUS_POLICIES
from .drafts import DRAFTS, DraftOptions, check_policy_fits, make_draft
from .drafts.base import DraftSource
from .drafts.drafter import place_drafter
from .drafts.tree_drafts import TreeShape
from .drafts.tree_head import TreeHead
from .errors import SettingsError
from .explain import explanation
from .heatmap import acceptance_heatmap, committed_mask
from .loop import generate, step_bytes
from .models.base import ImageTokenModel
from .policies import POLICIES, AcceptancePolicy, ExactPolicy, make_policy
from .progress import summary_line
from .regions import mask_to_token_weights
from .types import Conditioning, GenerationResult, Observer, SamplingSettings


@dataclass(frozen=True)
class DraftRecipe:
    """Where drafts come from: ``method`` is a :data:`specar.drafts.DRAFTS` name, or ``ar`` for none."""

    method: str = "ar"
    window: int = 16
    gamma: int = 6
    q_init: str = "one_hot"
    drafter: ImageTokenModel | None = None
    tree_head: TreeHead | None = None
    tree: TreeShape = TreeShape()  # the tree of methods "tree" (dynamic), "tree-static" and "drafter-tree"

    def options(self) -> DraftOptions:
        return DraftOptions(
            self.window,
            self.gamma,
            self.q_init,
            tree=self.tree,
            tree_branching=self.tree.branching,
            tree_head=self.tree_head,
        )

    def build(self, target: ImageTokenModel) -> DraftSource | None:
        if self.method == "ar":
            return None
        if self.drafter is not None:
            place_drafter(target, self.drafter)
        return make_draft(self.method, self.options(), self.drafter)

    def step_bytes(self, target: ImageTokenModel, batch: int) -> int:
        """Memory one step of ``batch`` images needs for its distributions (the loop's own estimate), so a
        host can make room before the run."""
        source = None if self.method == "ar" else make_draft(self.method, self.options(), self.drafter)
        return step_bytes(batch, 1 + (source.largest_block if source is not None else 0), target.vocab_size)

    def describe(self) -> str:
        if self.method == "ar":
            return "plain AR"
        return DRAFTS[self.method].label(self.options(), self.drafter.name if self.drafter else "")


@dataclass(frozen=True)
class PolicyRecipe:
    """How drafts are accepted: a policy name, a relaxation in 0..1, an optional pixel mask
    (``[H, W]`` or ``[B, H, W]``) that scales the relaxation per region, and the policy's native
    parameters for experts (``(("tv_threshold", 0.5),)``)."""

    name: str = "exact"
    relaxation: float = 0.0
    mask: torch.Tensor | None = None
    options: tuple[tuple[str, float], ...] = ()

    def build(self, target: ImageTokenModel) -> AcceptancePolicy:
        """The policy; at relaxation 0 every policy accepts exactly as :class:`ExactPolicy` does (bit for bit),
        so it runs as that, without its per-step work."""
        if self.name not in POLICIES and self.name in CONTINUOUS_POLICIES:
            raise SettingsError(
                f"the {self.name} policy accepts continuous (MAR) tokens and {target.name} draws discrete ones: "
                f"pick one of {', '.join(POLICIES)}"
            )
        if self.relaxation == 0 and self.name in POLICIES:
            return ExactPolicy()
        region = mask_to_token_weights(self.mask, target.grid) if self.mask is not None else None
        return make_policy(self.name, self.relaxation, region, model=target, **dict(self.options))

    def describe(self) -> str:
        if self.relaxation == 0:
            return "exact" if self.name == "exact" else f"{self.name} at 0 (exact)"
        masked = ", masked" if self.mask is not None else ""
        return f"{self.name} (relaxation {self.relaxation:g}{masked})"


def class_for_prompt(model: ImageTokenModel, prompt: str) -> int:
    """The class whose name (or one of its comma-separated aliases) is ``prompt``, ignoring case."""
    names: list[str] | None = getattr(model, "class_names", None)
    if not names:
        raise SettingsError(
            f"{model.name} takes class numbers and does not know class names: give a class number "
            f"0..{(model.num_classes or 1) - 1} (--class-id on the command line) instead of {prompt!r}"
        )
    wanted = prompt.strip().lower()
    for index, name in enumerate(names):
        if wanted == name.strip().lower() or wanted in (alias.strip().lower() for alias in name.split(",")):
            return index
    close = difflib.get_close_matches(prompt, names, n=3)
    hint = f" Did you mean {' or '.join(repr(c) for c in close)}?" if close else ""
    raise SettingsError(f"{model.name} has no class named {prompt!r}.{hint} Class names: {', '.join(names)}.")


def conditioning_for(model: ImageTokenModel, prompt: str, batch: int) -> Conditioning:
    """``batch`` images of ``prompt``: text for text models; a class name or number for class models."""
    if batch < 1:
        raise SettingsError(f"batch size must be >= 1, got {batch}")
    kind = model.conditioning_kind
    if kind == "prompt":
        return Conditioning(prompts=tuple(prompt for _ in range(batch)))
    if kind != "class":
        raise SettingsError(
            f"{model.name} is conditioned on {kind} embeddings from a text encoder, which SpecAR "
            "cannot compute yet; use a class-conditional model"
        )
    text = prompt.strip()
    class_id = int(text) if text.isdigit() else class_for_prompt(model, text)
    count = model.num_classes or 1
    if class_id >= count:
        raise SettingsError(f"{model.name} has classes 0..{count - 1}, not {class_id}")
    return Conditioning.classes([class_id] * batch)


@dataclass
class JobOutput:
    result: GenerationResult
    images: torch.Tensor  # float [B, H, W, 3] in 0..1 (black where interrupted before a token)
    heatmaps: torch.Tensor  # float [B, H, W, 3] in 0..1, acceptance per token at image size
    explanation: torch.Tensor  # float [1, H', W', 3]: images, heatmaps and what the policy decided on
    summary: str  # one line: forwards, tokens per forward, acceptance, seconds


def as_float(images: torch.Tensor) -> torch.Tensor:
    """``uint8 [B, H, W, 3]`` -> float in 0..1, the IMAGE format of ComfyUI."""
    return images.float() / 255.0


def run_job(
    model: ImageTokenModel,
    prompt: str,
    batch: int,
    settings: SamplingSettings,
    draft: DraftRecipe | None = None,
    policy: PolicyRecipe | None = None,
    observer: Observer | None = None,
) -> JobOutput:
    """Draw ``batch`` images of ``prompt`` and return them with heatmaps and a stats line."""
    draft, policy = draft or DraftRecipe(), policy or PolicyRecipe()
    model.require_pixels()
    cond = conditioning_for(model, prompt, batch)
    acceptance = policy.build(model)
    check_policy_fits(acceptance, draft.method)
    source = draft.build(model)  # refuses a drafter that cannot draft for this model
    compiling = compile_seconds(model, draft.drafter, draft.tree_head)
    result = generate(model, cond, settings, source, acceptance, observer)
    summary = summary_line(result, f"{draft.describe()}, policy {policy.describe()}")
    compiling = compile_seconds(model, draft.drafter, draft.tree_head) - compiling
    if compiling:
        summary += f" | {compiling:.1f} s of it compiling (a block size's first use)"
    if result.draft_summary:
        summary += "\n" + result.draft_summary
    return job_output(model, result, summary)


def job_output(model: ImageTokenModel, result: GenerationResult, summary: str) -> JobOutput:
    """Pixels (black where an interrupted run decided nothing), heatmaps and the explanation of ``result``."""
    pixels = model.decode(result.tokens)
    size = (int(pixels.shape[1]), int(pixels.shape[2]))
    if not result.finished:
        pixels = pixels * committed_mask(result.kinds, model.grid, size)[..., None]
    heatmaps = acceptance_heatmap(result, model.grid, size)
    why = torch.from_numpy(np.array(explanation(pixels, result, model.grid)))[None]
    return JobOutput(result, as_float(pixels), as_float(heatmaps), as_float(why), summary)
