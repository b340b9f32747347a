"""The named workloads. Each returns report rows; see benchmarks/README.md for what each means.

Latency workloads run raw and guarded on the SAME backend: one autocommit
psycopg connection, and ``guard.wrap`` of that very connection. Each
iteration executes and fetches one statement on each, in alternating order.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import sqlglot

from accessguard import AccessDenied, Guard, JsonlSink, scenario
from benchmarks.environment import Bench, casbin_indexed_duplicate_check, padded_policy
from benchmarks.statements import (
    ANALYTIC_PARAM,
    FIRST_SIGHT,
    FIRST_SIGHT_SHAPES,
    JOIN,
    KEYED,
    POINT,
    POLICY_LINES,
    POLICY_SIZE,
    REFUSED,
    REPEATED,
    UNSCOPED,
    VARYING,
    VARYING_SQL,
)
from benchmarks.threads import threads_8
from benchmarks.timing import Goal, Result, Step, interleave, summarize

# ---------------------------------------------------------------------- latency


def _fetch(conn: Any, query: str, params: Any) -> Step:
    def step(_i: int) -> object:
        return conn.execute(query, params).fetchall()

    return step


def _latency(  # noqa: PLR0913 - one report row, by keyword
    bench: Bench,
    name: str,
    raw: Step,
    guarded: Step,
    *,
    count: int,
    goal: Goal | None,
    note: str,
    sent: tuple[Step, str] | None = None,
    floor: Step | None = None,
) -> Result:
    """Guarded against raw; with ``sent``, also raw psycopg sending the guard's rewritten SQL.

    The third contender splits the overhead: what the rewritten statement
    costs the server, against what the guard costs in Python. ``floor`` (a
    fourth) is the least a guard written in Python adds (see ``_floor``).
    """
    n = bench.count(count)
    steps = [raw, guarded] if sent is None else [raw, guarded, sent[0]]
    if floor is not None:
        steps.append(floor)
    samples = interleave(
        steps, count=n, rounds=bench.rounds, warmup=bench.warmup(n), counter=bench.counter
    )
    details: dict[str, Any] = {}
    if sent is not None:
        server = summarize(
            samples, workload=name, kind="latency", baseline="", subject="", subject_index=2
        )
        details = {
            "sent_sql": sent[1],
            "raw_sending_rewritten_us": server.subject_value,
            "server_side_ratio": server.ratio,
        }
        note += f"; raw psycopg sending the guard's rewritten SQL: ratio {server.ratio:.3f}"
    if floor is not None:
        least = summarize(
            samples, workload=name, kind="latency", baseline="", subject="", subject_index=-1
        )
        details |= {"python_floor_us": least.subject_value, "python_floor_ratio": least.ratio}
        note += f"; the Python floor (see _floor): ratio {least.ratio:.3f}"
    return summarize(
        samples,
        workload=name,
        kind="latency",
        baseline="raw psycopg",
        subject="guarded",
        goal=goal,
        note=note,
        details=details,
    )


def _sent(
    bench: Bench, query: str, params: list[Any], user: str, ticket: str | None
) -> tuple[Step, str] | None:
    """Raw psycopg executing the SQL the guard sends for ``query`` (None if it cannot tell)."""
    try:  # Guard.authorize and Session are what adapters use; not the application contract
        from accessguard.engine.paramstyle import convert_query
        from accessguard.guard import Session

        converted, values = convert_query(query, params)
        ok = bench.guard.authorize(  # probing: the SQL a probing adapter sends after its probe
            converted, values, Session(user=user, ticket=ticket), dialect="postgres", probing=True
        )
        text, bound = str(ok.sql), ok.params
    except Exception:  # noqa: BLE001 - a diagnostic only: the row stands without it
        return None
    return (_fetch(bench.raw, text, bound), text)


def _floor(bench: Bench, query: str, params: list[Any], user: str, ticket: str) -> Step:
    """The least a guard written in Python adds to a repeated statement: a bound, not a guard.

    What every guarded execution must do, written inline with no wrapper
    object and no call of its own: ask the ticket store, find the plan by
    text, check that the policy and the ticket are the plan's and that the
    scope value is its subject, queue the statement and then its rows for the
    ledger; the SQL sent is the guard's rewritten SQL on the raw connection.
    Its ratio against raw is what pure Python costs on this machine before
    any design choice of accessguard's.
    """
    from collections import deque

    from accessguard.engine.paramstyle import convert_query
    from accessguard.guard import Session

    guard = bench.guard
    plan = guard.authorize(
        query, params, Session(user=user, ticket=ticket), dialect="postgres", convert=convert_query
    ).plan
    plans = {query: plan}
    tickets, raw = guard.tickets, bench.raw
    queue: deque[object] = deque()

    def step(_i: int) -> object:
        now = tickets.get(ticket)
        found = plans[query]
        if found.policy is not guard.policy or found.ticket is not now:
            raise RuntimeError("floor: the plan no longer holds")
        for key, subject in found.checks:
            value = params[int(key)]
            if type(value) is not int or value != subject:
                raise RuntimeError("floor: the scope value is not the subject")
        queue.append(found)
        rows = raw.execute(found.sql, params).fetchall()
        queue.append((found, len(rows)))
        if len(queue) > 100_000:
            queue.clear()
        return rows

    return step


def _same_rows(name: str, raw: Step, guarded: Step) -> None:
    """A benchmark of a statement the guard refuses, or answers differently, is void."""
    expected, got = raw(0), guarded(0)
    if expected != got:
        raise RuntimeError(f"{name}: guarded rows {got!r} differ from raw rows {expected!r}")


def point_lookup_param(bench: Bench) -> list[Result]:
    raw = _fetch(bench.raw, POINT, [42])
    guarded = _fetch(bench.as_user("alice", "T-100"), POINT, [42])
    _same_rows("point_lookup_param", raw, guarded)
    return [
        _latency(
            bench,
            "point_lookup_param",
            raw,
            guarded,
            count=5000,
            goal=REPEATED,
            note="alice on T-100, customers by primary key, bound parameter, same text every time",
            sent=_sent(bench, POINT, [42], "alice", "T-100"),
            floor=_floor(bench, POINT, [42], "alice", "T-100"),
        )
    ]


def key_bound_param(bench: Bench) -> list[Result]:
    raw = _fetch(bench.raw, KEYED, [421])
    guarded = _fetch(bench.as_user("alice", "T-100"), KEYED, [421])
    _same_rows("key_bound_param", raw, guarded)
    return [
        _latency(
            bench,
            "key_bound_param",
            raw,
            guarded,
            count=5000,
            goal=None,
            note=(
                "alice on T-100, orders by primary key only (Session.get): the guard runs its "
                "probe (one more round trip) before the statement"
            ),
            sent=_sent(bench, KEYED, [421], "alice", "T-100"),
        )
    ]


def point_lookup_literal_varying(bench: Bench) -> list[Result]:
    alice = bench.as_user("alice", "T-100")

    def raw(i: int) -> object:
        return bench.raw.execute(VARYING_SQL.format(n=1_000_000 + i)).fetchall()

    def guarded(i: int) -> object:
        return alice.execute(VARYING_SQL.format(n=1_000_000 + i)).fetchall()

    _same_rows("point_lookup_literal_varying", raw, guarded)
    return [
        _latency(
            bench,
            "point_lookup_literal_varying",
            raw,
            guarded,
            count=1200,
            goal=VARYING,
            note="orders of customer 42 with an inlined literal new in every statement "
            "(AND id <> n): a text the guard has never seen",
            sent=_sent_varying(bench),
        )
    ]


def point_lookup_literal_repeated(bench: Bench) -> list[Result]:
    repeated = VARYING_SQL.format(n=1_000_000)
    raw = _fetch(bench.raw, repeated, None)
    guarded = _fetch(bench.as_user("alice", "T-100"), repeated, None)
    _same_rows("point_lookup_literal_repeated", raw, guarded)
    return [
        _latency(
            bench,
            "point_lookup_literal_repeated",
            raw,
            guarded,
            count=5000,
            goal=REPEATED,
            note="the varying statement with one literal, the same text every time (code that "
            "builds SQL text): from its second execution it has a plan of its own",
            sent=_sent(bench, repeated, [], "alice", "T-100"),
        )
    ]


def _sent_varying(bench: Bench) -> tuple[Step, str] | None:
    """Raw psycopg sending what the guard sends for VARYING_SQL, with n new every time.

    Each text is new to the server too, so it parses and plans the rewritten
    statement (its scope filter included) every time: this contender is that
    cost alone. The guard's SQL for one probe value, with the value put back
    per statement.
    """
    probe = 987_654_321
    found = _sent(bench, VARYING_SQL.format(n=probe), [], "alice", "T-100")
    if found is None or found[1].count(str(probe)) != 1:
        return None
    template = found[1].replace(str(probe), "{n}")

    def step(i: int) -> object:
        return bench.raw.execute(template.format(n=1_000_000 + i)).fetchall()

    return step, template


def three_table_join(bench: Bench) -> list[Result]:
    raw = _fetch(bench.raw, JOIN, [42, 42, 42])
    guarded = _fetch(bench.as_user("alice", "T-100"), JOIN, [42, 42, 42])
    _same_rows("three_table_join", raw, guarded)
    return [
        _latency(
            bench,
            "three_table_join",
            raw,
            guarded,
            count=3000,
            goal=REPEATED,
            note="customers x orders x payments, each bound to customer 42 by parameters",
            sent=_sent(bench, JOIN, [42, 42, 42], "alice", "T-100"),
        )
    ]


def large_analytic(bench: Bench) -> list[Result]:
    raw = _fetch(bench.raw, ANALYTIC_PARAM, [100])
    guarded = _fetch(bench.as_user("dave"), ANALYTIC_PARAM, [100])
    _same_rows("large_analytic", raw, guarded)
    return [
        _latency(
            bench,
            "large_analytic",
            raw,
            guarded,
            count=2500,
            goal=REPEATED,
            sent=_sent(bench, ANALYTIC_PARAM, [100], "dave", None),
            note="dave (analyst): two CTEs, a window, GROUP BY, aggregates, CASE, over "
            "sales_metrics x products (the seed's 30 rows: server time is small)",
        )
    ]


def _refusing(conn: Any) -> Step:
    def guarded(_i: int) -> object:
        try:
            conn.execute(REFUSED, [42])
        except AccessDenied as exc:
            return exc.reason
        raise RuntimeError("refused_statement: the guard allowed payments.card_token")

    guarded(0)
    return guarded


def refused_statement(bench: Bench) -> list[Result]:
    """A refusal, its event fsynced (the default); and the same without the fsync."""
    raw = _fetch(bench.raw, REFUSED, [42])
    results = [
        _latency(
            bench,
            "refused_statement",
            raw,
            _refusing(bench.as_user("alice", "T-100")),
            count=800,
            goal=None,
            note="guarded: AccessDenied (column.not_allowed) + one audit event, fsync'ed; "
            "raw: the same text executed and fetched (3 rows)",
        )
    ]
    unsynced = Guard(
        bench.guard.policy,
        tickets=scenario.tickets(),
        audit=JsonlSink(bench.tmp / "unsynced.jsonl", fsync=False),
    )
    try:
        results.append(
            _latency(
                bench,
                "refused_statement_nosync",
                raw,
                _refusing(unsynced.wrap(bench.raw, user="alice", ticket="T-100")),
                count=800,
                goal=None,
                note="the same refusal with JsonlSink(fsync=False): the event written, not "
                "fsynced (what the refusal costs besides the disk's flush)",
            )
        )
    finally:
        unsynced.close()
    return results


def point_lookup_unscoped(bench: Bench) -> list[Result]:
    raw = _fetch(bench.raw, UNSCOPED, [3])
    guarded = _fetch(bench.as_user("alice", "T-100"), UNSCOPED, [3])
    _same_rows("point_lookup_unscoped", raw, guarded)
    return [
        _latency(
            bench,
            "point_lookup_unscoped",
            raw,
            guarded,
            count=5000,
            goal=REPEATED,
            sent=_sent(bench, UNSCOPED, [3], "alice", "T-100"),
            note="products by primary key: no row scope, so no access-ledger entry and no "
            "scope rewrite (the ledger cannot be switched off; compare with point_lookup_param)",
        )
    ]


# ---------------------------------------------------------------------- decision cost


def first_sight(bench: Bench) -> list[Result]:
    results = []
    for name, (template, user, ticket) in FIRST_SIGHT_SHAPES.items():
        probe = bench.guard.check(template.format(a="z_probe"), user=user, ticket=ticket)
        if not probe.allowed:
            raise RuntimeError(f"{name}: the guard refuses the statement ({probe.reason})")

        def parse(i: int, template: str = template) -> object:
            return sqlglot.parse_one(template.format(a=f"a{i:012d}"), read="postgres")

        def check(
            i: int, template: str = template, user: str = user, ticket: str | None = ticket
        ) -> object:
            return bench.guard.check(template.format(a=f"b{i:012d}"), user=user, ticket=ticket)

        n = bench.count(800 if name == "first_sight" else 400)
        samples = interleave(
            [parse, check],
            count=n,
            rounds=bench.rounds,
            warmup=bench.warmup(n),
            counter=bench.counter,
        )
        results.append(
            summarize(
                samples,
                workload=name,
                kind="cpu",
                baseline="sqlglot.parse_one",
                subject="guard.check (cold)",
                goal=FIRST_SIGHT,
                note=f"{user}: a statement never seen before (new table alias each time); "
                "guard.check = tokenize, parse, analyze, PostgreSQL cross-check, decide "
                "(no rewrite, no redaction: only the SQL sent needs them)",
            )
        )
    return results


def policy_lines(bench: Bench) -> list[Result]:
    guards: list[Guard] = []
    loads: dict[str, float] = {}
    try:
        for lines in POLICY_LINES:
            directory = padded_policy(bench.tmp, lines)
            t0 = time.perf_counter()
            with casbin_indexed_duplicate_check(enabled=bench.patch_casbin):
                guards.append(
                    Guard.from_directory(
                        directory, tickets=scenario.tickets(), audit=bench.tmp / f"audit_{lines}"
                    )
                )
            loads[str(lines)] = round(time.perf_counter() - t0, 3)
        statements = {
            "dave": ("SELECT product_id, day, units FROM sales_metrics WHERE product_id = 3", None),
            "alice": ("SELECT id, name, email FROM customers WHERE id = 42", "T-100"),
        }
        by_user = {}
        for user, (query, ticket) in statements.items():
            for guard in guards:
                if not guard.check(query, user=user, ticket=ticket).allowed:
                    raise RuntimeError(f"policy_lines: {user}'s statement is refused")

            def step(
                guard: Guard, query: str = query, user: str = user, ticket: str | None = ticket
            ) -> Step:
                return lambda _i: guard.check(query, user=user, ticket=ticket)

            n = bench.count(6000)
            by_user[user] = interleave(
                [step(g) for g in guards],
                count=n,
                rounds=bench.rounds,
                warmup=bench.warmup(n),
                counter=bench.counter,
            )
    finally:
        for guard in guards:
            guard.close()
    results = []
    for index, lines in enumerate(POLICY_LINES):
        alice = summarize(
            by_user["alice"], workload="", kind="cpu", baseline="", subject="", subject_index=index
        )
        results.append(
            summarize(
                by_user["dave"],
                workload=f"policy_lines_{lines}",
                kind="cpu",
                baseline="guard.check, 10 lines",
                subject=f"guard.check, {lines:,} lines",
                subject_index=index,
                goal=POLICY_SIZE if lines == POLICY_LINES[-1] else None,
                note=f"dave reads sales_metrics.units (the column the padding grants); "
                f"alice's point lookup: ratio {alice.ratio:.3f}",
                details={
                    "load_seconds": loads[str(lines)],
                    "casbin_load_patched": bench.patch_casbin,
                    "alice_ratio": alice.ratio,
                    "alice_us": alice.subject_value,
                },
            )
        )
    return results


#: name -> workload, in run order; a workload may report several rows
_GENEROUS_LIMITS = """
[roles.everyone]
statements = { count = 1000000000, per = "1 minute" }
rows_per_statement = 500

