"""What every guarded cursor shares: counting the rows it hands over.

Rows are counted where the data really flows, in fetchone / fetchmany /
fetchall / iteration, for the access ledger and the per-statement row cap.
A fetch that would take a statement over its cap raises ``Throttled`` instead
of returning those rows.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from accessguard.guard import Authorized, Guard, Session


class RowCounter:
    """The row accounting every guarded cursor shares, sync or async."""

    _raw: Any
    _guard: Guard
    _session: Session
    _current: Authorized | None = None
    _fetched: int = 0
    #: the last statement was refused after it ran: its result is withheld
    _withheld: bool = False

    def _begin(self, ok: Authorized) -> None:
        """A new statement was sent: count its rows from zero."""
        self._current = ok
        self._fetched = 0
        self._withheld = False

    def _withhold(self, ok: Authorized, count: int) -> Exception:
        """Refuse the rest of the result: nothing more is handed over from this cursor."""
        self._current = None
        self._withheld = True
        return self._guard.over_row_cap(ok, count)

    def _count(self, n: int) -> None:
        ok = self._current
        if ok is None or n <= 0:
            return
        if ok.row_cap is not None and self._fetched + n > ok.row_cap:
            raise self._withhold(ok, self._fetched + n)
        self._fetched += n
        if ok.tally is not None:
            ok.tally.add(n)


class CountingCursor(RowCounter):
    """Base of the sync guarded cursors: ``_raw`` is the driver's cursor."""

    def fetchone(self) -> Any:
        if self._withheld:
            return None
        row = self._raw.fetchone()
        if row is not None:
            self._count(1)
        return row

    def fetchmany(self, size: int | None = None) -> list[Any]:
        if self._withheld:
            return []
        rows = self._raw.fetchmany() if size is None else self._raw.fetchmany(size)
        if type(rows) is not list:
            rows = list(rows)
        self._count(len(rows))
        return rows

    def fetchall(self) -> list[Any]:
        if self._withheld:
            return []
        rows = self._raw.fetchall()
        if type(rows) is not list:
            rows = list(rows)
        self._count(len(rows))
        return rows

    def __iter__(self) -> Iterator[Any]:
        if self._withheld:
            return
        for row in self._raw:
            self._count(1)
            yield row
