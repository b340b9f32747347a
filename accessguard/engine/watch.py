"""Hot reload: pick up a changed policy directory, in one process or in all of them.

``PolicyWatcher`` polls the policy directory (every file in it: model.conf,
policy.csv, policy.shadow.csv, schema.toml, watchlist.toml, limits.toml, and
any file added) and calls ``guard.reload()`` when one changes, appears or
goes away.
Given a DSN it also LISTENs on a PostgreSQL channel, so every application
instance reloads when one of them (or a deploy script) calls
``notify_policy_change``. It speaks pycasbin's watcher interface
(``set_update_callback`` / ``update``), written on psycopg 3 because the
published Casbin watchers pin old clients and can miss notifications.
A reload that fails keeps the last good policy (see ``Gate.reload``), and
nothing a reload raises stops the watcher: it counts the failure and goes on.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol

import psycopg
from psycopg import sql

CHANNEL = "accessguard_policy"
_TICK = 0.5  # seconds between looks at the stop flag

Stamp = tuple[tuple[str, int, int, int, int], ...]


def stamp(directory: Path) -> Stamp:
    """What identifies the directory's current contents: per file its name, inode,
    mtime, ctime and size (a file renamed over another changes its inode). A
    directory that cannot be listed has the empty stamp."""
    out = []
    try:
        entries = sorted(directory.iterdir())
    except OSError:
        return ()
    for path in entries:
        with contextlib.suppress(OSError):  # gone between the listing and the look
            st = path.stat()
            if path.is_file():
                out.append((path.name, st.st_ino, st.st_mtime_ns, st.st_ctime_ns, st.st_size))
    return tuple(out)


def notify_policy_change(dsn: str, *, channel: str = CHANNEL, payload: str = "") -> None:
    """Tell every watcher listening on ``channel`` to reload its policy."""
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(
            sql.SQL("SELECT pg_notify({}, {})").format(sql.Literal(channel), sql.Literal(payload))
        )


class Reloadable(Protocol):
    """What watching needs of the gate (``Gate`` is one): its directory and ``reload``."""

    @property
    def directory(self) -> Path | None: ...

    def reload(self) -> bool: ...


class PolicyWatcher:
    """Reloads a guard on file changes and on PostgreSQL notifications."""

    def __init__(
        self,
        guard: Reloadable,
        *,
        interval: float = 2.0,
        dsn: str | None = None,
        channel: str = CHANNEL,
    ) -> None:
        if guard.directory is None:
            raise ValueError("the guard must be made with Guard.from_directory to be watched")
        self.guard = guard
        self.directory = guard.directory
        self.interval = interval
        self.dsn = dsn
        self.channel = channel
        self.reloads = 0
        #: reloads that raised (the guard's own reload never does; a callback may)
        self.failures = 0
        self._callback: Callable[..., Any] = self._reload
        self._stamp = stamp(self.directory)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        #: set once the LISTEN is in place (tests and deploy scripts wait on it)
        self.ready = threading.Event()
        #: set after each reload (cleared by whoever waits on it)
        self.reloaded = threading.Event()

    # pycasbin's watcher interface ------------------------------------------------

    def set_update_callback(self, callback: Callable[..., Any]) -> None:
        self._callback = callback

    def update(self) -> bool:
        """Announce a policy change to every instance (pycasbin calls this after a save)."""
        if self.dsn is not None:
            notify_policy_change(self.dsn, channel=self.channel)
        return True

    # running ------------------------------------------------------------------

    def start(self) -> PolicyWatcher:
        self._thread = threading.Thread(target=self._run, name="accessguard-watch", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=_TICK + 10)

    def __enter__(self) -> PolicyWatcher:
        return self.start()

    def __exit__(self, *_exc: object) -> None:
        self.stop()

    def poll(self) -> bool:
        """Reload if the directory changed since the last look; True when it did."""
        current = stamp(self.directory)
        if current == self._stamp:
            return False
        self._stamp = current
        self._call()
        return True

    def _call(self) -> None:
        """Run the reload callback; whatever it raises is counted, never propagated."""
        try:
            self._callback()
        except Exception:  # noqa: BLE001 - the watcher must outlive any one reload
            self.failures += 1

    def _reload(self) -> None:
        self.guard.reload()
        self.reloads += 1
        self.reloaded.set()

    def _run(self) -> None:
        while not self._stop.is_set():
            if self.dsn is None:
                self.ready.set()
                self.poll()
                self._stop.wait(min(self.interval, _TICK))
                continue
            try:
                self._listen()
            except Exception:  # noqa: BLE001 - server away (or worse): keep polling, retry the listen
                self.poll()
                self._stop.wait(self.interval)

    def _listen(self) -> None:
        assert self.dsn is not None  # noqa: S101 - checked by _run
        with psycopg.connect(self.dsn, autocommit=True) as conn:
            conn.execute(sql.SQL("LISTEN {}").format(sql.Identifier(self.channel)))
            self.ready.set()
            next_poll = time.monotonic() + self.interval
            while not self._stop.is_set():
                # short waits keep stop() responsive; files are polled every interval
                for _notify in conn.notifies(timeout=_TICK):
                    self._stamp = stamp(self.directory)
                    self._call()
                if time.monotonic() >= next_poll:
                    self.poll()
                    next_poll = time.monotonic() + self.interval
