"""The gate: the rules before and after a statement, written once, with no I/O of their own.

Every guarded cursor is a shell around this module: it reads the driver's
state, asks the gate what the rules say, and does the I/O itself (sending,
fetching, running probes, and raising the refusal the guard audits). So the
sync psycopg cursor, its async twin (which may move that I/O off the event
loop: ``accessguard.adapters.offload``), the DB-API cursor, and the
SQLAlchemy and Django hooks apply one rule each:

- binding (``bind``): what psycopg will send, as text and values, before the
  lane decides it (``%s`` / ``%(name)s`` / client-side merging);
- the row cap (``over_cap``): a result with more rows than its statement's
  cap is withheld, not one row handed over;
- the executemany rule (``one_statement``): every parameter set must make the
  same statement, else the batch is refused (``refuse_mixed``, audited);
- ledger counting (``written``, ``changed``): the rows a write changed;
  the rows a result hands over are counted by ``Authorized.take``;
- the result bound to each statement of a psycopg cursor (``PsycopgGate``):
  after ``execute``, after ``executemany``, at each ``nextset``.

Nothing here sends, fetches, writes or awaits: a function returns what the
rule decided (a count over the cap, a bool) and the shell raises.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any, cast

import psycopg
from psycopg import sql as pgsql

from accessguard.engine.lane import authorized
from accessguard.engine.paramstyle import convert_query
from accessguard.errors import Reason

if TYPE_CHECKING:
    from accessguard.audit.ledger import Tally
    from accessguard.engine.gate import Gate
    from accessguard.engine.lane import Authorized, Convert, Lane, Session
    from accessguard.engine.plan import Plan
    from accessguard.errors import AccessDenied, AccessGuardError

#: what a statement becomes before the lane decides it: (text, values, conversion)
__all__ = [
    "PsycopgGate",
    "RowCounter",
    "bind",
    "changed",
    "convert_query",
    "decide",
    "one_statement",
    "over_cap",
    "query_text",
    "refuse_mixed",
    "written",
]


Bound = tuple[str, Any, "Convert | None"]

MIXED_MESSAGE = "Refused: executemany produced different statements."

#: the result of a cursor no statement was sent on: nothing to hand over
NOTHING = authorized(sql="", params=None, plan=cast("Plan", None), withheld=True)


#: psycopg's own Composable classes: their as_string() keeps the connection inside psycopg
_OWN_COMPOSABLES = (pgsql.SQL, pgsql.Identifier, pgsql.Literal, pgsql.Placeholder)


def _own_composable(query: pgsql.Composable) -> bool:
    """Whether ``query`` is built only of psycopg's own Composable classes (no subclass)."""
    if type(query) is pgsql.Composed:
        return all(_own_composable(part) for part in query._obj)
    return type(query) in _OWN_COMPOSABLES


def query_text(
    query: Any, conn: psycopg.Connection[Any] | psycopg.AsyncConnection[Any], lane: Lane
) -> str:
    """The text of a str, bytes or psycopg.sql query, as psycopg would send it.

    A Composable of the caller's own class is refused (audited): its
    ``as_string`` would be handed the raw connection.
    """
    if isinstance(query, str):
        return query
    if isinstance(query, bytes | bytearray | memoryview):
        # undecodable bytes become lone surrogates: the guard refuses them, audited
        return bytes(query).decode(conn.info.encoding, "surrogateescape")
    if isinstance(query, pgsql.Composable):
        if not _own_composable(query):
            raise lane.guard.refuse(
                Reason.PATH_FORBIDDEN,
                "Refused: only psycopg's own sql.SQL, Composed, Identifier, Literal and "
                "Placeholder can build a query (another Composable would be handed the "
                "connection).",
                lane.session,
                kind="unknown",
            )
        return query.as_string(conn)
    raise TypeError(
        f"a query must be str, bytes or psycopg.sql.Composable, not {type(query).__name__}"
    )


