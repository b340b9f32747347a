"""A second opinion from PostgreSQL's own parser (pglast, libpg_query).

sqlglot is a portable parser; PostgreSQL is the one that runs the statement.
Where the two read the same text differently (a comment, a quoting rule, an
escape or an operator one of them does not know), the analysis describes a
statement the server never sees. ``crosscheck`` parses the text again with
libpg_query and compares the few facts both must agree on:

- exactly one statement;
- its kind (``SelectStmt`` is ``select``, ``UpdateStmt`` is ``update``; a
  SELECT that writes, through ``SELECT ... INTO`` or a data-modifying WITH
  item, is not a ``select``);
- the set of relations named (schema-qualified; an unqualified name is in
  ``public`` unless a WITH item of that name is visible where it is used).

It uses the JSON parse tree (``parse_sql_json``, about 5 us for a point
lookup) rather than pglast's Python node objects (about 100 us). It never
raises: whatever it cannot read is a disagreement. Details are plain words
and never quote a literal of the statement.
"""

from __future__ import annotations

import json
import re
from typing import TYPE_CHECKING, Any

from pglast.parser import ParseError, parse_sql_json

if TYPE_CHECKING:
    from accessguard.analysis.facts import Facts

__all__ = ["crosscheck", "relations", "relations_in_json", "statement_kinds"]

DEFAULT_SCHEMA = "public"

#: libpg_query statement node -> the analyser's statement kind.
KINDS: dict[str, str] = {
    "SelectStmt": "select",
    "UpdateStmt": "update",
    "InsertStmt": "insert",
    "DeleteStmt": "delete",
    "MergeStmt": "merge",
    "CreateStmt": "create",
    "CreateTableAsStmt": "create",
    "ViewStmt": "create",
    "IndexStmt": "create",
    "CreateFunctionStmt": "create",
    "CreateSchemaStmt": "create",
    "CreateRoleStmt": "create",
    "CreateExtensionStmt": "create",
    "DropStmt": "drop",
    "AlterTableStmt": "alter",
    "TruncateStmt": "truncate",
    "CopyStmt": "copy",
    "GrantStmt": "grant",
    "VariableSetStmt": "set",
    "TransactionStmt": "transaction",
    "ExplainStmt": "explain",
    "DoStmt": "do",
    "CallStmt": "call",
    "DeclareCursorStmt": "declare",
    "FetchStmt": "fetch",
    "ListenStmt": "listen",
    "NotifyStmt": "notify",
    "PrepareStmt": "prepare",
    "ExecuteStmt": "execute",
}

#: Nodes that change data or the schema when they appear inside another statement.
_WRITERS = frozenset({"InsertStmt", "UpdateStmt", "DeleteStmt", "MergeStmt"})

_CHARS = r'(?:[^"\\]|\\.)*'
_TOP = re.compile(r'\{"stmt":\{"(\w+)":')
#: a RangeVar body: libpg_query writes its fields in this order, absent ones omitted
_RANGE_VAR = re.compile(
    rf'\{{(?:"catalogname":"(?P<c>{_CHARS})",)?(?:"schemaname":"(?P<s>{_CHARS})",)?'
    rf'"relname":"(?P<r>{_CHARS})"'
)
_PLAIN_NAME = re.compile(r"^[a-z_][a-z0-9_]{0,62}(\.[a-z_][a-z0-9_]{0,62}){0,2}$")


def crosscheck(sql: str, facts: Facts) -> str | None:
    """None when PostgreSQL's parser agrees with ``facts``; else what they disagree on."""
    try:
        return _crosscheck(sql, facts)
    except Exception:  # noqa: BLE001 - fail closed: an unreadable parse is a disagreement
        return "PostgreSQL's parse of the statement could not be read"


def _crosscheck(sql: str, facts: Facts) -> str | None:
    try:
        text = parse_sql_json(sql)
    except ParseError:
        return "PostgreSQL's parser rejects the statement"
    # Only RawStmt has a "stmt" key, and a quote inside a JSON string value is
    # always escaped, so these searches over the JSON text cannot be fooled by
    # a literal of the statement.
    tops = _TOP.findall(text)
    if len(tops) != 1:
        return f"PostgreSQL's parser reads {len(tops)} statements, not one"
    name = tops[0]
    kind = "create" if name == "SelectStmt" and '"intoClause":' in text else _kind(name)
    if kind != facts.kind:
        return f"PostgreSQL's parser reads a {kind.upper()} statement, the analyser a {facts.kind}"
    writers = sum(text.count(f'"{w}":') for w in _WRITERS) - (name in _WRITERS)
    if writers:
        return "PostgreSQL's parser finds a data-modifying statement inside the statement"
    seen = relations(json.loads(text)) if '"ctename":' in text else relations_in_json(text)
    mine = set(facts.tables)
    if seen != mine:
        return _relations_detail(seen - mine, mine - seen)
    return None


