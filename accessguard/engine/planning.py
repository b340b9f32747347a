"""Making a plan: what an allowed decision sends, counts and notices, checked once.

``build_plan`` turns an allowed decision into a ``Plan``: the SQL to send (the
second wall, verified by PostgreSQL's parser), the parameter keys that carry the
row scope, the ledger's tally, the probes of a key-bound statement, and the
notices (shadow denials, watch-list and canary reads) to audit when it runs.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import replace

from accessguard.analysis import Facts, Param, subject_marker
from accessguard.analysis.sentcheck import verify_sent
from accessguard.audit.ledger import Access, Ledger
from accessguard.decision import Context, Decision, decide
from accessguard.engine.breakglass import critical_fields
from accessguard.engine.plan import Plan, Unverified
from accessguard.engine.probes import keyed, plan_probes
from accessguard.errors import AccessDenied, Reason
from accessguard.policy.rules import Policy
from accessguard.tickets.stores import Ticket

__all__ = ["build_plan", "sent_sql"]


def build_plan(  # noqa: PLR0913 - one decision's parts
    facts: Facts,
    decision: Decision,
    context: Context,
    ticket: Ticket | None,
    policy: Policy,
    *,
    shadow: Policy | None,
    ledger: Ledger,
    masks: Mapping[str, Mapping[str, str]] | None = None,
) -> Plan:
    valid = context.valid
    subjects = dict(decision.subjects)
    checks = tuple(
        (value.key, subjects[ref.scope])
        for ref in facts.scopes
        for value in ref.values
        if isinstance(value, Param)
    )
    kind = valid.kind if valid is not None else None
    roles = tuple(sorted(context.roles))
    accesses = tuple(
        Access(
            user=context.user,
            roles=roles,
            ticket_id=context.ticket_id,
            ticket_kind=kind,
            scope=scope,
            subject=subject,
            fingerprint=facts.fingerprint or "",
            tables=decision.tables,
            columns=decision.columns,
            policy_version=policy.version,
        )
        for scope, subject in decision.subjects
    )
    sent = sent_sql(facts, decision)
    if facts.dialect == "postgres":
        # the second wall, checked by PostgreSQL's parser before the plan is trusted
        scoped = {
            t: spec.scope_column or ""
            for t in facts.tables
            if (spec := policy.catalog.tables.get(t)) is not None and spec.scope is not None
        }
        problem = verify_sent(
            sent,
            facts,
            scoped,
            pyformat=bool(facts.params),
            subjects=[subject for _scope, subject in decision.subjects],
            masks=masks,
        )
        if problem is not None:
            raise Unverified(problem)
    notices: list[Decision] = []
    if shadow is not None:
        shadow_context = replace(context, roles=shadow.roles_of(context.user))
        verdict = decide(facts, shadow_context, shadow)
        if not verdict.allowed:
            notices.append(replace(verdict, outcome="allowed", limit="shadow"))
    if valid is not None and critical_fields(valid):  # the review trail, every statement
        notices.append(
            replace(decision, limit="elevation", message=f"Statement under elevation {valid.id}.")
        )
    for scope, subject in decision.subjects:
        if (scope, subject) in policy.watchlist.canaries:
            notices.append(
                replace(
                    decision,
                    limit="canary",
                    message=f"Canary {scope} read: no legitimate work touches it.",
                )
            )
        elif (scope, subject) in policy.watchlist.watched:
            notices.append(
                replace(
                    decision,
                    limit="watchlist",
                    message=f"Watch-listed {scope} read under ticket {context.ticket_id}.",
                )
            )
    return Plan(
        policy=policy,
        notices=tuple(notices),
        facts=facts,
        decision=decision,
        context=context,
        ticket=ticket,
        kind=kind,
        sql=sent,
        checks=checks,
        probes=plan_probes(facts, policy.catalog, subjects, context) if keyed(facts) else None,
        tally=(
            ledger.tally(accesses, facts.row_weight, writes=facts.kind == "update")
            if accesses
            else None
        ),
        customers=frozenset(i for scope, i in decision.subjects if scope == "customer"),
    )


def sent_sql(facts: Facts, decision: Decision) -> str:
    sent = facts.sent or ""
    for scope, subject in decision.subjects:
        sent = sent.replace(subject_marker(scope), str(int(subject)))
    if "__ag_subject_" in sent:  # a scope without a proven subject: never send
        raise AccessDenied(
            "Refused: the guard could not scope the statement.", reason=Reason.INTERNAL_ERROR
        )
    return sent
