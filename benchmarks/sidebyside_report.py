"""The side-by-side run as a Markdown table (for the README), its goals, and its JSON file.

    .venv/bin/python -m benchmarks.sidebyside_report benchmarks/results/sidebyside.json [OUT.md]

prints (or writes) the table of a finished run again.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from benchmarks.contenders import CHECKS, LABELS, ORDER
from benchmarks.environment import describe


def _by(payload: dict[str, Any]) -> dict[tuple[str, str], dict[str, Any]]:
    return {(r["details"]["workload"], r["details"]["contender"]): r for r in payload["results"]}


def spread(row: dict[str, Any], runs: int) -> str:
    """'1.08-1.10': lowest and highest ratio over runs (over rounds when there is one run)."""
    d = row["details"]
    lo, hi = (d["run_min"], d["run_max"]) if runs > 1 else (row["round_min"], row["round_max"])
    digits = 2 if hi < 10 else 1  # two significant digits past 10x
    return f"{lo:.{digits}f}-{hi:.{digits}f}"


def markdown(payload: dict[str, Any]) -> str:
    """The README table: one row per workload, one column per contender, then how it was run."""
    by = _by(payload)
    settings, info = payload["settings"], payload["machine"]
    present = [c for c in ORDER if c != "raw" and any(k[1] == c for k in by)]
    header = ["workload", "raw psycopg (median)", *(LABELS[c] for c in present)]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for name, label in payload["workloads"].items():
        cells = [by[(name, c)] for c in present if (name, c) in by]
        if not cells:
            continue
        base = cells[0]
        first = f"{base['baseline_value']:,.1f} us"
        if base["kind"] == "cpu":
            first = f"{base['baseline']}: {first}"
        row = [label, first]
        row += [spread(by[(name, c)], settings["runs"]) if (name, c) in by else "" for c in present]
        lines.append("| " + " | ".join(row) + " |")
    loads = ", ".join(
        f"{load['start'][0]:.2f} -> {load['end'][0]:.2f}" for load in settings["loads"]
    )
    counts = ", ".join(f"{k} {v}" for k, v in settings["counts"].items())
    lines += [
        "",
        (
            "Ratios to raw psycopg (first sight: to `sqlglot.parse_one`), lowest-highest over "
            f"{settings['runs']} run(s) (each on fresh connections, one backend per contender), "
            f"{settings['rounds']} round(s) per run (iterations per round: {counts}), every "
            "iteration in a new random order. Lower is better; raw psycopg's median latency "
            "is in the second column."
        ),
        "",
        f"Load average (1 min) at the start and end of each run: {loads}.",
        "",
        "```text",
        describe(info)
        + (f", sql-data-guard {info['sql_data_guard']}" if info.get("sql_data_guard") else ""),
        f"{payload['settings']['command']}   # {info['date']}, {info['seconds']} s",
        "```",
    ]
    lines += ["", "What each contender checks:", ""]
    lines += [f"- **{LABELS[c]}**: {CHECKS[c]}" for c in ("raw", *present)]
    if not settings["sql_data_guard"]:
        lines += ["", "sql-data-guard was not installed: its column is left out."]
    goals = payload.get("goals") or []
    if goals:
        lines += ["", "Goals of issue 19 (median over runs):", ""]
        lines += [
            f"- {'met' if g['met'] else 'NOT MET'}: {g['goal']}: {g['value']:.3f} "
            f"(bound {g['bound']:.3f})"
            for g in goals
        ]
    return "\n".join(lines)


def verdicts(payload: dict[str, Any]) -> list[dict[str, Any]]:
    """Issue 19's 'done when', where this run has the rows to decide it."""
    by = _by(payload)

    def med(workload: str, contender: str) -> float | None:
        row = by.get((workload, contender))
        return None if row is None else float(row["details"]["run_median"])

    out = []
    for workload in ("point_lookup_param", "three_table_join"):
        ours, theirs = med(workload, "accessguard"), med(workload, "rls_session")
        if ours is not None and theirs is not None:
            out.append(
                {
                    "goal": f"{workload}: accessguard at or below RLS per session",
                    "value": ours,
                    "bound": theirs,
                    "met": ours <= theirs,
                }
            )
    for workload, goal, bound in (
        ("point_lookup_literal", "point_lookup_literal: accessguard at most", 1.15),
        ("first_sight", "first sight: accessguard at most x sqlglot's parse", 1.5),
    ):
        ours = med(workload, "accessguard")
        if ours is not None:
            out.append(
                {"goal": f"{goal} {bound}", "value": ours, "bound": bound, "met": ours <= bound}
            )
    return out


def write_json(path: Path, payload: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(payload, indent=2, default=str) + "\n", encoding="utf-8")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.sidebyside_report", description="Markdown of a side-by-side run."
    )
    parser.add_argument("results", type=Path, help="a benchmarks.sidebyside JSON file")
    parser.add_argument("out", type=Path, nargs="?", help="write the table here (else print it)")
    args = parser.parse_args(argv)
    text = markdown(json.loads(args.results.read_text(encoding="utf-8")))
    if args.out is None:
        print(text)
    else:
        args.out.write_text(text + "\n", encoding="utf-8")
        print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
