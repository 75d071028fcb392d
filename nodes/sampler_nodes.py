"""The sampler and the AR-versus-speculative comparison: the nodes that actually decode."""

from __future__ import annotations

import statistics
import time
import uuid

import numpy as np
import torch
from PIL import Image

from ..engine.continuous.session import is_continuous_model, run_continuous_job
from ..engine.continuous.types import ContinuousSettings
from ..engine.heatmap import committed_mask, comparison
from ..engine.live import HeatmapFrames
from ..engine.models.base import ImageTokenModel
from ..engine.session import DraftRecipe, JobOutput, PolicyRecipe, run_job
from ..engine.errors import SettingsError
from ..engine.types import SamplingSettings, StepEvent
from .host import Host
from .schema import DRAFT, FLOAT, IMAGE, INT, MODEL, POLICY, STRING, Field, NodeSpec, Output

HEATMAP_EVENT = "specar.heatmap"  # the web widget listens for this message type
PREVIEW_INTERVAL = 0.5  # seconds between partial-image previews (decoding one costs a little)
MAX_SIDE = 4096  # pixels: the largest side an enlarged output may have


class LiveReport:
    """The loop's observer inside a node: interrupts, progress with previews, heatmap frames."""

    def __init__(self, host: Host, model: ImageTokenModel) -> None:
        self.host, self.model = host, model
        self.frames = HeatmapFrames(model.grid, run=uuid.uuid4().hex[:12])
        self.last_preview = float("-inf")
        self.last_event: StepEvent | None = None

    def __call__(self, event: StepEvent) -> bool:
        if self.host.interrupted():
            return False
        self.last_event = event
        preview = None
        if time.monotonic() - self.last_preview >= PREVIEW_INTERVAL:
            preview = self.preview(event)
            self.last_preview = time.monotonic()
        self.host.progress(int(event.committed.min()), event.total_tokens, preview)
        self.send(self.frames.frame(event))
        return True

    def preview(self, event: StepEvent) -> Image.Image:
        """The first image as decoded so far (black where no token is committed yet)."""
        pixels = self.model.decode(event.tokens[:1])
        size = (int(pixels.shape[1]), int(pixels.shape[2]))
        mask = committed_mask(event.kinds[:1], self.model.grid, size)
        return Image.fromarray((pixels * mask[..., None])[0].numpy())

    def finish(self, error: str | None = None) -> None:
        """The run's last frame, so the widget never stays on "sampling…": the final state, and why a run
        that raised stopped (a frame without cells when it stopped before the first step)."""
        frame = self.frames.frame(self.last_event, final=True) if self.last_event is not None else None
        if error is not None:
            frame = {**(frame or {"run": self.frames.run, "done": True}), "error": error}
        self.send(frame)

    def send(self, frame: dict[str, object] | None) -> None:
        if frame is not None and self.host.node_id is not None:
            self.host.send(HEATMAP_EVENT, {"node": str(self.host.node_id), **frame})


def load_for_run(host: Host, model: ImageTokenModel, draft: DraftRecipe, batch: int) -> None:
    """The target and every model its drafts come from, on the host's compute device together, with room
    for one step's distributions (the loop's own memory check then finds it free)."""
    models = [model, *(m for m in (draft.drafter, draft.tree_head) if m is not None)]
    host.load(models, working_bytes=0 if is_continuous_model(model) else draft.step_bytes(model, batch))


def sampling_settings(
    model: ImageTokenModel, seed: int, cfg: float, temperature: float, top_k: int
) -> SamplingSettings | ContinuousSettings:
    """The model's defaults with the node's knobs; temperature 0 means greedy decoding (discrete models;
    continuous ones need a temperature above 0 and have no top-k)."""
    if is_continuous_model(model):
        return model.default_settings.with_(cfg_scale=cfg, temperature=temperature, seed=seed)
    greedy = temperature == 0
    return model.default_settings.with_(
        cfg_scale=cfg, temperature=1.0 if greedy else temperature, top_k=top_k, greedy=greedy, seed=seed
    )


def decode_job(
    host: Host,
    model: ImageTokenModel,
    prompt: str,
    batch: int,
    settings: SamplingSettings | ContinuousSettings,
    draft: DraftRecipe,
    policy: PolicyRecipe,
) -> JobOutput:
    """One observed run; an interrupted run ends the node the way the host expects."""
    report = LiveReport(host, model)
    run = run_continuous_job if is_continuous_model(model) else run_job
    try:
        load_for_run(host, model, draft, batch)
        job = run(model, prompt, batch, settings, draft, policy, report)
    except Exception as exc:
        report.finish(error=str(exc).splitlines()[0] if str(exc) else type(exc).__name__)
        raise
    report.finish()
    if not job.result.finished:
        host.raise_interrupted()
    return job


