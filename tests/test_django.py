"""Django: the middleware binds the request's employee; every execute on its aliases is decided."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

import django
import psycopg
import pytest
from casefiles import PgServerLike, RedteamCase, database_copy, load_redteam_cases
from django.conf import settings
from django.db import connection, transaction
from django.http import HttpRequest, HttpResponse
from django.test import RequestFactory, override_settings
from psycopg.conninfo import conninfo_to_dict
from test_redteam import ALLOWED_EQUIVALENT, TIMEOUT, redteam_params, reference_result

from accessguard import (
    AccessDenied,
    AccessGuardError,
    ConfigurationError,
    Guard,
    Throttled,
    scenario,
)
from accessguard.adapters.django import AccessGuardMiddleware, get_guard, guarded
from accessguard.testing import MemoryAuditSink

if not settings.configured:
    settings.configure(
        DATABASES={
            "default": {"ENGINE": "django.db.backends.postgresql", "NAME": "unset", "OPTIONS": {}}
        },
        INSTALLED_APPS=["django.contrib.contenttypes", "django.contrib.auth"],
        USE_TZ=True,
        ACCESSGUARD={},
    )
    django.setup()

from django.contrib.auth.models import User  # needs the settings above

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator
    from pathlib import Path

    from _pytest.mark.structures import ParameterSet

db = pytest.mark.db
CASES = load_redteam_cases()
Rows = list[tuple[Any, ...]]
QUERY = "SELECT name FROM customers WHERE id = %s"


def use_database(dsn: str, **options: Any) -> None:
    """Point Django's default alias at ``dsn`` (closing what it had open)."""
    connection.close()
    info = conninfo_to_dict(dsn)
    connection.settings_dict.update(
        NAME=info["dbname"],
        USER=info.get("user", ""),
        HOST=info.get("host", ""),
        PORT=str(info.get("port", "")),
        OPTIONS=options,
    )


@pytest.fixture
def sink() -> MemoryAuditSink:
    return MemoryAuditSink()


@pytest.fixture
def guard(sink: MemoryAuditSink) -> Iterator[Guard]:
    """The scenario's guard (with its limits), named by settings.ACCESSGUARD."""
    with (
        Guard.from_directory(
            scenario.policies_dir(), tickets=scenario.tickets(), audit=sink
        ) as guard,
        override_settings(ACCESSGUARD={"GUARD": guard}),
    ):
        yield guard


@pytest.fixture
def scenario_db(scenario_dsn: str) -> Iterator[str]:
    """Django's default alias on a fresh scenario database."""
    use_database(scenario_dsn)
    yield scenario_dsn
    connection.close()


def request_as(username: str | None, ticket: str | None = None) -> HttpRequest:
    """A GET request by ``username`` (anonymous when None), with an X-Ticket header."""
    headers = {"X-Ticket": ticket} if ticket is not None else {}
    request = RequestFactory().get("/", headers=headers)
    if username is not None:
        request.user = User(username=username)
    return request


def fetch(sql: str, params: Any = None) -> Rows:
    """Run ``sql`` on Django's default connection: its rows."""
    with connection.cursor() as cur:
        cur.execute(sql, params)
        return list(cur.fetchall()) if cur.description is not None else []


def through_middleware(request: HttpRequest, view: Callable[[], object]) -> object:
    """Call ``view`` behind AccessGuardMiddleware; return what it returned."""
    box: list[object] = []

    def get_response(_request: HttpRequest) -> HttpResponse:
        box.append(view())
        return HttpResponse("ok")

    AccessGuardMiddleware(get_response)(request)
    return box[0]


