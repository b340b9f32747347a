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
"""

from __future__ import annotations

from typing import Any

try:
    import prometheus_client
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


if prometheus_client is not None:
    DECISIONS: Any = prometheus_client.Counter(
        "accessguard_decisions",
        "Statements decided, by outcome and reason.",
        ["outcome", "reason"],
    )
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
    ALLOWED: Any = DECISIONS.labels(outcome="allowed", reason="")
else:
    DECISIONS = ROWS = THROTTLED = ANALYSIS = DECIDE = ALLOWED = _Noop()
