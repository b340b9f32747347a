"""How fast, how much memory, and how right: who-read, what-read and subject-export on a month.

Runs the real command (``python -m accessguard audit ...``) under
``/usr/bin/time`` against the trail and the PostgreSQL sink that
``benchmarks/month.py`` wrote, several times per question, and reports per
question and source the median wall time, the median CPU time (user + system:
on a shared machine the wall time also counts waiting for a core) and the
peak resident memory. Every answer over the whole month is checked against
the generator's ground truth. The first run against the file builds its
index; it is reported apart.

    python -m benchmarks.month --out /tmp/month --dsn postgresql://.../ag_month
    python -m benchmarks.investigations --out /tmp/month --dsn postgresql://.../ag_month
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import shutil
import statistics
import subprocess
import sys
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

TIME = "/usr/bin/time"


def run(argv: list[str]) -> tuple[str, float, float, int]:
    """(stdout, wall seconds, cpu seconds, peak RSS in MB) of one command."""
    cmd = [TIME, "-f", "%e %U %S %M", sys.executable, "-m", "accessguard", *argv]
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    started = time.perf_counter()
    done = subprocess.run(cmd, capture_output=True, text=True, check=False, env=env)  # noqa: S603
    wall = time.perf_counter() - started
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)}: exit {done.returncode}: {done.stderr[-2000:]}")
    _e, user, system, rss = done.stderr.strip().splitlines()[-1].split()
    return done.stdout, wall, float(user) + float(system), int(rss) // 1024


def truth_by(truth: dict[str, Any]) -> tuple[dict[Any, list[Any]], dict[str, list[Any]]]:
    by_subject: dict[Any, list[Any]] = defaultdict(list)
    by_user: dict[str, list[Any]] = defaultdict(list)
    for read in truth["reads"]:
        by_subject[(read["scope"], read["subject"])].append(read)
        by_user[read["user"]].append(read)
    return by_subject, by_user


#: the same questions over a week with partial hours at both ends
SPAN = ["--from", "2026-11-09T09:30", "--until", "2026-11-16T17:15"]
WEEK = {
    "who-read (week)": ("who-read", SPAN),
    "what-read (week)": ("what-read", SPAN),
}
FIELDS = ("statements", "rows", "columns", "tables", "first", "last", "ticket", "ticket_kind")


def same(rows: list[dict[str, Any]], reads: list[dict[str, Any]], who: str) -> bool:
    """Whether the command's rows are exactly the ground truth's groups (``who`` names them)."""

    def norm(items: list[dict[str, Any]]) -> list[tuple[str, ...]]:
        return sorted((str(r[who]), *(json.dumps(r[f]) for f in FIELDS)) for r in items)

    return norm(rows) == norm(reads)


def main(argv: list[str] | None = None) -> int:  # noqa: PLR0915 - one benchmark, start to end
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, required=True, help="benchmarks/month.py's --out")
    parser.add_argument("--dsn", help="the PostgreSQL sink month.py wrote (else: file only)")
    parser.add_argument("--repeat", type=int, default=5, help="runs per question")
    parser.add_argument("--json", type=Path, default=None, help="write the figures here")
    parser.add_argument("--fresh-index", action="store_true", help="delete the index first")
    parser.add_argument(
        "--in-process",
        action="store_true",
        help="time the engines inside this process instead (no interpreter start, no imports)",
    )
    args = parser.parse_args(argv)
    if shutil.which(TIME) is None:
        parser.error(f"{TIME} is needed (GNU time, Debian package 'time')")
    trail = args.out / "trail.jsonl"
    truth = json.loads((args.out / "ground_truth.json").read_text(encoding="utf-8"))
    by_subject, by_user = truth_by(truth)
    rng = random.Random(1)
    busiest = sorted(by_subject, key=lambda s: -sum(r["statements"] for r in by_subject[s]))
    subjects = [("customer", 150), *busiest[:2], *rng.sample(sorted(by_subject), 2)]
    users = [*truth["insiders"].values(), *rng.sample(sorted(truth["employees"]), 2)]
    sources = {"file": ["--audit", str(trail)]}
    if args.dsn:
        sources["postgresql"] = ["--dsn", args.dsn]
    results: dict[str, Any] = {
        "machine": {
            "cpus": os.cpu_count(),
            "python": platform.python_version(),
            "load_before": os.getloadavg(),
        },
        "trail_bytes": trail.stat().st_size,
        "events": truth["events"],
        "statements": truth["statements"],
        "figures": [],
        "wrong": [],
    }
    if args.in_process:
        print(json.dumps(in_process(sources, subjects, users, args.repeat), indent=1))
        return 0
    _, wall, cpu, _rss = run(["--version"])
    results["floor"] = {"what": "accessguard --version", "wall_s": round(wall, 3), "cpu_s": cpu}
    index = Path(f"{trail}.index")
    if args.fresh_index:
        shutil.rmtree(index, ignore_errors=True)
    _, wall, cpu, rss = run(["audit", "who-read", *sources["file"], "--customer", "150"])
    results["index_build"] = {
        "wall_s": round(wall, 2),
        "cpu_s": round(cpu, 2),
        "rss_mb": rss,
        "index_bytes": sum(p.stat().st_size for p in index.iterdir()),
    }
    print(f"index: {wall:.1f} s wall, {cpu:.1f} s cpu, {rss} MB peak", file=sys.stderr)
    if args.dsn:
        _, wall, cpu, rss = run(["audit", "index", "--dsn", args.dsn])
        results["rollup_refresh"] = {"wall_s": round(wall, 2), "rss_mb": rss}
    windowed: dict[tuple[str, str], dict[str, str]] = {}
    for source, where in sources.items():
        for question in ("who-read", "what-read", "subject-export", *WEEK):
            walls: list[float] = []
            cpus: list[float] = []
            peak = 0
            targets = users if question.startswith("what-read") else subjects
            for target in targets:
                if question.startswith("what-read"):
                    ask = ["--user", str(target)]
                else:
                    scope, ident = target
                    ask = ["--customer", str(ident), *(["--product"] if scope == "product" else [])]
                command, span = WEEK.get(question, (question, []))
                for n in range(args.repeat):
                    out, wall, cpu, rss = run(
                        ["audit", command, *where, *ask, *span, "--format", "json"]
                    )
                    walls.append(wall)
                    cpus.append(cpu)
                    peak = max(peak, rss)
                    if n == 0 and span:  # no ground truth per window: the sources must agree
                        windowed.setdefault((question, str(target)), {})[source] = out
                    elif n == 0:
                        check(question, out, target, by_subject, by_user, results["wrong"], source)
            figure = {
                "source": source,
                "question": question,
                "runs": len(walls),
                "p50_wall_s": round(statistics.median(walls), 3),
                "p50_cpu_s": round(statistics.median(cpus), 3),
                "max_wall_s": round(max(walls), 3),
                "peak_rss_mb": peak,
            }
            results["figures"].append(figure)
            print(json.dumps(figure), file=sys.stderr)
    for (question, target), outs in windowed.items():
        if len(set(outs.values())) > 1:
            results["wrong"].append({"question": question, "target": target, "sources": "differ"})
    results["load_after"] = os.getloadavg()
    text = json.dumps(results, indent=1)
    if args.json:
        args.json.write_text(text, encoding="utf-8")
    print(text)
    return 1 if results["wrong"] else 0


def in_process(
    sources: dict[str, list[str]], subjects: list[Any], users: list[str], repeat: int
) -> list[dict[str, Any]]:
    """p50 of open + question + close per source and question, in this process."""
    import datetime as dt

    from accessguard.investigate import Window, open_engine, what_read, who_read

    week = Window(
        start=dt.datetime(2026, 11, 9, 9, 30, tzinfo=dt.UTC),
        end=dt.datetime(2026, 11, 16, 17, 15, tzinfo=dt.UTC),
    )
    figures = []
    for source, where in sources.items():
        kw: dict[str, Any] = {"dsn": where[1]} if source == "postgresql" else {"audit": where[1]}
        for name, window in (("month", Window()), ("week", week)):
            for question in ("who-read", "what-read"):
                took = []
                for target in users if question == "what-read" else subjects:
                    for _ in range(repeat):
                        started = time.perf_counter()
                        engine = open_engine(**kw)
                        if question == "what-read":
                            what_read(engine, user=target, window=window)
                        else:
                            who_read(engine, customer=target[1], scope=target[0], window=window)
                        engine.close()
                        took.append(time.perf_counter() - started)
                figures.append(
                    {
                        "source": source,
                        "question": f"{question} ({name})",
                        "runs": len(took),
                        "p50_ms": round(1000 * statistics.median(took), 1),
                        "max_ms": round(1000 * max(took), 1),
                    }
                )
    return figures


def check(  # noqa: PLR0913, PLR0917 - one answer and what to hold it against
    question: str,
    out: str,
    target: Any,
    by_subject: dict[Any, list[Any]],
    by_user: dict[str, list[Any]],
    wrong: list[Any],
    source: str,
) -> None:
    """Record a mismatch between the command's answer and the ground truth."""
    doc = json.loads(out)
    if question == "what-read":
        ok = same([{**r, "subject": r["customer"]} for r in doc], by_user[target], "subject")
    elif question == "who-read":
        ok = same(doc, by_subject[target], "user")
    else:
        ok = same(doc["readers"], by_subject[target], "user") and sum(
            e["statements"] for e in doc["entries"]
        ) == sum(r["statements"] for r in by_subject[target])
    if not ok:
        wrong.append({"source": source, "question": question, "target": str(target)})


if __name__ == "__main__":
    raise SystemExit(main())