@db
@pytest.mark.usefixtures("guard", "scenario_db")
class TestMiddleware:
    def test_request_employee_and_ticket_header(self) -> None:
        """alice with X-Ticket: T-100 reads her ticket's customer; all else is refused."""
        rows = through_middleware(request_as("alice", "T-100"), lambda: fetch(QUERY, [42]))
        assert rows == [("Name-0042",)]
        with pytest.raises(AccessDenied):
            through_middleware(request_as("alice", "T-100"), lambda: fetch(QUERY, [7]))

    def test_another_employee_is_refused(self) -> None:
        """bob, or alice without her ticket header, cannot read customer 42."""
        with pytest.raises(AccessDenied):
            through_middleware(request_as("bob", "T-100"), lambda: fetch(QUERY, [42]))
        with pytest.raises(AccessDenied):
            through_middleware(request_as("alice"), lambda: fetch(QUERY, [42]))

    def test_anonymous_request_is_refused(self) -> None:
        """With nobody bound, every statement of the request is a ConfigurationError."""
        with pytest.raises(ConfigurationError):
            through_middleware(request_as(None), lambda: fetch("SELECT 1"))

    def test_guard_stays_after_the_request(self, sink: MemoryAuditSink) -> None:
        """After the request, the alias is still guarded: with nobody bound, refused and audited."""
        through_middleware(request_as("alice", "T-100"), lambda: fetch(QUERY, [42]))
        with pytest.raises(ConfigurationError) as info:
            fetch(QUERY, [42])
        assert info.value.reason == "session.unbound"
        assert sink.reasons() == ["session.unbound"]

    def test_resolver_and_header_settings(self, guard: Guard) -> None:
        """RESOLVER and TICKET_HEADER settings choose who the request acts for."""
        request = request_as("alice")
        request.META["HTTP_X_CASE"] = "T-100"
        with override_settings(ACCESSGUARD={"GUARD": guard, "TICKET_HEADER": "X-Case"}):
            assert through_middleware(request, lambda: fetch(QUERY, [42])) == [("Name-0042",)]

        def resolve(_request: HttpRequest) -> tuple[str, str | None]:
            return "alice", "T-100"

        with override_settings(ACCESSGUARD={"GUARD": guard, "RESOLVER": resolve}):
            rows = through_middleware(request_as(None), lambda: fetch(QUERY, [42]))
            assert rows == [("Name-0042",)]

    def test_guard_built_from_settings(self, tmp_path: Path) -> None:
        """POLICIES / TICKETS / AUDIT build the guard once; refusals go to the audit file."""
        audit = tmp_path / "audit.jsonl"
        config = {
            "POLICIES": str(scenario.policies_dir()),
            "TICKETS": str(scenario.tickets_file()),
            "AUDIT": str(audit),
        }
        with override_settings(ACCESSGUARD=config):
            assert get_guard() is get_guard()
            with pytest.raises(AccessDenied):
                through_middleware(request_as("alice", "T-100"), lambda: fetch(QUERY, [7]))
            get_guard().close()
        assert "row_scope.other_subject" in audit.read_text()


