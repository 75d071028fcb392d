"""Wall time of model calls that is true on GPUs too: their queues are drained before the clock is read."""

from __future__ import annotations

import time
from typing import Callable, TypeVar

import torch

T = TypeVar("T")


def synchronize(device: torch.device | None) -> None:
    """Wait for ``device``'s queued work (no-op on CPUs and for ``None``)."""
    if device is None:
        return
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    elif device.type == "mps":
        torch.mps.synchronize()


class Clock:
    """Sums the wall time of the calls it runs; ``device`` set: synchronised before and after each."""

    def __init__(self, device: torch.device | None = None) -> None:
        self.device, self.seconds = device, 0.0

    def run(self, call: Callable[[], T]) -> T:
        synchronize(self.device)
        start = time.perf_counter()
        out = call()
        synchronize(self.device)
        self.seconds += time.perf_counter() - start
        return out
