"""``python -m specar`` is the ``specar`` command."""

from .cli import main

raise SystemExit(main())