@db
@pytest.mark.usefixtures("scenario_db")
class TestGuarded:
    def test_guarded_binds_for_a_script(self, guard: Guard) -> None:
        """guarded(connection, user=..., ticket=...) guards a script's statements."""
        with guarded(connection, guard=guard, user="alice", ticket="T-100"):
            assert fetch(QUERY, [42]) == [("Name-0042",)]
            with pytest.raises(AccessDenied):
                fetch("SELECT email FROM customers")

    def test_nobody_bound_is_refused(self, guard: Guard) -> None:
        """Under guarded() with no employee bound, a statement is a ConfigurationError."""
        with guarded(connection, guard=guard), pytest.raises(ConfigurationError):
            fetch("SELECT title FROM products WHERE id = 1")
        with guard.acting_as(user="dave"), guarded(connection, guard=guard):
            assert fetch("SELECT title FROM products WHERE id = %s", [1]) != []

    def test_client_binding_is_analyzed_on_merged_text(self, guard: Guard) -> None:
        """Django's default client-side binding: a value ending a comment cannot add SQL."""
        with guarded(connection, guard=guard, user="alice", ticket="T-100"):
            with pytest.raises(AccessDenied):
                fetch("SELECT id, name, email FROM customers WHERE id = 42 -- %s", ["\nOR true --"])
            assert fetch(
                "SELECT id FROM orders WHERE customer_id = %s AND status LIKE 'p%%'", [42]
            ) == [(422,)]

    def test_server_side_binding(self, guard: Guard, scenario_db: str) -> None:
        """With server_side_binding the statement is decided in psycopg's $n form."""
        use_database(scenario_db, server_side_binding=True)
        with guarded(connection, guard=guard, user="alice", ticket="T-100"):
            assert fetch(
                "SELECT id FROM orders WHERE customer_id = %(c)s AND status LIKE 'p%%'", {"c": 42}
            ) == [(422,)]
            with pytest.raises(AccessDenied):
                fetch(QUERY, [7])

    def test_atomic_savepoints_pass(self, guard: Guard) -> None:
        """Django's own SAVEPOINT statements (nested atomic) are let through."""
        update = "UPDATE orders SET status = %s WHERE customer_id = 42 AND id = %s"
        with guarded(connection, guard=guard, user="alice", ticket="T-100"), transaction.atomic():
            try:
                with transaction.atomic():  # SAVEPOINT
                    fetch(update, ["refunded", 421])
                    fetch("SELECT email FROM customers")  # refused: ROLLBACK TO SAVEPOINT
            except AccessDenied:
                pass
            else:
                pytest.fail("the unscoped read was not refused")
            assert fetch("SELECT status FROM orders WHERE customer_id = 42 AND id = 421") == [
                ("cancelled",)
            ]
            with pytest.raises(AccessDenied):
                fetch('SAVEPOINT "s1_x1"', [])  # with parameters it is not Django's own

    def test_executemany_checks_every_parameter_set(self, guard: Guard) -> None:
        """executemany refuses the whole batch if one set is out of scope."""
        update = "UPDATE orders SET status = %s WHERE customer_id = %s AND id = %s"
        with guarded(connection, guard=guard, user="alice", ticket="T-100"):
            with pytest.raises(AccessDenied), connection.cursor() as cur:
                cur.executemany(update, [("x", 42, 421), ("x", 7, 71)])
            with connection.cursor() as cur:
                cur.executemany(update, [("y", 42, 421), ("y", 42, 422)])
            assert fetch("SELECT id, status FROM orders WHERE customer_id = 42 ORDER BY id") == [
                (421, "y"),
                (422, "y"),
                (423, "shipped"),
            ]

    def test_the_rows_a_write_changed_are_ledgered(
        self, guard: Guard, sink: MemoryAuditSink
    ) -> None:
        """An UPDATE and an executemany count the rows they changed, as the psycopg and
        SQLAlchemy paths do (Django's were never counted: red team)."""
        update = "UPDATE orders SET status = %s WHERE customer_id = 42 AND id = %s"
        with (
            guarded(connection, guard=guard, user="alice", ticket="T-100"),
            connection.cursor() as cur,
        ):
            cur.execute(update, ["w", 421])
            cur.executemany(update, [("v", 422), ("v", 423)])
        guard.ledger.flush()
        ledger = [e for e in sink.events if e["event.action"] == "ledger"]
        assert sum(e["accessguard.rows"] for e in ledger) == 3

    def test_paths_past_execute_are_refused(self, guard: Guard) -> None:
        """copy(), stream(), callproc() and named cursors are refused under the guard."""
        with guarded(connection, guard=guard, user="alice", ticket="T-100"):
            with connection.cursor() as cur:
                with pytest.raises(AccessDenied):
                    cur.copy("COPY customers TO STDOUT")
                with pytest.raises(AccessDenied):
                    cur.stream("SELECT email FROM customers")
                with pytest.raises(django.db.ProgrammingError) as info:
                    cur.callproc("pg_sleep", [0])  # Django re-wraps: the refusal is the cause
                assert isinstance(info.value.__cause__, AccessDenied)
            with connection.chunked_cursor() as named, pytest.raises(AccessDenied):
                named.execute("SELECT id FROM orders WHERE customer_id = 42")
        with connection.cursor() as cur, pytest.raises(ConfigurationError):
            cur.copy("COPY customers TO STDOUT")  # the alias stays guarded: nobody bound now

    def test_ledger_and_row_cap(
        self, guard: Guard, sink: MemoryAuditSink, scenario_db: str
    ) -> None:
        """Rows returned are counted; a result over the row cap is refused and withheld."""
        with guarded(connection, guard=guard, user="alice", ticket="T-100"):
            assert len(fetch("SELECT id FROM orders WHERE customer_id = %s", [42])) == 3
        with psycopg.connect(scenario_db, autocommit=True) as admin:
            admin.execute(
                "INSERT INTO orders (id, customer_id, status, total_cents) "
                "SELECT 100000 + g, 42, 'bulk', 1 FROM generate_series(1, 498) g"
            )
        with (
            guarded(connection, guard=guard, user="alice", ticket="T-100"),
            pytest.raises(Throttled),
            connection.cursor() as cur,
        ):
            cur.execute("SELECT id FROM orders WHERE customer_id = 42")
        guard.close()
        ledger = [e for e in sink.events if e["event.action"] == "ledger"]
        assert sum(e["accessguard.rows"] for e in ledger) == 3
        assert sink.reasons()[0] == "throttle.rows"

    def test_update_returning_is_capped_and_undone(
        self, guard: Guard, sink: MemoryAuditSink, scenario_db: str
    ) -> None:
        """UPDATE ... RETURNING over the row cap is refused, rolled back, and hands no row over."""
        with psycopg.connect(scenario_db, autocommit=True) as admin:
            admin.execute(
                "INSERT INTO orders (id, customer_id, status, total_cents) "
                "SELECT 100000 + g, 42, 'bulk', 1 FROM generate_series(1, 2000) g"
            )
        update = "UPDATE orders SET status = 'x' WHERE customer_id = 42 RETURNING id, status"
        with guarded(connection, guard=guard, user="alice", ticket="T-100"):
            with pytest.raises(Throttled), connection.cursor() as cur:
                cur.execute(update)
            with pytest.raises(Throttled), transaction.atomic(), connection.cursor() as cur:
                cur.execute(update)  # inside a transaction: its savepoint is rolled back
            small = (
                "UPDATE orders SET status = 'y' WHERE customer_id = 42 AND id < 500 RETURNING id"
            )
            transaction.set_autocommit(False)  # Django's manual transactions: never committed
            try:
                assert len(fetch(small.replace("'y'", "'manual'"))) == 3
                transaction.rollback()
            finally:
                transaction.set_autocommit(True)
            with psycopg.connect(scenario_db) as admin:
                manual = "SELECT count(*) FROM orders WHERE status = 'manual'"
                assert admin.execute(manual).fetchall() == [(0,)]
            assert len(fetch(small)) == 3
        with psycopg.connect(scenario_db) as admin:
            statuses = admin.execute(
                "SELECT status, count(*) FROM orders WHERE customer_id = 42 GROUP BY 1 ORDER BY 1"
            ).fetchall()
        assert statuses == [("bulk", 2000), ("y", 3)]
        guard.close()
        ledger = [e for e in sink.events if e["event.action"] == "ledger"]
        assert sum(e["accessguard.rows"] for e in ledger) == 6  # the rolled-back rows were read
        assert sink.reasons()[:2] == ["throttle.rows", "throttle.rows"]


