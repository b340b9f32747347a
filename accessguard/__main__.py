"""``python -m accessguard``: the same command as ``accessguard``."""

from __future__ import annotations

from accessguard.cli.main import main

raise SystemExit(main())
