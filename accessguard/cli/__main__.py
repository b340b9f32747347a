"""`python -m accessguard.cli`: the same as the `accessguard` command."""

from accessguard.cli.main import main

raise SystemExit(main())
