"""Acceptance heatmaps: where the speculative decoder saved target forwards, cell by cell.

Each image token becomes one cell coloured by how it was committed (:class:`TokenKind`); accepted
drafts get brighter the longer the run committed by their target forward, so long green streaks
are where drafting paid off. The palette is a set of named constants so the web widget can draw
the same colours. Pixels only go through PIL; nothing here needs a GPU.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFont

from .atomic import replace_atomically
from .types import GenerationResult, TokenKind

RGB = tuple[int, int, int]

COLOR_NOT_COMMITTED: RGB = (0, 0, 0)  # the generation stopped before this token
COLOR_PLAIN: RGB = (128, 128, 128)  # sampled by the target, no draft offered
COLOR_CORRECTED: RGB = (220, 72, 60)  # target's token after a rejected draft
COLOR_BONUS: RGB = (245, 178, 40)  # target's extra token after a fully accepted block
COLOR_ACCEPTED_SHORT: RGB = (24, 96, 44)  # accepted, in a run of ACCEPTED_RUN_SHORT tokens
COLOR_ACCEPTED_LONG: RGB = (120, 255, 130)  # accepted, in a run of ACCEPTED_RUN_LONG or more
ACCEPTED_RUN_SHORT = 2  # the shortest run holding an accepted token: it plus the target's token
ACCEPTED_RUN_LONG = 16  # runs this long (a full default Jacobi window) get the brightest green

LEGEND_BACKGROUND: RGB = (255, 255, 255)
COMPARISON_MIN_WIDTH = 160  # pixels per column of a comparison picture (small images are enlarged)
LABEL_SIZE = 15  # pixels: captions and legends read at normal zoom
LINE_HEIGHT = LABEL_SIZE + 5


def label_font() -> ImageFont.ImageFont | ImageFont.FreeTypeFont:
    """Pillow's bundled scalable font at :data:`LABEL_SIZE`; its small bitmap font where Pillow lacks FreeType."""
    try:
        return ImageFont.load_default(size=LABEL_SIZE)
    except (TypeError, ImportError, OSError):  # Pillow < 10.1, or built without FreeType
        return ImageFont.load_default()


def text_width(text: str, font: ImageFont.ImageFont | ImageFont.FreeTypeFont) -> int:
    """Pixels the widest line of ``text`` takes in ``font``."""
    return max(int(font.getlength(line)) for line in text.split("\n"))


LEGEND: tuple[tuple[str, RGB], ...] = (
    ("target only", COLOR_PLAIN),
    ("accepted, short run", COLOR_ACCEPTED_SHORT),
    ("accepted, long run", COLOR_ACCEPTED_LONG),
    ("corrected", COLOR_CORRECTED),
    ("bonus", COLOR_BONUS),
    ("not generated", COLOR_NOT_COMMITTED),
)


def run_lengths(forward_index: torch.Tensor) -> torch.Tensor:
    """Tokens committed by the same target forward as each token ``[B, N]`` (0 where none)."""
    index = forward_index.long()
    valid = index >= 0
    slot = index.clamp(min=0)
    counts = torch.zeros(index.shape[0], int(slot.max()) + 1 if slot.numel() else 1)
    counts.scatter_add_(1, slot, valid.float())
    return torch.where(valid, counts.gather(1, slot), 0.0)


def accepted_brightness(runs: torch.Tensor) -> torch.Tensor:
    """0 for the shortest accepted run, 1 from ``ACCEPTED_RUN_LONG`` on; log scale in between."""
    span = math.log(ACCEPTED_RUN_LONG / ACCEPTED_RUN_SHORT)
    return (torch.log(runs.clamp(min=ACCEPTED_RUN_SHORT) / ACCEPTED_RUN_SHORT) / span).clamp(0.0, 1.0)


