"""Files written whole or not at all."""

from __future__ import annotations

import os
import stat
from pathlib import Path
from typing import Callable

from .errors import OutputError


def replace_atomically(path: str | Path, write: Callable[[Path], None]) -> Path:
    """``write`` fills a temporary file beside ``path``, which then replaces ``path`` in one rename: a
    failed write (a full disk, an error, Ctrl-C) leaves the previous file untouched, and a reader never
    sees a partial one. A failure to write is an :class:`~specar.errors.OutputError` naming the file.

    A symbolic link keeps pointing where it did: the file it names is replaced. A path naming a stream (a
    device such as ``/dev/stdout``, a named pipe) is written directly: it holds no file to keep, and a
    rename over it would put a file where the device was."""
    given = Path(path)
    try:
        mode = _mode(given)
        if mode is not None and stat.S_ISDIR(mode):
            raise OutputError(f"cannot write {given}: it is a folder")
        if mode is not None and not stat.S_ISREG(mode):
            write(given)
            return given
        target = given.resolve() if given.is_symlink() else given
        target.parent.mkdir(parents=True, exist_ok=True)
        partial = target.with_name(f".{target.name}.partial")
        try:
            write(partial)
            os.replace(partial, target)
        finally:
            partial.unlink(missing_ok=True)
    except OSError as exc:
        raise OutputError(f"cannot write {given}: {exc.strerror or exc}") from exc
    return given


def _mode(path: Path) -> int | None:
    """The file type and permissions of what ``path`` names (a link: of what it points to); ``None`` if nothing."""
    try:
        return path.stat().st_mode
    except FileNotFoundError:
        return None
