"""Alerts POSTed as JSON to a webhook, from a background thread.

``Webhook(url)`` is a notifier: calling it with an alert event puts the JSON
body on a bounded queue and returns at once; a thread sends each with
``urllib`` (a timeout per request). A full queue drops the alert and counts it
(``dropped``); a failed request is counted (``failed``), never raised, and
never blocks a statement. The alert is in the audit trail either way.
"""

from __future__ import annotations

import json
import queue
import threading
import urllib.request

from accessguard.audit.sinks import Event

_STOP = b""


class Webhook:
    """Sends each alert as one HTTP POST with a JSON body."""

    def __init__(
        self,
        url: str,
        *,
        timeout: float = 5.0,
        queue_size: int = 1000,
        headers: dict[str, str] | None = None,
    ) -> None:
        if not url.startswith(("http://", "https://")):
            raise ValueError("a webhook URL must start with http:// or https://")
        self.url = url
        self._timeout = timeout
        self._headers = {"Content-Type": "application/json", **(headers or {})}
        self._queue: queue.Queue[bytes] = queue.Queue(maxsize=queue_size)
        self.sent = self.failed = self.dropped = 0
        self._thread = threading.Thread(target=self._run, name="accessguard-webhook", daemon=True)
        self._thread.start()

    def __call__(self, alert: Event) -> None:
        body = json.dumps(alert, default=str, separators=(",", ":")).encode()
        try:
            self._queue.put_nowait(body)
        except queue.Full:
            self.dropped += 1

    def _run(self) -> None:
        while True:
            body = self._queue.get()
            try:
                if not body:  # _STOP
                    return
                self._send(body)
            finally:
                self._queue.task_done()

    def _send(self, body: bytes) -> None:
        request = urllib.request.Request(  # noqa: S310 - the scheme is checked in __init__
            self.url, data=body, headers=self._headers, method="POST"
        )
        try:
            with urllib.request.urlopen(request, timeout=self._timeout) as response:  # noqa: S310
                ok = 200 <= response.status < 300
        except Exception:  # noqa: BLE001 - counted; the alert is in the trail anyway
            ok = False
        if ok:
            self.sent += 1
        else:
            self.failed += 1

    def wait(self) -> None:
        """Block until every queued alert was sent or failed (for tests and shutdown)."""
        self._queue.join()

    def close(self, timeout: float = 5.0) -> None:
        """Send what is queued (within ``timeout``) and stop the thread."""
        if not self._thread.is_alive():
            return
        try:
            self._queue.put(_STOP, timeout=timeout)
        except queue.Full:
            return
        self._thread.join(timeout)
