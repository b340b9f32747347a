"""Probes: proving that the rows a key-bound statement names belong to the ticket's subject.

``SELECT ... FROM orders WHERE orders.id = $1`` (``Session.get(Order, 421)``)
is bound by the table's key, not by its scope column
(``accessguard.analysis.keys``). The decision allows it on one condition:
before the statement is sent, the adapter runs its probe on the same
connection, in the same transaction::

    SELECT 1 WHERE EXISTS (SELECT 1 FROM "public"."orders"
                           WHERE "id" IN (%s) AND "customer_id" IS DISTINCT FROM %s)

with the statement's own key values and the ticket's subject. A row found
means the statement names a row of another customer (or one with no
customer): it is refused with ``row_scope.other_subject``, audited like every
refusal, and never sent. A child bound by a foreign key
(``payments WHERE order_id IN (...)``) is probed on its own table and on the
referenced one, when that one is scoped the same way: an order of another
customer in the list is refused even if it has no payments. A key that names
no row finds nothing: the statement runs and returns nothing.

A table bound through another one by a declared reference
(``orders o LEFT JOIN payments p ON o.id = p.order_id WHERE o.customer_id =
42``, ``accessguard.analysis.keys.relation``) has no values to probe: its
probe reads the rows the relation reaches from the subject's rows of the
other table::

    EXISTS (SELECT 1 FROM "public"."payments" AS r WHERE r."order_id" IN
            (SELECT o."id" FROM "public"."orders" AS o WHERE o."customer_id" = %s)
            AND r."customer_id" IS DISTINCT FROM %s)

both marks taking the subject. It finds a payment of one of the subject's
orders that names another customer (data the database lets disagree): the
statement would return it raw, and the second wall would trim it silently;
it is refused instead. The set probed is every such row of the subject, a
superset of what the statement reaches, so a passing probe covers it.

Why it cannot be fooled
-----------------------
The probe never widens what the statement can touch. The second wall still
sends the statement itself through a filter on the scope column
(``accessguard.analysis.rewrite``: ``... FROM (SELECT ... FROM orders WHERE
customer_id = 42) AS orders WHERE orders.id = $1``; an UPDATE gets
``AND customer_id = 42``), so whatever happens between probe and statement,
the statement reads and writes only the subject's rows. The probe only
turns what would be a silent trim (another customer's key returning nothing)
into a refusal the employee and the audit trail see.

Under concurrent writes:

- READ COMMITTED (PostgreSQL's default, and every statement in autocommit):
  the probe and the statement take separate snapshots. A row that changes
  owner in between is at worst trimmed by the second wall (it moved away from
  the subject) or read as the subject's row it has become (it moved to the
  subject): never another subject's row. An UPDATE re-checks its WHERE, scope
  filter included, on the row version it locks.
- REPEATABLE READ / SERIALIZABLE: the probe and the statement share the
  transaction's snapshot, so the probe sees exactly the rows the statement
  will: a statement that passes its probe is never trimmed.

The probe answers one bit (some named row is not the subject's), and that
answer is a refusal with an audit event: a key that exists for another
customer and a key that does not exist are told apart, at the price of one
audited refusal per guess.

Values are read on every execution (a repeated statement with new keys is
probed again); a key value that is not an integer is refused
(``row_scope.unbound``). Statements without keys carry no probe and pay
nothing for this module. An adapter that cannot run probes leaves the
``probing`` flag off: the lane then refuses such a statement as before
(``row_scope.unbound``).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any, Protocol

from accessguard import metrics
from accessguard.analysis.facts import Const, Facts, Param, Value
from accessguard.engine import telemetry
from accessguard.engine.plan import Authorized, Pending, Plan, Probe, Probes
from accessguard.errors import AccessDenied, Reason

if TYPE_CHECKING:
    from accessguard.audit.ledger import Ledger
    from accessguard.decision import Context, Decision
    from accessguard.policy.catalog import Catalog, TableSpec


class ProbeHost(Protocol):
    """What running probes needs of the gate (``Gate`` is one): audit, notices, the ledger."""

    @property
    def audit_allowed(self) -> bool: ...

    @property
    def ledger(self) -> Ledger: ...

    def notify(self, plan: Plan) -> None: ...

    def audit(  # noqa: PLR0913 - keyword-only details of throttle events
        self,
        decision: Decision,
        context: Context,
        facts: Facts | None,
        *,
        dialect: str = "postgres",
        window: int | None = None,
        count: int | None = None,
        extra: dict[str, Any] | None = None,
    ) -> None: ...


def keyed(facts: Facts) -> bool:
    """Whether a reference of ``facts`` is bound by a key only (its plan carries a probe)."""
    return any(
        ref.key is not None and not ref.values and (ref.key.via is None or ref.key.via.probe)
        for ref in facts.scopes
    )


def plan_probes(
    facts: Facts, catalog: Catalog, subjects: Mapping[str, int], context: Context
) -> Probes | None:
    """The probes of an allowed statement (sans I/O); None when no reference needs one."""
    found: list[Probe] = []
    for ref in facts.scopes:
        key = ref.key
        if key is None or ref.values:
            continue
        spec = catalog.tables[ref.table]
        subject = subjects[ref.scope]
        if key.via is not None:  # bound through another table's proven rows
            other = catalog.tables[key.via.table]
            if key.via.probe:
                within = (other.qualified, key.via.column, other.scope_column or "")
                found.append(
                    dataclasses.replace(_probe(spec, key.column, (), subject), within=within)
                )
            continue
        found.append(_probe(spec, key.column, key.values, subject))
        for column, table, target in spec.references:
            parent = catalog.tables.get(table)
            if column == key.column and parent is not None and parent.scope == spec.scope:
                found.append(_probe(parent, target, key.values, subject))
    found = list(dict.fromkeys(found))  # one probe per relation, however many references
    if not found:
        return None
    keys: list[Value | int] = []
    for probe in found:
        keys += [probe.subject] if probe.within is not None else list(probe.values)
        keys.append(probe.subject)
    dialect = facts.dialect
    first = found[0]
    table = first.table.rsplit(".", 1)[-1]
    return Probes(
        probes=tuple(found),
        keys=tuple(keys),
        format_sql=_sql(found, "%s", dialect),
        qmark_sql=_sql(found, "?", dialect),
        unbound=(
            f"the statement {_names(first, table)} only; that they belong to the "
            f"{first.scope} of ticket {context.ticket_id} is checked on the database before "
            "sending, which this path cannot do: add a condition "
            f"{table}.{first.scope_column} = the {first.scope} of the ticket."
        ),
    )


def _names(probe: Probe, table: str) -> str:
    """How the statement names the rows a probe checks: by its values, or through a relation."""
    if probe.within is None:
        return f"names {table} rows by {probe.column}"
    other, column, _scope = probe.within
    return f"reaches {table} rows through {other.rsplit('.', 1)[-1]}.{column}"


def _probe(spec: TableSpec, column: str, values: tuple[Value, ...], subject: int) -> Probe:
    return Probe(
        table=spec.qualified,
        column=column,
        scope_column=spec.scope_column or "",
        scope=spec.scope or "",
        values=values,
        subject=subject,
    )


def _sql(probes: Sequence[Probe], mark: str, dialect: str) -> str:
    """``SELECT 1 WHERE EXISTS (...) OR ...``: a row iff a named row is not the subject's.

    Names come from schema.toml (lower-case identifiers, checked at load) and
    are quoted; every value is a placeholder.
    """
    parts: list[str] = []
    differs = "IS DISTINCT FROM" if dialect == "postgres" else "IS NOT"
    for probe in probes:
        table = _table(probe.table, dialect)
        if probe.within is not None:
            parts.append(_within_sql(probe, mark, dialect))
            continue
        marks = ", ".join([mark] * len(probe.values))
        parts.append(
            f"EXISTS (SELECT 1 FROM {table} WHERE {_quoted(probe.column)} IN ({marks}) "  # noqa: S608 - quoted names, bound values
            f"AND {_quoted(probe.scope_column)} {differs} {mark})"
        )
    return "SELECT 1 WHERE " + " OR ".join(parts)


def _table(qualified: str, dialect: str) -> str:
    schema, name = qualified.rsplit(".", 1)
    return f"{_quoted(schema)}.{_quoted(name)}" if dialect == "postgres" else _quoted(name)


def _within_sql(probe: Probe, mark: str, dialect: str) -> str:
    """A row of ``probe.table`` that the relation reaches from the subject's rows of the other
    table, and that is not the subject's (``payments`` of the subject's orders, say).

    Both marks take the subject. A row whose column is NULL is never reached (NULL
    equals nothing, in the probe as in the statement); one whose scope column is
    NULL is found.
    """
    assert probe.within is not None  # noqa: S101 - a relation probe
    other, column, scope_column = probe.within
    differs = "IS DISTINCT FROM" if dialect == "postgres" else "IS NOT"
    return (
        f"EXISTS (SELECT 1 FROM {_table(probe.table, dialect)} AS r "  # noqa: S608 - quoted names, bound values
        f"WHERE r.{_quoted(probe.column)} IN (SELECT o.{_quoted(column)} "
        f"FROM {_table(other, dialect)} AS o WHERE o.{_quoted(scope_column)} = {mark}) "
        f"AND r.{_quoted(probe.scope_column)} {differs} {mark})"
    )


def with_literals(plan: Plan, literals: Mapping[str, Any]) -> Plan:
    """A shape plan as the plan of one text: its probe's lifted literals (``#i``) as constants.

    The plan of a statement's literal-free shape names the text's literals as
    parameters ``#i``; the lane reads a probe's values from the bound
    parameters only, so they are put back here (a value that is not an
    integer stays a parameter the lane cannot read: refused, fail closed).
    """
    probes = plan.probes
    if probes is None:
        return plan
    keys = tuple(
        Const(literals[str(key.key)])
        if isinstance(key, Param) and type(literals.get(str(key.key))) is int
        else key
        for key in probes.keys
    )
    return dataclasses.replace(plan, probes=dataclasses.replace(probes, keys=keys))


def unprobed(facts: Facts, decision: Decision, context: Context, catalog: Catalog) -> Decision:
    """The refusal of an allowed key-bound ``decision`` where no probe can run (``Gate.check``)."""
    subjects = dict(decision.subjects)
    probes = plan_probes(facts, catalog, subjects, context)
    message = probes.unbound if probes is not None else "the statement cannot be probed."
    return dataclasses.replace(
        decision,
        outcome="denied",
        reason=Reason.ROW_SCOPE_UNBOUND,
        message=f"Refused: {message}",
        subjects=(),
    )


def _quoted(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


# ---------------------------------------------------------------------- per execution


def prepare(guard: ProbeHost, plan: Plan, params: Any, *, probing: bool) -> Pending:
    """The probe of one execution of ``plan``; refused (audited, raised) if it cannot run.

    ``params``: the values as the facts' Params name them (before reordering).
    """
    probes = plan.probes
    assert probes is not None  # noqa: S101 - called for plans with probes only
    if not probing:
        raise refuse(guard, plan, Reason.ROW_SCOPE_UNBOUND, probes.unbound)
    values: list[int] = []
    for key in probes.keys:
        value = key if type(key) is int else _value(key, params)  # type: ignore[arg-type]
        if value is None:
            raise refuse(
                guard,
                plan,
                Reason.ROW_SCOPE_UNBOUND,
                "A key the statement is bound by is not an integer the guard can check.",
            )
        values.append(value)
    return Pending(probes, values)


def _value(key: Value, params: Any) -> int | None:
    if isinstance(key, Const):
        return key.value
    assert isinstance(key, Param)  # noqa: S101 - a Value is a Const or a Param
    try:
        raw = params[key.key] if isinstance(params, Mapping) else params[int(key.key)]
    except (KeyError, IndexError, TypeError, ValueError):
        return None
    if isinstance(raw, bool) or not isinstance(raw, int):
        return None
    return int(raw)  # psycopg's Int8 (Django) is an int: probed as the value it dumps


def refuse(guard: ProbeHost, plan: Plan, reason: Reason, message: str) -> AccessDenied:
    """Audit the refusal of an allowed plan's execution (as every refusal is); return the error."""
    decision = dataclasses.replace(
        plan.decision, outcome="denied", reason=reason, message=f"Refused: {message}"
    )
    guard.audit(decision, plan.context, plan.facts)
    return AccessDenied(decision.message, reason=reason)


