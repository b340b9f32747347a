"""``python -m accessguard``: the same command as ``accessguard``."""

from __future__ import annotations

from accessguard.cli.app import main

raise SystemExit(main())
