"""Compare two benchmark runs workload by workload.

    .venv/bin/python -m benchmarks.compare A.json B.json

For each workload in both runs: the ratio in A and in B, the change, and
whether the change is outside the noise within either run (the range of its
per-round ratios). Noise between runs is larger, above all on a shared
machine whose load changes: compare runs made at a similar load average.
Lower is better for latency and cpu rows, higher for throughput rows.
Machine differences are printed first: ratios travel between machines better
than microseconds do, but not perfectly.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

MACHINE_KEYS = (
    "cpu",
    "cores",
    "python",
    "psycopg",
    "psycopg_impl",
    "sqlglot",
    "sqlglotc",
    "sqlglot_compiled",
    "postgresql",
    "commit",
    "accessguard_dirty",
)


def load(path: Path) -> dict[str, Any]:
    data: dict[str, Any] = json.loads(path.read_text(encoding="utf-8"))
    if "results" not in data:
        raise SystemExit(f"{path}: not a benchmarks.bench --json file")
    return data


def noise(row: dict[str, Any]) -> float:
    """How far a ratio may move by chance: the median's notch, and for latency and cpu
    rows (a few rounds of thousands of pairs) half the range of the round ratios."""
    notch = 1.58 * (row["p75"] - row["p25"]) / max(row["n"], 1) ** 0.5
    if row["kind"] == "throughput":  # its rounds are single short phases: use the notch
        return float(notch)
    return float(max(notch, (row["round_max"] - row["round_min"]) / 2))


def verdict(row_a: dict[str, Any], row_b: dict[str, Any]) -> str:
    """'better', 'worse' or '~' (within the noise of either run)."""
    delta = float(row_b["ratio"]) - float(row_a["ratio"])
    if abs(delta) <= max(noise(row_a), noise(row_b), 0.005):
        return "~"
    lower_is_better = row_a["kind"] != "throughput"
    return "better" if (delta < 0) == lower_is_better else "worse"


def goal_state(row: dict[str, Any]) -> str:
    met = row.get("met")
    return "-" if met is None else ("met" if met else "not met")


def value(row: dict[str, Any], key: str) -> str:
    unit = row["unit"]
    return f"{row[key]:,.0f} {unit}" if unit == "stmt/s" else f"{row[key]:,.1f} {unit}"


def compare(a: dict[str, Any], b: dict[str, Any]) -> str:
    ma, mb = a.get("machine", {}), b.get("machine", {})
    diffs = [k for k in MACHINE_KEYS if ma.get(k) != mb.get(k)]
    lines = [f"  {key}: {ma.get(key)} -> {mb.get(key)}" for key in diffs]
    if diffs:
        lines = ["machine / versions differ:", *lines, ""]
    loads = [(m.get("load_avg_start") or [0.0])[0] for m in (ma, mb)]
    lines.append(
        f"load average at start: A {loads[0]:.2f}, B {loads[1]:.2f}"
        + (
            "  (different load: ratios move with it; '~' only covers noise within a run)"
            if abs(loads[0] - loads[1]) > 1.0
            else ""
        )
    )
    lines.append("")
    rows_a = {r["workload"]: r for r in a["results"]}
    rows_b = {r["workload"]: r for r in b["results"]}
    header = (
        f"{'workload':<29} {'ratio A':>8} {'ratio B':>8} {'change':>8}  {'':<6} "
        f"{'subject A':>13} {'subject B':>13}  goal A -> B"
    )
    lines += [header, "-" * len(header)]
    for name, ra in rows_a.items():
        rb = rows_b.get(name)
        if rb is None:
            lines.append(f"{name:<29} {ra['ratio']:>8.3f} {'-':>8}  (only in A)")
            continue
        lines.append(
            f"{name:<29} {ra['ratio']:>8.3f} {rb['ratio']:>8.3f} "
            f"{rb['ratio'] - ra['ratio']:>+8.3f}  {verdict(ra, rb):<6} "
            f"{value(ra, 'subject_value'):>13} {value(rb, 'subject_value'):>13}  "
            f"{goal_state(ra)} -> {goal_state(rb)}"
        )
    lines.extend(
        f"{name:<29} {'-':>8} {rb['ratio']:>8.3f}  (only in B)"
        for name, rb in rows_b.items()
        if name not in rows_a
    )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.compare", description="Diff two benchmark JSON files."
    )
    parser.add_argument("a", type=Path, help="the earlier run (A.json)")
    parser.add_argument("b", type=Path, help="the later run (B.json)")
    args = parser.parse_args(argv)
    print(compare(load(args.a), load(args.b)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
