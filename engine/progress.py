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


def summary_line(result: GenerationResult, setup: str = "", unit: tuple[str, str] = ("forward", "forwards")) -> str:
    """One line about a finished or stopped generation, for people: ``setup`` (what ran, when given), target
    calls for the batch, tokens per call, draft acceptance, drafter forwards, seconds and where it stopped.
    ``unit`` names one target call (singular, plural): a forward, or a pass of a model without a KV cache."""
    per_image = result.tokens.shape[1]
    parts = [setup] if setup else []
    each = f", {float(result.forwards_per_image.float().mean()):.1f} per image" if result.batch_size > 1 else ""
    parts += [
        f"{result.target_forwards} target {unit[1]} for {result.batch_size}x{per_image} tokens{each}",
        f"{result.tokens_per_forward:.2f} tokens/{unit[0]}",
    ]
    if result.drafted:
        parts.append(f"acceptance {100 * result.acceptance_rate:.1f}%")
    if result.drafter_forwards:
        parts.append(f"{result.drafter_forwards} drafter forwards")
    parts.append(f"{result.wall_seconds:.2f} s")
    if not result.finished:
        parts.append(f"stopped at {int(result.committed.sum())}/{per_image * result.batch_size} tokens")
    return " | ".join(parts)


class CountBar:
    """Progress of a long job counted in units (images drawn, training steps), with the time left.

    On a terminal it redraws one line; in a log (stderr not a terminal) it writes a line at most every
    ``log_seconds``, and always the last, so a run watched through ``tail -f`` still shows its ETA.
    """

    def __init__(self, label: str, total: int, stream: TextIO | None = None, log_seconds: float = 60.0) -> None:
        self.label, self.total = label, max(total, 1)
        self.stream = stream or sys.stderr
        self.live = bool(getattr(self.stream, "isatty", lambda: False)())
        self.interval = 0.2 if self.live else log_seconds
        self.started = time.perf_counter()
        self.first: int | None = None  # units already done when this run started (a resumed job)
        self._last = float("-inf")

    def update(self, done: int, note: str = "") -> None:
        """``done`` units of ``total`` so far; ``note`` (a loss, a rate) is shown after the counts."""
        now = time.perf_counter()
        if self.first is None:
            self.first, self.started = done, now
            return
        if done < self.total and now - self._last < self.interval:
            return
        self._last = now
        rate = (done - self.first) / max(now - self.started, 1e-9)
        left = (self.total - done) / rate if rate > 0 else float("inf")
        filled = 24 * done // self.total
        text = f"{self.label} [{'#' * filled}{'.' * (24 - filled)}] {done}/{self.total}"
        text += f"  {_duration(now - self.started)} elapsed, {_duration(left)} left"
        if note:
            text += f"  {note}"
        self.stream.write(f"\r{text} " if self.live else f"{text}\n")
        if self.live and done >= self.total:
            self.stream.write("\n")
        self.stream.flush()


def _duration(seconds: float) -> str:
    if seconds == float("inf"):
        return "?"
    seconds = int(round(seconds))
    hours, rest = divmod(seconds, 3600)
    return f"{hours}h{rest // 60:02d}m" if hours else f"{rest // 60}m{rest % 60:02d}s"
