"""Tools for the security team who write policies: policy tests and explain.

- :func:`run_policy_tests` (``accessguard test``): YAML files of cases (employee,
  ticket, SQL, expected outcome) decided against a policy directory, with a
  coverage report of the ``p`` lines that no passing allowed case used.
- :func:`explain` (``accessguard explain``): what the analyser found in one
  statement, the rule behind each access or the grant that is missing, the
  decision, and the SQL that would be sent.

``accessguard lint`` is :mod:`accessguard.lint`, ``accessguard replay``
:mod:`accessguard.replay`. Each ``*_command`` takes the
parsed CLI arguments and returns ``(exit code, text)``; nothing here prints.

How a policy test file runs: every case goes through ``Guard.authorize`` in
file order, on one guard per file (its own tickets, an in-memory audit, the
directory's ``limits.toml``) whose throttle clock moves one second per case:
twenty-one customers read in twenty-one cases show the 21st throttled, while a
long file stays under a per-minute statement limit of 60 or more. The
rows-per-statement limit needs rows and a database: it is not tested here.
"""

from __future__ import annotations

import argparse
import json
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from accessguard.analysis import Const, Facts, Param, redact, subject_marker
from accessguard.catalog import SCOPE_KINDS
from accessguard.decision import Context, Decision, decide
from accessguard.errors import AccessDenied, AccessGuardError, Reason, Throttled
from accessguard.guard import Guard, Session
from accessguard.policy import EVERYONE, NO_TICKET, Access, Policy, Rule, load_policy
from accessguard.probes import keyed
from accessguard.testing import MemoryAuditSink
from accessguard.tickets import FileTicketStore, Ticket

EXPECTATIONS = ("allowed", "denied", "throttled")
EXIT_OK, EXIT_FAILED, EXIT_MALFORMED = 0, 1, 2

_FILE_KEYS = frozenset({"tickets", "cases"})
_CASE_KEYS = frozenset({"name", "user", "ticket", "sql", "params", "expect", "reason"})
_REASONS = frozenset(str(r) for r in Reason)
#: the throttle's clock in policy tests starts here and moves one second per case
_START = 1_700_000_000.0

Params = tuple[Any, ...] | Mapping[str, Any] | None


# ---------------------------------------------------------------------- policy tests


class CaseFileError(ValueError):
    """A policy test file that cannot be read as cases; names the file and line."""

    def __init__(self, message: str, path: Path, line: int | None = None) -> None:
        where = f"{path}:{line}" if line is not None else str(path)
        super().__init__(f"{where}: {message}")


@dataclass(frozen=True, slots=True, kw_only=True)
class Case:
    """One case of a policy test file."""

    path: Path
    line: int | None
    index: int
    name: str | None
    user: str
    ticket: str | None
    sql: str
    params: Params
    expect: str
    reason: str | None

    @property
    def label(self) -> str:
        where = f"{self.path}:{self.line}" if self.line is not None else str(self.path)
        return f"{where} case {self.index}" + (f" ({self.name})" if self.name else "")


@dataclass(frozen=True, slots=True, kw_only=True)
class CaseResult:
    """What a case got: outcome, reason code (None when allowed) and message."""

    case: Case
    outcome: str
    reason: str | None
    message: str

    @property
    def passed(self) -> bool:
        expected = self.case
        return self.outcome == expected.expect and expected.reason in (None, self.reason)


@dataclass(frozen=True, slots=True, kw_only=True)
class PolicyLine:
    """A ``p`` line of the policy file, as written."""

    path: str
    line: int
    text: str

    def __str__(self) -> str:
        return f"{Path(self.path).name}:{self.line}  {self.text}"


