"""A tiny progress bar on stderr, driven by the decoding loop's observer.

It shows what matters for speculative decoding: tokens committed across the batch, target
forwards so far, and tokens per forward. Redraws are throttled so drawing never costs the loop
noticeable time, and the bar stays silent when stderr is not a terminal (logs, pipes, tests).
"""

from __future__ import annotations

import sys
import time
from typing import TextIO

from .types import GenerationResult, StepEvent


class ProgressBar:
    """Observer for :func:`specar.generate` that redraws at most once per ``min_interval`` seconds."""

    def __init__(
        self,
        enabled: bool = True,
        stream: TextIO | None = None,
        min_interval: float = 0.1,
        width: int = 28,
        label: str = "generating",
    ) -> None:
        self.stream = stream or sys.stderr
        self.enabled = enabled
        self.live = enabled and bool(getattr(self.stream, "isatty", lambda: False)())
        self.min_interval, self.width, self.label = min_interval, width, label
        self.started = time.perf_counter()
        self._last_draw = float("-inf")
        self._drawn = False

    def __call__(self, event: StepEvent) -> None:
        if not self.live:
            return
        done = int(event.committed.sum())
        total = event.total_tokens * int(event.committed.numel())
        now = time.perf_counter()
        if done < total and now - self._last_draw < self.min_interval:
            return
        self._last_draw = now
        self._draw(done, total, event.target_forwards, event.tokens_per_forward, now - self.started)

    def _draw(self, done: int, total: int, forwards: int, per_forward: float, seconds: float) -> None:
        filled = self.width * done // max(total, 1)
        bar = "#" * filled + "." * (self.width - filled)
        self.stream.write(
            f"\r{self.label} [{bar}] {done}/{total} tokens  {forwards} forwards  "
            f"{per_forward:.2f} tok/fwd  {seconds:.1f} s "
        )
        self.stream.flush()
        self._drawn = True

    def finish(self, summary: str | None = None) -> None:
        """End the bar's line and print ``summary`` (unless the bar was disabled with quiet)."""
        if self._drawn:
            self.stream.write("\n")
        if self.enabled and summary:
            self.stream.write(summary + "\n")
        self.stream.flush()


def summary_line(result: GenerationResult) -> str:
    """One line about a finished (or stopped) generation, for humans."""
    per_image = result.tokens.shape[1]
    done = int(result.committed.sum())
    state = "done" if result.finished else f"stopped at {done}/{per_image * result.batch_size} tokens"
    accept = f", {100 * result.acceptance_rate:.1f}% of drafts accepted" if result.drafted else ""
    drafter = f", {result.drafter_forwards} drafter forwards" if result.drafter_forwards else ""
    return (
        f"{state}: {result.batch_size} image(s) of {per_image} tokens in {result.target_forwards} target forwards "
        f"({result.tokens_per_forward:.2f} tokens/forward{accept}{drafter}), {result.wall_seconds:.2f} s"
    )
