"""Alerts: the rules of ``alerts.toml`` evaluated as the access ledger flushes.

The ledger hands each flushed batch of ledger events to ``Alerter.evaluate``
(on its flush thread, or on the statement's when a full queue flushes there).
Refusals and ticket lifecycle events reach the alerter through ``observe``,
which only appends to a queue: nothing is evaluated on a statement's path.
An alert is written as an ``alert`` event into the same trail and handed to
each notifier (a callback given to the Guard, a ``Webhook``); it carries the
evidence that fired it (rule, employee, window, counts, subject ids as the
trail keeps them, ticket ids) and never row data.

Times are the events' own (``@timestamp``, the ledger's ``accessguard.first``),
so a replayed or simulated trail alerts as the live one would.
"""

from __future__ import annotations

import datetime as dt
import math
import threading
from collections import deque
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

from accessguard.audit.alert_state import Counters, Evidence, TicketBook
from accessguard.audit.sinks import Event
from accessguard.audit.webhook import Webhook
from accessguard.policy.alerts import AlertRules, Rule
from accessguard.tickets.stores import TicketChange

if TYPE_CHECKING:
    from accessguard.policy.watchlist import Watchlist

Notifier = Callable[[Event], None]
#: (employee, subject) pairs a refusals rule keeps before forgetting the quiet ones
MAX_KEYS = 100_000


