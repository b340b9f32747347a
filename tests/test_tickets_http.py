"""HttpTicketStore against a ticket system served over a real socket on 127.0.0.1."""

from __future__ import annotations

import json
import shutil
import threading
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import unquote
from wsgiref.simple_server import WSGIRequestHandler, make_server

import pytest

from accessguard import scenario
from accessguard.errors import AccessDenied
from accessguard.guard import Guard
from accessguard.testing import MemoryAuditSink
from accessguard.tickets.http import (
    SIGNATURE_HEADER,
    HttpTicketStore,
    TicketStoreUnavailable,
    sign,
    webhook_app,
)
from accessguard.tickets.stores import Ticket, TicketStore

SECRET = b"shared-webhook-secret"
NAME_42 = "SELECT name FROM customers WHERE id = 42"


@dataclass
class Desk:
    """The ticket system's state, which the test changes while the server runs."""

    tickets: dict[str, dict[str, Any]] = field(default_factory=dict)
    paths: list[str] = field(default_factory=list)
    status: int | None = None  # answer every request with this status instead
    swap_id: bool = False  # answer with another ticket than the one asked for
    #: when set, a request waits for ``release`` after telling ``arrived``
    hold: bool = False
    arrived: threading.Event = field(default_factory=threading.Event)
    release: threading.Event = field(default_factory=threading.Event)

    def close(self, ticket_id: str) -> None:
        self.tickets[ticket_id] = {**self.tickets[ticket_id], "status": "closed"}


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def serve(desk: Desk) -> ThreadingHTTPServer:
    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            desk.paths.append(self.path)
            if desk.status is not None:
                self.send_response(desk.status)
                if desk.status in (301, 302):
                    self.send_header("Location", "http://127.0.0.1:9/elsewhere")
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            ticket = desk.tickets.get(unquote(self.path.removeprefix("/api/tickets/")))
            if desk.hold:
                desk.arrived.set()
                desk.release.wait(10)
            if ticket is None:
                self.send_error(404)
                return
            if desk.swap_id:
                ticket = {**ticket, "id": "T-999"}
            body = json.dumps(ticket).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *_args: Any) -> None:
            return

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True).start()
    return server


@pytest.fixture
def desk() -> Desk:
    alice = scenario.tickets()[0]
    assert alice.id == "T-100"
    fields = ("id", "assignee", "kind", "status", "customer_id", "product_id")
    return Desk(tickets={alice.id: {f: getattr(alice, f) for f in fields}})


@pytest.fixture
def server(desk: Desk) -> Iterator[ThreadingHTTPServer]:
    server = serve(desk)
    yield server
    server.shutdown()
    server.server_close()


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def store(server: ThreadingHTTPServer, clock: Clock) -> HttpTicketStore:
    host, port = server.server_address[:2]
    return HttpTicketStore(f"http://{host!s}:{port}/api", ttl=30, timeout=2, clock=clock)


@pytest.fixture
def guard(tmp_path: Path, store: HttpTicketStore, sink: MemoryAuditSink) -> Guard:
    policies = tmp_path / "policies"
    shutil.copytree(scenario.policies_dir(), policies)
    (policies / "limits.toml").unlink()
    return Guard.from_directory(policies, tickets=store, audit=sink)


def status(store: HttpTicketStore) -> str | None:
    ticket = store.get("T-100")
    return ticket.status if ticket is not None else None


class TestFetch:
    def test_is_a_ticket_store(self, store: HttpTicketStore) -> None:
        """The HTTP store implements the documented TicketStore protocol."""
        assert isinstance(store, TicketStore)

    def test_reads_a_ticket_and_a_missing_one(self, store: HttpTicketStore) -> None:
        """GET /tickets/{id} gives the ticket; a 404 means there is no such ticket."""
        assert store.get("T-100") == Ticket(
            id="T-100", assignee="alice", kind="order_issue", status="open", customer_id=42
        )
        assert store.get("T-404") is None

    def test_the_id_is_quoted_into_one_path_segment(
        self, store: HttpTicketStore, desk: Desk
    ) -> None:
        """An id with slashes or dots stays one path segment: no path traversal."""
        assert store.get("../admin?x=1") is None
        assert desk.paths == ["/api/tickets/..%2Fadmin%3Fx%3D1"]

    @pytest.mark.parametrize("code", [500, 302, 403])
    def test_an_error_or_redirect_is_unavailable(
        self, store: HttpTicketStore, desk: Desk, code: int
    ) -> None:
        """Any answer but 200 or 404 (a redirect too) raises, naming the ticket only."""
        desk.status = code
        with pytest.raises(TicketStoreUnavailable, match="T-100"):
            store.get("T-100")

    def test_another_ticket_in_the_answer_is_unavailable(
        self, store: HttpTicketStore, desk: Desk
    ) -> None:
        """An answer about another ticket than the one asked for is not trusted."""
        desk.swap_id = True
        with pytest.raises(TicketStoreUnavailable, match="not that ticket"):
            store.get("T-100")


