"""Run the overhead benchmarks and print the table (and the goals of issue 5).

    .venv/bin/python -m benchmarks.bench [--json OUT.json] [--quick] [--workloads a,b]
    .venv/bin/python -m benchmarks.bench --profile point_lookup_param [--profile-raw]
    .venv/bin/python -m benchmarks.bench --profile first_sight   # guard.check (raw: parse_one)

Needs a PostgreSQL server (``--dsn``, default the project's 127.0.0.1:5432 test
server); creates, fills and finally drops its own database (``--dbname``).
"""

from __future__ import annotations

import argparse
import cProfile
import json
import os
import pstats
import sys
import tempfile
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

import psycopg

from accessguard import Guard, scenario
from benchmarks.environment import (
    DEFAULT_ADMIN_DSN,
    DEFAULT_DBNAME,
    Bench,
    bench_database,
    describe,
    machine,
    policy_copy,
)
from benchmarks.statements import FIRST_SIGHT, POLICY_SIZE, REPEATED, THREADS, VARYING
from benchmarks.timing import Result
from benchmarks.workloads import ALIASES, WORKLOADS, profile_step

#: each goal of issue 5 and the report row that decides it
GOAL_ROWS = (
    (REPEATED, ("point_lookup_param",)),
    (VARYING, ("point_lookup_literal_varying",)),
    (FIRST_SIGHT, ("first_sight", "first_sight_join", "first_sight_analytic")),
    (POLICY_SIZE, ("policy_lines_100000",)),
    (THREADS, ("threads_8",)),
)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.bench",
        description="accessguard overhead: guarded against raw psycopg, same server, same run.",
    )
    parser.add_argument("--json", type=Path, metavar="OUT.json", help="write results here")
    parser.add_argument("--quick", action="store_true", help="fewer iterations (under 30 s)")
    parser.add_argument(
        "--workloads",
        metavar="A,B",
        help=f"comma-separated subset of: {', '.join([*WORKLOADS, *ALIASES])}",
    )
    parser.add_argument(
        "--dsn",
        default=os.environ.get("ACCESSGUARD_BENCH_DSN", DEFAULT_ADMIN_DSN),
        help="maintenance database DSN (env ACCESSGUARD_BENCH_DSN); default %(default)s",
    )
    parser.add_argument("--dbname", default=DEFAULT_DBNAME, help="bench database to (re)create")
    parser.add_argument("--keep-db", action="store_true", help="do not drop the bench database")
    parser.add_argument("--rounds", type=int, help="rounds per workload (default 5, quick 3)")
    parser.add_argument(
        "--casbin-load-as-is",
        action="store_true",
        help="load padded policies with pycasbin's quadratic duplicate check "
        "(100,000 lines then take minutes to load; the decisions measured are the same)",
    )
    parser.add_argument(
        "--profile",
        metavar="WORKLOAD",
        help="instead of the report: cProfile the guarded side of one single-statement workload",
    )
    parser.add_argument("--profile-count", type=int, default=5000, help="iterations to profile")
    parser.add_argument(
        "--profile-raw", action="store_true", help="profile the raw psycopg side instead"
    )
    return parser.parse_args(argv)


def selected(spec: str | None) -> list[str]:
    if not spec:
        return list(WORKLOADS)
    names = []
    for raw in spec.split(","):
        name = ALIASES.get(raw.strip(), raw.strip())
        if name not in WORKLOADS:
            known = ", ".join([*WORKLOADS, *ALIASES])
            raise SystemExit(f"unknown workload {raw!r}; known: {known}")
        if name not in names:
            names.append(name)
    return names


# ---------------------------------------------------------------------- report


def _value(r: Result, value: float) -> str:
    return f"{value:,.0f} {r.unit}" if r.unit == "stmt/s" else f"{value:,.1f} us"


def table(results: list[Result]) -> str:
    header = (
        f"{'workload':<29} {'baseline':<24} {'base':>12} {'subject':>12} {'ratio':>7} "
        f"{'p25-p75':>13} {'rounds':>13} {'N':>6}  {'goal':<8} {'':<7}"
    )
    lines = [header, "-" * len(header)]
    for r in results:
        met = "" if r.met is None else ("met" if r.met else "NOT MET")
        goal = str(r.goal) if r.goal is not None else ""
        lines.append(
            f"{r.workload:<29} {r.baseline:<24} {_value(r, r.baseline_value):>12} "
            f"{_value(r, r.subject_value):>12} {r.ratio:>7.3f} "
            f"{f'{r.p25:.2f}-{r.p75:.2f}':>13} "
            f"{f'{r.round_min:.3f}-{r.round_max:.3f}':>13} {r.n:>6}  "
            f"{goal:<8} {met:<7}"
        )
    return "\n".join(lines)


