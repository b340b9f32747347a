"""Draw the overhead chart for the README from a benchmark JSON file.

    .venv/bin/python -m benchmarks.chart results.json out.png

Left: extra time per statement against raw psycopg, in percent, for every
workload that runs against the server (for threads_8: the lost throughput
expressed as extra time per statement). Right: the in-process ratios
(first sight against sqlglot's parse, policy size against 10 lines). Bars are
green where the workload meets its goal, red where it does not, grey where it
has none; a black tick marks the goal. Needs matplotlib (the ``bench`` extra).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any


def overhead_pct(row: dict[str, Any]) -> float:
    ratio = float(row["ratio"])
    if row["kind"] == "throughput":
        return (1.0 / ratio - 1.0) * 100.0
    return (ratio - 1.0) * 100.0


def goal_pct(row: dict[str, Any]) -> float | None:
    goal = row.get("goal")
    if not goal:
        return None
    bound = float(goal["bound"])
    return (1.0 / bound - 1.0) * 100.0 if row["kind"] == "throughput" else (bound - 1.0) * 100.0


def colour(row: dict[str, Any]) -> str:
    met = row.get("met")
    return "#9e9e9e" if met is None else ("#2e7d32" if met else "#c62828")


def draw(data: dict[str, Any], out: Path) -> None:
    import matplotlib as mpl

    mpl.use("Agg")
    import matplotlib.pyplot as plt

    server = [r for r in data["results"] if r["kind"] in {"latency", "throughput"}]
    local = [r for r in data["results"] if r["kind"] == "cpu"]
    panels = [(server, "overhead vs raw psycopg (%)"), (local, "ratio (x)")]
    panels = [(rows, label) for rows, label in panels if rows]
    heights = [max(len(rows), 2) for rows, _ in panels]
    fig, axes = plt.subplots(
        1,
        len(panels),
        figsize=(6.2 * len(panels), 0.42 * max(heights) + 1.9),
        squeeze=False,
    )
    for ax, (panel_rows, label) in zip(axes[0], panels, strict=True):
        rows = panel_rows[::-1]  # first workload on top
        names = [r["workload"] for r in rows]
        if label.startswith("overhead"):
            values = [overhead_pct(r) for r in rows]
            goals = [goal_pct(r) for r in rows]
            ax.axvline(0, color="black", linewidth=0.8)
            if max(abs(v) for v in values) > 100:  # keep a few percent visible beside hundreds
                ax.set_xscale("symlog", linthresh=10)
            fmt = "{:+.1f}%"
        else:
            values = [r["ratio"] for r in rows]
            goals = [float(r["goal"]["bound"]) if r.get("goal") else None for r in rows]
            ax.axvline(1, color="black", linewidth=0.8)
            fmt = "{:.2f}x"
        ys = range(len(rows))
        ax.barh(list(ys), values, color=[colour(r) for r in rows], height=0.6)
        for y, v, g in zip(ys, values, goals, strict=True):
            ax.annotate(
                fmt.format(v),
                (v, y),
                xytext=(4 if v >= 0 else -4, 0),
                textcoords="offset points",
                va="center",
                ha="left" if v >= 0 else "right",
                fontsize=8,
            )
            if g is not None:
                ax.plot([g, g], [y - 0.4, y + 0.4], color="black", linewidth=2)
        ax.set_yticks(list(ys), names, fontsize=9)
        ax.set_xlabel(label)
        ax.margins(x=0.18)
        ax.grid(axis="x", alpha=0.3)
    m = data.get("machine", {})
    fig.suptitle(
        "accessguard overhead (green: goal met, red: not met; tick: goal)\n"
        f"{m.get('cpu', '?')}, {m.get('cores', '?')} cores, {m.get('python', '')}, "
        f"psycopg {m.get('psycopg', '?')}, sqlglot {m.get('sqlglot', '?')}"
        f"{' + sqlglotc' if m.get('sqlglot_compiled') else ''}, "
        f"PostgreSQL {m.get('postgresql', '?')}, {m.get('date', '')[:10]}",
        fontsize=9,
    )
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=150)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.chart", description="PNG bar chart of overhead by workload."
    )
    parser.add_argument("results", type=Path, help="a benchmarks.bench --json file")
    parser.add_argument("out", type=Path, help="the PNG to write")
    args = parser.parse_args(argv)
    try:
        import matplotlib as mpl  # noqa: F401
    except ImportError:
        raise SystemExit("chart needs matplotlib: .venv/bin/pip install -e '.[bench]'") from None
    draw(json.loads(args.results.read_text(encoding="utf-8")), args.out)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
