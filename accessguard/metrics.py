"""Prometheus metrics (prometheus-client, optional: ``pip install accessguard[metrics]``).

Registered on prometheus-client's default registry, so an application that
already serves ``/metrics`` exposes them as they are. Without prometheus-client
every call here is a no-op.

==========================================  =========  ================================
name                                        type       labels
==========================================  =========  ================================
accessguard_decisions_total                 counter    outcome, reason
accessguard_rows_fetched_total              counter    (scoped rows, as the ledger flushes)
accessguard_throttled_total                 counter    reason
accessguard_analysis_seconds                histogram  (first sight of a statement)
accessguard_decision_seconds                histogram  (a decision not served from a plan)
==========================================  =========  ================================

Allowed decisions are counted on every statement's path: prometheus-client's
``Counter.inc`` takes a mutex (about 0.5 us, a third of what a repeated
statement costs the guard), so ``accessguard_decisions_total`` is a collector
of our own. Allowed statements advance an ``itertools.count``: one call into C,
which runs whole under the GIL, so no count is lost between threads and no
Python frame is entered. Refusals, rare by comparison, are counted under a lock.
"""

from __future__ import annotations

import itertools
import re
import threading
from collections.abc import Callable, Iterator
from typing import Any

try:
    import prometheus_client
    from prometheus_client.core import CounterMetricFamily
except ImportError:  # pragma: no cover - exercised where the extra is not installed
    prometheus_client = None  # type: ignore[assignment]

ENABLED = prometheus_client is not None


class _Noop:
    def labels(self, *_args: Any, **_kwargs: Any) -> _Noop:
        return self

    def inc(self, _amount: float = 1) -> None:
        return None

    def observe(self, _value: float) -> None:
        return None


_COUNT = re.compile(r"count\((\d+)\)")


class Decisions:
    """``accessguard_decisions_total``: allowed statements by a C counter, refusals under a lock."""

    def __init__(self) -> None:
        self._allowed = itertools.count()
        #: one allowed statement (the hot path: the counter's own C method, no frame, no lock)
        self.allowed: Callable[[], object] = self._allowed.__next__
        self._lock = threading.Lock()
        self._refused: dict[tuple[str, str], int] = {}

    def allowed_total(self) -> int:
        """Allowed statements so far (the counter's repr is ``count(N)``: N is the next value)."""
        found = _COUNT.fullmatch(repr(self._allowed))
        if found is None:  # pragma: no cover - a CPython whose count repr differs
            raise RuntimeError("itertools.count has an unexpected repr")
        return int(found.group(1))

    def decided(self, outcome: str, reason: str) -> None:
        """One statement that was not allowed (or allowed with an audit event)."""
        if outcome == "allowed":
            self.allowed()
            return
        with self._lock:
            key = (outcome, reason)
            self._refused[key] = self._refused.get(key, 0) + 1

    def collect(self) -> Iterator[Any]:
        family = CounterMetricFamily(
            "accessguard_decisions",
            "Statements decided, by outcome and reason.",
            labels=["outcome", "reason"],
        )
        family.add_metric(["allowed", ""], float(self.allowed_total()))
        with self._lock:
            refused = sorted(self._refused.items())
        for (outcome, reason), count in refused:
            family.add_metric([outcome, reason], float(count))
        yield family


DECISIONS = Decisions()

if prometheus_client is not None:
    prometheus_client.REGISTRY.register(DECISIONS)
    ROWS: Any = prometheus_client.Counter(
        "accessguard_rows_fetched", "Rows of scoped tables handed over, counted by the ledger."
    )
    THROTTLED: Any = prometheus_client.Counter(
        "accessguard_throttled", "Statements refused by a volume limit.", ["reason"]
    )
    ANALYSIS: Any = prometheus_client.Histogram(
        "accessguard_analysis_seconds",
        "Time to analyze a statement seen for the first time.",
        buckets=(1e-5, 5e-5, 1e-4, 2.5e-4, 5e-4, 1e-3, 2.5e-3, 1e-2, 0.1),
    )
    DECIDE: Any = prometheus_client.Histogram(
        "accessguard_decision_seconds",
        "Time to decide a statement not served from a plan.",
        buckets=(1e-6, 5e-6, 1e-5, 5e-5, 1e-4, 5e-4, 1e-3, 1e-2),
    )
else:
    ROWS = THROTTLED = ANALYSIS = DECIDE = _Noop()
