"""Side by side: raw psycopg, PostgreSQL RLS three ways, sql-data-guard, accessguard (issue 19).

    .venv/bin/python -m benchmarks.sidebyside [--quick] [--runs N] [--json OUT.json]
    .venv/bin/python -m benchmarks.sidebyside_chart benchmarks/results/sidebyside.json OUT.png

Every contender reads customer 42's data as alice on T-100 on its own
connection (its own backend); see ``benchmarks.contenders`` for what each
checks and ``benchmarks.rls`` for the policies. Each iteration runs one step
of every contender in a new random order. A run opens fresh connections; the
table reports each contender's ratio to raw psycopg as the range over runs.
"""

from __future__ import annotations

import argparse
import gc
import os
import random
import statistics
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import sqlglot

from accessguard import Guard, scenario
from benchmarks import rls
from benchmarks.contenders import (
    CHECKS,
    LABELS,
    ORDER,
    WORKLOADS,
    Contender,
    Workload,
    opened,
    sql_data_guard,
)
from benchmarks.contenders import SDG_CONFIG as SDG
from benchmarks.environment import (
    DEFAULT_ADMIN_DSN,
    _version,
    bench_database,
    describe,
    machine,
    policy_copy,
)
from benchmarks.sidebyside_report import markdown, verdicts, write_json
from benchmarks.statements import FIRST_SIGHT_SHAPES
from benchmarks.timing import Samples, Step, summarize

RESULTS = Path(__file__).resolve().parent / "results"
FIRST_SIGHT = ("first_sight", "first sight vs sqlglot parse_one")


def interleave_shuffled(  # noqa: PLR0913 - the timing loop's knobs, by keyword
    steps: Sequence[Step],
    *,
    count: int,
    rounds: int,
    warmup: int,
    counter: Iterator[int],
    rng: random.Random,
) -> Samples:
    """timing.interleave, with the contenders in a new random order every iteration."""
    order = list(range(len(steps)))
    clock = time.perf_counter_ns
    for _ in range(warmup):
        i = next(counter)
        rng.shuffle(order)
        for j in order:
            steps[j](i)
    samples: Samples = []
    for _ in range(rounds):
        gc.collect()
        per: list[list[int]] = [[] for _ in steps]
        gc.disable()
        try:
            for _ in range(count):
                i = next(counter)
                rng.shuffle(order)
                for j in order:
                    t0 = clock()
                    steps[j](i)
                    per[j].append(clock() - t0)
        finally:
            gc.enable()
        samples.append(per)
    return samples


@dataclass(kw_only=True)
class Plan:
    """What one invocation measures."""

    runs: int
    rounds: int
    scale: float  #: iterations per round = workload count x scale
    workloads: tuple[Workload, ...] = WORKLOADS
    contenders: tuple[str, ...] = ORDER
    first_sight: bool = True
    seed: int = 19
    count: int | None = None  #: overrides every count (tests)
    #: (workload, contenders that took part), samples per run
    samples: dict[str, tuple[list[str], list[Samples]]] = field(default_factory=dict)
    loads: list[dict[str, Any]] = field(default_factory=list)
    #: one counter for the whole invocation: a literal or alias is never sent twice,
    #: so a later run cannot hit a cache an earlier one filled
    counter: Iterator[int] = field(default_factory=lambda: iter(range(1 << 62)))

    def iterations(self, default: int) -> int:
        return self.count if self.count is not None else max(50, int(default * self.scale))

    def record(self, name: str, who: list[str], samples: Samples) -> None:
        entry = self.samples.setdefault(name, (who, []))
        if entry[0] != who:
            raise RuntimeError(f"{name}: contenders changed between runs")
        entry[1].append(samples)


def same_rows(w: Workload, contenders: list[Contender], steps: list[Step]) -> None:
    """A contender that answers differently from raw psycopg voids the comparison."""
    expected = steps[0](0)
    if not expected:
        raise RuntimeError(f"{w.name}: raw psycopg returned no rows")
    for c, step in zip(contenders[1:], steps[1:], strict=True):
        got = step(0)
        if got != expected:
            raise RuntimeError(f"{w.name}: {c.name} returned {got!r}, raw psycopg {expected!r}")