class TestStaleness:
    def test_cached_for_ttl_then_fetched_again(
        self, store: HttpTicketStore, desk: Desk, clock: Clock
    ) -> None:
        """A closed ticket may be served open for under ttl seconds, never at ttl or later."""
        assert status(store) == "open"
        desk.close("T-100")
        clock.now += 29.9
        assert status(store) == "open"  # within the stated bound
        assert len(desk.paths) == 1
        clock.now += 0.1
        assert status(store) == "closed"
        assert len(desk.paths) == 2

    def test_invalidate_shows_the_closed_ticket_at_once(
        self, store: HttpTicketStore, desk: Desk
    ) -> None:
        """After invalidate(), the next get asks the ticket system: the closed ticket is seen."""
        assert status(store) == "open"
        desk.close("T-100")
        store.invalidate("T-100")
        assert status(store) == "closed"

    def test_an_invalidation_during_a_fetch_is_not_lost(
        self, store: HttpTicketStore, desk: Desk
    ) -> None:
        """A fetch that began before invalidate() is not cached: the next get asks again."""
        desk.hold = True
        fetching = threading.Thread(target=store.get, args=("T-100",))
        fetching.start()
        assert desk.arrived.wait(10)  # the open ticket is on its way back
        store.invalidate("T-100")
        desk.hold = False
        desk.release.set()
        fetching.join(10)
        desk.close("T-100")
        assert status(store) == "closed"
        assert len(desk.paths) == 2

    def test_poll_refreshes_cached_tickets(
        self, store: HttpTicketStore, desk: Desk, clock: Clock
    ) -> None:
        """poll() fetches every cached ticket again, so a change shows before ttl."""
        assert status(store) == "open"
        desk.close("T-100")
        clock.now += 1
        assert store.poll() == (1, 0)
        assert status(store) == "closed"

    def test_server_down_serves_within_ttl_and_refuses_past_it(
        self, store: HttpTicketStore, server: ThreadingHTTPServer, clock: Clock
    ) -> None:
        """With the server down, a cached answer lasts until ttl; then get raises (fail closed)."""
        assert status(store) == "open"
        server.shutdown()
        server.server_close()
        clock.now += 10
        assert store.poll() == (0, 1)  # a failed poll keeps the entry, it does not extend it
        assert status(store) == "open"
        clock.now += 20
        with pytest.raises(TicketStoreUnavailable, match="cannot be reached"):
            store.get("T-100")


def post(url: str, body: bytes, signature: str | None) -> int:
    headers = {"Content-Type": "application/json"}
    if signature is not None:
        headers[SIGNATURE_HEADER] = signature
    request = urllib.request.Request(url, data=body, headers=headers, method="POST")  # noqa: S310
    try:
        with urllib.request.urlopen(request, timeout=5) as response:  # noqa: S310 - local http
            return int(response.status)
    except urllib.error.HTTPError as exc:
        exc.close()
        return exc.code


class _Quiet(WSGIRequestHandler):
    def log_message(self, *_args: Any) -> None:
        return


@pytest.fixture
def hook(store: HttpTicketStore) -> Iterator[Callable[[bytes, str | None], int]]:
    """POST to the webhook app, mounted on a real WSGI server on 127.0.0.1."""
    server = make_server("127.0.0.1", 0, webhook_app(store, SECRET), handler_class=_Quiet)
    threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True).start()
    url = f"http://127.0.0.1:{server.server_port}/hooks/tickets"
    yield lambda body, signature: post(url, body, signature)
    server.shutdown()
    server.server_close()