def _other_subject(guard: ProbeHost, ok: Authorized) -> AccessDenied:
    probe = ok.plan.probes.probes[0]  # type: ignore[union-attr] # a pending probe has probes
    table = probe.table.rsplit(".", 1)[-1]
    return refuse(
        guard,
        ok.plan,
        Reason.ROW_SCOPE_OTHER_SUBJECT,
        f"the statement names {table} rows of a {probe.scope} that ticket "
        f"{ok.plan.context.ticket_id} is not about; nothing was read or written.",
    )


def run(guard: ProbeHost, ok: Authorized, connection: Any, *, qmark: bool = False) -> None:
    """Run ``ok``'s probe on ``connection`` (DB-API, sync) before ``ok`` is sent; refuse on a row.

    Nothing to do (one attribute read) for a statement without a probe. On
    success the statement's ledger access is recorded (the lane defers it).
    """
    if ok.probe is not None:
        run_batch(guard, (ok,), connection, qmark=qmark)


def run_batch(
    guard: ProbeHost, batch: Sequence[Authorized], connection: Any, *, qmark: bool = False
) -> None:
    """Every probe of an executemany batch, then (all passed) their ledger accesses."""
    for ok in batch:
        pending = ok.probe
        if pending is None:
            continue
        cursor = connection.cursor()
        try:
            sql = pending.probes.qmark_sql if qmark else pending.probes.format_sql
            cursor.execute(sql, pending.values)
            found = cursor.fetchone() is not None
        finally:
            cursor.close()
        if found:
            raise _other_subject(guard, ok)
    _record(guard, batch)


