"""Keeping the event loop free: what an async guarded cursor decides on the loop, and what not.

A decision may wait on I/O: a ticket store that asks PostgreSQL or an HTTP
service, a Redis throttle, the audit sink's write and fsync. On an event
loop that wait stalls every other task, so the async adapters split it:

- **on the loop**, with no thread hop: a statement whose plan the lane keeps
  (``Lane.kept``) on a guard whose hot path answers from memory (tickets in
  a ``MemoryTicketStore`` or no ticket, no throttle or an in-memory one);
- **off the loop**, in a bounded pool of threads (``EXECUTOR_WORKERS``):
  everything else: a ticket store or throttle that does I/O, a statement
  to decide afresh (analysis, possibly a refusal).

Audit events produced on the loop (a refusal, ``audit_allowed``, a watched
read) are held (``accessguard.audit.HELD``) and written off the loop before
the refusal is raised or the statement sent: the trail still has the event
before the caller sees the outcome. Refusals an async cursor decides itself
(a result over its row cap, rows the closed guard cannot count) are built
off the loop too (``off_loop(guard.over_row_cap, ...)``).

Left on the loop: the ledger's rare synchronous flush (its queue past
``max_pending``, or retrying a failed sink) and refusals raised by methods
psycopg declares synchronous (``cursor(row_factory=...)``, ``copy``,
``pipeline``, ``nextset``): each writes its one audit event there; and
``stream()``'s decision, which psycopg's synchronous ``stream`` call makes
at the call itself.
"""

from __future__ import annotations

import asyncio
import contextvars
import functools
import threading
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING, Any, ParamSpec, TypeVar

from accessguard.audit.sinks import HELD, write_held
from accessguard.tickets.stores import MemoryTicketStore

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable

    from accessguard.engine.lane import Lane

P = ParamSpec("P")
T = TypeVar("T")

#: threads that run decisions and audit writes for every event loop of the process
EXECUTOR_WORKERS = 16

_executor: ThreadPoolExecutor | None = None
_lock = threading.Lock()


def executor() -> ThreadPoolExecutor:
    """The bounded pool the async adapters move blocking work to (made on first use)."""
    global _executor  # noqa: PLW0603 - one pool per process, made lazily
    if _executor is None:
        with _lock:
            if _executor is None:
                _executor = ThreadPoolExecutor(
                    max_workers=EXECUTOR_WORKERS, thread_name_prefix="accessguard-aio"
                )
    return _executor


def _unheld(call: Callable[[], T]) -> T:
    """Run ``call`` writing its audit events itself (a worker thread may block)."""
    token = HELD.set(None)
    try:
        return call()
    finally:
        HELD.reset(token)


async def off_loop(fn: Callable[P, T], *args: P.args, **kwargs: P.kwargs) -> T:
    """``fn(*args, **kwargs)`` in the bounded pool, in a copy of this task's context."""
    loop = asyncio.get_running_loop()
    context = contextvars.copy_context()
    call = functools.partial(fn, *args, **kwargs)
    return await loop.run_in_executor(executor(), context.run, _unheld, call)


def on_loop(lane: Lane) -> bool:
    """Whether ``lane``'s hot path answers from memory: its ticket and its throttle."""
    guard = lane.guard
    throttle = guard.throttle
    return (throttle is None or throttle.local) and (
        lane.session.ticket is None or type(guard.tickets) is MemoryTicketStore
    )


async def holding(step: Awaitable[T]) -> T:
    """Await ``step`` (a probe query, say) with its audit events written off the loop after it."""
    held: list[Any] = []
    token = HELD.set(held)
    try:
        return await step
    finally:
        HELD.reset(token)
        if held:
            await off_loop(write_held, held)
