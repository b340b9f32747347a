"""A long, seeded fuzz run over analyze() + decide() for alice on T-100 (customer 42).

    .venv/bin/python -m benchmarks.fuzz --inputs 1000000 --seed 1
    .venv/bin/python -m benchmarks.fuzz --inputs 200000 --seed 1 --pg postgresql://postgres@127.0.0.1:5432/test
    .venv/bin/python -m benchmarks.fuzz --engine atheris --inputs 100000 --seed 1

Inputs (engine ``mutate``, deterministic for a seed): token mutations of every
statement of the case files (tests/cases/*.yaml), SELECTs from the grammar of
tests/strategies.py (joins, WHERE trees, subqueries, name-resolution tricks),
mutated grammar SELECTs, random text, and crafted adversarial text (one unit,
such as an unclosed comment or quote, repeated up to past the length limit;
lone surrogates), each crafted unit once at the start and then at random.
Engine ``atheris`` (if installed) lets libFuzzer drive the same generators
from its byte inputs instead.

For every input: ``analyze`` and ``decide`` must not raise, and guard.connect()'s
path must raise nothing outside ``AccessGuardError`` (a *crash*). Each input's
time on each path (check()'s analyze + decide; the connect path) is measured:
the summary gives the worst of each and how many took over a second on one
path (*slow*; the goal is none). For every allowed one (a *leak* otherwise):

- the kind is SELECT or UPDATE and every scope value is the constant 42;
- every column read or written is granted to alice (``Policy.allows``);
- the SQL actually sent (42 substituted), parsed by PostgreSQL's own parser,
  reads each customer-scoped table only through ``(SELECT * FROM public.t
  WHERE <scope column> = 42)`` (or, for the UPDATE target, with that filter
  ANDed to its WHERE): the second wall, checked structurally.

Also counted: allowed statements PostgreSQL's parser disagrees with
(``crosscheck``: refused once it is wired into ``analyze``). With ``--pg``,
each allowed statement also runs through a guarded connection on a scenario
database and raw on a database holding only alice's view; differing results
are *pg leaks* (rows, or a data error such as a cast that echoes a secret) or
*fidelity* differences (the guard ran what the server would have rejected).

Prints progress every ``--progress`` inputs and a final summary.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import random
import re
import sys
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psycopg
from pglast.parser import ParseError, parse_sql_json

import accessguard.scenario
from accessguard import AccessGuardError, Guard, analysis
from accessguard.adapters.psycopg3 import authorize_statement
from accessguard.analysis import (
    MAX_SQL_LENGTH,
    Const,
    Facts,
    Param,
    analyze,
    screen,
    screen_placeholders,
    subject_marker,
)
from accessguard.analysis.crosscheck import crosscheck
from accessguard.analysis.sentcheck import verify_sent
from accessguard.decision import Context, decide
from accessguard.engine.paramstyle import convert_query
from accessguard.guard import Session
from accessguard.policy.rules import NO_TICKET, Policy, load_policy

TESTS = Path(__file__).resolve().parents[1] / "tests"
if str(TESTS) not in sys.path:
    sys.path.insert(0, str(TESTS))

import strategies  # type: ignore[import-not-found,unused-ignore]  # noqa: E402 - tests/ is no package

USER, TICKET, SUBJECT = "alice", "T-100", 42
ALPHABET = (
    "abcdefghijklmnopqrstuvwxyz_ABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789"
    " \t\n\r\v\f'\"$-/*;:%()[]{}.,=<>!|&^~@#?\\+\u00a0\u2028\u200b\u0085é\x00"
)


@dataclass(slots=True)
class Tally:
    """What the run found."""

    inputs: int = 0
    analyzable: int = 0
    allowed: int = 0
    crashes: int = 0
    leaks: int = 0
    disagreements: int = 0
    pg_checked: int = 0
    pg_leaks: int = 0
    pg_fidelity: int = 0
    #: allowed statements whose SQL sent PostgreSQL's parser rejects (the server errors)
    unparsable: int = 0
    #: guard.connect()'s path (authorize_statement, no database): allowed, allowed while
    #: check() refuses the text, and allowed with an unsound SQL text sent
    connect_allowed: int = 0
    connect_only: int = 0
    connect_leaks: int = 0
    #: the longest time one input took on each path, and how many took over a second
    worst_text_s: float = 0.0
    worst_connect_s: float = 0.0
    slow: int = 0
    kinds: Counter[str] = field(default_factory=Counter)
    findings: dict[str, list[str]] = field(default_factory=dict)

    def note(self, what: str, sql: str, detail: str, keep: int) -> None:
        """Remember up to ``keep`` examples of a finding."""
        examples = self.findings.setdefault(what, [])
        if len(examples) < keep:
            examples.append(f"{detail} :: {sql!r}"[:600])


# ---------------------------------------------------------------------- generating


Input = tuple[str, list[Any] | None]

#: Payloads for the literal-splice generator: SQL that would matter if a
#: parser took it for code rather than for the literal around it.
PAYLOADS = (
    "= 42 OR true OR 42 = ",
    ", (SELECT string_agg(card_token, ',') FROM payments) AS x, ",
    "= 42 AND EXISTS (SELECT 1 FROM payments WHERE customer_id = 7) AND 42 = ",
    "= 42 UNION SELECT email FROM customers --",
    "; DELETE FROM reviews; SELECT ",
)
#: Quote pairs: dollar tags PostgreSQL and sqlglot read differently, and others.
TAGS = ("$1--$", "$1/*$", "$1-$", "$2--$", "$a$", "$$", "$_$", "$1a$", "E'", "U&'")
_LITERAL = re.compile(r"'(?:[^']|'')*'")


def splice(rng: random.Random) -> Input:
    """A corpus statement whose first string literal is a quoted payload, with ``%s`` = 42."""
    base = rng.choice([s for s in strategies.CORPUS if "'" in s and "42" in s])
    tag = rng.choice(TAGS)
    close = "'" if tag.endswith("'") else tag
    payload = strategies.mutate(rng.choice(PAYLOADS), rng, rng.randint(0, 2))
    quoted = f"{tag}{rng.choice(('', chr(10)))}{payload}{close}"
    sql = _LITERAL.sub(lambda _m: quoted, base, count=1)
    return sql.replace("42", "%s", 1), [42]


def generate(rng: random.Random) -> Input:
    """One input: a mutated corpus statement, a grammar SELECT (maybe mutated), a literal
    splice with a bound value, a corpus case with its own values, or random text."""
    pick = rng.random()
    if pick < 0.50:
        return strategies.mutate(rng.choice(strategies.CORPUS), rng, rng.randint(1, 6)), None
    if pick < 0.70:
        return strategies.SelectGrammar(rng, tricks=rng.random() < 0.3).statement(), None
    if pick < 0.80:
        sql = strategies.SelectGrammar(rng).statement()
        return strategies.mutate(sql, rng, rng.randint(1, 3)), None
    if pick < 0.85:
        return splice(rng)
    if pick < 0.90:
        sql, params = rng.choice(strategies.CORPUS_WITH_PARAMS)
        return strategies.mutate(sql, rng, rng.randint(0, 3)), list(params)
    if pick < 0.99:
        return "".join(rng.choice(ALPHABET) for _ in range(rng.randint(0, 80))), None
    return with_values(crafted(rng))


#: Units that once made a scan quadratic, or that no encoder accepts, repeated
#: into long statements: unclosed comments and quotes, nesting, long digit runs.
UNITS = (
    "/*a",
    "/*",
    "--a\n",
    "'a",
    "'",
    '"a',
    "$a$",
    "$$",
    "(",
    "E'\\",
    "1",
    "a,",
    " OR id = 42",
    "\\'",
    "''",
    "*/",
    "\ud800",
    "x\udcff",
    "%(a",
)
#: statement sizes crafted: small, large, just under and past the length limit
SIZES = (100, 10_000, MAX_SQL_LENGTH - 20, MAX_SQL_LENGTH + 10)


def crafted(rng: random.Random, unit: str | None = None, size: int | None = None) -> str:
    """``SELECT 1 `` and one unit repeated to about ``size`` characters."""
    unit = unit if unit is not None else rng.choice(UNITS)
    size = size if size is not None else rng.choice(SIZES)
    return "SELECT 1 " + unit * max(1, (size - 9) // len(unit))


def with_values(sql: str) -> Input:
    """A crafted statement, with a bound value when it holds psycopg placeholders."""
    return sql, ([42] if "%" in sql else None)


def crafted_all() -> list[Input]:
    """Every unit at every size, and one statement of ten megabytes."""
    rng = random.Random(0)
    found = [with_values(crafted(rng, unit, size)) for unit in UNITS for size in SIZES]
    return [*found, ("SELECT 1 " + "/*a" * 3_333_330, None)]


# ---------------------------------------------------------------------- checking


class Checker:
    """analyze + decide for alice on T-100, and the invariants of an allow."""

    def __init__(self, policy: Policy, policy_dir: Path, keep: int) -> None:
        self.policy = policy
        self.guard = Guard.from_directory(
            policy_dir, tickets=accessguard.scenario.tickets(), audit=_NullSink()
        )
        self.session = Session(user=USER, ticket=TICKET)
        self.lane = self.guard.lane(self.session, "postgres")
        self.catalog = policy.catalog
        self.keep = keep
        tickets = {t.id: t for t in accessguard.scenario.tickets()}
        self.context = Context(
            user=USER, roles=policy.roles_of(USER), ticket_id=TICKET, ticket=tickets[TICKET]
        )
        self.kind = tickets[TICKET].kind
        self.scoped = {
            spec.qualified: spec.scope_column or ""
            for spec in self.catalog.tables.values()
            if spec.scope is not None
        }
        self.tally = Tally()
        self.json_out: Path | None = None

    def check(self, sql: str, params: list[Any] | None = None) -> Facts | None:
        """Decide ``sql`` both ways (the text, and guard.connect()'s path); facts if allowed."""
        tally = self.tally
        tally.inputs += 1
        started = time.perf_counter()
        try:
            facts = self._decide_text(sql, params)
        except Exception as exc:  # noqa: BLE001 - a crash is what we count
            tally.crashes += 1
            tally.note("crash", sql, f"{type(exc).__name__}: {exc}", self.keep)
            return None
        text_s = time.perf_counter() - started
        # each path on its own, as a guard runs one per statement: no refusal
        # the text path remembered for this thread may shorten the connect path
        vars(analysis._LOCAL).pop("oversized", None)
        started = time.perf_counter()
        self._connect_path(sql, params, allowed_by_text=facts is not None)
        connect_s = time.perf_counter() - started
        for path, took in (("text", text_s), ("connect", connect_s)):
            if took > getattr(tally, f"worst_{path}_s"):
                setattr(tally, f"worst_{path}_s", took)
                tally.findings[f"worst input ({path} path)"] = [
                    f"{took:.3f}s :: {sql[:200]!r} ({len(sql)} chars)"
                ]
            if took > 1.0:
                tally.slow += 1
                tally.note(f"slow ({path} path, over 1 s)", sql, f"{took:.3f}s", self.keep)
        if facts is None:
            return None
        tally.allowed += 1
        tally.kinds[facts.kind] += 1
        problem = self.invariant(facts, params)
        if problem is not None:
            tally.leaks += 1
            tally.note("leak", sql, problem, self.keep)
        disagreement = crosscheck(_pg_text(sql) if params else sql, facts)
        if disagreement is not None:
            tally.disagreements += 1
            tally.note("parser disagreement (allowed)", sql, disagreement, self.keep)
        return facts

    def _decide_text(self, sql: str, params: list[Any] | None) -> Facts | None:
        """analyze() + decide() on the text (psycopg's conversion first): facts if allowed."""
        values: list[Any] | None = None
        if params is not None:
            if screen(sql) or screen_placeholders(sql):  # as check() does, before converting
                return None
            try:
                sql, values = convert_query(sql, params)
            except (psycopg.Error, TypeError):
                return None
        facts = analyze(sql, catalog=self.catalog, params=params is not None)
        if facts.problem is None:
            self.tally.analyzable += 1
        context = self.context if values is None else with_params(self.context, values)
        return facts if decide(facts, context, self.policy).allowed else None

    def _connect_path(self, sql: str, params: list[Any] | None, *, allowed_by_text: bool) -> None:
        """What guard.connect() would send: the same decision, and a sound SQL text."""
        tally = self.tally
        try:
            ok = authorize_statement(self.lane, sql, params)
        except AccessGuardError:
            return
        except Exception as exc:  # noqa: BLE001 - a crash of the connect path
            tally.crashes += 1
            tally.note("crash (connect path)", sql, f"{type(exc).__name__}: {exc}", self.keep)
            return
        tally.connect_allowed += 1
        if not allowed_by_text:
            tally.connect_only += 1
            tally.note("allowed by connect() only", sql, "check() refuses the text", self.keep)
        problem = self.second_wall(ok.sql, ok.facts, params=params is not None)
        if problem is not None:
            tally.connect_leaks += 1
            tally.note("connect leak", sql, problem, self.keep)

    def invariant(self, facts: Facts, params: list[Any] | None) -> str | None:
        """Why an allowed statement breaks the guarantees, or None."""
        if facts.kind not in ("select", "update") or facts.problem is not None:
            return f"allowed a {facts.kind} statement"
        for ref in facts.scopes:
            if ref.scope != "customer" or not ref.values:
                return f"{ref.table} is not bound to a customer"
            if not all(_is_subject(v, params) for v in ref.values):
                return f"{ref.table} is bound to {ref.values}, not {SUBJECT}"
        for action, pairs in (("read", facts.reads), ("update", facts.writes)):
            for table, column in pairs:
                access = (table, column, action)
                if not (
                    self.policy.allows(self.context.roles, NO_TICKET, access)
                    or self.policy.allows(self.context.roles, self.kind, access)
                ):
                    return f"{action} of {table}.{column} is granted to no role of {USER}"
        if facts.sent is None:
            return "no SQL to send"
        sent = facts.sent.replace(subject_marker("customer"), str(SUBJECT))
        return self.second_wall(sent, facts, params=params is not None)

    def second_wall(self, sent: str, facts: Facts, *, params: bool) -> str | None:
        """``verify_sent`` (PostgreSQL's parser); a text the server would reject is counted
        apart (a fidelity issue, not a leak)."""
        try:
            parse_sql_json(_pg_text(sent) if params else sent)
        except ParseError:
            self.tally.unparsable += 1
            return None
        return verify_sent(sent, facts, self.scoped, pyformat=params, subjects={SUBJECT})


class _NullSink:
    """An audit sink that keeps nothing (a million refusals would fill memory)."""

    def write(self, events: list[Any]) -> None:
        """Drop ``events``."""


def _pg_text(sql: str) -> str:
    """psycopg's ``%s`` placeholders as PostgreSQL's ``$n`` (``%%`` as ``%``)."""
    counter = iter(range(1, 10_000))
    return re.sub(r"%%|%s", lambda m: "%" if m.group(0) == "%%" else f"${next(counter)}", sql)


def _is_subject(value: Const | Param, params: list[Any] | None) -> bool:
    """Whether a scope value is the constant 42, or a bound value equal to 42."""
    if isinstance(value, Const):
        return value.value == SUBJECT
    if params is None or not isinstance(value.key, int) or value.key >= len(params):
        return False
    bound = params[value.key]
    return type(bound) is int and bound == SUBJECT


def with_params(context: Context, values: list[Any]) -> Context:
    """``context`` with bound values."""
    return Context(
        user=context.user,
        roles=context.roles,
        ticket_id=context.ticket_id,
        ticket=context.ticket,
        params=values,
    )


# ---------------------------------------------------------------------- the database oracle


class Oracle:
    """Runs allowed statements guarded on the scenario and raw on alice's view database."""

    def __init__(self, admin_dsn: str, policy_dir: Path) -> None:
        from psycopg import conninfo
        from psycopg import sql as pgsql
        from test_attacks import view_sql  # type: ignore[import-not-found,unused-ignore]

        from accessguard.testing import MemoryAuditSink

        self._stack = contextlib.ExitStack()
        self.guard = self._stack.enter_context(
            Guard.from_directory(
                policy_dir, tickets=accessguard.scenario.tickets(), audit=MemoryAuditSink()
            )
        )
        admin = psycopg.connect(admin_dsn, autocommit=True)
        self._stack.callback(admin.close)
        dsns: list[str] = []
        for name, setup in (
            ("ag_fuzz_full", None),
            (
                "ag_fuzz_view",
                view_sql(load_policy(policy_dir), accessguard.scenario.tickets(), (USER, TICKET)),
            ),
        ):
            ident = pgsql.Identifier(name)
            admin.execute(pgsql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(ident))
            admin.execute(pgsql.SQL("CREATE DATABASE {}").format(ident))
            self._stack.callback(
                admin.execute, pgsql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(ident)
            )
            dsn = conninfo.make_conninfo(admin_dsn, dbname=name)
            with psycopg.connect(dsn) as conn:
                accessguard.scenario.load_postgres(conn)
                if setup is not None:
                    conn.execute(setup.encode())
            dsns.append(dsn)
        options = "-c statement_timeout=2000"
        self.guarded = self.guard.connect(dsns[0], user=USER, ticket=TICKET, options=options)
        self.view = psycopg.connect(dsns[1], options=options)
        self._stack.callback(self.guarded.close)
        self._stack.callback(self.view.close)

    def outcome(self, conn: Any, sql: str) -> tuple[str, Any]:
        """("rows", sorted rows) or ("error", SQLSTATE); always rolled back."""
        try:
            cursor = conn.cursor()
            cursor.execute(sql)
            if cursor.description is None:
                return "count", cursor.rowcount
            return "rows", sorted(map(repr, cursor.fetchall()))
        except psycopg.Error as exc:
            return "error", exc.sqlstate or ""
        except Exception as exc:  # noqa: BLE001 - a refusal here would be a guard change
            return "refused", type(exc).__name__
        finally:
            conn.rollback()

    def compare(self, sql: str, tally: Tally, keep: int) -> None:
        """Run ``sql`` both ways and count a difference as a leak or a fidelity issue."""
        tally.pg_checked += 1
        got, want = self.outcome(self.guarded, sql), self.outcome(self.view, sql)
        if got == want:
            return
        data_error = got[0] == "error" and str(got[1]).startswith("22")
        if (got[0] == "rows" and want[0] == "rows") or data_error:
            tally.pg_leaks += 1
            tally.note("pg leak", sql, f"guarded {str(got)[:160]} / view {str(want)[:80]}", keep)
        else:
            tally.pg_fidelity += 1
            tally.note("pg fidelity", sql, f"guarded {got[0]} / view {want}", keep)

    def close(self) -> None:
        """Drop the databases."""
        self._stack.close()


# ---------------------------------------------------------------------- running


def summary(tally: Tally, elapsed: float) -> dict[str, Any]:
    """The figures of the run."""
    return {
        "inputs": tally.inputs,
        "analyzable": tally.analyzable,
        "allowed": tally.allowed,
        "allowed_kinds": dict(tally.kinds),
        "crashes": tally.crashes,
        "leaks": tally.leaks,
        "parser_disagreements_allowed": tally.disagreements,
        "pg_checked": tally.pg_checked,
        "pg_leaks": tally.pg_leaks,
        "pg_fidelity": tally.pg_fidelity,
        "sent_unparsable": tally.unparsable,
        "connect_allowed": tally.connect_allowed,
        "connect_only_allowed": tally.connect_only,
        "connect_leaks": tally.connect_leaks,
        "worst_input_s": round(max(tally.worst_text_s, tally.worst_connect_s), 3),
        "worst_text_s": round(tally.worst_text_s, 3),
        "worst_connect_s": round(tally.worst_connect_s, 3),
        "slow_inputs": tally.slow,
        "elapsed_s": round(elapsed, 1),
        "inputs_per_s": round(tally.inputs / elapsed, 1) if elapsed else None,
    }


def progress(tally: Tally, start: float) -> None:
    """One progress line."""
    elapsed = time.perf_counter() - start
    print(
        f"[{elapsed:8.1f}s] inputs={tally.inputs} ({tally.inputs / elapsed:.0f}/s) "
        f"allowed={tally.allowed} crashes={tally.crashes} leaks={tally.leaks} "
        f"disagreements={tally.disagreements} pg_checked={tally.pg_checked} "
        f"pg_leaks={tally.pg_leaks} pg_fidelity={tally.pg_fidelity} "
        f"sent_unparsable={tally.unparsable} connect_only={tally.connect_only} "
        f"connect_leaks={tally.connect_leaks} worst_text={tally.worst_text_s:.3f}s "
        f"worst_connect={tally.worst_connect_s:.3f}s "
        f"slow={tally.slow}",
        flush=True,
    )


def run_mutate(checker: Checker, oracle: Oracle | None, args: argparse.Namespace) -> None:
    """The seeded engine: ``random.Random(seed)`` drives every choice."""
    rng = random.Random(args.seed)
    start = time.perf_counter()
    first = crafted_all()
    for i in range(1, args.inputs + 1):
        sql, params = first.pop() if first else generate(rng)
        facts = checker.check(sql, params)
        if facts is not None and oracle is not None and params is None:
            oracle.compare(sql, checker.tally, args.examples)
        if i % args.progress == 0:
            progress(checker.tally, start)


def run_atheris(checker: Checker, oracle: Oracle | None, args: argparse.Namespace) -> None:
    """libFuzzer drives the generators: its bytes seed the choices (or are the text)."""
    import atheris  # type: ignore[import-untyped,import-not-found,unused-ignore]

    start = time.perf_counter()

    def one_input(data: bytes) -> None:
        provider = atheris.FuzzedDataProvider(data)
        params: list[Any] | None = None
        if provider.ConsumeBool():
            sql = provider.ConsumeUnicodeNoSurrogates(400)
        else:
            sql, params = generate(random.Random(provider.ConsumeBytes(16)))
        facts = checker.check(sql, params)
        if facts is not None and oracle is not None and params is None:
            oracle.compare(sql, checker.tally, args.examples)
        if checker.tally.inputs % args.progress == 0:
            progress(checker.tally, start)
        if checker.tally.inputs == args.inputs:
            finish(checker, oracle, start)

    atheris.Setup(
        [
            sys.argv[0],
            f"-runs={args.inputs}",
            f"-seed={args.seed}",
            "-max_len=600",
            "-print_final_stats=0",
        ],
        one_input,
    )
    atheris.Fuzz()


def finish(checker: Checker, oracle: Oracle | None, start: float) -> None:
    """Print the summary and the examples found; close the oracle."""
    elapsed = time.perf_counter() - start
    figures = summary(checker.tally, elapsed)
    print("SUMMARY " + json.dumps(figures), flush=True)
    for what, examples in checker.tally.findings.items():
        print(f"--- {what} (first {len(examples)})")
        for example in examples:
            print("   ", example)
    if oracle is not None:
        oracle.close()
    if checker.json_out is not None:
        checker.json_out.write_text(
            json.dumps({"summary": figures, "findings": checker.tally.findings}, indent=2) + "\n"
        )


def main(argv: list[str] | None = None) -> int:
    """Parse arguments, run, print the summary; exit 1 if anything crashed or leaked."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--inputs", type=int, default=1_000_000)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--progress", type=int, default=50_000, help="print every N inputs")
    parser.add_argument("--engine", choices=("mutate", "atheris"), default="mutate")
    parser.add_argument(
        "--pg",
        metavar="ADMIN_DSN",
        help="also run allowed statements on "
        "PostgreSQL (creates and drops ag_fuzz_full and ag_fuzz_view)",
    )
    parser.add_argument("--examples", type=int, default=5, help="examples kept per finding")
    parser.add_argument("--json", type=Path, help="write the summary and findings here")
    args = parser.parse_args(argv)

    import shutil
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        policy_dir = Path(tmp) / "policies"
        shutil.copytree(accessguard.scenario.policies_dir(), policy_dir)
        (policy_dir / "limits.toml").unlink(missing_ok=True)
        checker = Checker(load_policy(policy_dir), policy_dir, args.examples)
        checker.json_out = args.json
        oracle = Oracle(args.pg, policy_dir) if args.pg else None
        print(
            f"fuzz: engine={args.engine} inputs={args.inputs} seed={args.seed} "
            f"corpus={len(strategies.CORPUS)} pg={'yes' if oracle else 'no'}",
            flush=True,
        )
        start = time.perf_counter()
        if args.engine == "atheris":
            run_atheris(checker, oracle, args)  # never returns: libFuzzer exits
        run_mutate(checker, oracle, args)
        finish(checker, oracle, start)
    tally = checker.tally
    return 1 if tally.crashes or tally.leaks or tally.pg_leaks or tally.connect_leaks else 0


if __name__ == "__main__":
    sys.exit(main())
