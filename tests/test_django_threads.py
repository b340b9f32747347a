"""Django: threads, streaming bodies, async views and concurrent requests stay guarded.

Every statement on a guarded alias is decided for the employee bound in its
own context; with nobody bound (a thread the view started, work after the
view returned) it is refused (``session.unbound``) and audited.
"""

from __future__ import annotations

import asyncio
import contextvars
import json
import threading
from typing import TYPE_CHECKING, Any

import pytest
from asgiref.sync import sync_to_async
from django.apps import AppConfig
from django.db import connection, connections
from django.db.backends.signals import connection_created
from django.http import HttpRequest, HttpResponse, JsonResponse, StreamingHttpResponse
from django.test import AsyncClient, Client, override_settings
from django.urls import path
from test_django import QUERY, fetch, use_database

from accessguard import AccessGuardError, Guard, scenario
from accessguard.adapters.django import AccessGuardConfig, get_guard, unguarded
from accessguard.testing import MemoryAuditSink

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Callable, Iterator

db = pytest.mark.db
ALL_EMAILS = "SELECT email FROM customers"
MIDDLEWARE = ["accessguard.adapters.django.AccessGuardMiddleware"]

#: what the last background thread saw: "refused:<reason>" or its rows
seen: list[object] = []


def header_resolver(request: HttpRequest) -> tuple[str, str | None] | None:
    """The employee and ticket from X-User / X-Ticket (an SSO proxy's headers)."""
    user = request.headers.get("X-User")
    return (user, request.headers.get("X-Ticket")) if user else None


def attempt(sql: str, params: Any = None) -> object:
    """Rows of ``sql``, or ``refused:<reason>`` when the guard refuses it."""
    try:
        return fetch(sql, params)
    except AccessGuardError as exc:
        return f"refused:{exc.reason}"


def in_thread(target: Callable[[], object], *, carry: bool = False) -> threading.Thread:
    """Start ``target`` in a new thread (with this context's binding when ``carry``)."""

    def run() -> None:
        try:
            seen.append(target())
        finally:
            connections.close_all()  # this thread's own connections

    runner = contextvars.copy_context().run if carry else (lambda f: f())
    thread = threading.Thread(target=runner, args=(run,))
    thread.start()
    return thread


def view_customer(_request: HttpRequest) -> JsonResponse:
    return JsonResponse({"rows": attempt(QUERY, [42])})


def view_thread(request: HttpRequest) -> HttpResponse:
    """A thread started by the view: unbound unless the view carries its context."""
    in_thread(lambda: attempt(ALL_EMAILS), carry="carry" in request.GET).join()
    return HttpResponse("ok")


def view_thread_after(_request: HttpRequest) -> HttpResponse:
    """A thread that runs after the view has returned (joined by the test)."""
    gate = threading.Event()
    background.append(in_thread(lambda: gate.wait() and attempt(QUERY, [42])))
    gates.append(gate)
    return HttpResponse("ok")


background: list[threading.Thread] = []
gates: list[threading.Event] = []


def view_export(request: HttpRequest) -> StreamingHttpResponse:
    """A CSV export whose rows are read while the body is sent, after the view returned."""
    customer = int(request.GET.get("customer", "42"))

    def rows() -> Iterator[str]:
        yield "name\n"
        for (name,) in fetch(QUERY, [customer]):
            yield f"{name}\n"
        yield f"{len(fetch(ALL_EMAILS))}\n"  # refused: no scope

    return StreamingHttpResponse(rows(), content_type="text/csv")


async def view_async(_request: HttpRequest) -> JsonResponse:
    rows = await sync_to_async(attempt)(QUERY, [42])
    return JsonResponse({"rows": rows})


async def view_async_export(_request: HttpRequest) -> StreamingHttpResponse:
    async def rows() -> AsyncIterator[str]:
        yield "name\n"
        for (name,) in await sync_to_async(fetch)(QUERY, [42]):
            yield f"{name}\n"
        yield f"{await sync_to_async(attempt)(ALL_EMAILS)}\n"

    return StreamingHttpResponse(rows(), content_type="text/csv")


urlpatterns = [
    path("customer/", view_customer),
    path("thread/", view_thread),
    path("thread-after/", view_thread_after),
    path("export/", view_export),
    path("async/", view_async),
    path("async-export/", view_async_export),
]


@pytest.fixture
def sink() -> MemoryAuditSink:
    return MemoryAuditSink()


@pytest.fixture
def guard(sink: MemoryAuditSink, scenario_dsn: str) -> Iterator[Guard]:
    """The scenario's guard behind the middleware, Django on a fresh scenario database."""
    use_database(scenario_dsn)
    seen.clear()
    with (
        Guard.from_directory(
            scenario.policies_dir(), tickets=scenario.tickets(), audit=sink
        ) as guard,
        override_settings(
            ACCESSGUARD={"GUARD": guard, "RESOLVER": header_resolver},
            MIDDLEWARE=MIDDLEWARE,
            ROOT_URLCONF=__name__,
        ),
    ):
        yield guard
    connection.close()