@dataclass(frozen=True, slots=True, kw_only=True)
class PolicyTestReport:
    """The results of ``accessguard test`` (not ``TestReport``: pytest would collect it)."""

    results: tuple[CaseResult, ...]
    #: ``p`` lines that no passing allowed case used
    uncovered: tuple[PolicyLine, ...]
    policy_lines: int
    #: files that are not valid test files, each "path:line: problem"
    errors: tuple[str, ...] = ()
    #: ``p`` lines that a passing allowed case used
    covered: tuple[PolicyLine, ...] = ()

    @property
    def failed(self) -> tuple[CaseResult, ...]:
        return tuple(r for r in self.results if not r.passed)

    @property
    def exit_code(self) -> int:
        if self.errors:
            return EXIT_MALFORMED
        return EXIT_FAILED if self.failed else EXIT_OK

    def render(self) -> str:
        """The report as text: failures with a diff, per-file counts, coverage, a verdict."""
        out = [f"error: {e}" for e in self.errors]
        for result in self.failed:
            case = result.case
            expected = case.expect + (f" ({case.reason})" if case.reason else "")
            actual = result.outcome + (f" ({result.reason})" if result.reason else "")
            out += [
                f"FAIL {case.label}",
                f"  {case.user} on {case.ticket or 'no ticket'}: {case.sql}",
                f"  expected: {expected}",
                f"  actual:   {actual}",
            ]
            if result.message:
                out.append(f"  message:  {result.message}")
        per_file: dict[Path, Counter[bool]] = {}
        for result in self.results:
            per_file.setdefault(result.case.path, Counter())[result.passed] += 1
        out += [f"{path}: {c[True]} passed, {c[False]} failed" for path, c in per_file.items()]
        used = self.policy_lines - len(self.uncovered)
        if not self.errors:  # a partial run's coverage is noise
            total = self.policy_lines
            out.append(f"coverage: {used} of {total} policy lines used by a passing allowed case")
            if self.uncovered:
                out += ["not exercised:", *(f"  {line}" for line in self.uncovered)]
        total, failed = len(self.results), len(self.failed)
        if self.errors:
            out.append(f"ERROR: {len(self.errors)} malformed test file(s)")
        elif failed:
            out.append(f"FAILED: {failed} of {total} cases failed")
        else:
            out.append(f"ok: {total} cases passed")
        return "\n".join(out)

    def as_dict(self) -> dict[str, Any]:
        """The report as JSON-ready data (``accessguard test --format json``)."""
        per_file: dict[Path, Counter[bool]] = {}
        for result in self.results:
            per_file.setdefault(result.case.path, Counter())[result.passed] += 1
        return {
            "ok": self.exit_code == EXIT_OK,
            "errors": list(self.errors),
            "files": [
                {"path": str(path), "passed": c[True], "failed": c[False]}
                for path, c in per_file.items()
            ],
            "failures": [_failure(r) for r in self.failed],
            "coverage": {
                "policy_lines": self.policy_lines,
                "used": [_line_dict(line) for line in self.covered],
                "unused": [_line_dict(line) for line in self.uncovered],
            },
        }


def _failure(result: CaseResult) -> dict[str, Any]:
    case = result.case
    return {
        "file": str(case.path),
        "line": case.line,
        "case": case.index,
        "name": case.name,
        "user": case.user,
        "ticket": case.ticket,
        "sql": case.sql,
        "expected": {"outcome": case.expect, "reason": case.reason},
        "actual": {"outcome": result.outcome, "reason": result.reason},
        "message": result.message or None,
    }


def _line_dict(line: PolicyLine) -> dict[str, Any]:
    return {"path": line.path, "line": line.line, "text": line.text}


def run_policy_tests(policies_dir: Path, files: Sequence[Path]) -> PolicyTestReport:
    """Run every case of ``files`` against ``policies_dir``; PolicyError if the policy is bad."""
    policy = load_policy(policies_dir)
    results: list[CaseResult] = []
    errors: list[str] = []
    used: set[tuple[str, int]] = set()
    for path in files:
        try:
            tickets, cases = load_case_file(path)
        except CaseFileError as exc:
            errors.append(str(exc))
            continue
        results += _run_file(policies_dir, tickets, cases, used)
    lines = policy_lines(policy)
    uncovered = tuple(line for key, line in lines.items() if key not in used)
    covered = tuple(line for key, line in lines.items() if key in used)
    return PolicyTestReport(
        results=tuple(results),
        uncovered=uncovered,
        policy_lines=len(lines),
        errors=tuple(errors),
        covered=covered,
    )


