"""``accessguard schema pull DSN``: a live database's tables as a schema.toml to review.

Reads ``information_schema`` (tables, columns in their order, primary keys and
foreign keys) through a plain psycopg connection that the caller opens: this
is an administrator's tool, never a guarded session. The output is a draft:

- every base table of the schema becomes a ``[tables.<name>]`` section with
  its columns;
- a table with a ``customer_id`` or ``product_id`` column (or the customer
  and product tables themselves, by their key) gets a *guessed* row scope,
  marked ``# guessed: review``;
- a one-column primary key becomes ``key = "..."`` and foreign keys to
  tables of the file become ``references = { column = "table.column" }``
  (what key-bound statements are probed by); a key of several columns, or a
  foreign key to a table left out, stays a comment;
- a table or column whose name schema.toml cannot hold (upper case, spaces)
  is listed in a comment and left out, so it stays unreachable.

Nothing is applied: the security team reviews the file and moves it into the
policy directory.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import psycopg

_NAME = re.compile(r"^[a-z_][a-z0-9_]*$")
#: column name -> the scope a table holding it probably has
_SCOPE_COLUMNS = {"customer_id": "customer", "product_id": "product"}
#: table name -> its scope by its own key (the subject tables themselves)
_SUBJECT_TABLES = {"customers": "customer", "products": "product"}

_COLUMNS = """
SELECT c.table_name, c.column_name
FROM information_schema.columns AS c
JOIN information_schema.tables AS t
  ON t.table_schema = c.table_schema AND t.table_name = c.table_name
WHERE c.table_schema = %s AND t.table_type = 'BASE TABLE'
ORDER BY c.table_name, c.ordinal_position
"""

_KEYS = """
SELECT tc.table_name, tc.constraint_type, kcu.column_name,
       ccu.table_name AS ref_table, ccu.column_name AS ref_column
FROM information_schema.table_constraints AS tc
JOIN information_schema.key_column_usage AS kcu
  ON kcu.constraint_schema = tc.constraint_schema AND kcu.constraint_name = tc.constraint_name
LEFT JOIN information_schema.constraint_column_usage AS ccu
  ON tc.constraint_type = 'FOREIGN KEY'
 AND ccu.constraint_schema = tc.constraint_schema AND ccu.constraint_name = tc.constraint_name
WHERE tc.table_schema = %s AND tc.constraint_type IN ('PRIMARY KEY', 'FOREIGN KEY')
ORDER BY tc.table_name, tc.constraint_type, kcu.ordinal_position
"""


@dataclass(slots=True)
class PulledTable:
    """One table as the catalog describes it."""

    name: str
    columns: list[str] = field(default_factory=list)
    primary_key: list[str] = field(default_factory=list)
    #: (column, referenced table, referenced column)
    foreign_keys: list[tuple[str, str, str]] = field(default_factory=list)
    #: columns whose names schema.toml cannot hold
    skipped: list[str] = field(default_factory=list)

    def scope(self) -> tuple[str, str] | None:
        """The guessed (scope, scope column), or None for an unscoped table."""
        if self.name in _SUBJECT_TABLES and len(self.primary_key) == 1:
            return _SUBJECT_TABLES[self.name], self.primary_key[0]
        for column, scope in _SCOPE_COLUMNS.items():
            if column in self.columns:
                return scope, column
        return None


def pull(conn: psycopg.Connection[tuple[object, ...]], schema: str = "public") -> list[PulledTable]:
    """Read ``schema``'s base tables, columns and keys from the live catalog."""
    tables: dict[str, PulledTable] = {}
    skipped_tables: list[str] = []
    for table_name, column_name in conn.execute(_COLUMNS, [schema]).fetchall():
        name, column = str(table_name), str(column_name)
        if not _NAME.match(name):
            if name not in skipped_tables:
                skipped_tables.append(name)
            continue
        table = tables.setdefault(name, PulledTable(name))
        (table.columns if _NAME.match(column) else table.skipped).append(column)
    for key_table, kind, key_column, ref_table, ref_column in conn.execute(_KEYS, [schema]):
        pulled = tables.get(str(key_table))
        if pulled is None:
            continue
        if kind == "PRIMARY KEY":
            pulled.primary_key.append(str(key_column))
        elif ref_table is not None:
            pulled.foreign_keys.append((str(key_column), str(ref_table), str(ref_column)))
    result = [tables[name] for name in sorted(tables)]
    if skipped_tables:
        result.append(PulledTable("", skipped=skipped_tables))
    return result


def render(tables: list[PulledTable], *, schema: str = "public", source: str = "") -> str:
    """The tables as schema.toml text, with the guesses and keys as comments."""
    origin = f" of {source}" if source else ""
    named = {table.name: set(table.columns) for table in tables if table.name}
    lines = [
        f"# Pulled from the live catalog{origin} by `accessguard schema pull`.",
        "# A draft to review: scopes marked 'guessed' come from column names only.",
        "# A table left out of this file is refused (table.unknown).",
        "",
        f'default_schema = "{schema}"',
    ]
    for table in tables:
        if not table.name:
            lines += ["", "# left out (names schema.toml cannot hold): " + ", ".join(table.skipped)]
            continue
        lines += ["", f"[tables.{table.name}]"]
        lines += _key_comments(table, named)
        if table.skipped:
            lines.append(f"# left out (names schema.toml cannot hold): {', '.join(table.skipped)}")
        lines.append("columns = [" + ", ".join(f'"{c}"' for c in table.columns) + "]")
        lines += _keys(table, named)
        guessed = table.scope()
        if guessed is not None:
            lines.append(f'scope = "{guessed[0]}"  # guessed: review')
            lines.append(f'scope_column = "{guessed[1]}"')
    return "\n".join(lines) + "\n"


def _declarable(table: PulledTable, named: dict[str, set[str]]) -> list[tuple[str, str, str]]:
    """The foreign keys schema.toml can declare (one column each, to a column of the file).

    In the table's column order, so a pull is stable.
    """
    columns = [fk[0] for fk in table.foreign_keys]
    found = [
        (column, ref_table, ref_column)
        for column, ref_table, ref_column in table.foreign_keys
        if columns.count(column) == 1
        and column in table.columns
        and ref_column in named.get(ref_table, ())
    ]
    return sorted(found, key=lambda fk: table.columns.index(fk[0]))


def _key_comments(table: PulledTable, named: dict[str, set[str]]) -> list[str]:
    """Comments for the keys ``_keys`` cannot declare (several columns, a table left out)."""
    lines: list[str] = []
    if len(table.primary_key) > 1:
        lines.append(
            f"# primary key (several columns, not declared): {', '.join(table.primary_key)}"
        )
    declared = _declarable(table, named)
    lines += [
        f"# foreign key (not declared): {column} -> {ref_table}.{ref_column}"
        for column, ref_table, ref_column in table.foreign_keys
        if (column, ref_table, ref_column) not in declared
    ]
    return lines


def _keys(table: PulledTable, named: dict[str, set[str]]) -> list[str]:
    """``key = "id"`` and ``references = { ... }`` lines for ``table``."""
    lines: list[str] = []
    if len(table.primary_key) == 1 and table.primary_key[0] in table.columns:
        lines.append(f'key = "{table.primary_key[0]}"')
    declared = _declarable(table, named)
    if declared:
        pairs = ", ".join(f'{column} = "{ref}.{target}"' for column, ref, target in declared)
        lines.append(f"references = {{ {pairs} }}")
    return lines
