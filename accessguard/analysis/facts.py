"""What the analyser found in one statement: plain data, no parser objects."""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Any

from accessguard.errors import Reason


@dataclass(frozen=True, slots=True)
class Const:
    """A literal integer in the statement."""

    value: int


@dataclass(frozen=True, slots=True)
class Param:
    """A bound parameter: position (0-based) or name."""

    key: int | str


Value = Const | Param


@dataclass(frozen=True, slots=True, kw_only=True)
class Via:
    """Rows of ``table`` (qualified) the statement can reach only if they are the subject's.

    A reference's column equals ``column`` of such rows (``accessguard.analysis.keys``).
    """

    table: str
    column: str
    #: whether the rows are probed (False: scope column equals scope column)
    probe: bool = True


@dataclass(frozen=True, slots=True, kw_only=True)
class KeyBinding:
    """A declared key or foreign-key ``column`` of a reference, bound to ``values``.

    Found by ``accessguard.analysis.keys`` only for a reference its scope
    column does not bind; the rows it names are probed (``accessguard.engine.probes``).
    With ``via`` (and no values), ``column`` equals a column of another
    table's rows that are themselves bound to the subject: through a declared
    reference (probed), or scope column to scope column (nothing to probe).
    """

    column: str
    values: tuple[Value, ...]
    via: Via | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class ScopeRef:
    """One reference to a scoped table and the values its scope column is bound to.

    ``values`` empty means nothing binds it; the statement can reach any row,
    unless ``key`` binds it by a declared key (then every row it names is probed).
    Every value must equal the ticket's subject for the reference to be in scope.
    """

    table: str
    scope: str
    values: tuple[Value, ...]
    key: KeyBinding | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class Facts:
    """The analysis of one statement.

    ``problem`` set means the analyser could not account for the statement (or
    found something that is never allowed); the decision then denies with it.
    ``sent`` is the SQL to send instead of the original: the same tree,
    schema-qualified, every scoped table filtered to a subject placeholder
    (the second wall), with ``param_order`` the parameters in sent order.
    """

    kind: str
    tables: frozenset[str] = frozenset()
    reads: frozenset[tuple[str, str]] = frozenset()
    writes: frozenset[tuple[str, str]] = frozenset()
    functions: frozenset[str] = frozenset()
    scopes: tuple[ScopeRef, ...] = ()
    params: frozenset[int | str] = frozenset()
    #: aggregates (array_agg, string_agg, ...) that pack many rows of a scoped table
    #: into one result row: the row limit and the ledger could not count those rows
    packing: tuple[str, ...] = ()
    #: at most how many rows of one scoped table a result row carries values of (an
    #: upper bound: a row per reference in FROM, times one more per aggregate call
    #: such as max(CASE ..), plus what select-list scalar subqueries carry). A row
    #: limit or a ledger that counts result rows undercounts by up to this factor.
    row_weight: int = 0
    #: tables a locking clause (FOR UPDATE / FOR SHARE ...) locks rows of
    locked: frozenset[str] = frozenset()
    problem: Reason | None = None
    detail: str = ""
    sent: str | None = None
    #: (qualified table, column, mask) of each column ``sent`` reads masked
    masked: frozenset[tuple[str, str, str]] = frozenset()
    param_order: tuple[int | str, ...] = ()
    #: the statement with every literal replaced by ``?`` (None: it does not tokenize)
    redacted: str | None = None
    fingerprint: str | None = None
    dialect: str = "postgres"
    #: derived once, for the decision's fast path
    accesses: frozenset[tuple[str, str, str]] = frozenset()
    table_names: tuple[str, ...] = ()
    column_names: tuple[str, ...] = ()
    #: the sent SQL uses positional parameters exactly in the order given
    in_order: bool = False

    @property
    def columns(self) -> frozenset[str]:
        return frozenset(f"{t.rsplit('.', 1)[-1]}.{c}" for t, c in self.reads | self.writes)

    @classmethod
    def build(cls, **values: Any) -> Facts:
        """Facts with the derived fields filled in, in one construction (the analyser's path)."""
        reads: frozenset[tuple[str, str]] = values.get("reads", frozenset())
        writes: frozenset[tuple[str, str]] = values.get("writes", frozenset())
        tables: frozenset[str] = values.get("tables", frozenset())
        order: tuple[int | str, ...] = values.get("param_order", ())
        accesses = {(t, c, "read") for t, c in reads}
        if writes:
            accesses |= {(t, c, "update") for t, c in writes}
        return cls(
            **values,
            accesses=frozenset(accesses),
            table_names=tuple(sorted(t.rsplit(".", 1)[-1] for t in tables)),
            column_names=tuple(
                sorted(
                    {
                        f"{t.rsplit('.', 1)[-1]}.{c}"
                        for t, c in (reads | writes if writes else reads)
                    }
                )
            ),
            in_order=order == tuple(range(len(order))),
        )

    def derived(self, **values: Any) -> Facts:
        """A copy with ``values`` set and the derived fields filled in."""
        given = {name: getattr(self, name) for name in _GIVEN}
        return Facts.build(**(given | values))


#: the fields an analysis sets; the others are derived from them (Facts.build)
_GIVEN = tuple(
    f.name
    for f in fields(Facts)
    if f.name not in ("accesses", "table_names", "column_names", "in_order")
)


#: Text the sent SQL carries where a scope subject id goes (replaced per execution).
def subject_marker(scope: str) -> str:
    return f"__ag_subject_{scope}__"