def cell_colors(kinds: torch.Tensor, forward_index: torch.Tensor) -> torch.Tensor:
    """One RGB colour per token, ``float [B, N, 3]`` in 0..255, from how and when each was committed."""
    kinds = kinds.long().cpu()
    colors = torch.tensor(COLOR_NOT_COMMITTED, dtype=torch.float32).expand(*kinds.shape, 3).clone()
    for kind, color in (
        (TokenKind.PLAIN, COLOR_PLAIN),
        (TokenKind.CORRECTED, COLOR_CORRECTED),
        (TokenKind.BONUS, COLOR_BONUS),
    ):
        colors[kinds == int(kind)] = torch.tensor(color, dtype=torch.float32)
    short = torch.tensor(COLOR_ACCEPTED_SHORT, dtype=torch.float32)
    long = torch.tensor(COLOR_ACCEPTED_LONG, dtype=torch.float32)
    green = short + accepted_brightness(run_lengths(forward_index.cpu()))[..., None] * (long - short)
    accepted = kinds == int(TokenKind.ACCEPTED)
    colors[accepted] = green[accepted]
    return colors


def token_colors(result: GenerationResult) -> torch.Tensor:
    """:func:`cell_colors` of a finished (or interrupted) generation."""
    return cell_colors(result.kinds, result.forward_index)


def hex_color(color: RGB) -> str:
    return "#{:02x}{:02x}{:02x}".format(*color)


