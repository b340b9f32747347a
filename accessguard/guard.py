"""The Guard: the facade applications import.

``Guard`` is the engine (``accessguard.engine.gate.Gate``: decisions, plans,
refusals, the audit trail) plus the factories that put it in front of a
database: psycopg connections (sync and async), pools, any DB-API 2.0
connection, SQLAlchemy engines, and the policy watcher. The engine never
imports an adapter; adapters depend on the engine; only this module sits
above both.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from accessguard.engine.gate import LIMITS_FILE, Gate
from accessguard.engine.lane import Authorized, Session

if TYPE_CHECKING:
    from collections.abc import Mapping

    from accessguard.engine.breakglass import Elevation, Scope
    from accessguard.engine.watch import PolicyWatcher

__all__ = ["LIMITS_FILE", "Authorized", "Guard", "Session"]


class Guard(Gate):
    """Checks every statement against the policy and the employee's ticket."""

    def break_glass(
        self, user: str, scope: Scope | Mapping[str, Any], minutes: int, reason: str
    ) -> Elevation:
        """Open a time-boxed, justified elevation (``accessguard.engine.breakglass``), audited
        critical."""
        return self.breakglass.open(user, scope, minutes, reason)

    def revoke_break_glass(self, elevation: Elevation | str, *, by: str | None = None) -> None:
        """Revoke an elevation: its next statement, wherever it is looked up, is refused."""
        self.breakglass.revoke(elevation, by=by)

    def connect(
        self, conninfo: str = "", *, user: str, ticket: str | None = None, **kwargs: Any
    ) -> Any:
        """Open a psycopg 3 connection and return it guarded for ``user`` on ``ticket``."""
        from accessguard.adapters.psycopg3 import GuardedConnection

        return GuardedConnection.connect(self, conninfo, self.bind(user, ticket), **kwargs)

    def wrap(
        self, connection: Any, *, user: str, ticket: str | None = None, dialect: str | None = None
    ) -> Any:
        """Guard an open connection: psycopg 3, sqlite3 or any DB-API 2.0 one (with ``dialect``)."""
        session = self.bind(user, ticket)
        from accessguard.adapters import wrap_connection

        guarded = wrap_connection(self, connection, session, dialect=dialect)
        if dialect in (None, "postgres"):
            self.check_schema(connection)  # the raw connection, before any statement
        return guarded

    def watch(self, *, interval: float = 2.0, dsn: str | None = None) -> PolicyWatcher:
        """Reload on changes to the policy directory (and on NOTIFY when ``dsn`` is given)."""
        from accessguard.engine.watch import PolicyWatcher

        return PolicyWatcher(self, interval=interval, dsn=dsn).start()

    async def connect_async(
        self, conninfo: str = "", *, user: str, ticket: str | None = None, **kwargs: Any
    ) -> Any:
        """Open a psycopg 3 AsyncConnection and return it guarded."""
        from accessguard.adapters.aio import AsyncGuardedConnection

        return await AsyncGuardedConnection.connect(
            self, conninfo, self.bind(user, ticket), **kwargs
        )

    def wrap_async(self, connection: Any, *, user: str, ticket: str | None = None) -> Any:
        """Guard an open psycopg 3 AsyncConnection."""
        from accessguard.adapters.aio import wrap_async

        return wrap_async(self, connection, self.bind(user, ticket))

    def pool(self, conninfo: str = "", **kwargs: Any) -> Any:
        """A psycopg_pool ConnectionPool whose checkouts are guarded per employee."""
        from accessguard.adapters.pool import GuardedPool

        return GuardedPool(self, conninfo, **kwargs)

    def pool_async(self, conninfo: str = "", **kwargs: Any) -> Any:
        """A psycopg_pool AsyncConnectionPool whose checkouts are guarded per employee.

        ``async with guard.pool_async(dsn) as pool:`` opens it;
        ``async with pool.connection(user=..., ticket=...) as conn:`` checks one out.
        """
        from accessguard.adapters.pool import GuardedAsyncPool

        return GuardedAsyncPool(self, conninfo, **kwargs)

    def instrument(self, engine: Any) -> Any:
        """Guard every statement a SQLAlchemy 2 Engine sends (Core and ORM)."""
        from accessguard.adapters.sqlalchemy import instrument

        return instrument(self, engine)