class TestWebhook:
    def test_a_signed_call_invalidates(
        self, store: HttpTicketStore, desk: Desk, hook: Callable[[bytes, str | None], int]
    ) -> None:
        """A correctly signed POST drops the ticket: its closing is seen on the next get."""
        assert status(store) == "open"
        desk.close("T-100")
        body = json.dumps({"ticket_id": "T-100"}).encode()
        assert hook(body, sign(SECRET, body)) == 204
        assert status(store) == "closed"

    @pytest.mark.parametrize(
        "signature",
        [None, "", "sha256=" + "0" * 64, sign(b"another-secret", b'{"ticket_id": "T-100"}')],
        ids=["missing", "empty", "zeros", "other-secret"],
    )
    def test_a_bad_signature_is_refused(
        self,
        store: HttpTicketStore,
        desk: Desk,
        hook: Callable[[bytes, str | None], int],
        signature: str | None,
    ) -> None:
        """A missing or wrong signature answers 401 and invalidates nothing."""
        assert status(store) == "open"
        desk.close("T-100")
        assert hook(b'{"ticket_id": "T-100"}', signature) == 401
        assert status(store) == "open"
        assert len(desk.paths) == 1

    def test_a_signed_body_naming_no_ticket_is_a_bad_request(
        self, hook: Callable[[bytes, str | None], int]
    ) -> None:
        """A signed body without ticket ids answers 400."""
        body = b'{"tickets": [1]}'
        assert hook(body, sign(SECRET, body)) == 400

    def test_an_empty_secret_is_refused(self, store: HttpTicketStore) -> None:
        """The webhook cannot be mounted without a shared secret."""
        with pytest.raises(ValueError, match="secret"):
            webhook_app(store, b"")


class TestThroughTheGuard:
    def test_a_closed_ticket_refuses_after_the_webhook(
        self, guard: Guard, desk: Desk, hook: Callable[[bytes, str | None], int]
    ) -> None:
        """guard.check allows on the open ticket; after the webhook, ticket.not_open."""
        assert guard.check(NAME_42, None, user="alice", ticket="T-100").allowed
        desk.close("T-100")
        body = json.dumps({"tickets": ["T-100"]}).encode()
        assert hook(body, sign(SECRET, body)) == 204
        decision = guard.check(NAME_42, None, user="alice", ticket="T-100")
        assert decision.reason == "ticket.not_open"

    def test_server_down_past_ttl_is_refused_and_audited(
        self, guard: Guard, server: ThreadingHTTPServer, clock: Clock, sink: MemoryAuditSink
    ) -> None:
        """The ticket system down, the cache past ttl: refused, audited ticket.store_unavailable."""
        assert guard.check(NAME_42, None, user="alice", ticket="T-100").allowed
        server.shutdown()
        server.server_close()
        clock.now += 30
        decision = guard.check(NAME_42, None, user="alice", ticket="T-100")
        assert decision.outcome == "denied"
        assert decision.reason == "ticket.store_unavailable"
        assert sink.reasons() == ["ticket.store_unavailable"]
        assert sink.events[-1]["accessguard.ticket.id"] == "T-100"

    @pytest.mark.db
    def test_server_down_refuses_a_connection_statement(
        self,
        guard: Guard,
        server: ThreadingHTTPServer,
        clock: Clock,
        sink: MemoryAuditSink,
        scenario_dsn: str,
    ) -> None:
        """On a real connection too: nothing is sent, the refusal is ticket.store_unavailable."""
        with guard.connect(scenario_dsn, user="alice", ticket="T-100") as conn:
            assert conn.execute(NAME_42).fetchall() == [("Name-0042",)]
            server.shutdown()
            server.server_close()
            clock.now += 30
            with pytest.raises(AccessDenied) as refused:
                conn.execute(NAME_42)
        assert refused.value.reason == "ticket.store_unavailable"
        assert sink.reasons() == ["ticket.store_unavailable"]

    def test_close_stops_the_poller(self, guard: Guard, store: HttpTicketStore) -> None:
        """Guard.close() stops the store's polling thread: it is gone afterwards."""
        store.start_polling(0.01)
        poller = [t for t in threading.enumerate() if t.name == "accessguard-ticket-poll"]
        assert len(poller) == 1
        assert poller[0].is_alive()
        guard.close()
        assert not poller[0].is_alive()
        assert [t for t in threading.enumerate() if t.name == "accessguard-ticket-poll"] == []


class TestExported:
    def test_the_package_exports_the_store(self) -> None:
        """accessguard.HttpTicketStore is the tickets_http class, and it is a TicketStore."""
        import accessguard

        assert accessguard.HttpTicketStore is HttpTicketStore
        assert issubclass(TicketStoreUnavailable, Exception)
        assert not issubclass(TicketStoreUnavailable, accessguard.AccessGuardError)
