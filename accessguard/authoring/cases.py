"""Tools for the security team who write policies: policy tests and explain.

- :func:`run_policy_tests` (``accessguard test``): YAML files of cases (employee,
  ticket, SQL, expected outcome) decided against a policy directory, with a
  coverage report of the ``p`` lines that no passing allowed case used.
- ``accessguard explain`` is :mod:`accessguard.authoring.explain`: what the
  analyser found in one statement, the rule behind each access or the grant
  that is missing, the decision, and the SQL that would be sent.

``accessguard lint`` is :mod:`accessguard.authoring.lint`, ``accessguard replay``
:mod:`accessguard.investigate.replay`. The commands (``accessguard.cli.tools``)
take the parsed arguments and return ``(exit code, text)``; nothing here prints.

How a policy test file runs: every case goes through ``Guard.authorize`` in
file order, on one guard per file (its own tickets, an in-memory audit, the
directory's ``limits.toml``) whose throttle clock moves one second per case:
twenty-one customers read in twenty-one cases show the 21st throttled, while a
long file stays under a per-minute statement limit of 60 or more. The
rows-per-statement limit needs rows and a database: it is not tested here.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from accessguard.analysis import Facts
from accessguard.decision import Context
from accessguard.errors import AccessDenied, AccessGuardError, Reason, Throttled
from accessguard.guard import Guard, Session
from accessguard.policy.rules import NO_TICKET, Access, Policy, Rule, load_policy
from accessguard.testing import MemoryAuditSink
from accessguard.tickets.stores import Ticket

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
                "used": [line_dict(line) for line in self.covered],
                "unused": [line_dict(line) for line in self.uncovered],
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


def line_dict(line: PolicyLine) -> dict[str, Any]:
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
        sql, params = native_params(case.sql, case.params)
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


def native_params(sql: str, params: Params) -> tuple[str, Any]:
    """psycopg's ``%s`` / ``%(name)s`` as ``$n`` with the values in order (as ``check`` does)."""
    if params is None:
        return sql, None
    from accessguard.engine.paramstyle import convert_query

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


# ---------------------------------------------------------------------- commands
