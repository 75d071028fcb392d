"""The ``specar`` command's entry point: the command line and everything it needs (torch included) load here,
so Ctrl-C during those seconds of importing ends quietly like Ctrl-C anywhere else."""

from __future__ import annotations

import sys

EXIT_INTERRUPTED = 130  # the shell convention for "stopped by Ctrl-C"


def main() -> int:
    try:
        from .cli import main as run
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    return run()