async def run_async(guard: ProbeHost, ok: Authorized, connection: Any) -> None:
    """``run`` for a psycopg AsyncConnection."""
    if ok.probe is not None:
        await run_batch_async(guard, (ok,), connection)


async def run_batch_async(guard: ProbeHost, batch: Sequence[Authorized], connection: Any) -> None:
    """``run_batch`` for a psycopg AsyncConnection."""
    for ok in batch:
        pending = ok.probe
        if pending is None:
            continue
        cursor = connection.cursor()
        try:
            await cursor.execute(pending.probes.format_sql, pending.values)
            found = await cursor.fetchone() is not None
        finally:
            await cursor.close()
        if found:
            raise _other_subject(guard, ok)
    _record(guard, batch)


def _record(guard: ProbeHost, batch: Sequence[Authorized]) -> None:
    """What the lane does for every allowed statement, deferred until the probes passed.

    The decision counted as allowed, its span event, its notices and allowed
    audit event, its ledger access: a statement its probe refuses has only
    its refusal.
    """
    for ok in batch:
        if ok.probe is None:
            continue
        plan = ok.plan
        metrics.DECISIONS.allowed()
        if telemetry.TRACER is not None:
            telemetry.allowed(plan, plan.facts.dialect)
        if plan.notices:
            guard.notify(plan)
        if guard.audit_allowed:
            guard.audit(plan.decision, plan.context, plan.facts)
        if ok.tally is not None:
            guard.ledger.record(ok.tally)