def goal_summary(results: list[Result]) -> list[dict[str, Any]]:
    by_name = {r.workload: r for r in results}
    out = []
    for goal, rows in GOAL_ROWS:
        present = [by_name[n] for n in rows if n in by_name]
        if not present:
            continue
        out.append(
            {
                "goal": f"{goal.name} {goal}",
                "rows": {r.workload: round(r.ratio, 4) for r in present},
                "met": all(bool(r.met) for r in present),
            }
        )
    return out


def notes(results: list[Result]) -> str:
    return "\n".join(f"  {r.workload}: {r.note}" for r in results if r.note)


# ---------------------------------------------------------------------- running


def build_guard(tmp: Path) -> Guard:
    return Guard.from_directory(policy_copy(tmp), tickets=scenario.tickets(), audit=tmp / "audit")


def profile(bench: Bench, name: str, count: int, *, raw: bool) -> None:
    step = profile_step(bench, name, raw=raw)
    for i in range(200):
        step(i)
    profiler = cProfile.Profile()
    t0 = time.perf_counter()
    profiler.enable()
    for i in range(200, 200 + count):
        step(i)
    profiler.disable()
    elapsed = time.perf_counter() - t0
    side = "raw" if raw else "guarded"
    print(f"{side} {name}: {count} statements, {elapsed / count * 1e6:.1f} us each under cProfile")
    stats = pstats.Stats(profiler, stream=sys.stdout).strip_dirs()
    stats.sort_stats("tottime").print_stats(25)
    stats.sort_stats("cumulative").print_stats(30)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    names = selected(args.workloads)
    rounds = args.rounds or (3 if args.quick else 5)
    started = time.perf_counter()
    with (
        tempfile.TemporaryDirectory(prefix="ag_bench_") as tmpdir,
        bench_database(args.dsn, args.dbname, keep=args.keep_db) as dsn,
        psycopg.connect(dsn, autocommit=True) as raw,
    ):
        tmp = Path(tmpdir)
        info = machine(dsn)
        with build_guard(tmp) as guard:
            bench = Bench(
                dsn=dsn,
                guard=guard,
                raw=raw,
                tmp=tmp,
                quick=args.quick,
                rounds=rounds,
                patch_casbin=not args.casbin_load_as_is,
            )
            if args.profile:
                profile(bench, args.profile, args.profile_count, raw=args.profile_raw)
                return 0
            print("accessguard overhead benchmarks (issue 5)")
            print(describe(info))
            print(f"{'quick' if args.quick else 'default'} run, {rounds} rounds per workload\n")
            results: list[Result] = []
            for name in names:
                t0 = time.perf_counter()
                print(f"  running {name} ...", end="", flush=True, file=sys.stderr)
                results.extend(WORKLOADS[name](bench))
                print(f" {time.perf_counter() - t0:.1f} s", file=sys.stderr)
    info["load_avg_end"] = list(os.getloadavg())
    info["seconds"] = round(time.perf_counter() - started, 1)
    goals = goal_summary(results)
    print()
    print(table(results))
    print("\ngoals (ratios, same server, same run):")
    for g in goals:
        figures = ", ".join(f"{k} {v:.3f}" for k, v in g["rows"].items())
        print(f"  {'met    ' if g['met'] else 'NOT MET'}  {g['goal']}: {figures}")
    print("\nworkloads:")
    print(notes(results))
    print(
        f"\n{info['seconds']} s; load average {info['load_avg_start'][0]:.2f} at start, "
        f"{info['load_avg_end'][0]:.2f} at end"
    )
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        payload = {
            "schema": 1,
            "machine": info,
            "settings": {"quick": args.quick, "rounds": rounds, "workloads": names},
            "results": [{**asdict(r), "overhead_pct": r.overhead_pct} for r in results],
            "goals": goals,
        }
        args.json.write_text(json.dumps(payload, indent=2, default=str) + "\n", encoding="utf-8")
        print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
