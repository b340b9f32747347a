"""The timing core: contenders interleaved step by step, medians and quartiles.

Every measurement compares a *subject* with a *baseline* measured in the same
loop: one step of each, alternately, with the order rotated every iteration so
neither always runs first. Drift of the machine, the server or the connection
then hits both sides alike, and the ratio of their medians stays put where two
separate runs would not. The garbage collector is off inside a round (as in
``timeit``) and collected between rounds.
"""

from __future__ import annotations

import gc
import itertools
import statistics
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

#: one timed unit of work; gets a run-wide unique index (for varying literals)
Step = Callable[[int], object]

#: samples[round][contender] -> durations in ns, index-aligned across contenders
Samples = list[list[list[int]]]


def interleave(
    steps: Sequence[Step], *, count: int, rounds: int, warmup: int, counter: Iterator[int]
) -> Samples:
    """Time ``count`` iterations of every step per round, alternating, after ``warmup``."""
    k = len(steps)
    clock = time.perf_counter_ns
    for _ in range(warmup):
        i = next(counter)
        for step in steps:
            step(i)
    samples: Samples = []
    for _ in range(rounds):
        gc.collect()
        per: list[list[int]] = [[] for _ in steps]
        gc.disable()
        try:
            for _ in range(count):
                i = next(counter)
                first = i % k
                for j in itertools.chain(range(first, k), range(first)):
                    t0 = clock()
                    steps[j](i)
                    per[j].append(clock() - t0)
        finally:
            gc.enable()
        samples.append(per)
    return samples


def quantile(values: Sequence[float], q: float) -> float:
    """The ``q`` quantile (0..1) of ``values``, linear between the closest ranks."""
    ordered = sorted(values)
    if not ordered:
        return float("nan")
    pos = (len(ordered) - 1) * q
    lo = int(pos)
    hi = min(lo + 1, len(ordered) - 1)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (pos - lo)


@dataclass(frozen=True, slots=True, kw_only=True)
class Goal:
    """A target from issue 5: ``ratio <= bound`` (or ``>=`` for throughput)."""

    name: str
    op: Literal["<=", ">="]
    bound: float

    def met(self, ratio: float) -> bool:
        return ratio <= self.bound if self.op == "<=" else ratio >= self.bound

    def __str__(self) -> str:
        return f"{self.op} {self.bound:g}"


@dataclass(kw_only=True)
class Result:
    """One row of the report: subject against baseline, as a ratio of medians.

    ``kind`` is "latency" (guarded against raw psycopg, time per statement),
    "cpu" (an in-process cost against another in-process cost) or
    "throughput" (statements per second; a ratio below 1 is the overhead).
    ``p25``/``p75`` are quartiles of the per-iteration ratios; ``round_min``/
    ``round_max`` the range of the per-round ratios of medians.
    """

    workload: str
    kind: Literal["latency", "cpu", "throughput"]
    baseline: str
    subject: str
    unit: str
    baseline_value: float
    subject_value: float
    ratio: float
    p25: float
    p75: float
    round_min: float
    round_max: float
    n: int
    goal: Goal | None = None
    met: bool | None = None
    note: str = ""
    details: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.goal is not None and self.met is None:
            self.met = self.goal.met(self.ratio)

    @property
    def overhead_pct(self) -> float:
        """Extra time per statement (or per decision) in percent of the baseline's."""
        if self.kind == "throughput":
            return (1.0 / self.ratio - 1.0) * 100.0
        return (self.ratio - 1.0) * 100.0


def summarize(  # noqa: PLR0913 - every field of a report row, by keyword
    samples: Samples,
    *,
    workload: str,
    kind: Literal["latency", "cpu"],
    baseline: str,
    subject: str,
    base_index: int = 0,
    subject_index: int = 1,
    goal: Goal | None = None,
    note: str = "",
    details: dict[str, Any] | None = None,
) -> Result:
    """Pool the rounds: medians in microseconds, their ratio, quartiles of per-pair ratios."""
    base_all = [t for rnd in samples for t in rnd[base_index]]
    subj_all = [t for rnd in samples for t in rnd[subject_index]]
    pair_ratios = [s / b for s, b in zip(subj_all, base_all, strict=True) if b > 0]
    round_ratios = [
        statistics.median(rnd[subject_index]) / statistics.median(rnd[base_index])
        for rnd in samples
    ]
    base_med = statistics.median(base_all) / 1000.0
    subj_med = statistics.median(subj_all) / 1000.0
    return Result(
        workload=workload,
        kind=kind,
        baseline=baseline,
        subject=subject,
        unit="us",
        baseline_value=base_med,
        subject_value=subj_med,
        ratio=subj_med / base_med,
        p25=quantile(pair_ratios, 0.25),
        p75=quantile(pair_ratios, 0.75),
        round_min=min(round_ratios),
        round_max=max(round_ratios),
        n=len(base_all),
        goal=goal,
        note=note,
        details={
            "round_ratios": [round(r, 4) for r in round_ratios],
            "baseline_p25_us": quantile(base_all, 0.25) / 1000.0,
            "baseline_p75_us": quantile(base_all, 0.75) / 1000.0,
            "subject_p25_us": quantile(subj_all, 0.25) / 1000.0,
            "subject_p75_us": quantile(subj_all, 0.75) / 1000.0,
            **(details or {}),
        },
    )