# ---------------------------------------------------------------------- red team


def _json_as_text(rows: Rows) -> Rows:
    """psycopg's rows with json values as text, as Django's connection returns them."""
    return [tuple(json.dumps(v) if isinstance(v, dict | list) else v for v in row) for row in rows]


def _cases() -> list[ParameterSet]:
    return redteam_params("client")


@pytest.fixture(scope="module")
def redteam_db(pg_server: PgServerLike, scenario_template: str) -> Iterator[str]:
    with database_copy(pg_server, scenario_template, prefix="ag_django") as dsn:
        yield dsn
        connection.close()


@db
class TestDjangoRedteam:
    @pytest.mark.parametrize("case", _cases())
    def test_case(self, case: RedteamCase, unlimited: Guard, redteam_db: str) -> None:
        """Through the middleware, attacks are refused; allowed cases match the psycopg adapter."""
        if connection.settings_dict["NAME"] != conninfo_to_dict(redteam_db)["dbname"]:
            use_database(redteam_db, options=TIMEOUT)

        def view() -> Rows | AccessGuardError:
            try:
                with transaction.atomic():
                    rows = fetch(case.sql, case.params)
                    transaction.set_rollback(True)  # the module shares one database
                    return rows
            except AccessGuardError as exc:
                return exc

        with override_settings(ACCESSGUARD={"GUARD": unlimited}):
            rows = through_middleware(request_as("alice", "T-100"), view)
        if not (case.allowed or case.id in ALLOWED_EQUIVALENT):
            assert isinstance(rows, AccessGuardError), "an attack was not refused"
            return
        assert isinstance(rows, list), f"refused: {rows}"
        expected = reference_result(unlimited, redteam_db, case)
        assert not isinstance(expected, AccessGuardError)
        assert sorted(rows, key=repr) == sorted(_json_as_text(expected), key=repr)
