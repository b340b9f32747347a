"""The tables the guard knows: their columns and how their rows are scoped.

Declared by the security team beside the policy (``schema.toml``); a table
that is not declared here is refused. Pure data plus a loader: no SQL parser,
no database of its own. ``drift`` compares it with a live catalog, and
``read_drift`` reads one through a DB-API connection it is handed (the raw
one, never a guarded one).
"""

from __future__ import annotations

import hashlib
import re
import tomllib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from accessguard.errors import PolicyError

#: Scope kinds a ticket can name, and the ticket attribute that holds the id.
SCOPE_KINDS = {"customer": "customer_id", "product": "product_id"}

_NAME = re.compile(r"^[a-z_][a-z0-9_]*$")


@dataclass(frozen=True, slots=True, kw_only=True)
class TableSpec:
    """One table: its schema-qualified name, columns and row scope."""

    schema: str
    name: str
    columns: tuple[str, ...]
    #: "customer" or "product" when rows belong to a ticket's subject, else None.
    scope: str | None = None
    #: the column that holds the subject id, when scoped.
    scope_column: str | None = None
    #: False for tables no guarded session may touch at all (e.g. ``tickets``).
    reachable: bool = True
    column_set: frozenset[str] = field(default=frozenset(), repr=False)
    #: the primary key column (``key = "id"``), None when not declared
    key: str | None = None
    #: foreign keys: (column, referenced qualified table, referenced column)
    references: tuple[tuple[str, str, str], ...] = ()

    @property
    def qualified(self) -> str:
        return f"{self.schema}.{self.name}"


@dataclass(frozen=True, slots=True)
class Catalog:
    """Every table the guard knows, by schema-qualified name."""

    tables: dict[str, TableSpec]
    default_schema: str = "public"
    version: str = ""

    def lookup(self, schema: str | None, name: str) -> TableSpec | None:
        return self.tables.get(f"{schema or self.default_schema}.{name}")

    def by_name(self, name: str) -> TableSpec | None:
        """The table ``name`` in the default schema (policy objects use bare names)."""
        return self.lookup(None, name)


_TOML_AT = re.compile(r"\s*\(at line (\d+), column \d+\)\s*$")


def toml_error(exc: tomllib.TOMLDecodeError) -> tuple[str, int | None]:
    """The message and line of a TOML error (Python 3.11's error has no ``lineno``)."""
    text = str(exc)
    match = _TOML_AT.search(text)
    if match is None:
        return text, None
    return text[: match.start()], int(match.group(1))


def _line_of(text: str, key: str) -> int | None:
    pattern = re.compile(rf"^[ \t]*\[[ \t]*tables\.{re.escape(key)}\s*\]", re.MULTILINE)
    m = pattern.search(text)
    return text.count("\n", 0, m.start()) + 1 if m else None


def load_catalog(path: Path) -> Catalog:
    """Read ``schema.toml``; a malformed file raises PolicyError naming file and line."""
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise PolicyError(f"cannot read schema file ({exc.strerror})", path=str(path)) from exc
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        message, line = toml_error(exc)
        raise PolicyError(f"not valid TOML: {message}", path=str(path), line=line) from exc
    default_schema = data.get("default_schema", "public")
    raw_tables = data.get("tables")
    if not isinstance(raw_tables, dict) or not raw_tables:
        raise PolicyError("no [tables.<name>] sections", path=str(path))
    tables: dict[str, TableSpec] = {}
    for name, spec in raw_tables.items():
        line = _line_of(text, name)
        spec_table = _table_spec(name, spec, default_schema, str(path), line)
        tables[spec_table.qualified] = spec_table
    for spec_table in tables.values():
        check_references(spec_table, tables, str(path), _line_of(text, spec_table.name))
    version = hashlib.sha256(text.encode()).hexdigest()[:12]
    return Catalog(tables=tables, default_schema=default_schema, version=version)


