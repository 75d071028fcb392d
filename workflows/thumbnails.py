"""Template-browser thumbnails: ``<workflow name>.jpg`` beside each workflow.

ComfyUI's template browser shows a custom node pack's ``<name>.jpg`` as the card of ``<name>.json``.
A demo workflow's thumbnail is what the workflow draws: the real-ComfyUI test writes it from the
images of its run when ``SPECAR_THUMBNAILS`` is set. A workflow for downloaded weights gets a card
that says what it needs (:func:`label_card`, written by ``build.py``).
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

from PIL import Image, ImageDraw, ImageFont

SIZE = 512
BACKGROUND = (30, 30, 30)
TEXT = (235, 235, 235)
MUTED = (160, 160, 160)
MARGIN = 20


def _font(size: int) -> ImageFont.ImageFont | ImageFont.FreeTypeFont:
    return ImageFont.load_default(size=size)


def _wrap(text: str, font: ImageFont.ImageFont | ImageFont.FreeTypeFont) -> list[str]:
    """``text`` in lines that fit the card's width in ``font``."""
    lines: list[str] = []
    for word in text.split():
        joined = f"{lines[-1]} {word}" if lines else word
        if lines and font.getlength(joined) <= SIZE - 2 * MARGIN:
            lines[-1] = joined
        else:
            lines.append(word)
    return lines


def _text(draw: ImageDraw.ImageDraw, text: str, top: int, size: int, fill: tuple[int, int, int]) -> int:
    """Draw ``text`` wrapped to the card's width from ``top``; return the y below it."""
    font = _font(size)
    for line in _wrap(text, font):
        draw.text((MARGIN, top), line, font=font, fill=fill)
        top += size + 6
    return top


def _tile(pictures: list[Image.Image], box: tuple[int, int, int, int], canvas: Image.Image) -> None:
    """Pictures side by side inside ``box`` (left, top, width, height), upscaled without blurring pixels."""
    left, top, width, height = box
    cell = min(width // max(len(pictures), 1), height)
    for index, picture in enumerate(pictures):
        scale = max(1, cell // max(picture.size))
        shown = picture.convert("RGB").resize((picture.width * scale, picture.height * scale), Image.NEAREST)
        shown.thumbnail((cell, cell))
        canvas.paste(shown, (left + index * cell, top))


def demo_thumbnail(title: str, rows: list[list[Image.Image]]) -> Image.Image:
    """The workflow's title over its outputs, one row per output (e.g. its images, then their heatmaps)."""
    canvas = Image.new("RGB", (SIZE, SIZE), BACKGROUND)
    top = _text(ImageDraw.Draw(canvas), title, MARGIN, 30, TEXT) + MARGIN // 2
    height = (SIZE - top - MARGIN) // max(len(rows), 1)
    for row in rows:
        _tile(row, (MARGIN, top, SIZE - 2 * MARGIN, height - 8), canvas)
        top += height
    return canvas


def label_card(title: str, lines: list[str]) -> Image.Image:
    """A card for a workflow that needs downloaded weights: its title and what to put where."""
    canvas = Image.new("RGB", (SIZE, SIZE), BACKGROUND)
    draw = ImageDraw.Draw(canvas)
    top = _text(draw, title, MARGIN * 2, 34, TEXT) + MARGIN
    for line in lines:
        top = _text(draw, line, top, 22, MUTED) + 10
    return canvas


def save_jpeg(picture: Image.Image, path: Path) -> None:
    """Write ``path`` whole or not at all."""
    handle, temporary = tempfile.mkstemp(dir=path.parent, suffix=".jpg.part")
    os.close(handle)
    try:
        picture.save(temporary, "JPEG", quality=88)
        os.replace(temporary, path)
    except BaseException:
        os.unlink(temporary)
        raise