def first_sight_steps(guard: Guard) -> tuple[list[str], list[Step]]:
    """sqlglot.parse_one (the baseline), guard.check, sql-data-guard: each on a new alias."""
    template, user, ticket = FIRST_SIGHT_SHAPES["first_sight"]
    if not guard.check(template.format(a="z_probe"), user=user, ticket=ticket).allowed:
        raise RuntimeError("first_sight: the guard refuses the statement")
    names = ["sqlglot.parse_one", "accessguard"]
    steps: list[Step] = [
        lambda i: sqlglot.parse_one(template.format(a=f"a{i:012d}"), read="postgres"),
        lambda i: guard.check(template.format(a=f"b{i:012d}"), user=user, ticket=ticket),
    ]
    verify = sql_data_guard()
    if verify is not None:
        if not verify(template.format(a="z_probe"), SDG, "postgres")["allowed"]:
            raise RuntimeError("first_sight: sql-data-guard refuses the statement")
        names.append("sql_data_guard")
        steps.append(lambda i: verify(template.format(a=f"c{i:012d}"), SDG, "postgres"))
    return names, steps


def one_run(plan: Plan, *, dsn: str, db: rls.RlsDatabase, guard: Guard, tmp: Path) -> None:
    rng = random.Random(plan.seed + len(plan.loads))
    counter = plan.counter
    load = {"start": list(os.getloadavg())}
    with opened(dsn=dsn, db=db, guard=guard, tmp=tmp, names=plan.contenders) as contenders:
        for w in rng.sample(plan.workloads, len(plan.workloads)):
            made = [(c, c.make(w)) for c in contenders]
            taking = [(c, s) for c, s in made if s is not None]
            who, steps = [c.name for c, _ in taking], [s for _, s in taking]
            same_rows(w, [c for c, _ in taking], steps)
            n = plan.iterations(w.count)
            print(f"  {w.name}: {n} x {plan.rounds} x {len(steps)}", file=sys.stderr, flush=True)
            plan.record(
                w.name,
                who,
                interleave_shuffled(
                    steps,
                    count=n,
                    rounds=plan.rounds,
                    warmup=max(10, n // 10),
                    counter=counter,
                    rng=rng,
                ),
            )
    if plan.first_sight:
        who, steps = first_sight_steps(guard)
        n = plan.iterations(800)
        plan.record(
            FIRST_SIGHT[0],
            who,
            interleave_shuffled(
                steps,
                count=n,
                rounds=plan.rounds,
                warmup=max(10, n // 10),
                counter=counter,
                rng=rng,
            ),
        )
    load["end"] = list(os.getloadavg())
    plan.loads.append(load)


def rows(plan: Plan) -> list[dict[str, Any]]:
    """One row per workload and contender: pooled medians, and the ratio in each run."""
    out = []
    for name, (who, runs) in plan.samples.items():
        pooled = [rnd for run in runs for rnd in run]
        cpu = name == FIRST_SIGHT[0]
        for j, contender in enumerate(who[1:], 1):
            per_run = [
                summarize(run, workload=name, kind="cpu", baseline="", subject="", subject_index=j)
                for run in runs
            ]
            r = summarize(
                pooled,
                workload=f"{name}/{contender}",
                kind="cpu" if cpu else "latency",
                baseline=who[0] if cpu else "raw psycopg",
                subject=contender,
                subject_index=j,
                details={
                    "workload": name,
                    "contender": contender,
                    "run_ratios": [round(x.ratio, 4) for x in per_run],
                    "run_min": min(x.ratio for x in per_run),
                    "run_max": max(x.ratio for x in per_run),
                    "run_median": statistics.median(x.ratio for x in per_run),
                },
            )
            out.append({**asdict(r), "overhead_pct": r.overhead_pct})
    return out


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m benchmarks.sidebyside", description=__doc__)
    p.add_argument("--quick", action="store_true", help="2 runs, 3 rounds, a fifth of the counts")
    p.add_argument("--runs", type=int, help="runs, each on fresh connections (default 3)")
    p.add_argument("--rounds", type=int, help="rounds per workload and run (default 5)")
    p.add_argument("--count", type=int, help="iterations per round for every workload")
    p.add_argument("--contenders", metavar="A,B", help=f"subset of {','.join(ORDER)}")
    p.add_argument("--no-first-sight", action="store_true", help="skip the in-process row")
    p.add_argument("--seed", type=int, default=19, help="random order seed (default 19)")
    p.add_argument("--dsn", default=os.environ.get("ACCESSGUARD_BENCH_DSN", DEFAULT_ADMIN_DSN))
    p.add_argument("--dbname", default="ag_side", help="bench database (default ag_side)")
    p.add_argument("--keep-db", action="store_true", help="keep the databases and roles")
    p.add_argument(
        "--json",
        type=Path,
        help="result file (default benchmarks/results/sidebyside.json, -quick.json with --quick)",
    )
    p.add_argument("--markdown", type=Path, help="table file (default: the JSON's name, .md)")
    return p.parse_args(argv)


def command_line(argv: Sequence[str]) -> str:
    return " ".join([".venv/bin/python -m benchmarks.sidebyside", *argv])


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    quick = bool(args.quick)
    plan = Plan(
        runs=args.runs or (2 if quick else 3),
        rounds=args.rounds or (3 if quick else 5),
        scale=0.2 if quick else 1.0,
        count=args.count,
        first_sight=not args.no_first_sight,
        seed=args.seed,
        contenders=tuple(args.contenders.split(",")) if args.contenders else ORDER,
    )
    started = time.perf_counter()
    with (
        tempfile.TemporaryDirectory(prefix="ag_side_") as tmpdir,
        bench_database(args.dsn, args.dbname, keep=args.keep_db) as dsn,
        rls.rls_database(args.dsn, args.dbname, keep=args.keep_db) as db,
    ):
        tmp = Path(tmpdir)
        info = machine(dsn)
        info["sql_data_guard"] = _version("sql-data-guard")
        print(describe(info), file=sys.stderr)
        guard = Guard.from_directory(
            policy_copy(tmp), tickets=scenario.tickets(), audit=tmp / "audit"
        )
        with guard:
            for run in range(plan.runs):
                print(f"run {run + 1}/{plan.runs}", file=sys.stderr, flush=True)
                one_run(plan, dsn=dsn, db=db, guard=guard, tmp=tmp)
    info["load_avg_end"] = list(os.getloadavg())
    info["seconds"] = round(time.perf_counter() - started, 1)
    settings = {
        "quick": quick,
        "runs": plan.runs,
        "rounds": plan.rounds,
        "counts": {w.name: plan.iterations(w.count) for w in plan.workloads},
        "seed": plan.seed,
        "loads": plan.loads,
        "command": command_line(sys.argv[1:] if argv is None else argv),
        "sql_data_guard": sql_data_guard() is not None,
    }
    labels = {w.name: w.label for w in plan.workloads} | {FIRST_SIGHT[0]: FIRST_SIGHT[1]}
    payload = {
        "schema": 1,
        "benchmark": "sidebyside",
        "machine": info,
        "settings": settings,
        "workloads": labels,
        "contenders": {c: {"label": LABELS[c], "checks": CHECKS[c]} for c in plan.contenders},
        "results": rows(plan),
    }
    payload["goals"] = verdicts(payload)
    text = markdown(payload)
    out = args.json or RESULTS / ("sidebyside-quick.json" if quick else "sidebyside.json")
    table = args.markdown or out.with_suffix(".md")
    write_json(out, payload)
    table.parent.mkdir(parents=True, exist_ok=True)
    table.write_text(text + "\n", encoding="utf-8")
    print(f"wrote {out} and {table}", file=sys.stderr)
    print(text)  # last: the files are written even if stdout is closed early
    return payload


if __name__ == "__main__":
    main()
    sys.exit(0)
