"""Shared fixtures: a real PostgreSQL and Redis, the scenario database, hypothesis profiles.

Fixtures:

- ``pg_server`` (session): a reachable PostgreSQL: 127.0.0.1:5432 as ``postgres``
  (database ``test``, trust auth), else a throwaway cluster started with
  ``initdb``/``pg_ctl`` (through ``runuser -u postgres`` when running as root).
- ``scenario_dsn`` (function): a libpq DSN of a fresh database holding the
  reference scenario, cloned from a template built once per session; dropped
  after the test, so a test may write freely.
- ``redis_url`` (function): ``redis://127.0.0.1:6379/15``, flushed before the test
  (``ACCESSGUARD_TEST_REDIS_DB`` picks another database, so two test runs on
  one machine do not flush each other's counters).

A missing service skips its tests, or fails them when ``CI=true``.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import socket
import subprocess
import tempfile
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, NoReturn

import psycopg
import pytest
import redis
from hypothesis import settings
from psycopg import sql

from accessguard import Guard, scenario
from accessguard.scenario import load_postgres
from accessguard.testing import MemoryAuditSink

if TYPE_CHECKING:
    from collections.abc import Iterator

_IN_CI = os.environ.get("CI") == "true"
settings.register_profile("ci", deadline=None, derandomize=True, max_examples=200)
settings.register_profile("dev", deadline=None, max_examples=50)
settings.load_profile("ci" if _IN_CI else "dev")

_REDIS_URL = f"redis://127.0.0.1:6379/{int(os.environ.get('ACCESSGUARD_TEST_REDIS_DB', '15'))}"


def _unavailable(message: str) -> NoReturn:
    """Fail under CI=true, skip elsewhere: a missing service must not pass silently in CI."""
    if _IN_CI:
        pytest.fail(f"{message} (CI=true: a required service is missing)", pytrace=False)
    pytest.skip(message)


@dataclass(frozen=True, slots=True, kw_only=True)
class PgServer:
    """Where a PostgreSQL server listens, and its maintenance database."""

    host: str
    port: int
    user: str
    dbname: str

    def dsn(self, dbname: str | None = None) -> str:
        """Return a libpq URL for ``dbname`` (the maintenance database by default)."""
        return f"postgresql://{self.user}@{self.host}:{self.port}/{dbname or self.dbname}"

    def admin(self) -> psycopg.Connection[tuple[object, ...]]:
        """Open an autocommit connection to the maintenance database."""
        return psycopg.connect(self.dsn(), autocommit=True, connect_timeout=5)


def _reachable(server: PgServer) -> bool:
    """Return whether ``server`` accepts a connection."""
    try:
        with server.admin() as conn:
            conn.execute("SELECT 1")
    except psycopg.Error:
        return False
    return True


def _free_port() -> int:
    """Return a TCP port on 127.0.0.1 that is free right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _pg_bin(name: str) -> str | None:
    """Find a PostgreSQL program on PATH or in Debian's versioned directories."""
    found = shutil.which(name)
    if found:
        return found
    versions = sorted(Path("/usr/lib/postgresql").glob("*/bin"), reverse=True)
    return next((str(v / name) for v in versions if (v / name).exists()), None)


def _as_postgres_user() -> list[str]:
    """Command prefix that runs PostgreSQL's programs as ``postgres`` when we are root."""
    if os.geteuid() != 0:
        return []
    runuser = shutil.which("runuser")
    if runuser is None:
        raise OSError("running as root, and runuser is missing (pg_ctl refuses root)")
    return [runuser, "-u", "postgres", "--"]


@contextlib.contextmanager
def _spawned_postgres() -> Iterator[PgServer | None]:
    """Start a throwaway cluster for the session (None when that is impossible)."""
    initdb, pg_ctl = _pg_bin("initdb"), _pg_bin("pg_ctl")
    if initdb is None or pg_ctl is None:
        yield None
        return
    base = Path(tempfile.mkdtemp(prefix="accessguard-pg-"))
    data, port = base / "data", _free_port()
    options = f"-p {port} -k {base} -c listen_addresses=127.0.0.1 -c fsync=off"
    prefix: list[str] = []
    server: PgServer | None = None
    start_attempted = False
    try:
        try:
            prefix = _as_postgres_user()
            if prefix:
                shutil.chown(base, user="postgres")
            initdb_cmd = [initdb, "-D", str(data), "-U", "postgres", "-A", "trust", "-E", "UTF8"]
            subprocess.run([*prefix, *initdb_cmd], check=True, capture_output=True)  # noqa: S603
            start_attempted = True
            start_cmd = [pg_ctl, "-D", str(data), "-o", options, "-l", str(base / "log"), "-w"]
            subprocess.run([*prefix, *start_cmd, "start"], check=True, capture_output=True)  # noqa: S603
            server = PgServer(host="127.0.0.1", port=port, user="postgres", dbname="postgres")
        except (OSError, LookupError, subprocess.CalledProcessError):
            server = None
        yield server
    finally:
        if start_attempted:
            stop_cmd = [*prefix, pg_ctl, "-D", str(data), "-m", "fast", "-w", "stop"]
            subprocess.run(stop_cmd, check=False, capture_output=True)  # noqa: S603
        shutil.rmtree(base, ignore_errors=True)


