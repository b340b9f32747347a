"""The one gate rows leave through, shared by every guarded cursor (issue 17, issue 23).

Before a statement is sent, the lane authorizes it and makes its
``Authorized``: the statement's own row cap and ledger tally, and its count
of rows handed over. After it, the adapter binds that object to the result it
belongs to, never to the cursor alone:

- a cursor's current result: ``_st``, replaced only when the driver's current
  result is replaced (execute, a stream that starts, nextset);
- a stream: the iterator ``stream()`` returns captures its own;
- each result set of an ``executemany(..., returning=True)``: one per
  parameter set, selected by ``nextset()``.

Every method that hands rows over (fetchone / fetchmany / fetchall,
iteration, stream, nextset's results, named cursors) asks the bound object
(``Authorized.take``) first. A result refused after it ran is withheld: it
stays withheld whatever is sent later on the same cursor. A fetch that would
pass the cap, or that the closed guard's ledger could no longer record,
raises instead of returning those rows.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING, Any, cast

from accessguard.engine.lane import authorized
from accessguard.errors import Reason

if TYPE_CHECKING:
    from accessguard.audit.ledger import Tally
    from accessguard.engine.gate import Gate
    from accessguard.engine.lane import Authorized, Session
    from accessguard.engine.plan import Plan
    from accessguard.errors import AccessGuardError

#: rows a guarded iteration asks the driver for at a time (a named cursor's round trip)
CHUNK = 100

#: the result of a cursor no statement was sent on: nothing to hand over
NOTHING = authorized(sql="", params=None, plan=cast("Plan", None), withheld=True)


class RowCounter:
    """The row gate every guarded cursor shares, sync or async."""

    _raw: Any
    _guard: Gate
    _session: Session
    _dialect: str = "postgres"
    #: the statement whose result the driver's cursor holds now
    _st: Authorized = NOTHING

    def _refused(self, st: Authorized, n: int) -> AccessGuardError:
        """The refusal of ``n`` rows ``st.take`` declined (audited); raise it."""
        tally = st.tally
        if tally is not None and tally.ledger.closed:
            return self._guard.refuse(
                Reason.GUARD_CLOSED,
                "Refused: the guard was closed; rows it cannot account for are not handed over.",
                self._session,
                kind=st.facts.kind,
                dialect=self._dialect,
            )
        return self._guard.over_row_cap(st, st.handed + n)

    def _written(self, tally: Tally) -> None:
        """Ledger the rows an UPDATE changed (its RETURNING rows are counted as handed over).

        Called when ``tally.writes``: the statement's plan writes.
        """
        raw = self._raw
        if raw.description is None and (raw.rowcount or 0) > 0:
            tally.add(raw.rowcount)

    def _written_many(self, st: Authorized, *, returning: bool) -> None:
        """Ledger the rows an executemany UPDATE changed, in every result set of the batch."""
        tally = st.tally
        if tally is None or not tally.writes:
            return
        if not returning:  # the driver's rowcount is the batch's total
            self._written(tally)
            return
        # returning=True keeps one result per parameter set; those with rows (RETURNING)
        # are counted as they are handed over, the others by the rows they changed
        results = getattr(self._raw, "_results", None) or ()
        changed = sum(r.command_tuples or 0 for r in results if r.nfields == 0)
        if changed > 0:
            tally.add(changed)

    def _one_statement(self, batch: list[Authorized]) -> None:
        """An executemany sends one statement for every parameter set: refuse (audited) if not.

        (A client-side binding cursor merges each set into its own text: such a
        batch is refused, never sent as the first text with the others' values.)
        """
        first = batch[0].sql
        if any(ok.sql != first for ok in batch):
            raise self._guard.refuse(
                Reason.INTERNAL_ERROR,
                "Refused: executemany produced different statements.",
                self._session,
                kind=batch[0].facts.kind,
                dialect=self._dialect,
            )

    def _admit(self, st: Authorized, ntuples: int) -> None:
        """``st``'s result is the driver's current one, holding ``ntuples`` rows in memory.

        Over its cap, it is refused before a single row is handed over (and
        stays withheld).
        """
        self._st = st
        if st.row_cap is not None and ntuples > st.row_cap:
            st.withheld = True
            raise self._guard.over_row_cap(st, ntuples)


class CountingCursor(RowCounter):
    """Base of the sync guarded cursors: ``_raw`` is the driver's cursor."""

    def fetchone(self) -> Any:
        st = self._st
        if st.withheld:
            return None
        row = self._raw.fetchone()
        if row is not None and not st.take(1):
            raise self._refused(st, 1)
        return row

    def fetchmany(self, size: int | None = None) -> list[Any]:
        st = self._st
        if st.withheld:
            return []
        rows = self._raw.fetchmany() if size is None else self._raw.fetchmany(size)
        if type(rows) is not list:
            rows = list(rows)
        if not st.take(len(rows)):
            raise self._refused(st, len(rows))
        return rows

    def fetchall(self) -> list[Any]:
        st = self._st
        if st.withheld:
            return []
        rows = self._raw.fetchall()
        if type(rows) is not list:
            rows = list(rows)
        if not st.take(len(rows)):
            raise self._refused(st, len(rows))
        return rows

    def __iter__(self) -> Iterator[Any]:
        # chunk by chunk through fetchmany: each chunk is counted against the
        # statement whose result the cursor holds when it is fetched
        while rows := self.fetchmany(CHUNK):
            yield from rows


class Streamed:
    """What a guarded ``stream()`` returns: the driver's stream, through its statement's gate."""

    __slots__ = ("_cursor", "_rebind", "_rows", "_st")

    def __init__(
        self, cursor: RowCounter, st: Authorized, rows: Iterator[Any], *, rebind: bool
    ) -> None:
        self._cursor = cursor
        #: whether the cursor's own fetches read this stream's result once it runs
        #: (not a named cursor's: they read its portal, the statement it declared)
        self._rebind = rebind
        self._st = st
        self._rows = rows

    def __iter__(self) -> Streamed:
        return self

    def __next__(self) -> Any:
        st = self._st
        if st.withheld:
            raise StopIteration
        cursor = self._cursor
        if self._rebind:  # once it runs, the driver's current result is this stream's
            cursor._st = st
        row = next(self._rows)
        if not st.take(1):
            self.close()
            raise cursor._refused(st, 1)
        return row

    def close(self) -> None:
        """Stop the stream (the driver cancels what the server still sends)."""
        close = getattr(self._rows, "close", None)
        if close is not None:
            close()