[roles.support_agent]
distinct_customers = { count = 1000000, per = "1 hour" }
"""


#: the Redis database the benchmark counts in (its employee's keys are its own)
BENCH_REDIS = "redis://127.0.0.1:6379/14"


def _fresh_windows(url: str, user: str) -> None:
    """Drop ``user``'s windows left in ``url`` by an earlier run (or anything else there)."""
    import redis

    try:
        with redis.Redis.from_url(url) as client:
            client.delete(*(f"accessguard:{user}/{name}" for name in _WINDOW_KEYS))
    except redis.RedisError:
        pass  # no Redis here: the workload reports itself skipped


_WINDOW_KEYS = ("statements", "customers", "statements:window", "customers:window")


def throttle(bench: Bench) -> list[Result]:
    """The volume limits' added cost: the same guarded point lookup with limits, without."""
    from accessguard.throttle.limits import load_limits

    path = bench.tmp / "limits-generous.toml"
    path.write_text(_GENEROUS_LIMITS, encoding="utf-8")
    limits = load_limits(path)
    without = _fetch(bench.as_user("alice", "T-100"), POINT, [42])
    results = []
    for name, storage in (
        ("throttle_memory", "memory://"),
        ("throttle_redis", BENCH_REDIS),
    ):
        if storage == BENCH_REDIS:
            _fresh_windows(storage, "alice")
        guard = Guard(
            bench.guard.policy,
            tickets=scenario.tickets(),
            audit=bench.tmp / f"{name}.jsonl",
            limits=limits,
            throttle_storage=storage,
        )
        try:
            limited = _fetch(guard.wrap(bench.raw, user="alice", ticket="T-100"), POINT, [42])
            limited(0)
        except Exception as exc:  # noqa: BLE001 - e.g. no Redis here: report, do not abort
            print(f"  {name}: skipped ({type(exc).__name__})")
            guard.close()
            continue
        n = bench.count(3000)
        samples = interleave(
            [without, limited],
            count=n,
            rounds=bench.rounds,
            warmup=bench.warmup(n),
            counter=bench.counter,
        )
        results.append(
            summarize(
                samples,
                workload=name,
                kind="latency",
                baseline="guarded, no limits",
                subject=f"guarded, limits in {storage.split(':')[0]}",
                note="alice's point lookup; limits that never refuse: what counting costs",
            )
        )
        guard.close()
    return results


