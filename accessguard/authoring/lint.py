"""``accessguard lint``: the problems of a policy directory, each with its file and line.

``load_policy`` stops at the first fault; lint reads ``policy.csv`` itself so
it reports every faulty line, then loads the directory the way the guard does
(model, schema, limits) and reports what that refuses. Codes:

=======  ==========================  =============================================
error    policy.syntax               not a ``p``/``g`` line of the right shape
error    action.unknown              an action other than read, update or read:mask=NAME
error    mask.unknown                ``read:mask=NAME`` with a mask accessguard does not
                                     know (``email``, ``last4``, ``hash``)
error    object.wildcard             ``*``, ``*.*``, ``*.col``: wider than one table
                                     (or ``TABLE.*`` for update, or a partial ``*``)
error    table.unknown               a table schema.toml does not declare
error    table.unreachable           a table schema.toml marks ``reachable = false``
error    column.unknown              a column schema.toml does not declare
error    file.invalid                model.conf, schema.toml, limits.toml or alerts.toml
                                     does not load
error    limits.unknown_role         limits.toml names a role no policy line names
                                     (the guard refuses to load it)
warning  limits.unknown_ticket_kind  limits.toml names a ticket kind no rule names
warning  role.no_members             a role with rules that no ``g`` line gives anyone
warning  rule.duplicate              the same rule as an earlier line
warning  rule.shadowed               every access the line grants is granted anyway:
                                     by a no-ticket rule, by a role it inherits
                                     (every employee holds ``everyone``), or by
                                     a ``TABLE.*`` line of the same role and kind
                                     (a masked read, also by a clear read: clear wins)
=======  ==========================  =============================================

Edits that open or silently weaken access (a ticket-kind rule on an unscoped
table, a role typo on a ``g`` line, a near-duplicate ticket kind, a missing
limits or watch-list file) are warnings from ``accessguard.authoring.lint_access``.
``--strict`` makes every warning fail.
"""

from __future__ import annotations

import csv
import io
import re
import tomllib
from dataclasses import dataclass
from pathlib import Path

from accessguard.authoring import lint_access
from accessguard.errors import PolicyError
from accessguard.guard import LIMITS_FILE
from accessguard.policy.alerts import ALERTS_FILE, load_alerts
from accessguard.policy.catalog import Catalog, load_catalog
from accessguard.policy.masking import MASKS, mask_name, parse_action
from accessguard.policy.rules import (
    ACTIONS,
    EVERYONE,
    NO_TICKET,
    POLICY_FILE,
    SCHEMA_FILE,
    load_policy,
)
from accessguard.throttle.limits import load_limits

ERROR, WARNING = "error", "warning"
_NAME = re.compile(r"^(-|[A-Za-z_][A-Za-z0-9_.@-]*)$")


@dataclass(frozen=True, slots=True, kw_only=True)
class Finding:
    """One problem: where it is, how bad, a stable code and a message."""

    path: str
    line: int | None
    severity: str
    code: str
    message: str

    def __str__(self) -> str:
        where = f"{self.path}:{self.line}" if self.line is not None else self.path
        return f"{where}: {self.severity} {self.code}: {self.message}"


@dataclass(frozen=True, slots=True, kw_only=True)
class _Rule:
    """One well-formed ``p`` line and the accesses it grants (table, column, action)."""

    line: int
    role: str
    kind: str
    obj: str
    action: str
    accesses: frozenset[tuple[str, str, str]]

    @property
    def wildcard(self) -> bool:
        return self.obj.endswith(".*")

    @property
    def text(self) -> str:
        return f"p, {self.role}, {self.kind}, {self.obj}, {self.action}"


def lint(policies_dir: Path) -> list[Finding]:
    """Every problem found in ``policies_dir``, by file and line."""
    directory = Path(policies_dir)
    findings: list[Finding] = []
    catalog = _catalog(directory / SCHEMA_FILE, findings)
    rules, grouping_lines = _read_policy(directory / POLICY_FILE, catalog, findings)
    groupings = list(grouping_lines)
    try:
        load_policy(directory)
    except PolicyError as exc:
        if not any(f.path == exc.path and f.line == exc.line for f in findings):
            findings.append(_error(exc, "file.invalid"))
    try:
        load_alerts(directory / ALERTS_FILE)
    except PolicyError as exc:
        findings.append(_error(exc, "file.invalid"))
    path = str(directory / POLICY_FILE)
    findings += _no_members(path, rules, groupings)
    findings += _shadowed(path, rules, groupings)
    findings += _limits(directory / LIMITS_FILE, rules, groupings)
    for found in (
        *lint_access.unscoped_tables(path, list(rules), catalog),
        *lint_access.unknown_roles(path, grouping_lines, list(rules)),
        *lint_access.similar_kinds(path, list(rules)),
        *lint_access.missing_files(directory),
    ):
        findings.append(_found(*found))
    return sorted(findings, key=lambda f: (f.path, f.line or 0, f.code))


