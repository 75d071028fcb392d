"""Files written whole or not at all."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Callable


def replace_atomically(path: str | Path, write: Callable[[Path], None]) -> Path:
    """``write`` fills a temporary file beside ``path``, which then replaces ``path`` in one rename: a
    failed write (a full disk, an error, Ctrl-C) leaves the previous file untouched, and a reader never
    sees a partial one."""
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    partial = target.with_name(f".{target.name}.partial")
    try:
        write(partial)
        os.replace(partial, target)
    finally:
        partial.unlink(missing_ok=True)
    return target