def _table_spec(
    name: str, spec: object, default_schema: str, path: str, line: int | None
) -> TableSpec:
    if not isinstance(spec, dict):
        raise PolicyError(f"[tables.{name}] must be a table", path=path, line=line)
    unknown = set(spec) - {
        "schema",
        "columns",
        "scope",
        "scope_column",
        "reachable",
        "key",
        "references",
    }
    if unknown:
        raise PolicyError(
            f"[tables.{name}] has unknown keys: {', '.join(sorted(unknown))}", path=path, line=line
        )
    if not _NAME.match(name):
        raise PolicyError(f"table name {name!r} must be lower-case", path=path, line=line)
    columns = spec.get("columns")
    if (
        not isinstance(columns, list)
        or not columns
        or not all(isinstance(c, str) and _NAME.match(c) for c in columns)
    ):
        raise PolicyError(
            f"[tables.{name}] columns must be a list of lower-case names", path=path, line=line
        )
    scope = spec.get("scope")
    scope_column = spec.get("scope_column")
    if scope is not None:
        if scope not in SCOPE_KINDS:
            raise PolicyError(
                f"[tables.{name}] scope must be one of {', '.join(SCOPE_KINDS)}",
                path=path,
                line=line,
            )
        if scope_column not in columns:
            raise PolicyError(
                f"[tables.{name}] scope_column must name one of its columns", path=path, line=line
            )
    elif scope_column is not None:
        raise PolicyError(f"[tables.{name}] scope_column without scope", path=path, line=line)
    reachable = spec.get("reachable", True)
    if not isinstance(reachable, bool):
        raise PolicyError(f"[tables.{name}] reachable must be true or false", path=path, line=line)
    schema = spec.get("schema", default_schema)
    key, references = read_keys(name, spec, columns, default_schema, path, line)
    return TableSpec(
        schema=schema,
        name=name,
        columns=tuple(columns),
        scope=scope,
        scope_column=scope_column,
        reachable=reachable,
        column_set=frozenset(columns),
        key=key,
        references=references,
    )


def read_keys(  # noqa: PLR0913, PLR0917 - one section's inputs
    name: str,
    spec: dict[str, Any],
    columns: list[str],
    default_schema: str,
    path: str,
    line: int | None,
) -> tuple[str | None, tuple[tuple[str, str, str], ...]]:
    """A section's ``key = "id"`` and ``references = { order_id = "orders.id" }``.

    A referenced table may be named bare (the default schema) or
    ``schema.table``; ``check_references`` checks it exists once every
    section is read.
    """
    key = spec.get("key")
    if key is not None and (not isinstance(key, str) or key not in columns):
        raise PolicyError(f"[tables.{name}] key must name one of its columns", path=path, line=line)
    raw = spec.get("references", {})
    if not isinstance(raw, dict):
        raise PolicyError(
            f'[tables.{name}] references must be a table: {{ column = "table.column" }}',
            path=path,
            line=line,
        )
    references: list[tuple[str, str, str]] = []
    for column, target in raw.items():
        if column not in columns:
            raise PolicyError(
                f"[tables.{name}] references names {column!r}, not one of its columns",
                path=path,
                line=line,
            )
        parts = target.split(".") if isinstance(target, str) else []
        if len(parts) not in {2, 3} or not all(_NAME.match(p) for p in parts):
            raise PolicyError(
                f'[tables.{name}] references.{column} must be "table.column"',
                path=path,
                line=line,
            )
        table = ".".join(parts[:-1]) if len(parts) > 2 else f"{default_schema}.{parts[0]}"
        references.append((column, table, parts[-1]))
    return key, tuple(references)


def check_references(
    spec: TableSpec, tables: Mapping[str, TableSpec], path: str, line: int | None
) -> None:
    """Every foreign key of ``spec`` names a declared table and one of its columns."""
    for column, table, target in spec.references:
        found = tables.get(table)
        if found is None or target not in found.column_set:
            raise PolicyError(
                f"[tables.{spec.name}] references.{column} names {table}.{target}, "
                "which schema.toml does not declare",
                path=path,
                line=line,
            )


# ---------------------------------------------------------------------- drift