def upscale_cells(cells: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Nearest-neighbour upscale of per-cell values ``[B, h, w, ...]`` to ``[B, H, W, ...]``."""
    (h, w), (H, W) = cells.shape[1:3], size
    rows = torch.arange(H) * h // H
    cols = torch.arange(W) * w // W
    return cells[:, rows][:, :, cols]


def acceptance_heatmap(
    result: GenerationResult, grid: tuple[int, int], size: tuple[int, int] | None = None
) -> torch.Tensor:
    """``uint8 [B, H, W, 3]`` heatmap of ``result`` on the token ``grid``, upscaled to ``size`` (H, W)."""
    h, w = grid
    cells = token_colors(result).round().to(torch.uint8).reshape(result.batch_size, h, w, 3)
    return upscale_cells(cells, size or grid)


def committed_mask(kinds: torch.Tensor, grid: tuple[int, int], size: tuple[int, int]) -> torch.Tensor:
    """``bool [B, H, W]``: pixels whose token is committed (``kinds >= 0``; all of them once finished)."""
    cells = (kinds.cpu() >= 0).reshape(kinds.shape[0], *grid)
    return upscale_cells(cells, size)


def as_uint8_array(images: torch.Tensor | np.ndarray) -> np.ndarray:
    array = images.cpu().numpy() if isinstance(images, torch.Tensor) else np.asarray(images)
    if array.dtype != np.uint8 or array.ndim != 4 or array.shape[-1] != 3:
        raise ValueError(f"expected uint8 images [B, H, W, 3], got {array.dtype} {list(array.shape)}")
    return array


def image_grid(images: torch.Tensor | np.ndarray, ncols: int | None = None, background: RGB = (0, 0, 0)) -> Image.Image:
    """Tile ``uint8 [B, H, W, 3]`` images row by row (``ncols`` per row, default near-square)."""
    array = as_uint8_array(images)
    B, H, W, _ = array.shape
    ncols = max(1, min(ncols or math.ceil(math.sqrt(B)), B))
    nrows = math.ceil(B / ncols)
    canvas = np.empty((nrows * H, ncols * W, 3), dtype=np.uint8)
    canvas[:] = background
    for i, image in enumerate(array):
        r, c = divmod(i, ncols)
        canvas[r * H : (r + 1) * H, c * W : (c + 1) * W] = image
    return Image.fromarray(canvas)


def legend_strip(width: int) -> Image.Image:
    """A one-line key of the heatmap colours, at least ``width`` pixels wide."""
    font = label_font()
    swatch, gap, height = LABEL_SIZE - 3, 14, LINE_HEIGHT + 4
    widths = [swatch + 5 + text_width(label, font) for label, _ in LEGEND]
    strip = Image.new("RGB", (max(width, sum(widths) + gap * len(LEGEND)), height), LEGEND_BACKGROUND)
    draw = ImageDraw.Draw(strip)
    x = gap // 2
    for (label, color), item_width in zip(LEGEND, widths):
        draw.rectangle([x, 5, x + swatch - 1, 5 + swatch - 1], fill=color, outline=(90, 90, 90))
        draw.text((x + swatch + 5, 2), label, fill=(0, 0, 0), font=font)
        x += item_width + gap
    return strip


def side_by_side(
    images: torch.Tensor | np.ndarray, heatmaps: torch.Tensor | np.ndarray, ncols: int | None = None
) -> Image.Image:
    """Each image next to its heatmap, tiled like :func:`image_grid`, with a legend strip below.

    Empty grid slots are white, so they cannot be mistaken for the black of tokens not generated.
    """
    pairs = np.concatenate([as_uint8_array(images), as_uint8_array(heatmaps)], axis=2)
    grid = image_grid(pairs, ncols, background=LEGEND_BACKGROUND)
    legend = legend_strip(grid.width)
    canvas = Image.new("RGB", (legend.width, grid.height + legend.height), LEGEND_BACKGROUND)
    canvas.paste(grid, (0, 0))
    canvas.paste(legend, (0, grid.height))
    return canvas


def comparison(
    left: torch.Tensor | np.ndarray,
    right: torch.Tensor | np.ndarray,
    heatmaps: torch.Tensor | np.ndarray,
    captions: tuple[str, str, str],
    note: str = "",
) -> Image.Image:
    """Three labelled columns (e.g. plain AR, speculative, its heatmap), one row per image, the
    heatmap legend and an optional one-line ``note`` below: what a viewer needs to judge speed
    against quality at a glance."""
    columns = [as_uint8_array(left), as_uint8_array(right), as_uint8_array(heatmaps)]
    factor = _enlargement(columns[0].shape[2], captions)
    columns = [c.repeat(factor, axis=1).repeat(factor, axis=2) for c in columns]
    rows = np.concatenate(columns, axis=2)  # [B, H, 3W, 3]
    body = np.concatenate(list(rows), axis=0)  # images stacked vertically
    return _labelled(body, columns[0].shape[2], list(captions), note)


def relaxation_sheet(
    images: torch.Tensor | np.ndarray, heatmaps: torch.Tensor | np.ndarray, captions: list[str], note: str = ""
) -> Image.Image:
    """One labelled column per setting (e.g. per relaxation): the image above its acceptance heatmap, the
    heatmap legend and an optional one-line ``note`` below, so settings are compared by eye."""
    pictures, maps = as_uint8_array(images), as_uint8_array(heatmaps)
    factor = _enlargement(pictures.shape[2], captions)
    columns = np.concatenate([pictures, maps], axis=1).repeat(factor, axis=1).repeat(factor, axis=2)
    body = np.concatenate(list(columns), axis=1)  # [2H, K * W, 3]: settings side by side
    return _labelled(body, columns.shape[2], captions, note)


def _enlargement(width: int, captions: Sequence[str]) -> int:
    """How many times to enlarge columns ``width`` pixels wide so each caption fits above its column."""
    font = label_font()
    widest = max(COMPARISON_MIN_WIDTH, *(text_width(caption, font) + 8 for caption in captions))
    return max(1, math.ceil(widest / width))


def _labelled(body: np.ndarray, column_width: int, captions: list[str], note: str) -> Image.Image:
    """``body`` with a caption over each of its columns, the heatmap legend below and an optional note."""
    font = label_font()
    caption_height = LINE_HEIGHT * max(caption.count("\n") + 1 for caption in captions) + 2
    legend = legend_strip(body.shape[1])
    note_height = LINE_HEIGHT + 4 if note else 0
    width = max(body.shape[1], legend.width, text_width(note, font) + 12 if note else 0)
    canvas = Image.new("RGB", (width, caption_height + body.shape[0] + legend.height + note_height), LEGEND_BACKGROUND)
    draw = ImageDraw.Draw(canvas)
    for i, caption in enumerate(captions):
        draw.multiline_text((i * column_width + 4, 1), caption, fill=(0, 0, 0), font=font, spacing=5)
    canvas.paste(Image.fromarray(body), (0, caption_height))
    canvas.paste(legend, (0, caption_height + body.shape[0]))
    if note:
        draw.text((6, caption_height + body.shape[0] + legend.height + 1), note, fill=(0, 0, 0), font=font)
    return canvas


def save_png(image: Image.Image | torch.Tensor | np.ndarray, path: str | Path) -> Path:
    """Write a PIL image or a ``uint8 [B, H, W, 3]`` batch (as a grid) to ``path`` as PNG, making folders; whole
    or not at all."""
    picture = image if isinstance(image, Image.Image) else image_grid(image)
    return replace_atomically(path, lambda partial: picture.save(partial, format="PNG"))
