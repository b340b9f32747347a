"""Draw the side-by-side chart for the README from a ``benchmarks.sidebyside`` JSON file.

    .venv/bin/python -m benchmarks.sidebyside_chart benchmarks/results/sidebyside.json OUT.png

One group of bars per workload, one bar per contender: the median over runs
of its ratio to raw psycopg (first sight: to sqlglot's parse), with a line
from the lowest to the highest run. accessguard's bar is drawn dark, the
others in their own colours; the dashed line is 1.0 (as fast as the
baseline). Needs matplotlib (the ``bench`` extra).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from benchmarks.contenders import LABELS, ORDER

COLOURS = {
    "rls_session": "#90caf9",
    "rls_request": "#42a5f5",
    "rls_ticket": "#1e88e5",
    "rls_ticket_request": "#0d47a1",
    "sql_data_guard": "#ffb74d",
    "accessguard": "#2e7d32",
    "accessguard_sql": "#a5d6a7",
}


def draw(data: dict[str, Any], out: Path) -> None:
    import matplotlib as mpl

    mpl.use("Agg")
    import matplotlib.pyplot as plt

    by = {(r["details"]["workload"], r["details"]["contender"]): r for r in data["results"]}
    workloads = [w for w in data["workloads"] if any(k[0] == w for k in by)]
    contenders = [c for c in ORDER if c != "raw" and any(k[1] == c for k in by)]
    width = 0.8 / len(contenders)
    fig, ax = plt.subplots(figsize=(10, 0.9 * len(workloads) * len(contenders) / 3 + 1.8))
    top = 1.0
    for k, contender in enumerate(contenders):
        ys, meds, lows, highs = [], [], [], []
        for y, workload in enumerate(workloads):
            row = by.get((workload, contender))
            if row is None:
                continue
            d = row["details"]
            ys.append(y - 0.4 + width * (k + 0.5))
            meds.append(d["run_median"])
            lows.append(d["run_median"] - d["run_min"])
            highs.append(d["run_max"] - d["run_median"])
            top = max(top, d["run_max"])
        ax.barh(
            ys,
            meds,
            height=width * 0.9,
            color=COLOURS.get(contender, "#9e9e9e"),
            xerr=[lows, highs],
            error_kw={"elinewidth": 0.8, "capsize": 2},
            label=LABELS[contender],
        )
        for y, m, h in zip(ys, meds, highs, strict=True):
            ax.annotate(
                f"{m:.2f}",
                (m + h, y),
                xytext=(4, 0),
                textcoords="offset points",
                va="center",
                fontsize=7,
            )
    ax.axvline(1.0, color="black", linewidth=0.8, linestyle="--")
    ax.set_yticks(range(len(workloads)), [data["workloads"][w] for w in workloads], fontsize=9)
    ax.invert_yaxis()
    ax.set_xlim(0, top * 1.12)
    ax.set_xlabel("time per statement / raw psycopg's (first sight: / sqlglot.parse_one)")
    ax.grid(axis="x", alpha=0.3)
    ax.legend(fontsize=8, loc="lower right")
    m, s = data.get("machine", {}), data.get("settings", {})
    loads = ", ".join(f"{x['start'][0]:.1f}" for x in s.get("loads", []))
    fig.suptitle(
        "accessguard side by side with PostgreSQL RLS and sql-data-guard "
        f"(median of {s.get('runs', '?')} runs, bar: lowest-highest run)\n"
        f"{m.get('cpu', '?')}, {m.get('cores', '?')} cores (load average {loads}), "
        f"{m.get('python', '')}\n"  # three lines: one would run past the figure's edges
        f"PostgreSQL {m.get('postgresql', '?')}, "
        f"accessguard @ {m.get('commit', '?')}, {m.get('date', '')[:10]}",
        fontsize=9,
    )
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=150)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.sidebyside_chart", description="PNG of a side-by-side run."
    )
    parser.add_argument("results", type=Path, help="a benchmarks.sidebyside JSON file")
    parser.add_argument("out", type=Path, help="the PNG to write")
    args = parser.parse_args(argv)
    try:
        import matplotlib as mpl  # noqa: F401
    except ImportError:
        raise SystemExit(
            "the chart needs matplotlib: .venv/bin/pip install -e '.[bench]'"
        ) from None
    draw(json.loads(args.results.read_text(encoding="utf-8")), args.out)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
