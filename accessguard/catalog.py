"""The tables the guard knows: their columns and how their rows are scoped.

Declared by the security team beside the policy (``schema.toml``); a table
that is not declared here is refused. Pure data plus a loader: no SQL parser,
no database.
"""

from __future__ import annotations

import hashlib
import re
import tomllib
from dataclasses import dataclass, field
from pathlib import Path

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
    version = hashlib.sha256(text.encode()).hexdigest()[:12]
    return Catalog(tables=tables, default_schema=default_schema, version=version)


def _table_spec(
    name: str, spec: object, default_schema: str, path: str, line: int | None
) -> TableSpec:
    if not isinstance(spec, dict):
        raise PolicyError(f"[tables.{name}] must be a table", path=path, line=line)
    unknown = set(spec) - {"schema", "columns", "scope", "scope_column", "reachable"}
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
    return TableSpec(
        schema=spec.get("schema", default_schema),
        name=name,
        columns=tuple(columns),
        scope=scope,
        scope_column=scope_column,
        reachable=reachable,
        column_set=frozenset(columns),
    )
