"""What a run stands on: its own database, policy copies, and the machine it ran on."""

from __future__ import annotations

import contextlib
import datetime as dt
import importlib.metadata
import os
import platform
import shutil
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psycopg
from psycopg import sql
from psycopg.conninfo import conninfo_to_dict, make_conninfo

import accessguard
from accessguard import Guard, scenario

DEFAULT_ADMIN_DSN = "postgresql://postgres@127.0.0.1:5432/test"
DEFAULT_DBNAME = "ag_bench"
#: the checkout accessguard is imported from (for the commit in the report)
REPO = Path(accessguard.__file__).resolve().parents[1]

#: the rules the policy_lines workloads' statements need (alice on T-100, dave)
MINIMAL_POLICY = (
    "p, support_agent, order_issue, customers.id, read",
    "p, support_agent, order_issue, customers.name, read",
    "p, support_agent, order_issue, customers.email, read",
    "p, analyst, -, sales_metrics.*, read",
    "g, alice, support_agent",
    "g, dave, analyst",
)


# ---------------------------------------------------------------------- the run


@dataclass(kw_only=True)
class Bench:
    """Everything the workloads share for one run."""

    dsn: str
    guard: Guard
    raw: psycopg.Connection[Any]
    tmp: Path
    quick: bool
    rounds: int
    patch_casbin: bool = True
    counter: Iterator[int] = field(default_factory=lambda: iter(range(1 << 62)))

    def count(self, default: int) -> int:
        """Iterations per round: ``default``, or a sixth of it with --quick."""
        return max(60, default // 6) if self.quick else default

    def warmup(self, count: int) -> int:
        return max(20, count // 10)

    def as_user(self, user: str, ticket: str | None = None) -> Any:
        """The shared raw connection, guarded for ``user`` on ``ticket``."""
        return self.guard.wrap(self.raw, user=user, ticket=ticket)


# ---------------------------------------------------------------------- database


@contextlib.contextmanager
def bench_database(admin_dsn: str, dbname: str, *, keep: bool = False) -> Iterator[str]:
    """Drop and recreate ``dbname``, load the reference scenario, analyze it; yield its DSN."""
    name = sql.Identifier(dbname)
    with psycopg.connect(admin_dsn, autocommit=True, connect_timeout=5) as admin:
        admin.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(name))
        admin.execute(sql.SQL("CREATE DATABASE {}").format(name))
    dsn = make_conninfo(admin_dsn, dbname=dbname)
    with psycopg.connect(dsn) as conn:
        scenario.load_postgres(conn)
    with psycopg.connect(dsn, autocommit=True) as conn:
        # fresh tables: gather statistics now, not by autovacuum in the middle of a workload
        conn.execute("VACUUM (ANALYZE)")
    try:
        yield dsn
    finally:
        if not keep:
            with psycopg.connect(admin_dsn, autocommit=True, connect_timeout=5) as admin:
                admin.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(name))


# ---------------------------------------------------------------------- policies


def _copy_without_limits(target: Path) -> Path:
    """Copy the scenario's policy directory to ``target`` with no ``limits.*`` file."""
    shutil.copytree(scenario.policies_dir(), target)
    for limits in target.glob("limits.*"):  # the contract: benchmarks run without volume limits
        limits.unlink()
    return target


def policy_copy(root: Path) -> Path:
    """The reference scenario's policies, without volume limits."""
    return _copy_without_limits(root / "policies")


def padded_policy(root: Path, lines: int) -> Path:
    """A policy directory whose policy.csv holds exactly ``lines`` lines.

    The first lines are the rules the measured statements need (MINIMAL_POLICY);
    the rest alternate ``p, role_i, kind_i, sales_metrics.units, read`` and
    ``g, user_i, role_i`` for made-up roles and employees.
    """
    target = _copy_without_limits(root / f"policies_{lines}")
    out = list(MINIMAL_POLICY)
    i = 0
    while len(out) < lines:
        out.append(f"p, role_{i}, kind_{i}, sales_metrics.units, read")
        if len(out) < lines:
            out.append(f"g, user_{i}, role_{i}")
        i += 1
    (target / "policy.csv").write_text("\n".join(out[:lines]) + "\n", encoding="utf-8")
    return target