@pytest.fixture(scope="session")
def pg_server() -> Iterator[PgServer]:
    """A real PostgreSQL server for the session (local one, else a spawned one)."""
    local = PgServer(host="127.0.0.1", port=5432, user="postgres", dbname="test")
    if _reachable(local):
        yield local
        return
    with _spawned_postgres() as spawned:
        if spawned is None or not _reachable(spawned):
            _unavailable("no PostgreSQL on 127.0.0.1:5432 and none could be started")
        yield spawned


def _drop_database(server: PgServer, name: str) -> None:
    """Drop ``name``, disconnecting whoever is still connected to it."""
    with server.admin() as conn:
        conn.execute(
            sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
        )


@pytest.fixture(scope="session")
def scenario_template(pg_server: PgServer) -> Iterator[str]:
    """Name of a database holding the reference scenario, built once per session."""
    name = f"ag_template_{uuid.uuid4().hex[:8]}"  # per session: parallel runs don't collide
    with pg_server.admin() as conn:
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    try:
        with psycopg.connect(pg_server.dsn(name)) as conn:
            load_postgres(conn)
        # no connection to the template may stay open: CREATE DATABASE ... TEMPLATE needs that
        yield name
    finally:
        _drop_database(pg_server, name)


@pytest.fixture
def scenario_dsn(pg_server: PgServer, scenario_template: str) -> Iterator[str]:
    """DSN of a fresh copy of the scenario database, dropped after the test."""
    name = f"ag_{uuid.uuid4().hex[:12]}"
    with pg_server.admin() as conn:
        conn.execute(
            sql.SQL("CREATE DATABASE {} TEMPLATE {}").format(
                sql.Identifier(name), sql.Identifier(scenario_template)
            )
        )
    try:
        yield pg_server.dsn(name)
    finally:
        _drop_database(pg_server, name)


@pytest.fixture
def unused_database(pg_server: PgServer) -> Iterator[str]:
    """DSN of a database that does not exist yet; whatever the test makes there is dropped."""
    name = f"ag_new_{uuid.uuid4().hex[:12]}"
    try:
        yield pg_server.dsn(name)
    finally:
        _drop_database(pg_server, name)


@pytest.fixture(scope="session")
def _redis_server() -> str:
    """URL of a reachable Redis database reserved for tests (db 15 unless configured)."""
    try:
        with redis.Redis.from_url(_REDIS_URL, socket_connect_timeout=2) as client:
            client.ping()
    except redis.RedisError:
        _unavailable(f"no Redis at {_REDIS_URL}")
    return _REDIS_URL


@pytest.fixture
def redis_url(_redis_server: str) -> str:
    """URL of an empty Redis database (flushed before the test)."""
    with redis.Redis.from_url(_redis_server) as client:
        client.flushdb()
    return _redis_server


@pytest.fixture
def sink() -> MemoryAuditSink:
    """An in-memory audit sink to read the events a test produced."""
    return MemoryAuditSink()


@pytest.fixture
def guard(sink: MemoryAuditSink) -> Iterator[Guard]:
    """The scenario's guard, with its volume limits, auditing to ``sink``."""
    with Guard.from_directory(
        scenario.policies_dir(), tickets=scenario.tickets(), audit=sink
    ) as guard:
        yield guard


@pytest.fixture(scope="session")
def anyio_backend() -> str:
    """psycopg's async connections run on asyncio (anyio's tests, every module)."""
    return "asyncio"


@pytest.fixture
def capped(tmp_path: Path, sink: MemoryAuditSink) -> Iterator[Guard]:
    """The scenario's guard with a row cap of two rows per statement (customer 42 has three
    orders), auditing to ``sink``."""
    policies = tmp_path / "policies"
    shutil.copytree(scenario.policies_dir(), policies)
    limits = policies / "limits.toml"
    text = re.sub(r"rows_per_statement = \d+", "rows_per_statement = 2", limits.read_text())
    limits.write_text(text.replace("count = 120", "count = 100000"))
    with Guard.from_directory(policies, tickets=scenario.tickets(), audit=sink) as guard:
        yield guard


@pytest.fixture(scope="module")
def unlimited(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Guard]:
    """A guard on a copy of the policies without limits.toml (many statements in a minute)."""
    policies: Path = tmp_path_factory.mktemp("policies") / "policies"
    shutil.copytree(scenario.policies_dir(), policies)
    (policies / "limits.toml").unlink()
    with Guard.from_directory(
        policies, tickets=scenario.tickets(), audit=MemoryAuditSink()
    ) as guard:
        yield guard


@pytest.fixture(autouse=True, scope="session")
def _private_cache(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """Verification marks (and anything else cached per user) go to a temporary directory,
    never to the home directory of whoever runs the tests."""
    previous = os.environ.get("XDG_CACHE_HOME")
    os.environ["XDG_CACHE_HOME"] = str(tmp_path_factory.mktemp("cache"))
    yield
    if previous is None:
        os.environ.pop("XDG_CACHE_HOME", None)
    else:
        os.environ["XDG_CACHE_HOME"] = previous
