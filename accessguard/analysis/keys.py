"""Key-bound references: a scoped table named by its key, not by its scope column.

``Session.get(Order, 421)`` sends ``SELECT ... FROM orders WHERE orders.id = $1``:
nothing binds ``orders.customer_id``, but the statement names its rows by
the declared primary key (``key = "id"`` in schema.toml), or, for a child
reached through its parent, by a declared foreign key
(``payments WHERE order_id IN (...)``, ``references``). Such a binding is
recorded with its values; the decision allows the statement only with a
probe that proves, before it is sent, that every row those values name
belongs to the ticket's subject (``accessguard.engine.probes``).

Only what the walker's union-find found for the reference's own SELECT (or
UPDATE) counts: equalities and IN lists of constants and parameters among
the top-level AND conjuncts of its WHERE (and inner joins' ON), the same
bindings the scope column is read from. Anything else (OR, NOT, ranges,
subqueries) binds nothing, and the reference stays unbound.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping

from accessguard.analysis.facts import KeyBinding, ScopeRef, Value, Via
from accessguard.analysis.names import Origin
from accessguard.policy.catalog import TableSpec


def key_columns(spec: TableSpec) -> tuple[str, ...]:
    """The columns that name rows of ``spec``: its key first, then its foreign keys."""
    columns = [spec.key] if spec.key is not None else []
    columns += [column for column, _table, _target in spec.references if column not in columns]
    return tuple(columns)


def key_binding(spec: TableSpec, bound: Callable[[str], tuple[Value, ...]]) -> KeyBinding | None:
    """The first declared key of ``spec`` that ``bound`` (column -> values) binds, or None.

    The primary key is preferred: it names the fewest rows, through an index.
    """
    for column in key_columns(spec):
        if column == spec.scope_column:
            continue
        values = bound(column)
        if values:
            return KeyBinding(column=column, values=values)
    return None


def keyed(
    ref: ScopeRef,
    spec: TableSpec,
    bound: Mapping[tuple[int, str], tuple[Value, ...]],
    source: int,
) -> ScopeRef:
    """``ref`` with its key binding, when its scope column is not bound (else ``ref``).

    ``bound``: the level's bindings by (source id, column); ``source``: the id
    of the reference's source.
    """
    if ref.values:
        return ref
    key = key_binding(spec, lambda column: bound.get((source, column), ()))
    return ref if key is None else dataclasses.replace(ref, key=key)


def relation(spec: TableSpec, column: str, origin: Origin) -> tuple[int, Via] | None:
    """How ``column`` of ``spec``, equal to ``origin``'s column, binds it: (rank, Via) or None.

    Rank 0 needs no probe (scope column to scope column), rank 1 a relation
    probe. Only tables of the same scope kind bind each other: the probe
    compares both with the same subject.
    """
    other = origin.spec
    if other.scope != spec.scope or spec.scope is None:
        return None
    if column == spec.scope_column and origin.column == other.scope_column:
        return 0, Via(table=other.qualified, column=origin.column, probe=False)
    probed = Via(table=other.qualified, column=origin.column, probe=True)
    if (column, other.qualified, origin.column) in spec.references:  # a child of bound parents
        return 1, probed
    if (origin.column, spec.qualified, column) in other.references:  # the parent of bound children
        return 1, probed
    if other.qualified == spec.qualified and column == origin.column == spec.key:
        return 1, probed  # the same rows again, by their key
    return None
