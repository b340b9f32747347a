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

Multiprocess mode (gunicorn and the like: ``PROMETHEUS_MULTIPROC_DIR`` set
before prometheus-client is imported). prometheus-client's multiprocess
collector reads only what its own metric classes write to that directory, never
a collector of ours, and its ``Counter.inc`` there takes a lock and writes a
memory-mapped file (about 1-2 us). So ``accessguard_decisions_total`` becomes a
``prometheus_client.Counter``, and the allowed statements keep their C counter:
a daemon thread adds what they counted to the Counter every
``FLUSH_SECONDS`` (one ``inc`` per second, whatever the traffic), and so does
the interpreter's exit. A scrape lags the allowed count by at most that
interval; a worker killed with SIGKILL loses at most that interval's allowed
count. Refusals are written to the Counter at once. A forked worker starts
from its parent's count, so it flushes only what it counts itself.
"""

from __future__ import annotations

import atexit
import itertools
import os
import re
import threading
from collections.abc import Callable, Iterator
from typing import Any

try:
    import prometheus_client
    from prometheus_client import values as _values
    from prometheus_client.core import CounterMetricFamily
except ImportError:  # pragma: no cover - exercised where the extra is not installed
    prometheus_client = None  # type: ignore[assignment]

ENABLED = prometheus_client is not None
#: prometheus-client writes its metrics to PROMETHEUS_MULTIPROC_DIR (chosen at its import)
MULTIPROCESS = ENABLED and _values.ValueClass is not _values.MutexValue
#: how often, in multiprocess mode, the allowed count is added to the shared Counter
FLUSH_SECONDS = 1.0


class _Noop:
    def labels(self, *_args: Any, **_kwargs: Any) -> _Noop:
        return self

    def inc(self, _amount: float = 1) -> None:
        return None

    def observe(self, _value: float) -> None:
        return None


_COUNT = re.compile(r"count\((\d+)\)")


class Decisions:
    """``accessguard_decisions_total``: allowed statements by a C counter, refusals under a lock.

    With ``shared`` (a labelled ``prometheus_client.Counter``, multiprocess
    mode) refusals go to it at once and ``flush`` adds the allowed statements
    counted since the last flush; the instance is then not a collector.
    """

    def __init__(self, shared: Any = None) -> None:
        self._allowed = itertools.count()
        #: one allowed statement (the hot path: the counter's own C method, no frame, no lock)
        self.allowed: Callable[[], object] = self._allowed.__next__
        self._lock = threading.Lock()
        self._refused: dict[tuple[str, str], int] = {}
        self._shared = shared
        #: the allowed count already added to ``shared`` (or inherited through a fork)
        self._flushed = 0

    def allowed_total(self) -> int:
        """Allowed statements so far (the counter's repr is ``count(N)``: N is the next value)."""
        found = _COUNT.fullmatch(repr(self._allowed))
        if found is None:  # pragma: no cover - a CPython whose count repr differs
            raise RuntimeError("itertools.count has an unexpected repr")
        return int(found.group(1))

    def decided(self, outcome: str, reason: str) -> None:
        """One audited decision. Allowed ones are not counted here: every allowed
        statement is counted once on its path (``allowed``), audited or not."""
        if outcome == "allowed":
            return
        if self._shared is not None:
            self._shared.labels(outcome=outcome, reason=reason).inc()
            return
        with self._lock:
            key = (outcome, reason)
            self._refused[key] = self._refused.get(key, 0) + 1

    def flush(self) -> None:
        """Multiprocess mode: add the allowed statements counted since the last flush."""
        if self._shared is None:
            return
        with self._lock:
            total = self.allowed_total()
            if total > self._flushed:
                self._shared.labels(outcome="allowed", reason="").inc(total - self._flushed)
            self._flushed = total

    def forked(self) -> None:
        """In a forked child: what the parent counted is the parent's to flush."""
        self._lock = threading.Lock()  # the parent's may have been held by another thread
        self._flushed = self.allowed_total()

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


class Flusher:
    """Multiprocess mode: a daemon thread that flushes ``Decisions`` every ``FLUSH_SECONDS``.

    Restarted in a forked child (threads do not survive a fork), and the
    interpreter's exit flushes once more.
    """

    def __init__(self, decisions: Decisions) -> None:
        self.decisions = decisions
        self._stop = threading.Event()
        self.start()

    def start(self) -> None:
        """A new thread (and a new stop event: a fork copies the parent's)."""
        self._stop = threading.Event()
        thread = threading.Thread(target=self._run, name="accessguard-metrics-flush", daemon=True)
        thread.start()

    def _run(self) -> None:
        while not self._stop.wait(FLUSH_SECONDS):
            self.decisions.flush()

    def after_fork(self) -> None:
        self.decisions.forked()
        self.start()

    def at_exit(self) -> None:
        self._stop.set()
        self.decisions.flush()


if prometheus_client is not None and MULTIPROCESS:
    DECISIONS = Decisions(
        prometheus_client.Counter(
            "accessguard_decisions",
            "Statements decided, by outcome and reason.",
            ["outcome", "reason"],
        )
    )
    _FLUSHER = Flusher(DECISIONS)
    os.register_at_fork(after_in_child=_FLUSHER.after_fork)
    atexit.register(_FLUSHER.at_exit)
else:
    DECISIONS = Decisions()

if prometheus_client is not None:
    if not MULTIPROCESS:
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