def _run_file(
    policies_dir: Path,
    tickets: Sequence[Ticket],
    cases: Sequence[Case],
    used: set[tuple[str, int]],
) -> list[CaseResult]:
    clock = [_START]
    guard = Guard.from_directory(
        policies_dir, tickets=tickets, audit=MemoryAuditSink(), throttle_clock=lambda: clock[0]
    )
    results = []
    try:
        for case in cases:
            clock[0] += 1.0
            result, context, facts = _run_case(guard, case)
            results.append(result)
            if result.passed and context is not None and facts is not None:
                for rule in _rules_used(guard.policy, context, facts.accesses):
                    used.add((rule.path, rule.line))
    finally:
        guard.close()
    return results


def _run_case(guard: Guard, case: Case) -> tuple[CaseResult, Context | None, Facts | None]:
    def result(outcome: str, reason: object = None, message: str = "") -> CaseResult:
        code = str(reason) if reason is not None else None
        return CaseResult(case=case, outcome=outcome, reason=code, message=message)

    session = Session(user=case.user, ticket=case.ticket)
    try:
        sql, params = _native(case.sql, case.params)
        ok = guard.authorize(sql, params, session, dialect="postgres")
    except Throttled as exc:
        return result("throttled", exc.reason, exc.message), None, None
    except AccessDenied as exc:
        return result("denied", exc.reason, exc.message), None, None
    except AccessGuardError as exc:
        return result("error", exc.reason, exc.message), None, None
    except Exception as exc:  # noqa: BLE001 - e.g. params that do not fit: the case fails
        return result("error", type(exc).__name__, str(exc)), None, None
    return result("allowed"), ok.context, ok.facts


def _native(sql: str, params: Params) -> tuple[str, Any]:
    """psycopg's ``%s`` / ``%(name)s`` as ``$n`` with the values in order (as ``check`` does)."""
    if params is None:
        return sql, None
    from accessguard.adapters.psycopg3 import convert_query

    return convert_query(sql, params)


def _rules_used(policy: Policy, context: Context, accesses: Iterable[Access]) -> list[Rule]:
    kind = context.valid.kind if context.valid is not None else None
    found: list[Rule] = []
    for access in accesses:
        found += policy.rules_for(context.roles, NO_TICKET, access)
        if kind is not None:
            found += policy.rules_for(context.roles, kind, access)
    return found


def policy_lines(policy: Policy) -> dict[tuple[str, int], PolicyLine]:
    """Every ``p`` line of the policy, by (path, line), in file order."""
    texts: dict[str, list[str]] = {}
    lines: dict[tuple[str, int], PolicyLine] = {}
    for rule in policy.rules:
        if (rule.path, rule.line) not in lines:
            if rule.path not in texts:
                texts[rule.path] = Path(rule.path).read_text(encoding="utf-8").splitlines()
            text = texts[rule.path][rule.line - 1].strip()
            lines[rule.path, rule.line] = PolicyLine(path=rule.path, line=rule.line, text=text)
    return lines


# ---------------------------------------------------------------------- test files


def load_case_file(path: Path) -> tuple[tuple[Ticket, ...], tuple[Case, ...]]:
    """Read one policy test file; CaseFileError names the file and line of any fault."""
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise CaseFileError(f"cannot read the file ({exc.strerror})", path) from exc
    try:
        root = yaml.compose(text, Loader=yaml.SafeLoader)
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        problem = getattr(exc, "problem", None) or str(exc)
        line = mark.line + 1 if mark is not None else None
        raise CaseFileError(f"not valid YAML: {problem}", path, line) from exc
    if not isinstance(data, dict) or not isinstance(root, yaml.MappingNode):
        raise CaseFileError("expected a mapping with cases: (and optionally tickets:)", path, 1)
    keys = {str(k.value): (k.start_mark.line + 1, v) for k, v in root.value}
    for key in sorted(set(data) - _FILE_KEYS):
        raise CaseFileError(f"unknown key {key!r} (expected tickets, cases)", path, keys[key][0])
    tickets = _tickets(data.get("tickets"), path, keys.get("tickets"))
    raw_cases = data.get("cases")
    where = keys.get("cases")
    if not isinstance(raw_cases, list) or not raw_cases:
        line = where[0] if where else 1
        raise CaseFileError("cases: must be a non-empty list of cases", path, line)
    lines = _item_lines(where)
    cases = tuple(
        _case(raw, path, lines[i] if i < len(lines) else None, i + 1)
        for i, raw in enumerate(raw_cases)
    )
    return tickets, cases


