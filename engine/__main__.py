"""``python -m specar`` is the ``specar`` command."""

from .entry import main

raise SystemExit(main())