class Alerter:
    """Evaluates alert rules over flushed ledger events and observed refusals and tickets."""

    def __init__(
        self,
        rules: AlertRules,
        *,
        emit: Callable[..., None] | None = None,
        notifiers: Sequence[Notifier] = (),
        pseudonym: Callable[[int | str], int | str] = lambda s: s,
        stamp: Callable[[], str] | None = None,
    ) -> None:
        self._emit = emit
        self._stamp = stamp or (lambda: _iso(dt.datetime.now(dt.UTC).timestamp()))
        self._notifiers = list(notifiers)
        self._pseudonym = pseudonym
        self._observed: deque[Event] = deque(maxlen=100_000)
        self._lock = threading.Lock()
        self.rules = rules
        self._watch: frozenset[tuple[str, object]] = frozenset()
        self._canaries: frozenset[tuple[str, object]] = frozenset()
        self._state: dict[str, Any] = {}
        self._tickets = TicketBook()
        #: alerts raised, and notifier or audit failures (counted, never raised)
        self.raised = 0
        self.failures = 0
        self.webhook: Webhook | None = None
        self.set_rules(rules)

    # ------------------------------------------------------------------ configuration

    def set_rules(self, rules: AlertRules, watchlist: Watchlist | None = None) -> None:
        """Swap in new rules (a reload): each rule keeps its state while its name and shape do."""
        with self._lock:
            old = {r.name: r for r in self.rules.rules}
            same = {r.name for r in rules.rules if old.get(r.name) == r}
            self._state = {
                key: value
                for key, value in self._state.items()
                if key.removesuffix(".fired") in same
            }
            self.rules = rules
            if watchlist is not None:
                self._canaries = frozenset(
                    (scope, self._pseudonym(i)) for scope, i in watchlist.canaries
                )
                self._watch = frozenset(
                    (scope, self._pseudonym(i)) for scope, i in watchlist.watched
                )
            if self.webhook is not None and self.webhook.url != rules.webhook:
                self._notifiers.remove(self.webhook)
                self.webhook.close()
                self.webhook = None
            if rules.webhook is not None and self.webhook is None:
                self.webhook = Webhook(rules.webhook)
                self._notifiers.append(self.webhook)

    # ------------------------------------------------------------------ input

    def observe(self, event: Event) -> None:
        """Keep a refusal (or ticket event) for the next evaluation; costs one append."""
        if event.get("accessguard.outcome") in {"denied", "throttled"} and event.get(
            "accessguard.subjects"
        ):
            self._observed.append(
                event if "@timestamp" in event else {**event, "@timestamp": self._stamp()}
            )

    def ticket_changed(self, change: TicketChange) -> Event:
        """Audit one ticket change (opened, assigned, closed, reopened); return its event."""
        ticket = change.ticket
        scope = "customer" if ticket.customer_id is not None else "product"
        subject = ticket.customer_id if ticket.customer_id is not None else ticket.product_id
        fields: Event = {
            "event.kind": "event",
            "event.category": ["iam"],
            "event.type": ["change"],
            "event.action": f"ticket.{change.action}",
            "event.outcome": "success",
            "user.name": change.by,
            "user.target.name": ticket.assignee,
            "accessguard.ticket.id": ticket.id,
            "accessguard.ticket.kind": ticket.kind,
            "accessguard.ticket.status": ticket.status,
            "accessguard.ticket.assignee": ticket.assignee,
            "accessguard.ticket.previous_assignee": change.previous_assignee,
            "accessguard.ticket.by": change.by,
            "accessguard.ticket.at": _iso(change.at) if change.at is not None else None,
        }
        if subject is not None:
            fields["accessguard.subjects"] = [{"kind": scope, "id": self._pseudonym(subject)}]
        if self._emit is not None:
            self._emit(**fields)
        fields["@timestamp"] = _iso(change.at) if change.at is not None else self._stamp()
        self._observed.append(fields)
        return fields

    # ------------------------------------------------------------------ evaluation

    def evaluate(self, events: Sequence[Event]) -> list[Event]:
        """Run every rule over what was observed, then over a flushed batch; emit the alerts."""
        if not self.rules:
            self._observed.clear()
            return []
        if not events and not self._observed:
            return []
        with self._lock:
            found: list[Event] = []
            observed = self._observed
            while observed:
                self._one(observed.popleft(), found)
            for event in events:
                self._one(event, found)
        for alert in found:
            self._raise(alert)
        return found

    def _one(self, event: Event, found: list[Event]) -> None:
        action = event.get("event.action")
        when = _when(event)
        if when is None:
            return
        if action == "ledger":
            for rule in self.rules.rules:
                if rule.kind == "peer_baseline":
                    self._counters(rule).add(event, when, found)
                elif rule.kind == "canary":
                    self._canary(rule, event, when, found)
                elif rule.kind == "closed_ticket":
                    self._tickets.after_close(rule, event, when, found)
        elif isinstance(action, str) and action.startswith("ticket."):
            churn = [r for r in self.rules.rules if r.kind == "ticket_churn"]
            self._tickets.change(event, when, churn, self._state, found)
        else:
            for rule in self.rules.rules:
                if rule.kind == "refusals":
                    self._refusals(rule, event, when, found)

    def _counters(self, rule: Rule) -> Counters:
        state = self._state.get(rule.name)
        if not isinstance(state, Counters):
            state = self._state[rule.name] = Counters(rule)
        return state

    def _canary(self, rule: Rule, event: Event, when: float, found: list[Event]) -> None:
        subject = (event.get("accessguard.subject.kind"), event.get("accessguard.subject.id"))
        canary = subject in self._canaries
        if not canary and not (rule.watched and subject in self._watch):
            return
        seen: set[tuple[object, ...]] = self._state.setdefault(rule.name, set())
        key = (event.get("user.name"), *subject, event.get("accessguard.ticket.id"))
        if key in seen:
            return
        seen.add(key)
        found.append(
            Evidence(
                rule=rule,
                event=event,
                start=when,
                end=when,
                count=int(event.get("accessguard.statements") or 0),
                subjects=[{"kind": subject[0], "id": subject[1]}],
                message=f"{'Canary' if canary else 'Watch-listed'} {subject[0]} read",
                extra={"accessguard.rows": event.get("accessguard.rows")},
            ).alert()
        )

    def _refusals(self, rule: Rule, event: Event, when: float, found: list[Event]) -> None:
        state: dict[tuple[object, ...], deque[float]] = self._state.setdefault(rule.name, {})
        fired: dict[tuple[object, ...], float] = self._state.setdefault(f"{rule.name}.fired", {})
        user = event.get("user.name")
        if len(state) > MAX_KEYS:  # forget (employee, subject) pairs quiet for a window
            for key in [k for k, t in state.items() if not t or t[-1] <= when - rule.window]:
                del state[key]
                fired.pop(key, None)
        for subject in event.get("accessguard.subjects") or ():
            key = (user, subject.get("kind"), subject.get("id"))
            times = state.setdefault(key, deque())
            times.append(when)
            while times and times[0] <= when - rule.window:
                times.popleft()
            last = fired.get(key, -math.inf)
            if len(times) >= rule.count and last <= when - rule.window:  # once per window
                fired[key] = when
                found.append(
                    Evidence(
                        rule=rule,
                        event=event,
                        start=times[0],
                        end=when,
                        count=len(times),
                        threshold=rule.count,
                        subjects=[dict(subject)],
                        message=f"{len(times)} refused statements naming one {subject.get('kind')}",
                    ).alert()
                )

    def _raise(self, alert: Event) -> None:
        self.raised += 1
        if self._emit is not None:
            try:
                self._emit(**{k: v for k, v in alert.items() if k != "@timestamp"})
            except Exception:  # noqa: BLE001 - counted; the ledger's own events are written
                self.failures += 1
        for notify in list(self._notifiers):
            try:
                notify(dict(alert))
            except Exception:  # noqa: BLE001 - a notifier never stops the ledger
                self.failures += 1

    def close(self) -> None:
        """Send what the webhook holds (bounded wait) and stop its thread."""
        if self.webhook is not None:
            self.webhook.close()


def _when(event: Event) -> float | None:
    text = event.get("accessguard.first") or event.get("@timestamp")
    if not isinstance(text, str):
        return None
    try:
        return dt.datetime.fromisoformat(text).timestamp()
    except ValueError:
        return None


def _iso(timestamp: float) -> str:
    return dt.datetime.fromtimestamp(timestamp, dt.UTC).isoformat(timespec="microseconds")
