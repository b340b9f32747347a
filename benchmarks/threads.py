"""threads_8: throughput of 8 threads, guarded against raw, on the same 8 backends.

Each thread owns one raw psycopg connection and ``guard.wrap`` of it. Short
phases of raw and guarded run alternately (raw first in even pairs, guarded
first in odd ones), every thread executing the point lookup as fast as it can.
Throughput on a shared machine swings from phase to phase: many short phase
pairs and medians (of statements/s per phase) hold the ratio steadier than a
few long phases.
"""

from __future__ import annotations

import statistics
import threading
import time
from typing import Any

import psycopg

from benchmarks.environment import Bench
from benchmarks.statements import POINT, THREAD_COUNT, THREADS
from benchmarks.timing import Result, quantile


def _phase(conns: list[Any], duration: float) -> tuple[int, float]:
    """Every connection executes the point lookup in its own thread for ``duration`` s."""
    start = threading.Barrier(len(conns) + 1)
    stop = threading.Event()
    counts = [0] * len(conns)

    def work(k: int) -> None:
        conn, n = conns[k], 0
        start.wait()
        while not stop.is_set():
            conn.execute(POINT, [42]).fetchall()
            n += 1
        counts[k] = n

    threads = [threading.Thread(target=work, args=(k,)) for k in range(len(conns))]
    for t in threads:
        t.start()
    start.wait()
    t0 = time.perf_counter()
    time.sleep(duration)
    stop.set()
    for t in threads:
        t.join()
    return sum(counts), time.perf_counter() - t0


def threads_8(bench: Bench) -> list[Result]:
    pairs, duration = (8, 0.15) if bench.quick else (60, 0.25)
    raws = [psycopg.connect(bench.dsn, autocommit=True) for _ in range(THREAD_COUNT)]
    totals = {"raw": [0, 0.0], "guarded": [0, 0.0]}
    phase_rates: dict[str, list[float]] = {"raw": [], "guarded": []}
    ratios: list[float] = []
    try:
        guarded = [bench.guard.wrap(r, user="alice", ticket="T-100") for r in raws]
        modes: list[tuple[str, list[Any]]] = [("raw", raws), ("guarded", guarded)]
        for _mode, conns in modes:  # warm-up: connections, prepared statements, plans
            _phase(conns, 0.3)
        for i in range(pairs):
            rates = {}
            for mode, conns in modes if i % 2 == 0 else modes[::-1]:
                done, elapsed = _phase(conns, duration)
                totals[mode][0] += done
                totals[mode][1] += elapsed
                rates[mode] = done / elapsed
                phase_rates[mode].append(done / elapsed)
            ratios.append(rates["guarded"] / rates["raw"])
    finally:
        for conn in raws:
            conn.close()
    raw_rate = statistics.median(phase_rates["raw"])
    guarded_rate = statistics.median(phase_rates["guarded"])
    pooled = (totals["guarded"][0] / totals["guarded"][1]) / (totals["raw"][0] / totals["raw"][1])
    return [
        Result(
            workload="threads_8",
            kind="throughput",
            baseline="raw psycopg, 8 threads",
            subject="guarded, 8 threads",
            unit="stmt/s",
            baseline_value=raw_rate,
            subject_value=guarded_rate,
            ratio=statistics.median(ratios),
            p25=quantile(ratios, 0.25),
            p75=quantile(ratios, 0.75),
            round_min=min(ratios),
            round_max=max(ratios),
            n=len(ratios),
            goal=THREADS,
            note=f"8 threads, each its own connection (raw, and guard.wrap of it), the point "
            f"lookup; {pairs} pairs of {duration:g} s phases, raw and guarded alternating; "
            "ratio = median over phase pairs of guarded/raw statements/s (base and subject: "
            "median statements/s per phase); N = phase pairs",
            details={
                "pair_ratios": [round(x, 4) for x in ratios],
                "pooled_ratio": round(pooled, 4),
                "ratio_of_median_rates": round(guarded_rate / raw_rate, 4),
                "statements": {mode: int(t[0]) for mode, t in totals.items()},
            },
        )
    ]