def relations_in_json(text: str) -> set[str]:
    """Every RangeVar of a JSON parse tree, schema-qualified (fast; no WITH-item scoping)."""
    return {_qualified(m["c"], m["s"], m["r"]) for m in _RANGE_VAR.finditer(text)}


def statement_kinds(sql: str) -> list[str]:
    """The kind of each statement PostgreSQL's parser reads in ``sql`` (ParseError if none)."""
    tree = json.loads(parse_sql_json(sql))
    out: list[str] = []
    for stmt in tree.get("stmts") or []:
        for name, body in (stmt.get("stmt") or {}).items():
            into = name == "SelectStmt" and isinstance(body, dict) and body.get("intoClause")
            out.append("create" if into else _kind(name))
    return out


def _kind(name: str) -> str:
    return KINDS.get(name, name.removesuffix("Stmt").lower() or "unknown")


def _qualified(catalog: str | None, schema: str | None, rel: str) -> str:
    parts = [_unescape(p) for p in (catalog, schema or DEFAULT_SCHEMA, rel) if p is not None]
    return ".".join(parts)


def _unescape(text: str) -> str:
    return text if "\\" not in text else str(json.loads(f'"{text}"'))


def relations(tree: dict[str, Any]) -> set[str]:
    """Schema-qualified names of the relations a parse tree names, WITH items excluded."""
    found: set[str] = set()
    # (node, names of WITH items visible at that node)
    stack: list[tuple[Any, frozenset[str]]] = [(tree, frozenset())]
    while stack:
        item, visible = stack.pop()
        if isinstance(item, list):
            stack.extend((x, visible) for x in item)
            continue
        if not isinstance(item, dict):
            continue
        if "relname" in item:  # a RangeVar (a FROM item, UPDATE's target, INTO's table)
            found.update(_range_var(item, visible))
            continue
        with_ = item.get("withClause")
        if isinstance(with_, dict):
            visible = _push_with(with_, visible, stack)
        for key, value in item.items():
            if key != "withClause":
                stack.append((value, visible))
    return found


def _push_with(
    with_: dict[str, Any], visible: frozenset[str], stack: list[tuple[Any, frozenset[str]]]
) -> frozenset[str]:
    """Queue the WITH items' bodies with the names each may see; return the names after them."""
    ctes = [c.get("CommonTableExpr", {}) for c in with_.get("ctes") or [] if isinstance(c, dict)]
    names = [str(c.get("ctename", "")) for c in ctes]
    if with_.get("recursive"):
        every = visible | frozenset(names)
        for cte in ctes:
            stack.append((cte, every))
        return every
    so_far = visible
    for cte, name in zip(ctes, names, strict=True):
        stack.append((cte, so_far))
        so_far = so_far | {name}
    return so_far


def _range_var(body: dict[str, Any], visible: frozenset[str]) -> set[str]:
    rel = str(body.get("relname", ""))
    schema = body.get("schemaname")
    catalog = body.get("catalogname")
    if schema is None and catalog is None and rel in visible:
        return set()
    parts = [str(p) for p in (catalog, schema or DEFAULT_SCHEMA, rel) if p is not None]
    return {".".join(parts)}


def _relations_detail(extra: set[str], missing: set[str]) -> str:
    parts: list[str] = []
    if extra:
        parts.append(f"PostgreSQL's parser also reads {_names(extra)}")
    if missing:
        parts.append(f"the analyser also reads {_names(missing)}")
    return "the parsers disagree on the tables: " + "; ".join(parts)


def _names(names: set[str]) -> str:
    plain = sorted(n for n in names if _PLAIN_NAME.match(n))
    odd = len(names) - len(plain)
    words = list(plain)
    if odd:
        words.append(f"{odd} oddly named table" + ("s" if odd > 1 else ""))
    return ", ".join(words)