def render(findings: list[Finding]) -> str:
    """``path:line: severity code: message`` per finding, then a count."""
    errors = sum(f.severity == ERROR for f in findings)
    warnings = len(findings) - errors
    summary = f"{errors} error(s), {warnings} warning(s)" if findings else "no problems"
    return "\n".join([*(str(f) for f in findings), summary])


def exit_code(findings: list[Finding], *, strict: bool = False) -> int:
    """1 when any finding is an error (with ``strict``, any finding at all)."""
    failing = findings if strict else [f for f in findings if f.severity == ERROR]
    return 1 if failing else 0


def _error(exc: PolicyError, code: str) -> Finding:
    where = f"{exc.path}:{exc.line}" if exc.line is not None else exc.path
    message = exc.message.removeprefix(f"{where}: ")
    return Finding(path=exc.path, line=exc.line, severity=ERROR, code=code, message=message)


def _catalog(path: Path, findings: list[Finding]) -> Catalog | None:
    try:
        return load_catalog(path)
    except PolicyError as exc:
        findings.append(_error(exc, "file.invalid"))
        return None


def _read_policy(
    path: Path, catalog: Catalog | None, findings: list[Finding]
) -> tuple[list[_Rule], dict[tuple[str, str], int]]:
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        findings.append(_found(str(path), None, ERROR, "file.invalid", f"cannot read ({exc})"))
        return [], {}
    rules: list[_Rule] = []
    groupings: dict[tuple[str, str], int] = {}
    for lineno, raw in enumerate(text.splitlines(), 1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        fields = [f.strip() for f in next(csv.reader(io.StringIO(line), skipinitialspace=True))]
        problem = _shape(fields)
        if problem is not None:
            findings.append(_found(str(path), lineno, ERROR, "policy.syntax", problem))
        elif fields[0] == "g":
            groupings.setdefault((fields[1], fields[2]), lineno)
        else:
            role, kind, obj, action = fields[1:]
            found = _object(obj, action, catalog)
            if isinstance(found, tuple):
                findings.append(_found(str(path), lineno, ERROR, *found))
            else:
                rules.append(
                    _Rule(line=lineno, role=role, kind=kind, obj=obj, action=action, accesses=found)
                )
    return rules, groupings


def _found(path: str, line: int | None, severity: str, code: str, message: str) -> Finding:
    return Finding(path=path, line=line, severity=severity, code=code, message=message)


def _shape(fields: list[str]) -> str | None:
    """What is wrong with the line's shape (None: a well-formed p or g line)."""
    if fields[0] == "g":
        if len(fields) != 3:
            return "a g line has 2 fields: EMPLOYEE, ROLE"
        names = fields[1:]
    elif fields[0] == "p":
        if len(fields) != 5:
            return "a p line has 4 fields: ROLE, TICKET_KIND, TABLE.COLUMN, ACTION"
        names = [fields[1], fields[2]]
    else:
        return f"unknown line type {fields[0]!r} (p or g)"
    bad = [n for n in names if not _NAME.match(n)]
    return f"malformed name {bad[0]!r}" if bad else None


def _object(
    obj: str, action: str, catalog: Catalog | None
) -> frozenset[tuple[str, str, str]] | tuple[str, str]:
    """The accesses a ``p`` line's object and action grant, or (code, message).

    A masked read's accesses keep its whole action (``read:mask=email``): it
    is shadowed by the same masked grant, and never shadows a clear one.
    """
    parsed = parse_action(action)
    if parsed is None and mask_name(action) is not None:
        known = ", ".join(MASKS)
        return "mask.unknown", f"unknown mask {mask_name(action)!r} in {action!r} ({known})"
    if parsed is None or parsed[0] not in ACTIONS:
        return "action.unknown", f"unknown action {action!r} (read, update or read:mask=NAME)"
    table, _, column = obj.partition(".")
    if "*" in table:
        return "object.wildcard", (
            f"{obj!r} is wider than a table: name one table (TABLE.COLUMN, or TABLE.* for read)"
        )
    if not column or "." in column or not _NAME.match(table):
        return "policy.syntax", f"object {obj!r} must be TABLE.COLUMN or TABLE.*"
    if "*" in column and column != "*":
        return "object.wildcard", f"{obj!r}: only TABLE.* is a wildcard (every column)"
    if catalog is None:  # schema.toml is broken: already reported
        return frozenset()
    spec = catalog.by_name(table)
    if spec is None:
        return "table.unknown", f"unknown table {table!r} (not in schema.toml)"
    if not spec.reachable:
        return "table.unreachable", f"table {table!r} is never reachable (schema.toml)"
    if column == "*":
        if parsed[0] != "read":
            return "object.wildcard", f"{obj!r}: TABLE.* is only allowed for read"
        return frozenset((spec.qualified, c, action) for c in spec.columns)
    if column not in spec.column_set:
        return "column.unknown", f"unknown column {obj!r} (not in schema.toml)"
    return frozenset({(spec.qualified, column, action)})


# ---------------------------------------------------------------------- checks


def _no_members(path: str, rules: list[_Rule], groupings: list[tuple[str, str]]) -> list[Finding]:
    given = {role for _who, role in groupings} | {who for who, _role in groupings} | {EVERYONE}
    first: dict[str, _Rule] = {}
    for rule in rules:
        first.setdefault(rule.role, rule)
    return [
        _found(
            path,
            rule.line,
            WARNING,
            "role.no_members",
            f"no g line gives role {role!r} to anyone: its rules grant nothing",
        )
        for role, rule in first.items()
        if role not in given
    ]


def _ancestors(role: str, groupings: list[tuple[str, str]]) -> frozenset[str]:
    """The roles anyone holding ``role`` also holds (``everyone`` included)."""
    seen = {EVERYONE}
    todo = [role]
    while todo:
        current = todo.pop()
        for who, parent in groupings:
            if who == current and parent not in seen:
                seen.add(parent)
                todo.append(parent)
    seen.discard(role)
    return frozenset(seen)


def _stronger(other: _Rule, rule: _Rule) -> bool:
    """Whether ``other`` makes ``rule`` redundant rather than the reverse (no cycles)."""
    if other.role != rule.role or other.kind != rule.kind:
        return True  # a role it inherits, or no ticket needed: strictly wider
    if other.wildcard != rule.wildcard:
        return other.wildcard
    return other.line < rule.line


def _why(other: _Rule, rule: _Rule) -> str:
    if other.role != rule.role:
        if other.role == EVERYONE:
            return f"line {other.line} grants it to everyone, a role every employee holds"
        return f"{rule.role} holds {other.role}, which line {other.line} grants it to"
    if other.kind != rule.kind:
        return f"line {other.line} grants it with no ticket at all"
    return f"line {other.line} ({other.obj}) grants it already"


def _shadowed(path: str, rules: list[_Rule], groupings: list[tuple[str, str]]) -> list[Finding]:
    findings = []
    for rule in rules:
        same = next(
            (r for r in rules if r.line < rule.line and r.text == rule.text),
            None,
        )
        if same is not None:
            message = f"the same rule as line {same.line}"
            findings.append(_found(path, rule.line, WARNING, "rule.duplicate", message))
            continue
        holders = _ancestors(rule.role, groupings) | {rule.role}
        by: list[_Rule] = []
        for access in sorted(rule.accesses):
            # a clear read makes a masked one moot (clear wins)
            masked = mask_name(access[2]) is not None
            clear = (access[0], access[1], "read") if masked else access
            wider = [
                r
                for r in rules
                if r is not rule
                and (access in r.accesses or clear in r.accesses)
                and r.role in holders
                and r.kind in (rule.kind, NO_TICKET)
                and _stronger(r, rule)
            ]
            if not wider:
                break
            by.append(min(wider, key=lambda r: r.line))
        else:
            if by:
                also = sorted({r.line for r in by} - {by[0].line})
                message = f"granted anyway: {_why(by[0], rule)}"
                message += f" (and lines {', '.join(map(str, also))})" if also else ""
                findings.append(_found(path, rule.line, WARNING, "rule.shadowed", message))
    return findings


def _limits(path: Path, rules: list[_Rule], groupings: list[tuple[str, str]]) -> list[Finding]:
    if not path.exists():
        return []
    try:
        load_limits(path)
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except PolicyError as exc:
        return [_error(exc, "file.invalid")]
    text = path.read_text(encoding="utf-8")
    known = {r.role for r in rules} | {role for _who, role in groupings} | {EVERYONE}
    kinds = {r.kind for r in rules} - {NO_TICKET}
    findings = []
    roles = data.get("roles", {})
    for role, section in roles.items():
        if role not in known:
            message = f"limits for role {role!r}, which no policy line names"
            line = _header_line(text, role)
            findings.append(_found(str(path), line, ERROR, "limits.unknown_role", message))
        for kind in section.get("ticket_kinds", {}) if isinstance(section, dict) else ():
            if kind not in kinds:
                message = f"limits for ticket kind {kind!r}, which no rule names"
                line = _header_line(text, role, kind)
                findings.append(
                    _found(str(path), line, WARNING, "limits.unknown_ticket_kind", message)
                )
    return findings


def _header_line(text: str, role: str, kind: str | None = None) -> int | None:
    """The line of ``[roles.ROLE]`` (or ``[roles.ROLE.ticket_kinds.KIND]``), or None."""
    name = r'[ \t]*\.[ \t]*"?{}"?[ \t]*'
    pattern = r"^[ \t]*\[[ \t]*roles" + name.format(re.escape(role))
    if kind is not None:
        pattern += r"\.[ \t]*ticket_kinds" + name.format(re.escape(kind))
    found = re.search(pattern + r"[\].]", text, re.MULTILINE)
    return text.count("\n", 0, found.start()) + 1 if found else None
