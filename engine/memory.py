"""Memory a request would take, checked before it is allocated: a batch, an image size or a draft tree
too large for the machine is refused in one line instead of exhausting memory or ending in an
allocator traceback."""

from __future__ import annotations

import os
from pathlib import Path

import torch

from .errors import SettingsError

MAX_BLOCK_TOKENS = 1024  # tokens one target forward may verify (a Jacobi window, a chain, a tree)
HEADROOM = 0.9  # of the memory free now, the share one allocation may take (activations need the rest)


def available_bytes(device: torch.device) -> int | None:
    """Memory free for new tensors on ``device`` now (``None`` where it cannot be read)."""
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return int(free)
    if device.type != "cpu":
        return None
    try:  # Linux: what the kernel could give without swapping, page cache included
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return None


def check_fits(what: str, nbytes: int, device: torch.device, advice: str) -> None:
    """Refuse an allocation of ``nbytes`` for ``what`` that the device could not hold."""
    free = available_bytes(device)
    if free is not None and nbytes > HEADROOM * free:
        raise SettingsError(f"{what} needs {_size(nbytes)}, more than the {_size(free)} free on {device}: {advice}")


def check_block(what: str, tokens: int) -> None:
    """Refuse a draft that would make one target forward verify more than ``MAX_BLOCK_TOKENS`` tokens."""
    if tokens > MAX_BLOCK_TOKENS:
        raise SettingsError(f"{what} is too large: one target forward verifies at most {MAX_BLOCK_TOKENS:,} tokens")


def _size(nbytes: int) -> str:
    return f"{nbytes / 2**30:.1f} GiB" if nbytes >= 2**30 else f"{nbytes / 2**20:.0f} MiB"