def _item_lines(where: tuple[int, yaml.Node] | None) -> list[int]:
    if where is None or not isinstance(where[1], yaml.SequenceNode):
        return []
    return [item.start_mark.line + 1 for item in where[1].value]


def _tickets(raw: object, path: Path, where: tuple[int, yaml.Node] | None) -> tuple[Ticket, ...]:
    if raw is None:
        return ()
    if not isinstance(raw, list):
        raise CaseFileError("tickets: must be a list of tickets", path, where[0] if where else None)
    lines = _item_lines(where)
    tickets = []
    for i, entry in enumerate(raw):
        line = lines[i] if i < len(lines) else None
        if not isinstance(entry, dict):
            raise CaseFileError(f"ticket {i + 1} is not a mapping", path, line)
        try:
            tickets.append(Ticket.from_mapping(entry))
        except ValueError as exc:
            raise CaseFileError(f"ticket {i + 1}: {exc}", path, line) from exc
    return tuple(tickets)


def _case(raw: object, path: Path, line: int | None, index: int) -> Case:
    def fail(message: str) -> CaseFileError:
        return CaseFileError(f"case {index}: {message}", path, line)

    if not isinstance(raw, dict):
        raise fail("not a mapping (user, ticket, sql, params, expect, reason, name)")
    if unknown := sorted(str(k) for k in set(raw) - _CASE_KEYS):
        raise fail(f"unknown key {unknown[0]!r} (allowed: {', '.join(sorted(_CASE_KEYS))})")
    user, sql, expect = raw.get("user"), raw.get("sql"), raw.get("expect")
    if not isinstance(user, str) or not user:
        raise fail("user: must name the employee")
    if not isinstance(sql, str) or not sql.strip():
        raise fail("sql: must be the statement")
    if expect not in EXPECTATIONS:
        raise fail(f"expect: must be one of {', '.join(EXPECTATIONS)}, not {expect!r}")
    reason = raw.get("reason")
    if reason is not None and (expect == "allowed" or str(reason) not in _REASONS):
        raise fail(f"reason: {reason!r} is not a reason code of a refusal (e.g. ticket.required)")
    params = raw.get("params")
    if params is not None and not isinstance(params, list | dict):
        raise fail("params: must be a list (%s) or a mapping (%(name)s)")
    ticket, name = raw.get("ticket"), raw.get("name")
    return Case(
        path=path,
        line=line,
        index=index,
        name=str(name) if name is not None else None,
        user=user,
        ticket=str(ticket) if ticket is not None else None,
        sql=sql.strip(),
        params=tuple(params) if isinstance(params, list) else params,
        expect=str(expect),
        reason=str(reason) if reason is not None else None,
    )


# ---------------------------------------------------------------------- explain


def explain(  # noqa: PLR0913 - the options of `accessguard check`
    guard: Guard,
    sql: str,
    *,
    user: str,
    ticket: str | None,
    dialect: str = "postgres",
    params: Sequence[Any] | Mapping[str, Any] | None = None,
) -> str:
    """Facts, the rule behind each access (or the missing grant), the decision, the sent SQL.

    Shows bound subject ids (the scope), never a string literal: the sent SQL
    has every literal as ``?``, the ticket's subject id filled in.
    """
    context, facts, decision = _explained(
        guard, sql, user=user, ticket=ticket, dialect=dialect, params=params
    )
    policy, roles = guard.policy, context.roles
    out = [
        f"employee:  {user} (roles: {', '.join(sorted(roles))})",
        f"ticket:    {_ticket_text(context)}",
        f"statement: {facts.kind.upper()}",
    ]
    if facts.problem is not None:
        out.append(f"analysis:  refused ({facts.problem}): {facts.detail}")
    else:
        out += [
            f"tables:    {', '.join(facts.table_names) or '(none)'}",
            f"reads:     {_columns(facts.reads)}",
            f"writes:    {_columns(facts.writes)}",
            f"functions: {', '.join(sorted(facts.functions)) or '(none)'}",
            "row scope:" + ("" if facts.scopes else " (no scoped table)"),
            *(f"  {line}" for line in _scope_lines(facts, context)),
            "access:",
            *(f"  {line}" for line in _access_lines(facts, context, policy)),
        ]
    verdict = decision.outcome + (f" ({decision.reason})" if decision.reason else "")
    if decision.allowed and keyed(facts):
        verdict += " on a guarded connection, after its probe (check alone refuses it)"
    out.append(f"decision:  {verdict}")
    if decision.message:
        out.append(f"           {decision.message}")
    out.append(f"sent:      {_sent_text(facts, decision)}")
    return "\n".join(out)