def bind(
    lane: Lane, text: str, params: Any, mogrify: Callable[[str, Any], str] | None = None
) -> Bound:
    """The statement as psycopg will send it, for ``lane.authorize(*bound)``.

    With client-side binding (``mogrify`` given) the values are merged into the
    text, even inside comments: the merged text is analyzed and sent, with no
    parameters. Otherwise ``%s`` / ``%(name)s`` become ``$n`` first; for
    positional parameters (whose order that keeps) only when a plan is made
    (the conversion is handed to the lane). Unreadable text, or values that do
    not match the placeholders, are refused (audited) before psycopg sees them.
    """
    if mogrify is None:
        if type(params) is list or type(params) is tuple:
            return text, params, convert_query
        if params is None:
            return text, None, None
        lane.guard.refuse_unreadable(text, lane.session, placeholders=True)  # before psycopg
        try:
            converted, values = convert_query(text, params)
        except (psycopg.Error, TypeError) as exc:
            raise lane.guard.refuse(
                Reason.SQL_PARAMS_MISMATCH,
                "Refused: the placeholders do not match the values bound to them.",
                lane.session,
                kind="unknown",
            ) from exc
        return converted, values, None
    if params is not None:  # psycopg's own conversion is next: screen the text first
        lane.guard.refuse_unreadable(text, lane.session, placeholders=True)
    return (mogrify(text, params) if params is not None else text), None, None


def decide(
    lane: Lane,
    text: str,
    params: Any,
    mogrify: Callable[[str, Any], str] | None = None,
    *,
    probing: bool = True,
) -> Authorized:
    """``lane.authorize`` of the statement ``bind`` makes: the sync shells' one call.

    Positional values without client-side binding (the common case) skip the
    tuple ``bind`` would build: the same three values, handed over directly.
    """
    if mogrify is None and (type(params) is list or type(params) is tuple):
        return lane.authorize(text, params, convert_query, probing=probing)
    return lane.authorize(*bind(lane, text, params, mogrify), probing=probing)


def over_cap(ok: Authorized, count: int) -> bool:
    """Whether a result of ``count`` rows passes ``ok``'s cap; then it is withheld from now on."""
    cap = ok.row_cap
    if cap is not None and count > cap:
        ok.withheld = True
        return True
    return False


def one_statement(batch: Sequence[Authorized]) -> bool:
    """Whether every parameter set of an executemany made the same statement (else: refuse)."""
    first = batch[0].sql
    return all(ok.sql == first for ok in batch)


def refuse_mixed(
    guard: Gate, session: Session, batch: Sequence[Authorized], dialect: str = "postgres"
) -> AccessDenied:
    """The audited refusal of a batch ``one_statement`` declined: the shell raises it."""
    return guard.refuse(
        Reason.INTERNAL_ERROR, MIXED_MESSAGE, session, kind=batch[0].facts.kind, dialect=dialect
    )


def written(tally: Tally, description: object, rowcount: int | None) -> None:
    """Ledger the rows a write changed (a result's rows, RETURNING's, are counted as handed)."""
    if description is None and (rowcount or 0) > 0:
        tally.add(rowcount or 0)


def changed(results: Sequence[Any]) -> int:
    """Rows changed by the result sets of an ``executemany(returning=True)`` that return none."""
    return sum(r.command_tuples or 0 for r in results if r.nfields == 0)


