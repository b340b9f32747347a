"""Investigations at scale: who-read, what-read and subject-export pushed down to an engine.

- A JSON-lines trail is read by DuckDB (the ``investigate`` extra), through an
  index of its ledger entries kept beside it (``accessguard.investigate.trail``).
- The PostgreSQL sink is asked in SQL over its indexed table
  (``accessguard.investigate.sink``).

Either way only the answer's groups reach Python, never the month's events,
and the answers are exactly those of ``accessguard.investigate``'s in-Python
functions (same ``Reader`` and ``Touch`` rows, same order).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from accessguard.investigate.baselines import Baseline, baselines
from accessguard.investigate.closings import LateRead, closed_spans, marked, reads_after_close
from accessguard.investigate.core import (
    Bucket,
    Engine,
    Entry,
    Group,
    Window,
    parse_when,
    readers,
    touches,
)
from accessguard.investigate.sums import Attempt, Reader, Subject, Touch
from accessguard.investigate.sums import who_tried as _tried

__all__ = [
    "Attempt",
    "Baseline",
    "Bucket",
    "Engine",
    "Entry",
    "Export",
    "Group",
    "LateRead",
    "Window",
    "available",
    "open_engine",
    "parse_when",
    "peer_baselines",
    "reads_after_close",
    "subject_export",
    "what_read",
    "who_read",
    "who_tried",
]


def available() -> bool:
    """Whether DuckDB (the ``investigate`` extra) is installed, for file trails."""
    import importlib.util

    return importlib.util.find_spec("duckdb") is not None


def open_engine(
    *,
    audit: str | Path | None = None,
    dsn: str | None = None,
    index: str | Path | None = None,
    use_index: bool = True,
) -> Engine:
    """The engine for a trail file (DuckDB; its index beside it unless told) or the sink."""
    if (audit is None) == (dsn is None):
        raise ValueError("give a trail file or a DSN, not both")
    if dsn is not None:
        from accessguard.investigate.sink import SinkEngine

        return SinkEngine(dsn)
    from accessguard.investigate.trail import TrailEngine

    assert audit is not None  # noqa: S101 - checked above
    return TrailEngine(audit, index=index, use_index=use_index)


def peer_baselines(engine: Engine, *, window: Window, factor: float = 3.0) -> list[Baseline]:
    """Each employee's median active hour and day against their role peers' (outliers first)."""
    return baselines(engine.buckets(window, "hour"), engine.buckets(window, "day"), factor=factor)


def who_read(
    engine: Engine, *, customer: Subject, window: Window, scope: str = "customer"
) -> list[Reader]:
    """Every (employee, ticket) that read ``customer`` (a product with ``scope="product"``)."""
    return readers(engine.by_subject(scope, str(customer), window), customer=customer, scope=scope)


def who_tried(
    engine: Engine, *, customer: Subject, window: Window, scope: str = "customer"
) -> list[Attempt]:
    """Every (employee, ticket, reason) refused while naming ``customer``: who tried and failed."""
    found = engine.refusals_of(scope, str(customer), window)
    return _tried(found, customer=customer, scope=scope)


def what_read(engine: Engine, *, user: str, window: Window) -> list[Touch]:
    """Every (customer or product, ticket) that ``user`` read."""
    return touches(engine.by_user(user, window), user=user)


@dataclass(frozen=True, slots=True, kw_only=True)
class Export:
    """Everything read about one subject: who (summed per employee and ticket), and each entry."""

    scope: str
    subject: Subject
    window: Window
    readers: list[Reader]
    entries: Iterator[Entry]
    #: the refused statements that named the subject: who tried and failed
    attempts: list[Attempt] = field(default_factory=list)

    def head(self) -> dict[str, Any]:
        return {
            "scope": self.scope,
            "subject": self.subject,
            "from": self.window.start.isoformat() if self.window.start else None,
            "until": self.window.end.isoformat() if self.window.end else None,
            "readers": [r.as_dict() for r in self.readers],
            "attempts": [a.as_dict() for a in self.attempts],
        }


def subject_export(
    engine: Engine, *, customer: Subject, window: Window, scope: str = "customer"
) -> Export:
    """Everything read about ``customer``: the readers, every ledger entry in time order, and
    the refused attempts that named it.

    An entry read after its ticket closed says when the ticket had closed
    (``Entry.ticket_closed``; see ``accessguard.investigate.closings``).
    """
    readers = who_read(engine, customer=customer, window=window, scope=scope)
    spans = closed_spans(engine, {r.ticket for r in readers if r.ticket is not None})
    return Export(
        scope=scope,
        subject=customer,
        window=window,
        readers=readers,
        entries=marked(engine.entries(scope, str(customer), window), spans),
        attempts=who_tried(engine, customer=customer, window=window, scope=scope),
    )


def __getattr__(name: str) -> object:  # the 0.1 module's names, deprecated (accessguard.moved)
    from accessguard.moved import moved_name

    return moved_name(__name__, name)