WORKLOADS: dict[str, Callable[[Bench], list[Result]]] = {
    "point_lookup_param": point_lookup_param,
    "key_bound_param": key_bound_param,
    "point_lookup_literal_varying": point_lookup_literal_varying,
    "point_lookup_literal_repeated": point_lookup_literal_repeated,
    "three_table_join": three_table_join,
    "large_analytic": large_analytic,
    "refused_statement": refused_statement,
    "point_lookup_unscoped": point_lookup_unscoped,
    "first_sight": first_sight,
    "policy_lines": policy_lines,
    "threads_8": threads_8,
    "throttle": throttle,
}

#: report rows -> the workload that produces them (for --workloads)
ALIASES = {
    "first_sight_join": "first_sight",
    "first_sight_analytic": "first_sight",
    **{f"policy_lines_{n}": "policy_lines" for n in POLICY_LINES},
}


def profile_step(bench: Bench, name: str, *, raw: bool = False) -> Step:
    """One side of a single-statement workload (guarded, or raw), for ``--profile``."""
    alice = bench.raw if raw else bench.as_user("alice", "T-100")
    dave = bench.raw if raw else bench.as_user("dave")
    if name == "point_lookup_literal_varying":

        def step(i: int) -> object:
            return alice.execute(VARYING_SQL.format(n=1_000_000 + i)).fetchall()

        return step
    if name in FIRST_SIGHT_SHAPES:  # in-process: guard.check (or raw: sqlglot's parse)
        template, user, ticket = FIRST_SIGHT_SHAPES[name]

        def first(i: int) -> object:
            text = template.format(a=f"p{i:012d}")  # an alias never seen before
            if raw:
                return sqlglot.parse_one(text, read="postgres")
            return bench.guard.check(text, user=user, ticket=ticket)

        return first
    fixed: dict[str, tuple[Any, str, list[Any]]] = {
        "point_lookup_param": (alice, POINT, [42]),
        "three_table_join": (alice, JOIN, [42, 42, 42]),
        "large_analytic": (dave, ANALYTIC_PARAM, [100]),
        "point_lookup_unscoped": (alice, UNSCOPED, [3]),
    }
    if name not in fixed:
        known = ", ".join([*fixed, "point_lookup_literal_varying", *FIRST_SIGHT_SHAPES])
        raise SystemExit(f"--profile takes one of: {known}")
    return _fetch(*fixed[name])
