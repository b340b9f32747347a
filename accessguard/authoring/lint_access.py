"""Lint checks for edits that open or silently weaken access (``accessguard lint``).

``accessguard.authoring.lint`` reads the files and finds malformed or redundant lines;
these checks look at what a well-formed directory *means*:

=======  ==========================  =============================================
warning  rule.unscoped_table         a ticket-kind rule on a table with no row
                                     scope: the ticket does not bound its rows
                                     (every row is readable while it is open);
                                     also what deleting a table's scope lines
                                     from schema.toml turns its rules into
warning  grouping.unknown_role       a ``g`` line gives a role no ``p`` line
                                     names and no other ``g`` line inherits
                                     from: the employee gets nothing (a typo?)
warning  rule.similar_ticket_kind    a ticket kind one or two letters away from
                                     another kind the policy uses (a typo?)
warning  file.missing                no limits.toml or no watchlist.toml: no
                                     volume limits, or no watched customers
=======  ==========================  =============================================

Warnings do not fail ``accessguard lint``; ``--strict`` fails on them too.
"""

from __future__ import annotations

import difflib
from typing import TYPE_CHECKING, Protocol

from accessguard.policy.rules import EVERYONE, NO_TICKET

if TYPE_CHECKING:
    from pathlib import Path

    from accessguard.policy.catalog import Catalog

WARNING = "warning"
#: files whose absence changes what the guard enforces, and what that means
OPTIONAL_FILES = {
    "limits.toml": "no volume limits at all (statements, rows, distinct customers)",
    "watchlist.toml": "no watched or canary customers",
}


class RuleLike(Protocol):
    """What these checks read of a ``p`` line."""

    @property
    def line(self) -> int: ...
    @property
    def role(self) -> str: ...
    @property
    def kind(self) -> str: ...
    @property
    def obj(self) -> str: ...


Found = tuple[str, int | None, str, str, str]  # path, line, severity, code, message


def unscoped_tables(path: str, rules: list[RuleLike], catalog: Catalog | None) -> list[Found]:
    """Ticket-kind rules on tables whose rows the ticket does not bound."""
    if catalog is None:
        return []
    found: list[Found] = []
    for rule in rules:
        if rule.kind == NO_TICKET:
            continue
        spec = catalog.by_name(rule.obj.partition(".")[0])
        if spec is None or spec.scope is not None:
            continue
        message = (
            f"{rule.obj} needs a {rule.kind!r} ticket, but table {spec.name!r} has no scope in "
            "schema.toml: every row is readable while such a ticket is open "
            "(add scope and scope_column, or grant it with '-' if it is public)"
        )
        found.append((path, rule.line, WARNING, "rule.unscoped_table", message))
    return found


def unknown_roles(
    path: str, lines: dict[tuple[str, str], int], rules: list[RuleLike]
) -> list[Found]:
    """``g`` lines that give a role nothing grants anything to."""
    granted = {rule.role for rule in rules} | {EVERYONE}
    inherited = {who for who, _role in lines}  # a role that is itself given roles
    found: list[Found] = []
    for (who, role), line in sorted(lines.items(), key=lambda item: item[1]):
        if role in granted or role in inherited:
            continue
        close = difflib.get_close_matches(role, sorted(granted), n=1, cutoff=0.75)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        message = f"{who!r} is given role {role!r}, which no rule names: it grants nothing{hint}"
        found.append((path, line, WARNING, "grouping.unknown_role", message))
    return found


def similar_kinds(path: str, rules: list[RuleLike]) -> list[Found]:
    """Ticket kinds so close to another kind in the policy that one is probably a typo."""
    uses: dict[str, list[int]] = {}
    for rule in rules:
        if rule.kind != NO_TICKET:
            uses.setdefault(rule.kind, []).append(rule.line)
    found: list[Found] = []
    for kind, lines in uses.items():
        others = [k for k in uses if k != kind and len(uses[k]) >= len(lines)]
        close = difflib.get_close_matches(kind, others, n=1, cutoff=0.85)
        if not close:
            continue
        message = (
            f"ticket kind {kind!r} is one or two letters from {close[0]!r} "
            f"({len(uses[close[0]])} rules): a typo grants nothing to real tickets"
        )
        found += [(path, line, WARNING, "rule.similar_ticket_kind", message) for line in lines]
    return found


def missing_files(directory: Path) -> list[Found]:
    """The optional policy files that are absent, and what their absence means."""
    return [
        (str(directory / name), None, WARNING, "file.missing", f"no {name}: {meaning}")
        for name, meaning in OPTIONAL_FILES.items()
        if not (directory / name).exists()
    ]
