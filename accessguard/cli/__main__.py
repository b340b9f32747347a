"""`python -m accessguard.cli`: the same as the `accessguard` command."""

from accessguard.cli.app import main

raise SystemExit(main())