@contextlib.contextmanager
def casbin_indexed_duplicate_check(*, enabled: bool) -> Iterator[None]:
    """While loading, let pycasbin find duplicate rules by its own index, not a list scan.

    pycasbin's ``Policy.has_policy`` is ``rule in list``, so ``add_policies``
    is quadratic: about 190 s for 100,000 policy lines on the project's
    machine. The same answer comes from ``policy_map``, the dict pycasbin keeps
    beside the list (keyed by the fields joined with ","; policy fields never
    hold a comma, load_policy rejects them). Benchmark-only and scoped to the
    load: the decisions measured never call Casbin.
    """
    if not enabled:
        yield
        return
    from casbin.model import policy as casbin_policy

    original = casbin_policy.Policy.has_policy
    sep = casbin_policy.DEFAULT_SEP

    def has_policy(self: Any, sec: str, ptype: str, rule: list[str]) -> bool:
        if sec not in self.keys() or ptype not in self[sec]:  # Policy has no __contains__
            return False
        return sep.join(rule) in self[sec][ptype].policy_map

    casbin_policy.Policy.has_policy = has_policy
    try:
        yield
    finally:
        casbin_policy.Policy.has_policy = original


# ---------------------------------------------------------------------- machine


def _cpu_model() -> str:
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text(encoding="utf-8").splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


def _version(dist: str) -> str | None:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return None


def _git(*args: str) -> str | None:
    git = shutil.which("git")
    if git is None:
        return None
    try:
        done = subprocess.run(  # noqa: S603 - fixed arguments, no shell
            [git, "-C", str(REPO), *args], capture_output=True, text=True, check=True, timeout=10
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return done.stdout.strip()


def machine(dsn: str) -> dict[str, Any]:
    """Where and on what the run happened: CPU, versions, the server, the commit."""
    with psycopg.connect(dsn, connect_timeout=5) as conn:
        row = conn.execute("SHOW server_version").fetchone()
        server_version = str(row[0]) if row else "?"
        row = conn.execute("SELECT version()").fetchone()
        server_banner = str(row[0]) if row else "?"
    parser_file = getattr(importlib.import_module("sqlglot.parser"), "__file__", "") or ""
    status = _git("status", "--porcelain", "--", "accessguard")
    try:
        usable = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        usable = os.cpu_count() or 0
    return {
        "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "cpu": _cpu_model(),
        "cores": os.cpu_count(),
        "cores_usable": usable,
        "load_avg_start": list(os.getloadavg()),
        "os": platform.platform(),
        "python": f"{platform.python_implementation()} {platform.python_version()}",
        "psycopg": psycopg.__version__,
        "psycopg_impl": psycopg.pq.__impl__,
        "libpq": psycopg.pq.version(),
        "sqlglot": _version("sqlglot"),
        "sqlglotc": _version("sqlglotc"),
        "sqlglot_compiled": parser_file.endswith((".so", ".pyd")),
        "pycasbin": _version("pycasbin"),
        "postgresql": server_version,
        "postgresql_banner": server_banner,
        "postgresql_host": conninfo_to_dict(dsn).get("host", "(socket)"),
        "accessguard": accessguard.__version__,
        "commit": _git("rev-parse", "--short", "HEAD"),
        "accessguard_dirty": bool(status) if status is not None else None,
    }


def describe(info: dict[str, Any]) -> str:
    """The machine in two readable lines."""
    sqlglotc = (
        f" + sqlglotc {info['sqlglotc']}" + ("" if info["sqlglot_compiled"] else " (NOT active)")
        if info.get("sqlglotc")
        else " (pure Python)"
    )
    dirty = " (uncommitted changes)" if info.get("accessguard_dirty") else ""
    return (
        f"{info['cpu']}, {info['cores']} cores ({info['cores_usable']} usable), {info['os']}\n"
        f"{info['python']}, psycopg {info['psycopg']} ({info['psycopg_impl']}, "
        f"libpq {info['libpq']}), sqlglot {info['sqlglot']}{sqlglotc}, "
        f"pycasbin {info['pycasbin']}, PostgreSQL {info['postgresql']} "
        f"on {info['postgresql_host']}, accessguard {info['accessguard']} "
        f"@ {info['commit']}{dirty}"
    )
