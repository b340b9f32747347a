"""Watch-listed and canary data subjects (``watchlist.toml`` beside the policy).

- **Watched** customers (VIPs, employees' relatives) are read only under the
  ticket kinds listed for them: a stronger ticket than the role's ordinary
  one. Any other read is refused (``subject.watched``), and every allowed read
  is flagged in the audit trail.
- **Canary** customers are records no legitimate work touches: any allowed
  read of one raises a critical alert event at once.

```toml
[[watch]]
scope = "customer"
ids = [7]
ticket_kinds = ["escalated_order_issue"]
why = "employee relative"

[[canary]]
scope = "customer"
ids = [150]
```

Pure data plus a loader; a malformed file names its line.
"""

from __future__ import annotations

import re
import tomllib
from dataclasses import dataclass, field
from pathlib import Path

from accessguard.errors import PolicyError
from accessguard.policy.catalog import SCOPE_KINDS, toml_error

WATCHLIST_FILE = "watchlist.toml"

Subject = tuple[str, int]


@dataclass(frozen=True, slots=True)
class Watchlist:
    """Which subjects need which ticket kinds, and which are canaries."""

    #: (scope, id) -> ticket kinds that may read it, and why it is watched
    watched: dict[Subject, tuple[frozenset[str], str]] = field(default_factory=dict)
    canaries: frozenset[Subject] = frozenset()
    text: str = ""

    def __bool__(self) -> bool:
        return bool(self.watched or self.canaries)


def load_watchlist(path: Path) -> Watchlist:
    """Read ``watchlist.toml`` (an absent file is an empty watch-list)."""
    if not path.exists():
        return Watchlist()
    data = path.read_bytes()
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = data.count(b"\n", 0, exc.start) + 1
        raise PolicyError("not valid UTF-8 text", path=str(path), line=line) from exc
    return parse_watchlist(text, path)


def parse_watchlist(text: str, path: Path) -> Watchlist:
    """The watch-list in ``text`` (read from ``path``); empty text is an empty watch-list."""
    if not text:
        return Watchlist()
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        message, line = toml_error(exc)
        raise PolicyError(f"not valid TOML: {message}", path=str(path), line=line) from exc
    unknown = set(data) - {"watch", "canary"}
    if unknown:
        raise PolicyError(
            f"unknown sections: {', '.join(sorted(unknown))} (watch or canary)", path=str(path)
        )
    watched: dict[Subject, tuple[frozenset[str], str]] = {}
    canaries: set[Subject] = set()
    for section in ("watch", "canary"):
        entries = data.get(section, [])
        if not isinstance(entries, list):
            raise PolicyError(
                f"[[{section}]] must be an array of tables",
                path=str(path),
                line=_line(text, section, 0),
            )
        for index, entry in enumerate(entries):
            line = _line(text, section, index)
            subjects = _subjects(entry, section, str(path), line)
            if section == "canary":
                canaries.update(subjects)
                continue
            kinds = entry.get("ticket_kinds")
            if (
                not isinstance(kinds, list)
                or not kinds
                or not all(isinstance(k, str) for k in kinds)
            ):
                raise PolicyError(
                    '[[watch]] needs ticket_kinds = ["KIND", ...]', path=str(path), line=line
                )
            why = str(entry.get("why", "watch-listed"))
            for subject in subjects:
                watched[subject] = (frozenset(kinds), why)
    return Watchlist(watched=watched, canaries=frozenset(canaries), text=text)


def _subjects(entry: object, section: str, path: str, line: int | None) -> list[Subject]:
    if not isinstance(entry, dict):
        raise PolicyError(f"[[{section}]] entries must be tables", path=path, line=line)
    allowed = (
        {"scope", "ids", "ticket_kinds", "why"} if section == "watch" else {"scope", "ids", "why"}
    )
    unknown = set(entry) - allowed
    if unknown:
        raise PolicyError(
            f"[[{section}]] has unknown keys: {', '.join(sorted(unknown))}", path=path, line=line
        )
    scope = entry.get("scope", "customer")
    if scope not in SCOPE_KINDS:
        raise PolicyError(f"scope must be one of {', '.join(SCOPE_KINDS)}", path=path, line=line)
    ids = entry.get("ids")
    if (
        not isinstance(ids, list)
        or not ids
        or not all(isinstance(i, int) and not isinstance(i, bool) for i in ids)
    ):
        raise PolicyError(f"[[{section}]] needs ids = [INTEGER, ...]", path=path, line=line)
    return [(scope, i) for i in ids]


def _line(text: str, section: str, index: int) -> int | None:
    hits = [
        m.start() for m in re.finditer(rf"^[ \t]*\[\[[ \t]*{section}[ \t]*\]\]", text, re.MULTILINE)
    ]
    if index < len(hits):
        return text.count("\n", 0, hits[index]) + 1
    return None
