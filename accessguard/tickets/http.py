"""Tickets from an HTTP ticket system, cached for a bounded and stated time.

``HttpTicketStore(base_url)`` asks ``GET {base_url}/tickets/{id}`` (the id
URL-quoted) and expects a JSON object with the ``Ticket`` fields (``id``,
``assignee``, ``kind``, ``status``, ``customer_id``, ``product_id``); a 404
means there is no such ticket. It implements ``accessguard.tickets.stores.TicketStore``
with the standard library only (``urllib``): no vendor SDK.

Staleness bound: an answer is served from the cache for at most ``ttl``
seconds after it was fetched (default 5). Past that it is fetched again, and
if the fetch fails (the server is down, slow past ``timeout``, answers
anything but 200 or 404, a redirect, a body that is not one ticket, or
another ticket than the one asked for) ``get`` raises
``TicketStoreUnavailable``: it never serves an answer older than ``ttl``.
The guard refuses the statement then and audits it
(``ticket.store_unavailable``).

Two ways to see a change sooner than ``ttl``:

- polling: ``poll()`` fetches every cached ticket again (``start_polling``
  runs it every ``interval`` seconds on a daemon thread);
- webhook invalidation: the ticket system POSTs ``{"ticket_id": "T-100"}``
  (or ``{"tickets": [...]}``) to the WSGI app ``webhook_app(store, secret)``
  mounts, signed ``X-Accessguard-Signature: sha256=<hex HMAC-SHA256 of the
  body with the shared secret>``. A valid call drops those tickets from the
  cache, so the next statement fetches them; a missing or wrong signature is
  refused (401) and changes nothing. Replaying a signed call only costs a
  fetch: invalidation never adds or changes a ticket.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from accessguard.tickets.stores import Ticket, TicketStoreUnavailable

__all__ = [
    "SIGNATURE_HEADER",
    "HttpTicketStore",
    "TicketStoreUnavailable",
    "sign",
    "webhook_app",
]

SIGNATURE_HEADER = "X-Accessguard-Signature"
_MAX_BODY = 64 * 1024
_NOT_FOUND = 404


@dataclass(frozen=True, slots=True)
class _Cached:
    ticket: Ticket | None
    fetched: float


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    """A redirect is an error: the ticket system answers at the URL configured, or not at all."""

    def redirect_request(self, *_args: Any, **_kwargs: Any) -> None:
        return None


class HttpTicketStore:
    """``GET {base_url}/tickets/{id}``, each answer cached for at most ``ttl`` seconds."""

    def __init__(  # noqa: PLR0913 - keyword-only settings
        self,
        base_url: str,
        *,
        ttl: float = 5.0,
        timeout: float = 2.0,
        headers: Mapping[str, str] | None = None,
        clock: Callable[[], float] = time.monotonic,
        max_bytes: int = _MAX_BODY,
    ) -> None:
        scheme = urllib.parse.urlsplit(base_url).scheme
        if scheme not in ("http", "https"):
            raise ValueError("the ticket system's base URL must be http:// or https://")
        if ttl < 0 or timeout <= 0:
            raise ValueError("ttl must be 0 or more and timeout above 0 seconds")
        self.base_url = base_url.rstrip("/")
        #: the staleness bound, in seconds: no answer older than this is served
        self.ttl = ttl
        self.timeout = timeout
        self._headers = {"Accept": "application/json", **(headers or {})}
        self._clock = clock
        self._max_bytes = max_bytes
        self._opener = urllib.request.build_opener(_NoRedirect())
        self._lock = threading.Lock()
        self._cache: dict[str, _Cached] = {}
        #: bumped by ``invalidate``: a fetch that started before it is not cached
        self._generation: dict[str, int] = {}
        self._stop = threading.Event()
        self._poller: threading.Thread | None = None

    # ------------------------------------------------------------------ TicketStore

    def get(self, ticket_id: str) -> Ticket | None:
        """The ticket as the ticket system said at most ``ttl`` seconds ago (None: no such ticket).

        Raises ``TicketStoreUnavailable`` when it must ask and cannot get an answer.
        """
        now = self._clock()
        with self._lock:
            hit = self._cache.get(ticket_id)
            if hit is not None and now - hit.fetched < self.ttl:
                return hit.ticket
            generation = self._generation.get(ticket_id, 0)
        ticket = self._fetch(ticket_id)
        self._store(ticket_id, ticket, now, generation)
        return ticket

    def _store(self, ticket_id: str, ticket: Ticket | None, now: float, generation: int) -> None:
        with self._lock:
            if self.ttl > 0 and self._generation.get(ticket_id, 0) == generation:
                self._cache[ticket_id] = _Cached(ticket, now)

    def _fetch(self, ticket_id: str) -> Ticket | None:
        url = f"{self.base_url}/tickets/{urllib.parse.quote(ticket_id, safe='')}"
        request = urllib.request.Request(url, headers=self._headers)  # noqa: S310 - http(s) only
        try:
            with self._opener.open(request, timeout=self.timeout) as response:
                body = response.read(self._max_bytes + 1)
        except urllib.error.HTTPError as exc:
            exc.close()
            if exc.code == _NOT_FOUND:
                return None
            raise TicketStoreUnavailable(
                f"the ticket system answered HTTP {exc.code} for ticket {ticket_id}"
            ) from None
        except (OSError, ValueError) as exc:  # URLError, timeouts, refused connections
            raise TicketStoreUnavailable(
                f"the ticket system cannot be reached for ticket {ticket_id} ({type(exc).__name__})"
            ) from None
        return self._parse(ticket_id, body)

    def _parse(self, ticket_id: str, body: bytes) -> Ticket:
        if len(body) > self._max_bytes:
            raise TicketStoreUnavailable(f"the ticket system's answer for {ticket_id} is too long")
        try:
            data = json.loads(body)
            ticket = Ticket.from_mapping(data) if isinstance(data, dict) else None
        except ValueError:
            ticket = None
        if ticket is None or ticket.id != ticket_id:
            raise TicketStoreUnavailable(
                f"the ticket system's answer for {ticket_id} is not that ticket"
            )
        return ticket

    # ------------------------------------------------------------------ freshness

    def invalidate(self, ticket_id: str) -> None:
        """Forget ``ticket_id``: the next ``get`` asks the ticket system."""
        with self._lock:
            self._cache.pop(ticket_id, None)
            self._generation[ticket_id] = self._generation.get(ticket_id, 0) + 1

    def invalidate_all(self) -> None:
        """Forget every cached ticket."""
        with self._lock:
            for ticket_id in list(self._cache):
                self._cache.pop(ticket_id)
                self._generation[ticket_id] = self._generation.get(ticket_id, 0) + 1

    def poll(self) -> tuple[int, int]:
        """Fetch every cached ticket again: (refreshed, failed).

        A failed fetch leaves its entry as it was: it expires ``ttl`` seconds
        after its last successful fetch, as any entry does.
        """
        return self._refresh(None)

    def _refresh(self, stop: threading.Event | None) -> tuple[int, int]:
        """``poll``; the polling thread passes its ``stop``, checked between fetches."""
        with self._lock:
            held = {k: self._generation.get(k, 0) for k in self._cache}
        refreshed = failed = 0
        for ticket_id, generation in held.items():
            if stop is not None and stop.is_set():  # closing: stop now, not after every fetch
                break
            now = self._clock()
            try:
                ticket = self._fetch(ticket_id)
            except TicketStoreUnavailable:
                failed += 1
                continue
            self._store(ticket_id, ticket, now, generation)
            refreshed += 1
        return refreshed, failed

    def start_polling(self, interval: float) -> None:
        """Run ``poll`` every ``interval`` seconds on a daemon thread until ``close``."""
        if self._poller is not None:
            return
        self._stop.clear()

        def run() -> None:
            while not self._stop.wait(interval):
                self._refresh(self._stop)

        self._poller = threading.Thread(target=run, name="accessguard-ticket-poll", daemon=True)
        self._poller.start()

    def close(self) -> None:
        """Stop polling (the cache stays; ``get`` keeps working)."""
        self._stop.set()
        if self._poller is not None:
            self._poller.join(timeout=5)
            self._poller = None


# ---------------------------------------------------------------------- webhook

StartResponse = Callable[[str, list[tuple[str, str]]], Any]


def sign(secret: bytes, body: bytes) -> str:
    """The signature header value the ticket system sends with ``body``."""
    return "sha256=" + hmac.new(secret, body, hashlib.sha256).hexdigest()


def webhook_app(
    store: HttpTicketStore, secret: bytes
) -> Callable[[Mapping[str, Any], StartResponse], Iterable[bytes]]:
    """A WSGI app that invalidates the tickets a correctly signed POST names.

    Answers 204 when done, 401 for a missing or wrong signature, 400 for a body
    that names no ticket, 405 for another method, 413 for a body over 64 KiB.
    """
    if not secret:
        raise ValueError("the webhook needs a non-empty shared secret")
    environ_header = "HTTP_" + SIGNATURE_HEADER.upper().replace("-", "_")

    def app(environ: Mapping[str, Any], start_response: StartResponse) -> Iterable[bytes]:
        def answer(status: str) -> Iterable[bytes]:
            start_response(status, [("Content-Type", "text/plain"), ("Content-Length", "0")])
            return [b""]

        if environ.get("REQUEST_METHOD") != "POST":
            return answer("405 Method Not Allowed")
        try:
            length = int(environ.get("CONTENT_LENGTH") or 0)
        except ValueError:
            return answer("400 Bad Request")
        if length < 0 or length > _MAX_BODY:
            return answer("413 Content Too Large")
        body = environ["wsgi.input"].read(length) if length else b""
        given = str(environ.get(environ_header, ""))
        if not hmac.compare_digest(given.encode(), sign(secret, body).encode()):
            return answer("401 Unauthorized")
        ids = _ticket_ids(body)
        if not ids:
            return answer("400 Bad Request")
        for ticket_id in ids:
            store.invalidate(ticket_id)
        return answer("204 No Content")

    return app


def _ticket_ids(body: bytes) -> list[str]:
    """The ticket ids a webhook body names: ``{"ticket_id": ...}`` or ``{"tickets": [...]}``."""
    try:
        data = json.loads(body)
    except ValueError:
        return []
    if not isinstance(data, dict):
        return []
    ids = data.get("tickets", [data.get("ticket_id")])
    if not isinstance(ids, list) or not all(isinstance(i, str) and i for i in ids):
        return []
    return list(ids)