class RowCounter:
    """The row gate every guarded cursor shares, sync or async (see ``accessguard.adapters.base``).

    ``_st`` is the statement whose result the driver's cursor holds now; a
    fetch asks it (``Authorized.take``) before handing rows over.
    """

    _raw: Any
    _guard: Gate
    _session: Session
    _dialect: str = "postgres"
    #: the statement whose result the driver's cursor holds now
    _st: Authorized = NOTHING
    #: a server-side (named) cursor: each fetch is a round trip for rows the server is
    #: still producing, so each first confirms its statement's ticket (``recheck``)
    _named: bool = False
    #: a row factory of psycopg's that calls the application's class or function with
    #: each row's values (class_row, args_row, kwargs_row): the driver makes tuples, and
    #: the factory is applied here to rows already counted, never inside the driver's fetch
    _factory: Callable[[Any], Callable[[Any], Any]] | None = None

    def made(self, row: Any) -> Any:
        """One counted, allowed row as the application's row factory makes it (streams)."""
        return row if self._factory is None else self._made([row])[0]

    def _made(self, rows: list[Any]) -> list[Any]:
        """``rows`` (counted, allowed) as the application's row factory makes them."""
        factory = self._factory
        if factory is None or not rows:
            return rows
        make = factory(self._raw)  # psycopg's own function: it reads the description
        return [make(row) for row in rows]

    def row_refusal(self, st: Authorized, n: int) -> AccessGuardError:
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

    def recheck(self, st: Authorized) -> None:
        """Raise (audited, rows withheld) unless ``st``'s ticket still justifies its rows."""
        self._guard.recheck(st, self._session, self._dialect)

    def _written(self, tally: Tally) -> None:
        """Ledger the rows a write changed (called when ``tally.writes``)."""
        raw = self._raw
        written(tally, raw.description, raw.rowcount)

    def _one_statement(self, batch: Sequence[Authorized]) -> None:
        """The executemany rule, refused (audited) here: for shells with no I/O to move."""
        if not one_statement(batch):
            raise refuse_mixed(self._guard, self._session, batch, self._dialect)


class PsycopgGate(RowCounter):
    """The sync and async psycopg cursors' shared rules: which statement each result belongs to.

    The shell calls ``_executed`` / ``_batched`` after the driver ran the
    statement (or the batch), and ``_next`` for ``nextset``; each returns the
    row count over the cap (the shell raises ``Gate.over_row_cap``) or None.
    """

    #: the statements of the last executemany, one per result set, and the current one's index
    _batch: Sequence[Authorized] = (NOTHING,)
    _index = 0

    def _executed(self, ok: Authorized) -> int | None:
        """``ok`` ran: its result is the driver's current one (a client cursor holds it all)."""
        self._st = ok
        tally = ok.tally
        if tally is not None and tally.writes:
            raw = self._raw
            written(tally, raw.description, raw.rowcount)
        if ok.row_cap is not None:  # a named cursor's ntuples is 0 here: its fetches count
            result = self._raw.pgresult
            if result is not None and over_cap(ok, result.ntuples):
                return int(result.ntuples)
        return None

    def _batched(self, batch: Sequence[Authorized], *, returning: bool) -> int | None:
        """An executemany of ``batch`` ran: count what it changed, bind its first result set."""
        first = batch[0]
        tally = first.tally  # one plan, one tally
        if tally is not None and tally.writes:
            raw = self._raw
            if not returning:  # the driver's rowcount is the batch's total
                written(tally, raw.description, raw.rowcount)
            else:  # one result per set: those with rows are counted as they are handed over
                rows = changed(getattr(raw, "_results", None) or ())
                if rows > 0:
                    tally.add(rows)
        self._batch = batch
        return self._select(0)

    def _select(self, index: int) -> int | None:
        """The batch's result set ``index`` is the driver's current one: admit it."""
        self._index = index
        ok = self._st = self._batch[index]
        result = self._raw.pgresult
        if result is not None and over_cap(ok, result.ntuples):
            return int(result.ntuples)
        return None

    def _next(self, current: Authorized) -> int | None:
        """The driver moved to its next result set (it was on ``current``'s): bind it."""
        index = self._index + 1
        if current is not self._batch[self._index] or index >= len(self._batch):
            self._st = NOTHING  # a result set no statement of ours accounts for: never handed
            return None
        return self._select(index)
