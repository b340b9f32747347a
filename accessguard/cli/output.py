"""What every command prints on failure and in JSON, and the exit codes.

Exit codes: 0 ok, 1 denied/throttled/broken, 2 bad usage. With ``--format json``
an error is one JSON object on stdout (``reason``, ``message``, ``path``, ``line``).
"""

from __future__ import annotations

import json
import sys
from collections.abc import Sequence
from typing import TYPE_CHECKING

from accessguard.errors import AccessGuardError, PolicyError, Reason

if TYPE_CHECKING:
    pass

EXIT_OK, EXIT_REFUSED, EXIT_USAGE = 0, 1, 2


USAGE, FILE_ERROR, DATABASE_ERROR = (
    str(Reason.USAGE_INVALID),
    str(Reason.FILE_UNREADABLE),
    str(Reason.DATABASE_ERROR),
)


def wants_json(argv: Sequence[str]) -> bool:
    """``--format json`` (or ``--format=json``) is on the command line, parsed or not."""
    pairs = zip(argv, [*argv[1:], ""], strict=True)
    return "--format=json" in argv or any(a == "--format" and b == "json" for a, b in pairs)


def fail(exc: BaseException, *, as_json: bool, reason: str, code: int = EXIT_USAGE) -> int:
    """Report an error: one JSON object on stdout with --format json, else a line on stderr."""
    path = line = None
    if isinstance(exc, PolicyError):  # its message starts with "path:line: ", given apart here
        path, line = exc.path, exc.line
        where = f"{path}:{line}: " if line is not None else f"{path}: "
        message = exc.message.removeprefix(where)
    elif isinstance(exc, AccessGuardError):
        message = exc.message
    elif isinstance(exc, OSError):
        message = exc.strerror or str(exc)
        path = None if exc.filename is None else str(exc.filename)
    else:
        message = str(exc)
    if as_json:
        error = {"reason": reason, "message": message, "path": path, "line": line}
        print(json.dumps({"error": error}, indent=2))
    elif isinstance(exc, OSError):
        print(f"accessguard: {exc.filename or ''}: {exc.strerror}", file=sys.stderr)
    else:
        print(f"accessguard: {exc}", file=sys.stderr)
    return code


def print_json(data: object) -> None:
    print(json.dumps(data, indent=2))
