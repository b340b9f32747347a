"""The command line; the only user of argparse.

``accessguard.cli.app`` builds the parser and dispatches; each command's
handler lives beside it. ``main`` is the ``accessguard`` console script.
"""

from accessguard.cli.app import main

__all__ = ["main"]