#: The columns of the schemas the catalog names, as the database has them now.
LIVE_COLUMNS_SQL = (
    "SELECT table_schema, table_name, column_name FROM information_schema.columns "
    "WHERE table_schema = ANY(%s)"
)


class SchemaDriftWarning(UserWarning):
    """schema.toml and the database's catalog disagree (the message names tables and columns)."""


@dataclass(frozen=True, slots=True, kw_only=True)
class Drift:
    """Where schema.toml and a database differ, by name (``table.column``; no data).

    ``undeclared``: columns the database has and schema.toml lacks (the
    second wall never sends them); ``missing``: declared columns the database
    lacks; ``missing_tables``: declared tables it lacks. Tables of the default
    schema are named bare, others schema-qualified.
    """

    undeclared: tuple[str, ...] = ()
    missing: tuple[str, ...] = ()
    missing_tables: tuple[str, ...] = ()

    @property
    def found(self) -> bool:
        return bool(self.undeclared or self.missing or self.missing_tables)

    @property
    def message(self) -> str:
        parts: list[str] = []
        if self.undeclared:
            parts.append(
                "columns in the database that schema.toml does not declare (never sent): "
                + ", ".join(self.undeclared)
            )
        if self.missing:
            parts.append(
                "columns schema.toml declares that the database lacks: " + ", ".join(self.missing)
            )
        if self.missing_tables:
            parts.append(
                "tables schema.toml declares that the database lacks: "
                + ", ".join(self.missing_tables)
            )
        return "Schema drift: " + "; ".join(parts) + "."


def drift(catalog: Catalog, live: Iterable[tuple[str, str, str]]) -> Drift:
    """Compare ``catalog`` with ``live`` (schema, table, column) rows; tables it declares only."""
    have: dict[str, set[str]] = {}
    for schema, table, column in live:
        qualified = f"{schema}.{table}"
        if qualified in catalog.tables:
            have.setdefault(qualified, set()).add(column)

    def named(spec: TableSpec) -> str:
        return spec.name if spec.schema == catalog.default_schema else spec.qualified

    undeclared: list[str] = []
    missing: list[str] = []
    missing_tables: list[str] = []
    for qualified, spec in sorted(catalog.tables.items()):
        columns = have.get(qualified)
        if columns is None:
            missing_tables.append(named(spec))
            continue
        undeclared += [f"{named(spec)}.{c}" for c in sorted(columns - spec.column_set)]
        missing += [f"{named(spec)}.{c}" for c in spec.columns if c not in columns]
    return Drift(
        undeclared=tuple(undeclared), missing=tuple(missing), missing_tables=tuple(missing_tables)
    )


def database_key(connection: Any) -> tuple[object, ...] | None:
    """Which PostgreSQL database a psycopg (or psycopg2) connection is on; None if not one."""
    info = getattr(connection, "info", None)
    if info is None or not hasattr(info, "transaction_status"):
        return None
    return (getattr(info, "host", None), getattr(info, "port", None), getattr(info, "dbname", None))


def read_drift(catalog: Catalog, connection: Any) -> Drift | None:
    """The drift between ``catalog`` and the database of a raw PostgreSQL ``connection``.

    None when the connection is inside a transaction (reading would join the
    application's transaction). A transaction this read opens (the connection
    is not in autocommit) is rolled back, so the connection is left as found.
    """
    info = connection.info
    if int(info.transaction_status) != 0:  # not IDLE: leave the application's work alone
        return None
    schemas = sorted({spec.schema for spec in catalog.tables.values()})
    try:
        cursor = connection.cursor()
        try:
            cursor.execute(LIVE_COLUMNS_SQL, (schemas,))
            rows = [_live_row(row) for row in cursor.fetchall()]
        finally:
            cursor.close()
    finally:
        if int(info.transaction_status) != 0:
            connection.rollback()
    return drift(catalog, rows)


def _live_row(row: Any) -> tuple[str, str, str]:
    """(schema, table, column) of one row, whatever the connection's row factory makes."""
    if isinstance(row, Mapping):
        return str(row["table_schema"]), str(row["table_name"]), str(row["column_name"])
    schema, table, column = row
    return str(schema), str(table), str(column)
