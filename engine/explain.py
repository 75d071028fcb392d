"""Why tokens were accepted: maps of what a relaxed policy decided on, beside the image.

The loop records, for every tested draft token, the quantities its acceptance policy computed
(CSD: the target's entropy and the draft's total-variation distance; LANTERN: the neighbour mass
moved onto the draft; GSD: the size of its group; clusters: the look-alike codes' mass; CASCADE:
that mass, how many siblings were interchangeable and how alike the context's last two target
states were). Each becomes a panel coloured from dark (low) to bright (high) over the range
found in the batch; tokens whose draft was never tested
(the target's own samples, bonus tokens) are shown in flat grey. Reading a panel next to the
acceptance heatmap shows where a policy relaxed: on the demo model, for instance, the target is
uncertain at object edges and sure of the smooth backgrounds, so CSD's entropy bonus lands on
the edges.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFont

from .heatmap import (
    LEGEND_BACKGROUND,
    LINE_HEIGHT,
    RGB,
    acceptance_heatmap,
    as_uint8_array,
    label_font,
    legend_strip,
    text_width,
    upscale_cells,
)
from .types import GenerationResult

COLOR_UNTESTED: RGB = (96, 96, 96)  # no draft was tested at this token
RAMP: tuple[RGB, ...] = ((20, 12, 60), (60, 60, 160), (30, 150, 150), (120, 210, 80), (250, 235, 60))
LABELS: dict[str, str] = {
    "entropy": "target entropy (nats)",
    "tv": "TV(target, draft)",
    "neighbour_mass": "neighbour mass moved",
    "group_size": "group size (tokens)",
    "group_mass": "look-alike codes' mass",
    "interchangeable": "interchangeable siblings",
    "convergence": "context convergence (cos)",
    "acceptance_prob": "CSpD acceptance probability",
}
PANEL_MIN_WIDTH = 150  # pixels per panel at least; wider where a caption needs it
MAX_ROWS = 8  # images explained per picture: a batch of 128 would make a picture 19,000 pixels tall


def ramp_colors(values: torch.Tensor, low: float, high: float) -> torch.Tensor:
    """``float [..., 3]`` colours of ``values`` on the dark-to-bright ramp over ``low..high``; NaN -> untested grey."""
    span = high - low if high > low else 1.0
    t = ((values.float() - low) / span).clamp(0.0, 1.0).nan_to_num(0.0) * (len(RAMP) - 1)
    anchors = torch.tensor(RAMP, dtype=torch.float32)
    below = t.floor().long().clamp(max=len(RAMP) - 2)
    frac = (t - below)[..., None]
    colors = anchors[below] * (1 - frac) + anchors[below + 1] * frac
    colors[torch.isnan(values)] = torch.tensor(COLOR_UNTESTED, dtype=torch.float32)
    return colors


def value_range(values: torch.Tensor) -> tuple[float, float]:
    """Smallest and largest tested value (0, 1 when nothing was tested)."""
    tested = values[torch.isfinite(values)]
    return (float(tested.min()), float(tested.max())) if tested.numel() else (0.0, 1.0)


def diagnostic_maps(
    result: GenerationResult, grid: tuple[int, int], size: tuple[int, int]
) -> dict[str, tuple[torch.Tensor, tuple[float, float]]]:
    """Per recorded quantity: ``uint8 [B, H, W, 3]`` maps and the value range their colours span."""
    maps = {}
    for name, values in result.diagnostics.items():
        low, high = value_range(values)
        cells = ramp_colors(values.cpu(), low, high).round().to(torch.uint8).reshape(result.batch_size, *grid, 3)
        maps[name] = (upscale_cells(cells, size), (low, high))
    return maps


def _caption(name: str, low: float, high: float) -> str:
    return f"{LABELS.get(name, name)}\n{low:.3g} .. {high:.3g}"


def explanation(images: torch.Tensor | np.ndarray, result: GenerationResult, grid: tuple[int, int]) -> Image.Image:
    """One row per image (the first :data:`MAX_ROWS`): the image, its acceptance heatmap and one panel
    per recorded policy quantity, captioned with what the colours span over the whole batch; the
    heatmap legend and the ramp below."""
    pictures = as_uint8_array(images)[:MAX_ROWS]
    B, H, W, _ = pictures.shape
    size = (H, W)
    columns = [
        ("image", pictures),
        ("accepted drafts", as_uint8_array(acceptance_heatmap(result, grid, size))[:MAX_ROWS]),
    ]
    columns += [
        (_caption(name, *span), as_uint8_array(panel)[:MAX_ROWS])
        for name, (panel, span) in diagnostic_maps(result, grid, size).items()
    ]
    font = label_font()
    widest = max(PANEL_MIN_WIDTH, *(text_width(caption, font) + 8 for caption, _ in columns))
    factor = max(1, math.ceil(widest / W))
    body = np.concatenate([c.repeat(factor, axis=1).repeat(factor, axis=2) for _, c in columns], axis=2)
    body = np.concatenate(list(body), axis=0)
    caption_height, ramp_height = 2 * LINE_HEIGHT + 4, LINE_HEIGHT + 4
    legend = legend_strip(body.shape[1])
    width = max(body.shape[1], legend.width)
    canvas = Image.new("RGB", (width, caption_height + body.shape[0] + legend.height + ramp_height), LEGEND_BACKGROUND)
    draw = ImageDraw.Draw(canvas)
    panel = W * factor
    for i, (caption, _) in enumerate(columns):
        draw.multiline_text((i * panel + 4, 1), caption, fill=(0, 0, 0), font=font, spacing=5)
    canvas.paste(Image.fromarray(body), (0, caption_height))
    canvas.paste(legend, (0, caption_height + body.shape[0]))
    _draw_ramp(draw, caption_height + body.shape[0] + legend.height, width, font)
    return canvas


def _draw_ramp(
    draw: ImageDraw.ImageDraw, top: int, width: int, font: ImageFont.ImageFont | ImageFont.FreeTypeFont
) -> None:
    label_low, label_high = "policy panels: low ", " high; grey = draft not tested"
    x = 6
    draw.text((x, top + 2), label_low, fill=(0, 0, 0), font=font)
    x += text_width(label_low, font)
    bar = min(160, max(40, width // 4))
    for i in range(bar):
        color = tuple(int(c) for c in ramp_colors(torch.tensor([i / (bar - 1)]), 0.0, 1.0)[0].round().tolist())
        draw.line([x + i, top + 5, x + i, top + LINE_HEIGHT - 2], fill=color)
    draw.text((x + bar, top + 2), label_high, fill=(0, 0, 0), font=font)
