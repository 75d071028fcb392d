"""What both ``specar`` front ends (discrete and continuous models) share: JSON and picture
output, and the Ctrl-C handling that keeps what was decoded."""

from __future__ import annotations

import argparse
import json
import math
import os
import signal
from pathlib import Path
from types import FrameType

from .explain import explanation
from .heatmap import acceptance_heatmap, committed_mask, image_grid, save_png, side_by_side
from .models.base import ImageTokenModel
from .types import GenerationResult


def write_text(path: str, text: str) -> None:
    """Write ``text`` to ``path`` whole or not at all: a temporary file beside it, then renamed."""
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    partial = target.with_name(f".{target.name}.partial")
    partial.write_text(text)
    os.replace(partial, target)


def write_json(path: str, data: dict[str, object]) -> None:
    write_text(path, json.dumps(data, indent=1) + "\n")


class StopOnInterrupt:
    """The first Ctrl-C asks the loop (through its observer) to stop after the current forward;
    a second one interrupts at once. Outside the main thread signals cannot be caught: no-op."""

    def __init__(self) -> None:
        self.requested = False
        self._previous: object = None

    def __enter__(self) -> "StopOnInterrupt":
        try:
            self._previous = signal.signal(signal.SIGINT, self._handle)
        except ValueError:
            self._previous = None
        return self

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        if self.requested:
            raise KeyboardInterrupt
        self.requested = True

    def __exit__(self, *exc: object) -> None:
        if self._previous is not None:
            signal.signal(signal.SIGINT, self._previous)


def write_pictures(args: argparse.Namespace, model: ImageTokenModel, result: GenerationResult) -> None:
    images = model.decode(result.tokens)
    size = (int(images.shape[1]), int(images.shape[2]))
    if not result.finished:
        images = images * committed_mask(result.kinds, model.grid, size)[..., None]
    ncols = math.ceil(math.sqrt(result.batch_size))
    save_png(image_grid(images, ncols), args.out)
    heatmaps = acceptance_heatmap(result, model.grid, size)
    if args.heatmap:
        save_png(image_grid(heatmaps, ncols), args.heatmap)
    if args.compare:
        save_png(side_by_side(images, heatmaps, ncols), args.compare)
    if args.explain:
        save_png(explanation(images, result, model.grid), args.explain)
