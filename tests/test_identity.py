"""Identity: no anonymous employee.

A user that is None, empty, blank or not a string is refused at binding
(``session.unbound``, one audit event) on every entry point.
"""

from __future__ import annotations

import psycopg
import pytest

from accessguard import ConfigurationError, Guard
from accessguard.engine.lane import Session
from accessguard.testing import MemoryAuditSink

NOT_NAMES: list[object] = [None, "", "   ", 42, b"alice", "\udcff"]
IDS = ["none", "empty", "blank", "int", "bytes", "surrogate"]


def unbound_events(sink: MemoryAuditSink) -> list[dict[str, object]]:
    return [e for e in sink.events if e.get("event.reason") == "session.unbound"]


class TestBinding:
    @pytest.mark.parametrize("user", NOT_NAMES, ids=IDS)
    def test_check_refuses_a_user_that_is_not_a_name(
        self, guard: Guard, sink: MemoryAuditSink, user: object
    ) -> None:
        """check() with no employee's name raises session.unbound and audits it once."""
        with pytest.raises(ConfigurationError) as info:
            guard.check("SELECT title FROM products", user=user, ticket=None)  # type: ignore[arg-type]
        assert info.value.reason == "session.unbound"
        events = unbound_events(sink)
        assert len(events) == 1
        assert events[0]["user.name"] is None

    @pytest.mark.parametrize("ticket", [100, "", b"T-100"], ids=["int", "empty", "bytes"])
    def test_a_ticket_that_is_not_an_id_is_refused(
        self, guard: Guard, sink: MemoryAuditSink, ticket: object
    ) -> None:
        """A ticket that is neither None nor a non-empty string is refused at binding."""
        with pytest.raises(ConfigurationError) as info:
            guard.check("SELECT title FROM products", user="alice", ticket=ticket)  # type: ignore[arg-type]
        assert info.value.reason == "session.unbound"
        assert len(unbound_events(sink)) == 1

    @pytest.mark.parametrize("user", [None, ""], ids=["none", "empty"])
    def test_acting_as_refuses_a_user_that_is_not_a_name(
        self, guard: Guard, sink: MemoryAuditSink, user: str | None
    ) -> None:
        """acting_as() binds nobody anonymous: the with-block is never entered."""
        with pytest.raises(ConfigurationError), guard.acting_as(user=user):  # type: ignore[arg-type]
            pytest.fail("entered")
        assert len(unbound_events(sink)) == 1

    def test_a_lane_is_never_made_for_an_unnamed_session(
        self, guard: Guard, sink: MemoryAuditSink
    ) -> None:
        """A session built around the binding checks (as an adapter may) gets no lane."""
        with pytest.raises(ConfigurationError):
            guard.authorize(
                "SELECT title FROM products", None, Session(user=""), dialect="postgres"
            )
        assert len(unbound_events(sink)) == 1

    def test_a_named_employee_still_binds(self, guard: Guard) -> None:
        """An employee's name binds as before (everyone may read products)."""
        assert guard.check("SELECT title FROM products", user="bob").allowed

    @pytest.mark.db
    @pytest.mark.parametrize("user", [None, ""], ids=["none", "empty"])
    def test_connect_refuses_before_connecting(
        self, guard: Guard, sink: MemoryAuditSink, scenario_dsn: str, user: str | None
    ) -> None:
        """connect(user=None or "") raises session.unbound; no guarded connection exists."""
        with pytest.raises(ConfigurationError) as info:
            guard.connect(scenario_dsn, user=user)  # type: ignore[arg-type]
        assert info.value.reason == "session.unbound"
        assert len(unbound_events(sink)) == 1

    @pytest.mark.db
    def test_wrap_refuses_an_empty_user(
        self, guard: Guard, sink: MemoryAuditSink, scenario_dsn: str
    ) -> None:
        """wrap(conn, user="") raises session.unbound instead of guarding nobody."""
        with psycopg.connect(scenario_dsn) as raw, pytest.raises(ConfigurationError):
            guard.wrap(raw, user="")
        assert len(unbound_events(sink)) == 1

    @pytest.mark.db
    def test_pool_checkout_refuses_an_empty_user(
        self, guard: Guard, sink: MemoryAuditSink, scenario_dsn: str
    ) -> None:
        """pool.connection(user="") is refused at checkout, not served as an anonymous one."""
        pool = guard.pool(scenario_dsn, min_size=1, max_size=1, open=True)
        try:
            with pytest.raises(ConfigurationError), pool.connection(user=""):
                pytest.fail("checked out")
        finally:
            pool.close()
        assert len(unbound_events(sink)) == 1