def _sample(
    host: Host,
    model: ImageTokenModel,
    prompt: str,
    seed: int,
    batch_size: int,
    cfg: float,
    temperature: float,
    top_k: int,
    scale: int,
    draft: DraftRecipe | None = None,
    policy: PolicyRecipe | None = None,
) -> tuple[torch.Tensor, torch.Tensor, str, torch.Tensor]:
    settings = sampling_settings(model, seed, cfg, temperature, top_k)
    draft = draft or (DraftRecipe() if is_continuous_model(model) else DraftRecipe("auto"))
    job = decode_job(host, model, prompt, batch_size, settings, draft, policy or PolicyRecipe())
    return enlarge(job.images, scale), enlarge(job.heatmaps, scale), job.summary, job.explanation


def enlarge(images: torch.Tensor, scale: int) -> torch.Tensor:
    """``[B, H, W, C]`` images ``scale`` times larger, each pixel copied into a block (nearest neighbour), so
    small images stay sharp when viewed; refused before allocating when a side would pass :data:`MAX_SIDE`."""
    if scale == 1:
        return images
    longest = max(images.shape[1], images.shape[2]) * scale
    if longest > MAX_SIDE:
        raise SettingsError(
            f"scale {scale} would make {longest}-pixel images; outputs are at most {MAX_SIDE} pixels a side"
        )
    return images.repeat_interleave(scale, dim=1).repeat_interleave(scale, dim=2)


def _compare(
    host: Host,
    model: ImageTokenModel,
    draft: DraftRecipe,
    prompt: str,
    seed: int,
    batch_size: int,
    cfg: float,
    temperature: float,
    top_k: int,
    timed_pairs: int,
    policy: PolicyRecipe | None = None,
) -> tuple[torch.Tensor, str]:
    settings = sampling_settings(model, seed, cfg, temperature, top_k)
    policy = policy or PolicyRecipe()
    arms = {"plain": (DraftRecipe(), PolicyRecipe()), "fast": (draft, policy)}
    seconds: dict[str, list[float]] = {"plain": [], "fast": []}
    jobs: dict[str, JobOutput] = {}
    for pair in range(1 + timed_pairs):  # pair 0 warms up (first-call costs, allocator, caches) and is not timed
        for arm in ("plain", "fast") if pair % 2 else ("fast", "plain"):  # alternate who goes first
            recipe, chosen_policy = arms[arm]
            jobs[arm] = decode_job(host, model, prompt, batch_size, settings, recipe, chosen_policy)
            if pair:
                seconds[arm].append(jobs[arm].result.wall_seconds)
    plain, fast = jobs["plain"], jobs["fast"]
    speedup = statistics.median(seconds["plain"]) / max(statistics.median(seconds["fast"]), 1e-9)
    fewer = plain.result.target_forwards / max(fast.result.target_forwards, 1)
    stats = fast.result.stats()
    plain_name = "plain MAR" if is_continuous_model(model) else "plain AR"
    method = "CSpD" if is_continuous_model(model) else draft.method
    captions = (
        f"{plain_name}\n(same seed)",
        f"{method}: {stats['tokens_per_forward']:.2f} tok/fwd\n{fewer:.2f}x fewer forwards, {speedup:.2f}x faster",
        "acceptance",
    )
    why_different = (
        "lossless: the same distribution as plain decoding, not the same pixels"
        if policy.name == "exact" or policy.relaxation == 0
        else f"relaxed ({policy.name} {policy.relaxation:g}): may differ from plain decoding's distribution"
    )
    picture = comparison(
        as_uint8(plain.images), as_uint8(fast.images), as_uint8(fast.heatmaps), captions, why_different
    )
    summary = (
        f"{plain_name}: {plain.summary}\nspeculative: {fast.summary}\n"
        f"{fewer:.2f}x fewer target forwards, {speedup:.2f}x wall-clock speed-up (median of {timed_pairs} timed "
        f"pair{'s' if timed_pairs > 1 else ''} after a warm-up; same seed, same machine)"
    )
    host.progress(1, 1, picture)  # the node's preview ends on the result, not on a partly decoded frame
    return torch.from_numpy(np.array(picture)).float()[None] / 255.0, summary