def _explained(  # noqa: PLR0913 - the options of `accessguard check`
    guard: Guard,
    sql: str,
    *,
    user: str,
    ticket: str | None,
    dialect: str,
    params: Sequence[Any] | Mapping[str, Any] | None,
) -> tuple[Context, Facts, Decision]:
    if dialect == "postgres" and params is not None:
        sql, params = _native(sql, params if isinstance(params, Mapping) else tuple(params))
    policy = guard.policy
    found = guard.tickets.get(ticket) if ticket is not None else None
    roles = policy.roles_of(user)
    context = Context(user=user, roles=roles, ticket_id=ticket, ticket=found, params=params)
    facts = guard.analyze(sql, dialect=dialect, params=params is not None)
    return context, facts, decide(facts, context, policy)


def explain_data(  # noqa: PLR0913 - the options of `accessguard check`
    guard: Guard,
    sql: str,
    *,
    user: str,
    ticket: str | None,
    dialect: str = "postgres",
    params: Sequence[Any] | Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """What :func:`explain` shows, as JSON-ready data (``accessguard explain --format json``)."""
    context, facts, decision = _explained(
        guard, sql, user=user, ticket=ticket, dialect=dialect, params=params
    )
    policy = guard.policy
    analyzed = facts.problem is None
    sent = _sent_sql(facts, decision)
    return {
        "employee": user,
        "roles": sorted(context.roles),
        "ticket": _ticket_data(context),
        "statement": facts.kind,
        "analysis": None if analyzed else {"reason": str(facts.problem), "detail": facts.detail},
        "tables": list(facts.table_names) if analyzed else [],
        "reads": _column_list(facts.reads) if analyzed else [],
        "writes": _column_list(facts.writes) if analyzed else [],
        "functions": sorted(facts.functions) if analyzed else [],
        "row_scope": _scope_data(facts, context) if analyzed else [],
        "accesses": _access_data(facts, context, policy) if analyzed else [],
        "decision": {
            "outcome": decision.outcome,
            "reason": str(decision.reason) if decision.reason else None,
            "message": decision.message or None,
        },
        # literals as ?; the ticket's subject id filled in only when allowed
        "sent": sent,
    }


def _ticket_data(context: Context) -> dict[str, Any] | None:
    ticket = context.ticket
    if context.ticket_id is None:
        return None
    data: dict[str, Any] = {"id": context.ticket_id, "found": ticket is not None}
    if ticket is not None:
        data |= {"status": ticket.status, "kind": ticket.kind, "assignee": ticket.assignee}
        data |= {scope: getattr(ticket, attr) for scope, attr in SCOPE_KINDS.items()}
    problem = context.ticket_problem
    data["counts"] = context.valid is not None
    data["problem"] = (
        None if problem is None else {"reason": str(problem.reason), "message": problem.message}
    )
    return data


def _column_list(pairs: frozenset[tuple[str, str]]) -> list[str]:
    return sorted(f"{t.rsplit('.', 1)[-1]}.{c}" for t, c in pairs)


def _scope_data(facts: Facts, context: Context) -> list[dict[str, Any]]:
    ticket = context.valid
    out = []
    for ref in facts.scopes:
        subject = getattr(ticket, SCOPE_KINDS[ref.scope]) if ticket is not None else None
        out.append(
            {
                "table": ref.table.rsplit(".", 1)[-1],
                "scope": ref.scope,
                "bound": bool(ref.values),
                "values": [_value_data(v, context.params) for v in ref.values],
                "ticket_subject": subject,
            }
        )
    return out


def _value_data(value: Const | Param, params: object) -> dict[str, Any]:
    if isinstance(value, Const):
        return {"literal": value.value}
    key = value.key
    name = f"${key + 1}" if isinstance(key, int) else f"%({key})s"
    try:
        bound = params[key] if isinstance(params, Mapping | Sequence) else None  # type: ignore[index]
    except (KeyError, IndexError, TypeError):
        bound = None
    whole = isinstance(bound, int) and not isinstance(bound, bool)
    return {"param": name, "bound": bound if whole else None}


def _access_data(facts: Facts, context: Context, policy: Policy) -> list[dict[str, Any]]:
    texts = policy_lines(policy)
    out = []
    for access in _accesses(facts):
        table, column, action = access
        rules = _allowing(access, context, policy)
        allowed_by = _line_dict(texts[rules[0].path, rules[0].line]) if rules else None
        out.append(
            {
                "action": action,
                "table": table.rsplit(".", 1)[-1],
                "column": column,
                "allowed_by": allowed_by,
                "missing": None if rules else _missing(access, context, policy, texts),
            }
        )
    return out


def _accesses(facts: Facts) -> list[Access]:
    accesses: list[Access] = sorted((t, c, "read") for t, c in facts.reads)
    return accesses + sorted((t, c, "update") for t, c in facts.writes)


def _allowing(access: Access, context: Context, policy: Policy) -> list[Rule]:
    kind = context.valid.kind if context.valid is not None else None
    rules = policy.rules_for(context.roles, NO_TICKET, access)
    return rules + (policy.rules_for(context.roles, kind, access) if kind is not None else [])


def _ticket_text(context: Context) -> str:
    ticket = context.ticket
    if context.ticket_id is None:
        return "(none)"
    if ticket is None:
        return f"{context.ticket_id}: no such ticket"
    subject = ", ".join(
        f"{scope} {getattr(ticket, attr)}"
        for scope, attr in SCOPE_KINDS.items()
        if getattr(ticket, attr) is not None
    )
    text = f"{ticket.id}: {ticket.status} {ticket.kind} ticket, assigned to {ticket.assignee}"
    text += f", {subject}" if subject else ""
    if context.ticket_problem is not None:
        text += f" (does not count: {context.ticket_problem.message})"
    return text


def _columns(pairs: frozenset[tuple[str, str]]) -> str:
    return ", ".join(sorted(f"{t.rsplit('.', 1)[-1]}.{c}" for t, c in pairs)) or "(none)"


def _scope_lines(facts: Facts, context: Context) -> list[str]:
    ticket = context.valid
    lines = []
    for ref in facts.scopes:
        table = ref.table.rsplit(".", 1)[-1]
        subject = getattr(ticket, SCOPE_KINDS[ref.scope]) if ticket is not None else None
        want = f"ticket's {ref.scope}: {subject}" if subject is not None else "no ticket subject"
        key = ref.key
        if key is not None and key.via is not None and not ref.values:
            other = f"{key.via.table.rsplit('.', 1)[-1]}.{key.via.column}"
            how = "probed before sending" if key.via.probe else "its scope column equals that one's"
            lines.append(f"{table}: {key.column} bound through {other} ({how}; {want})")
            continue
        if not ref.values and ref.key is not None:
            shown = [_value_text(v, context.params) for v in ref.key.values]
            lines.append(
                f"{table}: named by {ref.key.column} in ({', '.join(shown)}) only: a guarded "
                f"connection probes that every such row is the ticket's {ref.scope}'s before "
                f"sending ({want})"
            )
            continue
        if not ref.values:
            lines.append(f"{table}: {ref.scope} not bound: any {ref.scope}'s rows ({want})")
            continue
        shown = [_value_text(v, context.params) for v in ref.values]
        lines.append(f"{table}: {ref.scope} id = {' and '.join(shown)} ({want})")
    return lines


def _value_text(value: Const | Param, params: object) -> str:
    if isinstance(value, Const):
        return f"{value.value} (literal)"
    key = value.key
    name = f"${key + 1}" if isinstance(key, int) else f"%({key})s"
    try:
        bound = params[key] if isinstance(params, Mapping | Sequence) else None  # type: ignore[index]
    except (KeyError, IndexError, TypeError):
        bound = None
    if isinstance(bound, int) and not isinstance(bound, bool):
        return f"{name} = {bound}"
    return f"{name} (no integer bound)"


def _access_lines(facts: Facts, context: Context, policy: Policy) -> list[str]:
    accesses = _accesses(facts)
    texts = policy_lines(policy)
    width = max((len(a[1]) + len(a[0].rsplit(".", 1)[-1]) + len(a[2]) for a in accesses), default=0)
    lines = []
    for access in accesses:
        table, column, action = access
        label = f"{action} {table.rsplit('.', 1)[-1]}.{column}".ljust(width + 2)
        rules = _allowing(access, context, policy)
        if rules:
            lines.append(f"{label}  allowed by {texts[rules[0].path, rules[0].line]}")
        else:
            lines.append(f"{label}  MISSING: {_missing(access, context, policy, texts)}")
    return lines


def _missing(
    access: Access,
    context: Context,
    policy: Policy,
    texts: Mapping[tuple[str, int], PolicyLine],
) -> str:
    table, column, action = access
    obj = f"{table.rsplit('.', 1)[-1]}.{column}"
    mine = [
        r
        for r in policy.rules
        if r.role in context.roles and (r.table, r.column, r.action) == access
    ]
    if mine:
        kinds = sorted({r.kind for r in mine})
        where = ", ".join(f"{Path(r.path).name}:{r.line}" for r in mine)
        return f"needs an open {' or '.join(kinds)} ticket assigned to {context.user} ({where})"
    others = [r for r in policy.rules if (r.table, r.column, r.action) == access]
    role = next(iter(sorted(context.roles - {EVERYONE})), EVERYONE)
    kind = context.valid.kind if context.valid is not None else NO_TICKET
    text = (
        f"no rule lets {role} {action} it; the grant would be: p, {role}, {kind}, {obj}, {action}"
    )
    if others:
        text += f" (other roles have it: {texts[others[0].path, others[0].line]})"
    return text


def _redacted_sent(facts: Facts) -> str | None:
    if facts.sent is None:
        return None
    # psycopg's %s placeholders survive the redaction as one word
    text = redact(
        facts.sent.replace("%s", "__ag_param__").replace("%%", "%"), dialect=facts.dialect
    )
    return None if text is None else text.replace("__ag_param__", "%s")


def _sent_sql(facts: Facts, decision: Decision) -> str | None:
    """The SQL to be sent, literals as ``?``, the subject ids filled in when allowed."""
    text = _redacted_sent(facts)
    if text is None:
        return None
    if decision.allowed:
        for scope, subject in decision.subjects:
            text = text.replace(subject_marker(scope), str(int(subject)))
    return text


def _sent_text(facts: Facts, decision: Decision) -> str:
    if facts.sent is None:
        return "(nothing: the statement is refused before it is rewritten)"
    text = _sent_sql(facts, decision)
    if text is None:
        return "(the rewritten statement cannot be shown)"
    if not decision.allowed:
        return (
            f"{text}\n           (refused: {subject_marker('<scope>')} stands for the ticket's id)"
        )
    return f"{text}\n           (literals shown as ?)"


# ---------------------------------------------------------------------- commands


def policy_test_command(args: argparse.Namespace) -> tuple[int, str]:
    """``accessguard test --policies DIR FILE... [--format json]``."""
    report = run_policy_tests(args.policies, args.files)
    if getattr(args, "format", "text") == "json":
        return report.exit_code, json.dumps(report.as_dict(), indent=2)
    return report.exit_code, report.render()


def explain_command(
    args: argparse.Namespace, *, params: Sequence[Any] | Mapping[str, Any] | None = None
) -> tuple[int, str]:
    """``accessguard explain`` (the options of ``check``); exit 0 allowed, 1 refused."""
    guard = Guard.from_directory(
        args.policies, tickets=FileTicketStore(args.tickets), audit=MemoryAuditSink()
    )
    options: dict[str, Any] = {"user": args.user, "ticket": args.ticket, "dialect": args.dialect}
    try:
        if getattr(args, "format", "text") == "json":
            text = json.dumps(explain_data(guard, args.sql, params=params, **options), indent=2)
        else:
            text = explain(guard, args.sql, params=params, **options)
        allowed = guard.check(args.sql, params, **options)
    finally:
        guard.close()
    return (EXIT_OK if allowed.allowed else EXIT_FAILED), text