def as_user(user: str, ticket: str | None = None) -> dict[str, str]:
    headers = {"X-User": user}
    if ticket is not None:
        headers["X-Ticket"] = ticket
    return headers


def ledger_rows(guard: Guard, sink: MemoryAuditSink) -> int:
    guard.close()
    return sum(e["accessguard.rows"] for e in sink.events if e["event.action"] == "ledger")


@db
@pytest.mark.usefixtures("guard")
class TestThreads:
    def test_thread_started_by_a_view_is_refused(self, guard: Guard, sink: MemoryAuditSink) -> None:
        """A view's thread reads nothing: nobody is bound there; the refusal is audited."""
        response = Client().get("/thread/", headers=as_user("alice", "T-100"))
        assert response.status_code == 200
        assert seen == ["refused:session.unbound"]
        assert sink.reasons() == ["session.unbound"]
        assert sink.events[0]["user.name"] is None
        assert ledger_rows(guard, sink) == 0

    def test_thread_after_the_view_returned_is_refused(self, guard: Guard) -> None:
        """A thread still running after the response is refused too."""
        Client().get("/thread-after/", headers=as_user("alice", "T-100"))
        gates[-1].set()
        background.pop().join()
        assert seen == ["refused:session.unbound"]
        assert guard is get_guard()

    def test_carried_context_acts_for_the_employee(self) -> None:
        """A thread started with the view's context acts for its employee, rules included."""
        Client().get("/thread/?carry=1", headers=as_user("alice", "T-100"))
        assert seen == ["refused:row_scope.unbound"]  # alice's rules: no unscoped read

    def test_plain_thread_is_refused(self, sink: MemoryAuditSink) -> None:
        """Outside any request, a new thread's connection is guarded from its first statement."""
        in_thread(lambda: attempt(QUERY, [42])).join()
        assert seen == ["refused:session.unbound"]
        assert sink.reasons() == ["session.unbound"]


@db
@pytest.mark.usefixtures("guard")
class TestStreaming:
    def test_body_is_produced_inside_the_binding(self, guard: Guard, sink: MemoryAuditSink) -> None:
        """A streaming body reads as the request's employee while it is consumed."""
        response = Client().get("/export/", headers=as_user("alice", "T-100"))
        with pytest.raises(AccessGuardError) as info:
            b"".join(response.streaming_content)  # type: ignore[attr-defined]
        assert info.value.reason == "row_scope.unbound"
        assert ledger_rows(guard, sink) == 1

    def test_body_for_another_customer_is_refused(self) -> None:
        """The body's reads are decided by the employee's ticket, not let through."""
        response = Client().get("/export/?customer=7", headers=as_user("alice", "T-100"))
        with pytest.raises(AccessGuardError) as info:
            b"".join(response.streaming_content)  # type: ignore[attr-defined]
        assert info.value.reason == "row_scope.other_subject"

    def test_anonymous_body_is_refused(self) -> None:
        """With nobody bound for the request, the body's first read is refused."""
        response = Client().get("/export/")
        with pytest.raises(AccessGuardError) as info:
            b"".join(response.streaming_content)  # type: ignore[attr-defined]
        assert info.value.reason == "session.unbound"


@db
@pytest.mark.anyio
@pytest.mark.usefixtures("guard")
class TestAsync:
    async def test_async_view(self) -> None:
        """An async view's sync_to_async reads act for the request's employee."""
        client = AsyncClient()
        try:
            alice = await client.get("/async/", headers=as_user("alice", "T-100"))
            bob = await client.get("/async/", headers=as_user("bob"))
            nobody = await client.get("/async/")
        finally:
            await sync_to_async(connections.close_all)()
        assert json.loads(alice.content) == {"rows": [["Name-0042"]]}
        assert json.loads(bob.content) == {"rows": "refused:ticket.required"}
        assert json.loads(nobody.content) == {"rows": "refused:session.unbound"}

    async def test_async_streaming_body(self) -> None:
        """An async streaming body is produced inside the request's binding."""
        client = AsyncClient()
        try:
            response = await client.get("/async-export/", headers=as_user("alice", "T-100"))
            parts = [part async for part in response.streaming_content]  # type: ignore[attr-defined]
        finally:
            await sync_to_async(connections.close_all)()
        assert b"".join(parts) == b"name\nName-0042\nrefused:row_scope.unbound\n"

    async def test_concurrent_async_requests(self) -> None:
        """Async and sync views served at once under ASGI each act for their own employee."""
        client = AsyncClient()
        who = [("alice", "T-100"), ("bob", None), ("erin", "T-300"), ("mallory", "T-400")] * 2
        try:
            responses = await asyncio.gather(
                *(
                    client.get(view, headers=as_user(user, ticket))
                    for user, ticket in who
                    for view in ("/async/", "/customer/")
                )
            )
        finally:
            await sync_to_async(connections.close_all)()
        expected = {
            "alice": [["Name-0042"]],
            "bob": "refused:ticket.required",
            "erin": [["Name-0042"]],
            "mallory": "refused:row_scope.other_subject",
        }
        got = [json.loads(r.content)["rows"] for r in responses]
        assert got == [expected[user] for user, _t in who for _view in (1, 2)]