def as_uint8(images: torch.Tensor) -> torch.Tensor:
    return (images * 255).round().to(torch.uint8)


SAMPLING_FIELDS = (
    Field(
        "prompt",
        STRING,
        "what to draw: a class name (demo: e.g. 'red ring', 'blue square'), a class number, "
        "or text for text-to-image models",
        default="red ring",
        multiline=True,
    ),
    Field("seed", INT, "same seed and settings give the same images", default=0, min=0, max=2**63 - 1, seed=True),
    Field("batch_size", INT, "images drawn together", default=4, min=1, max=256),
    Field(
        "cfg",
        FLOAT,
        "classifier-free guidance: higher follows the prompt more closely; 1 turns it off",
        default=2.0,
        min=0.0,
        max=20.0,
        step=0.1,
    ),
    Field(
        "temperature",
        FLOAT,
        "randomness per token; 0 = greedy (always the likeliest token)",
        default=1.0,
        min=0.0,
        max=5.0,
        step=0.05,
    ),
    Field(
        "top_k",
        INT,
        "sample only among the k likeliest tokens (0 = all; discrete models only)",
        default=100,
        min=0,
        max=1_000_000,
    ),
)

_SCALE = Field(
    "scale",
    INT,
    "enlarge the images and heatmap this many times, copying pixels (nearest neighbour), so small images such "
    "as the demo's 32x32 stay sharp on screen; 1 = as generated",
    default=1,
    min=1,
    max=32,
)

SAMPLER = NodeSpec(
    node_id="SpecARSampler",
    display_name="SpecAR Sampler",
    search_aliases=("speculative sampler", "autoregressive sampler", "generate image", "sample tokens"),
    description="Draws images with speculative decoding and shows live, per token, which tokens came from accepted "
    "drafts. Without a draft input it drafts by itself (auto: row-above Jacobi guesses, as many per "
    "forward as pay on this machine; plain decoding where none pay); continuous (MAR) models decode plainly.",
    inputs=(
        Field("model", MODEL, "from SpecAR Load Model"),
        *SAMPLING_FIELDS,
        _SCALE,
        Field(
            "draft",
            DRAFT,
            "from SpecAR Jacobi Drafts, SpecAR Drafter Model or SpecAR Tree Head Drafts "
            "(none: auto, self-drafting by measured cost)",
            optional=True,
        ),
        Field("policy", POLICY, "from SpecAR Acceptance Policy (none: exact, lossless)", optional=True),
    ),
    outputs=(
        Output(IMAGE, "images", "the generated images"),
        Output(
            IMAGE,
            "heatmap",
            "per token: grey = target only, green = accepted draft (brighter = longer run), "
            "red = corrected, amber = bonus",
        ),
        Output(STRING, "stats", "target forwards, tokens per forward, acceptance, seconds"),
        Output(
            IMAGE,
            "why_accepted",
            "the first 8 images, each with its heatmap and a map per quantity the relaxed "
            "policy decided on (csd: entropy, TV; lantern: neighbour mass; gsd: group size; clusters: group mass); "
            "dark = low",
        ),
    ),
    run=_sample,
    needs_node_id=True,
)

COMPARE = NodeSpec(
    node_id="SpecARCompare",
    display_name="SpecAR Compare",
    search_aliases=("speed-up", "benchmark", "plain against speculative", "timing"),
    description="Runs plain AR and the speculative setting on the same seed, taking turns on this machine after a "
    "warm-up, and shows both with the measured speed-up, the forwards saved and tokens per forward.",
    inputs=(
        Field("model", MODEL, "from SpecAR Load Model"),
        Field("draft", DRAFT, "the speculative setting to compare with plain decoding"),
        *SAMPLING_FIELDS,
        Field(
            "timed_pairs",
            INT,
            "pairs of runs (plain, then speculative, alternating who goes first) timed after one untimed warm-up "
            "pair; the speed-up is the ratio of the medians",
            default=2,
            min=1,
            max=10,
        ),
        Field("policy", POLICY, "from SpecAR Acceptance Policy (none: exact, lossless)", optional=True),
    ),
    outputs=(
        Output(IMAGE, "comparison", "plain AR | speculative | its acceptance heatmap, one row per image"),
        Output(STRING, "stats", "both runs' figures and the speed-up"),
    ),
    run=_compare,
    needs_node_id=True,
)
