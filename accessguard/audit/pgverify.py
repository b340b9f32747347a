"""Verifying the PostgreSQL trail as it is read.

The chain, event by event (``accessguard.audit.verification.ChainCheck``); each
row's indexed columns (ts, action, user_name, ticket_id, subject_kind,
subject_id, hash) against its event, since investigators query by them; and
every checkpoint row's MAC, the latest one against the chain's end.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import psycopg

from accessguard.audit.chain import FROM_ENV, Checkpoint, load_key
from accessguard.audit.pgtables import SELECT_ALL, SELECT_ALL_CHECKPOINTS, Event, event_row
from accessguard.audit.verification import ChainCheck, Verification

__all__ = ["verified_events", "verify"]


def verified_events(
    dsn: str, *, key: bytes | str | None = FROM_ENV, problems: list[Verification] | None = None
) -> Iterator[Event]:
    """Every event, verified as it is read; the verdict is appended to ``problems`` at the end."""
    check = _PgCheck(dsn, load_key(key))
    yield from check.events()
    if problems is not None:
        problems.append(check.result)


def verify(dsn: str, *, key: bytes | str | None = FROM_ENV) -> Verification:
    """Check the chain, the indexed columns against each event, and the checkpoints."""
    verdict: list[Verification] = []
    for _ in verified_events(dsn, key=key, problems=verdict):
        pass
    return verdict[0]


class _PgCheck:
    def __init__(self, dsn: str, key: bytes | None) -> None:
        self.dsn = dsn
        self.key = key
        self.result = Verification(False, 0, problem="not verified")

    def events(self) -> Iterator[Event]:
        with psycopg.connect(self.dsn) as conn:
            conn.execute("SET row_security = off")  # a policy errs: it never hides rows
            cps = [(r[0], Checkpoint(*r[1:])) for r in conn.execute(SELECT_ALL_CHECKPOINTS)]
            forged = next((i for i, c in cps if not c.valid(self.key)), None)
            latest = cps[-1][1] if cps else None
            check = ChainCheck(self.key, checkpoint=latest)
            position = 0
            failure: Verification | None = None
            for position, row in enumerate(conn.execute(SELECT_ALL), 1):
                event = dict(row[-1])
                if failure is None:
                    problem = check.feed(event) or columns_differ(row, event)
                    if problem:
                        failure = Verification(False, check.count, position, problem, key=check.kid)
                yield event  # also past a broken row: the verdict says where it broke
        if failure is not None:
            self.result = failure
            return
        if forged is not None:
            self.result = Verification(
                False,
                check.count,
                problem=f"checkpoint row {forged} does not match its MAC (forged, or another key)",
                key=check.kid,
            )
            return
        self.result = check.finish(position + 1)


def columns_differ(row: tuple[Any, ...], event: Event) -> str | None:
    ts, action, user, ticket, kind, subject, hash_ = row[:7]
    expected = event_row(event)
    names = ("ts", "action", "user_name", "ticket_id", "subject_kind", "subject_id", "hash")
    for name, have, want in zip(
        names, (ts, action, user, ticket, kind, subject, hash_), expected, strict=False
    ):
        if name == "ts" and not isinstance(event.get("@timestamp"), str):
            continue
        if have != want:
            return f"its {name} column differs from the event (updated?)"
    return None
