"""Live heatmap frames: small JSON-ready snapshots of one image's acceptance map during sampling.

A host (the ComfyUI sampler node) turns step events into frames and sends them to a browser
widget. Frames carry their own colours (one hex RGB per token, from :mod:`specar.heatmap`) and
legend, so the widget draws exactly what the saved heatmap shows without a palette of its own.
Frames are throttled: at most one per ``min_interval`` seconds, plus the first and the last.
"""

from __future__ import annotations

import time
from typing import Callable

import torch

from .heatmap import LEGEND, cell_colors, hex_color
from .types import StepEvent


def hex_cells(event: StepEvent, image: int = 0) -> str:
    """The colours of image ``image``'s tokens as one string of ``rrggbb`` groups, raster order."""
    colors = cell_colors(event.kinds[image : image + 1], event.forward_index[image : image + 1])[0]
    return colors.round().to(torch.uint8).numpy().tobytes().hex()


class HeatmapFrames:
    """Builds throttled frames for one run; ``run`` tells a widget that a new run has started."""

    def __init__(
        self, grid: tuple[int, int], run: str, min_interval: float = 0.2, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.grid = grid
        self.run = run
        self.min_interval = min_interval
        self.clock = clock
        self.last_sent: float | None = None

    def frame(self, event: StepEvent, final: bool = False) -> dict[str, object] | None:
        """A frame for ``event``, or ``None`` when the previous one was sent too recently."""
        now = self.clock()
        if not final and self.last_sent is not None and now - self.last_sent < self.min_interval:
            return None
        self.last_sent = now
        committed = int(event.committed[0])
        return {
            "run": self.run,
            "grid": list(self.grid),
            "cells": hex_cells(event),
            "committed": committed,
            "total": event.total_tokens,
            "target_forwards": event.target_forwards,
            "tokens_per_forward": round(event.tokens_per_forward, 3),
            "batch": int(event.committed.shape[0]),
            "done": final,
            "legend": [[label, hex_color(color)] for label, color in LEGEND],
        }