@db
@pytest.mark.usefixtures("guard")
class TestConcurrentRequests:
    def test_each_request_acts_for_its_own_employee(self) -> None:
        """Requests served at once in several threads never see each other's binding."""
        who = [("alice", "T-100"), ("bob", None), ("erin", "T-300"), ("mallory", "T-400")] * 3
        start = threading.Barrier(len(who))
        results: dict[int, object] = {}

        def serve(i: int, user: str, ticket: str | None) -> None:
            try:
                start.wait()
                response = Client().get("/customer/", headers=as_user(user, ticket))
                results[i] = json.loads(response.content)["rows"]
            finally:
                connections.close_all()

        threads = [threading.Thread(target=serve, args=(i, u, t)) for i, (u, t) in enumerate(who)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        expected = {
            "alice": [["Name-0042"]],
            "bob": "refused:ticket.required",
            "erin": [["Name-0042"]],
            "mallory": "refused:row_scope.other_subject",
        }
        assert [results[i] for i in range(len(who))] == [expected[u] for u, _t in who]


@db
@pytest.mark.usefixtures("guard")
class TestUnguarded:
    def test_opt_out_is_audited_and_scoped(self, sink: MemoryAuditSink) -> None:
        """unguarded(by=, reason=) lets statements through, writes who/why, ends with the block."""
        with unguarded(by="deploy-bot", reason="migrate 0042"):
            assert len(fetch(ALL_EMAILS)) > 100
            in_thread(lambda: attempt(ALL_EMAILS)).join()  # a thread is guarded again
        assert seen == ["refused:session.unbound"]
        with pytest.raises(AccessGuardError):
            fetch(ALL_EMAILS)
        opted = [e for e in sink.events if e["event.action"] == "guard.unguarded"]
        assert [e["accessguard.unguarded.by"] for e in opted] == ["deploy-bot", "deploy-bot"]
        assert opted[0]["accessguard.unguarded.reason"] == "migrate 0042"
        assert opted[1]["accessguard.statements"] == 1

    def test_opt_out_needs_who_and_why_and_no_employee(self, guard: Guard) -> None:
        """Without by/reason, or with an employee bound, unguarded() is refused."""
        with pytest.raises(AccessGuardError), unguarded(by="", reason="x"):
            pass
        with (
            guard.acting_as(user="alice", ticket="T-100"),
            pytest.raises(AccessGuardError),
            unguarded(by="alice", reason="export"),
        ):
            pass

    def test_opt_out_fails_closed_when_audit_fails(self, sink: MemoryAuditSink) -> None:
        """If the opt-out cannot be audited, nothing is let through."""
        sink.fail = True
        with pytest.raises(AccessGuardError), unguarded(by="ops", reason="backfill"):
            fetch(ALL_EMAILS)


@db
@pytest.mark.usefixtures("guard")
class TestInstall:
    def test_connection_opened_before_configuration(self, guard: Guard) -> None:
        """A connection opened before the guard was configured is guarded once it is."""
        with override_settings(ACCESSGUARD=None):
            connection.close()
            del connections["default"]  # this thread's next wrapper is a fresh one
            assert fetch("SELECT 1") == [(1,)]  # not configured: Django as usual
            with override_settings(ACCESSGUARD={"GUARD": guard}):
                assert attempt(QUERY, [42]) == "refused:session.unbound"

    def test_app_config_is_an_installed_apps_entry(self) -> None:
        """ "accessguard.adapters.django.AccessGuardConfig" is a valid INSTALLED_APPS entry."""
        config = AppConfig.create("accessguard.adapters.django.AccessGuardConfig")
        assert isinstance(config, AccessGuardConfig)
        assert config.label == "accessguard"

    def test_receivers_of_apps_listed_before_run_first(self) -> None:
        """After ready(), connection set-up by earlier apps' receivers (contrib.postgres) runs."""
        found: list[object] = []

        def setup(*, connection: Any, **_kwargs: Any) -> None:
            with connection.cursor() as cur:  # like contrib.postgres reading pg_type
                cur.execute("SELECT count(*) FROM pg_type WHERE typname = %s", ["hstore"])
                found.append(cur.fetchone())

        connection_created.connect(setup, dispatch_uid="test.setup")
        try:
            AppConfig.create("accessguard.adapters.django.AccessGuardConfig").ready()
            connection.close()
            del connections["default"]
            assert attempt(QUERY, [42]) == "refused:session.unbound"
        finally:
            connection_created.disconnect(dispatch_uid="test.setup")
        assert found == [(0,)]

    def test_execute_wrapper_blocks_cannot_remove_the_guard(self) -> None:
        """A user's connection.execute_wrapper() block never pops the guard off."""
        connection.close()
        with connection.execute_wrapper(lambda execute, *args: execute(*args)):
            fetch_refused = attempt(QUERY, [42])  # connects inside the block
        assert fetch_refused == "refused:session.unbound"
        assert attempt(QUERY, [42]) == "refused:session.unbound"
