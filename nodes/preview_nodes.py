"""The relaxation preview: one seed drawn at several relaxations, side by side, to pick a setting by eye."""

from __future__ import annotations

import math

import numpy as np
import torch

from ..engine.continuous.session import is_continuous_model
from ..engine.errors import SettingsError
from ..engine.heatmap import relaxation_sheet
from ..engine.models.base import ImageTokenModel
from ..engine.policies import POLICIES
from ..engine.session import DraftRecipe, JobOutput, PolicyRecipe
from .decoding_nodes import DEFAULT_POLICY
from .host import Host
from .sampler_nodes import SAMPLING_FIELDS, as_uint8, decode_job, sampling_settings
from .schema import COMBO, DRAFT, IMAGE, MODEL, STRING, Field, NodeSpec, Output

RELAXED_POLICIES = tuple(name for name in POLICIES if name != "exact")
MAX_SETTINGS = 8  # columns in one picture


def parse_relaxations(text: str) -> list[float]:
    """``"0.25, 0.5, 1"`` -> ``[0.0, 0.25, 0.5, 1.0]``: distinct values in 0..1, in order, led by 0 (the
    lossless reference every other setting is measured against)."""
    values: list[float] = []
    for part in (p.strip() for p in text.replace(";", ",").split(",")):
        if not part:
            continue
        try:
            value = float(part)
        except ValueError:
            raise SettingsError(f"relaxations are numbers from 0 to 1 separated by commas; {part!r} is not one")
        if not (math.isfinite(value) and 0.0 <= value <= 1.0):
            raise SettingsError(f"relaxations lie between 0 and 1; got {part}")
        if value not in values:
            values.append(value)
    values = [0.0, *sorted(v for v in values if v != 0.0)]
    if len(values) > MAX_SETTINGS:
        raise SettingsError(f"at most {MAX_SETTINGS} relaxations fit one picture (0 included); got {len(values)}")
    return values


def _preview(
    host: Host,
    model: ImageTokenModel,
    policy: str,
    relaxations: str,
    prompt: str,
    seed: int,
    cfg: float,
    temperature: float,
    top_k: int,
    draft: DraftRecipe | None = None,
) -> tuple[torch.Tensor, str]:
    if is_continuous_model(model):
        raise SettingsError("the relaxation preview serves token models; compare CSpD settings with SpecAR Compare")
    if policy not in RELAXED_POLICIES:
        raise SettingsError(f"unknown relaxed policy {policy!r}; available: {', '.join(RELAXED_POLICIES)}")
    settings = sampling_settings(model, seed, cfg, temperature, top_k)
    draft = draft or DraftRecipe("auto")
    levels = parse_relaxations(relaxations)
    decode_job(host, model, prompt, 1, settings, draft, PolicyRecipe(policy, 0.0))  # warm-up, not timed
    jobs: list[JobOutput] = [
        decode_job(host, model, prompt, 1, settings, draft, PolicyRecipe(policy, level)) for level in levels
    ]
    reference = jobs[0].result
    captions, lines = [], []
    for level, job in zip(levels, jobs):
        result = job.result
        fewer = reference.target_forwards / max(result.target_forwards, 1)
        faster = reference.wall_seconds / max(result.wall_seconds, 1e-9)
        name = "0, lossless" if level == 0 else f"{level:g}"
        captions.append(f"{name}\n{result.target_forwards} forwards\n{fewer:.2f}x fewer, {faster:.2f}x time")
        lines.append(f"relaxation {level:g}: {job.summary.splitlines()[0]}")
    note = f"{policy}, seed {seed}, {draft.describe()}; speed against relaxation 0 in this run"
    images = as_uint8(torch.cat([job.images for job in jobs]))
    heatmaps = as_uint8(torch.cat([job.heatmaps for job in jobs]))
    picture = relaxation_sheet(images, heatmaps, captions, note)
    host.progress(1, 1, picture)  # the node's preview ends on the result
    return torch.from_numpy(np.array(picture)).float()[None] / 255.0, "\n".join(lines)


RELAXATION_PREVIEW = NodeSpec(
    node_id="SpecARRelaxationPreview",
    display_name="SpecAR Relaxation Preview",
    search_aliases=("relaxation sweep", "pick relaxation", "quality against speed"),
    description="Draws one image of the same seed at several relaxations of one policy and shows each above its "
    "acceptance heatmap, with the target forwards and time it took against relaxation 0 (lossless): pick a "
    "relaxation by eye, then set it on SpecAR Acceptance Policy.",
    inputs=(
        Field("model", MODEL, "from SpecAR Load Model (token models; MAR: use SpecAR Compare)"),
        Field(
            "policy",
            COMBO,
            "the relaxed acceptance policy to preview",
            default=DEFAULT_POLICY,
            options=RELAXED_POLICIES,
        ),
        Field(
            "relaxations",
            STRING,
            f"relaxations to draw, 0 to 1, separated by commas (0, the lossless reference, is always drawn; at "
            f"most {MAX_SETTINGS})",
            default="0, 0.25, 0.5, 0.75, 1",
        ),
        *(f for f in SAMPLING_FIELDS if f.name != "batch_size"),
        Field(
            "draft",
            DRAFT,
            "from SpecAR Jacobi Drafts, SpecAR Drafter Model or SpecAR Tree Head Drafts (none: auto)",
            optional=True,
        ),
    ),
    outputs=(
        Output(IMAGE, "preview", "one column per relaxation: the image over its heatmap, forwards and time"),
        Output(STRING, "stats", "each relaxation's forwards, tokens per forward, acceptance and seconds"),
    ),
    run=_preview,
    needs_node_id=True,
)
