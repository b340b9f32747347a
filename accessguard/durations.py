"""One duration syntax for every place a duration is written: limits.toml and the CLI.

Both spellings are accepted everywhere: a number and a unit word
(``"1 hour"``, ``"90 seconds"``, ``"2 weeks"``) or a number and a unit letter
(``"1h"``, ``"90s"``, ``"2w"``). A leaf module: it imports nothing of ours.
"""

from __future__ import annotations

import re

#: unit (word or letter) -> seconds
_SECONDS = {
    "s": 1,
    "sec": 1,
    "second": 1,
    "m": 60,
    "min": 60,
    "minute": 60,
    "h": 3600,
    "hour": 3600,
    "d": 86400,
    "day": 86400,
    "w": 604800,
    "week": 604800,
}
_DURATION = re.compile(r"^\s*(\d{1,12})\s*([a-z]+?)s?\s*$")
EXAMPLES = "e.g. 90s, 15m, 1h, 30d, 2w, or 90 seconds, 15 minutes, 1 hour, 30 days, 2 weeks"


def parse_seconds(text: object) -> int:
    """Whole seconds of ``text``; ValueError naming the accepted forms for anything else."""
    match = _DURATION.match(text.lower()) if isinstance(text, str) and len(text) < 64 else None
    unit = match[2] if match is not None else ""
    if match is None or unit not in _SECONDS or int(match[1]) == 0:
        message = f"invalid duration {text!r}: a whole number above 0 and a unit ({EXAMPLES})"
        raise ValueError(message)
    return int(match[1]) * _SECONDS[unit]
