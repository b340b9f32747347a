"""The second wall: PostgreSQL's own parser reads the SQL the guard is about to send.

``verify_sent`` runs the parser of ``crosscheck`` on the other end: the SQL
the guard is about to send must read no table the analysis did not see, and
every table only through a subquery projecting exactly the columns the
analysis attributes to it, filtered to the subject when the table is scoped
(the second wall), whatever rewrite or literal splicing produced it. It never
raises: whatever it cannot read is a problem. Details are plain words and
never quote a literal of the statement.
"""

from __future__ import annotations

import json
import re
from typing import TYPE_CHECKING, Any

# public in pgtree; the functions below call them by the names they had in crosscheck.py
from accessguard.analysis.pgtree import CHARS as _CHARS
from accessguard.analysis.pgtree import PLAIN_NAME as _PLAIN_NAME
from accessguard.analysis.pgtree import (
    ParseError,
    parse_sql_json,
    relations,
    relations_in_json,
)
from accessguard.analysis.pgtree import table_names as _names
from accessguard.analysis.pgtree import unescape as _unescape

if TYPE_CHECKING:
    from collections.abc import Collection, Iterator, Mapping

    from accessguard.analysis.facts import Facts

__all__ = ["verify_sent"]

#: A value the scope filter may compare with: a subject marker left for the guard.
_MARKER = re.compile(r"^__ag_subject_[a-z_]+__$")
#: A name the guard puts in the SQL to send: a subject marker or a literal put back later.
_GUARD_NAME = re.compile(r"^__ag_(?:subject_[a-z_]+|lit\d+)__$")
_PYFORMAT = re.compile(r"%%|%s")
#: The fields of a projection subquery: its columns, its one table, its scope filter.
_PROJECTION_KEYS = frozenset({"targetList", "fromClause", "whereClause", "limitOption", "op"})

Owner = tuple[str, dict[str, Any]]


def verify_sent(  # noqa: PLR0913 - keyword-only options
    sent: str,
    facts: Facts,
    scoped: Mapping[str, str],
    *,
    pyformat: bool = False,
    subjects: Collection[int] = (),
    masks: Mapping[str, Mapping[str, str]] | None = None,
) -> str | None:
    """None when PostgreSQL reads ``sent`` as the second wall promises; else what is wrong.

    ``sent`` is the SQL the guard will send for ``facts``: it must read no
    table the analysis did not see, and read every physical table only
    through ``(SELECT c1, c2, ... FROM schema.t [WHERE col = <subject>])``,
    whose columns are exactly those the analysis attributes to the table
    (``facts.reads``; no ``*``, nothing else in that SELECT) and whose filter
    is there exactly when the table is scoped (``scoped``: qualified name ->
    scope column). The UPDATE target instead has ``"alias".col = <subject>``
    ANDed to its WHERE, sets exactly the columns of ``facts.writes``, and its
    own expressions name only columns of ``facts.reads`` (no ``*``, no
    whole-row reference). A subject is a marker, a parameter, or an integer
    (one of ``subjects`` when given). ``pyformat``: ``sent`` uses psycopg's
    ``%s`` placeholders. ``masks``: qualified table -> column -> the mask
    expression (PostgreSQL text) that column must be projected as, under its
    own name, where it is read (``accessguard.policy.masking``); every other column is
    projected plain. The same parser as ``crosscheck``, on the other end:
    it catches a rewrite or literal splice that changes what runs.
    """
    try:
        return _verify_sent(
            sent, facts, scoped, pyformat=pyformat, subjects=subjects, masks=masks or {}
        )
    except Exception:  # noqa: BLE001 - fail closed
        return "PostgreSQL's parse of the SQL to send could not be read"


def _verify_sent(  # noqa: PLR0913 - keyword-only options
    sent: str,
    facts: Facts,
    scoped: Mapping[str, str],
    *,
    pyformat: bool,
    subjects: Collection[int],
    masks: Mapping[str, Mapping[str, str]],
) -> str | None:
    if pyformat:
        numbers = iter(range(1, 1 << 16))
        sent = _PYFORMAT.sub(lambda m: "%" if m.group(0) == "%%" else f"${next(numbers)}", sent)
    try:
        text = parse_sql_json(sent)
    except ParseError:
        return "PostgreSQL's parser rejects the SQL to send"
    tree = json.loads(text)
    stmts = tree.get("stmts") or []
    if len(stmts) != 1:
        return f"PostgreSQL's parser reads {len(stmts)} statements in the SQL to send"
    with_items = '"ctename":' in text
    by_tree = with_items or '"lockedRels":' in text
    seen = relations(tree) if by_tree else relations_in_json(text)  # equal without them
    extra = seen - set(facts.tables)
    if extra:
        return f"the SQL to send also reads {_names(extra)}"
    reads = _by_table(facts.reads)
    names = re.findall(rf'"ctename":"({_CHARS})"', text) if with_items else ()
    ctes = {_unescape(n) for n in names}
    for body, owner, key in _range_vars(stmts[0]["stmt"]):
        if key == "lockedRels":
            continue  # FOR UPDATE OF: a FROM item's name (PostgreSQL checks it is one)
        if body.get("schemaname") is None:
            if body.get("relname") in ctes:
                continue
            return "the SQL to send names a table without its schema"
        rel = f"{body['schemaname']}.{body.get('relname')}"
        column = scoped.get(rel)
        kind, stmt = owner if owner is not None else ("", {})
        if kind == "UpdateStmt" and key == "relation":
            if column is not None and not _filters(
                stmt.get("whereClause"), column, qualified=True, subjects=subjects
            ):
                return f"the UPDATE of {_names({rel})} is not filtered to the subject"
            problem = _update_columns(
                stmt, body, rel, reads=reads, writes=_by_table(facts.writes), scope_column=column
            )
        elif kind != "SubSelect" or key != "fromClause" or len(stmt["fromClause"]) != 1:
            return f"{_names({rel})} is read outside its projection subquery"
        elif column is not None and not _is_filter(
            stmt.get("whereClause"), column, qualified=False, subjects=subjects
        ):
            return f"{_names({rel})} is read without its scope filter"
        elif column is None and "whereClause" in stmt:
            return f"{_names({rel})} is read with a condition inside its projection subquery"
        else:
            problem = _projection(stmt, rel, reads.get(rel, frozenset()), masks.get(rel, {}))
        if problem is not None:
            return problem
    return None


def _by_table(pairs: Collection[tuple[str, str]]) -> dict[str, frozenset[str]]:
    out: dict[str, set[str]] = {}
    for table, column in pairs:
        out.setdefault(table, set()).add(column)
    return {table: frozenset(columns) for table, columns in out.items()}


def _projection(
    stmt: dict[str, Any], rel: str, allowed: frozenset[str], masks: Mapping[str, str]
) -> str | None:
    """Whether the SELECT around ``rel`` projects exactly ``allowed``, plain names, nothing else.

    A column of ``masks`` is projected instead as exactly its mask expression
    named as the column (``expr AS "c"``), and only such a column.
    """
    if (
        set(stmt) - _PROJECTION_KEYS
        or stmt.get("limitOption", "LIMIT_OPTION_DEFAULT") != "LIMIT_OPTION_DEFAULT"
        or stmt.get("op", "SETOP_NONE") != "SETOP_NONE"
    ):
        return f"{_names({rel})} is read through more than a projection of its columns"
    names: list[str] = []
    for target in stmt.get("targetList") or []:
        res = target.get("ResTarget") if isinstance(target, dict) else None
        if (
            not isinstance(res, dict)
            or set(res) - {"val", "location", "name"}
            or ("name" in res and res["name"] not in masks)
        ):
            return f"{_names({rel})} is read through more than a projection of its columns"
        name = _masked_column(res, masks) if "name" in res else _plain_column(res.get("val"))
        if name is None and "name" in res:
            return f"{_names({rel})} is read through something other than its columns' masks"
        if name in masks and "name" not in res:
            return f"{_names({rel})} is read unmasked where a mask applies"
        if name is None:
            return f"{_names({rel})} is read through something other than a list of its columns"
        names.append(name)
    if len(names) != len(set(names)) or set(names) != allowed:
        return (
            f"PostgreSQL reads other columns of {_names({rel})} in the SQL to send than the "
            f"analyser attributes to it ({_columns(set(names) ^ allowed)})"
        )
    return None


def _masked_column(res: dict[str, Any], masks: Mapping[str, str]) -> str | None:
    """The column ``res`` projects through exactly its mask in ``masks``, else None."""
    name = res.get("name")
    expected = masks.get(name) if isinstance(name, str) else None
    if expected is None:
        return None
    tree = json.loads(parse_sql_json(f'SELECT {expected} AS "{name}"'))
    want = tree["stmts"][0]["stmt"]["SelectStmt"]["targetList"][0]["ResTarget"]["val"]
    return name if _located(res.get("val")) == _located(want) else None


def _located(node: Any) -> Any:
    """``node`` without its ``location`` fields (where in the text, not what it is)."""
    if isinstance(node, dict):
        return {k: _located(v) for k, v in node.items() if k != "location"}
    if isinstance(node, list):
        return [_located(v) for v in node]
    return node


def _plain_column(value: Any) -> str | None:
    """The name of an unqualified column reference, else None (``*`` included)."""
    fields = value.get("ColumnRef", {}).get("fields") if isinstance(value, dict) else None
    if not isinstance(fields, list) or len(fields) != 1:
        return None
    name = fields[0].get("String", {}).get("sval") if isinstance(fields[0], dict) else None
    return name if isinstance(name, str) else None


def _update_columns(  # noqa: PLR0913 - one target, its facts by keyword
    stmt: dict[str, Any],
    target: dict[str, Any],
    rel: str,
    *,
    reads: Mapping[str, frozenset[str]],
    writes: Mapping[str, frozenset[str]],
    scope_column: str | None,
) -> str | None:
    """Whether the UPDATE sets and reads, of its target, only the columns the analysis saw.

    Its scope column is the guard's own filter's, read or not by the statement.
    """
    alias = (target.get("alias") or {}).get("aliasname") or target.get("relname")
    allowed = reads.get(rel, frozenset()) | ({scope_column} if scope_column else set())
    targets = [t for t in stmt.get("targetList") or [] if isinstance(t, dict)]
    sets = {t.get("ResTarget", {}).get("name") for t in targets}
    if sets != writes.get(rel, frozenset()):
        return f"the UPDATE of {_names({rel})} sets other columns than the analyser saw"
    whole = f"the UPDATE of {_names({rel})} reads every column of its target"
    for fields, direct in _column_refs({k: v for k, v in stmt.items() if k != "relation"}):
        names = [f.get("String", {}).get("sval") if isinstance(f, dict) else None for f in fields]
        if len(names) == 2 and names[0] == alias:  # alias.column
            if names[1] not in allowed:
                return whole if names[1] is None else _other_columns(rel)
        elif len(names) == 1 and (names[0] == alias or (direct and names[0] is None)):
            return whole
        elif direct and (
            len(names) != 1 or (names[0] not in allowed and not _GUARD_NAME.match(str(names[0])))
        ):
            return _other_columns(rel)
    return None


def _other_columns(rel: str) -> str:
    return f"the UPDATE of {_names({rel})} reads other columns than the analyser attributes to it"


def _column_refs(root: Any) -> Iterator[tuple[list[Any], bool]]:
    """The fields of every ColumnRef under ``root``, and whether it is outside any sub-select."""
    stack: list[tuple[Any, bool]] = [(root, True)]
    while stack:
        item, direct = stack.pop()
        if isinstance(item, list):
            stack.extend((x, direct) for x in item)
        elif isinstance(item, dict):
            ref = item.get("ColumnRef")
            if isinstance(ref, dict):
                yield list(ref.get("fields") or []), direct
                continue
            for name, value in item.items():
                stack.append((value, direct and name != "SubLink"))


def _columns(names: set[str]) -> str:
    plain = sorted(n for n in names if _PLAIN_NAME.match(n))
    odd = len(names) - len(plain)
    words = list(plain)
    if odd:
        words.append(f"{odd} oddly named column" + ("s" if odd > 1 else ""))
    return ", ".join(words)


def _range_vars(root: Any) -> Iterator[tuple[dict[str, Any], Owner | None, str]]:
    """Every RangeVar body with the SELECT/UPDATE (and field) that holds it directly.

    The owner is None when anything else (a join, a function call, ...) sits
    between the RangeVar and the statement node. A SELECT that is a FROM
    subquery (``RangeSubselect.subquery``) is named ``SubSelect``. Only dicts
    and lists are pushed (a parse tree is mostly strings and numbers).
    """
    stack: list[tuple[Any, Owner | None, str]] = [(root, None, "")]
    pop, push = stack.pop, stack.append
    while stack:
        item, owner, key = pop()
        if type(item) is list:
            for child in item:
                if type(child) is dict or type(child) is list:
                    push((child, owner, key))
            continue
        if type(item) is not dict:
            continue
        body = item.get("RangeVar")
        if type(body) is dict:
            yield body, owner, key
            continue
        if "relname" in item:
            yield item, owner, key
            continue
        for name, value in item.items():
            if type(value) is dict and name in ("SelectStmt", "UpdateStmt"):
                kind = "SubSelect" if key == "subquery" and name == "SelectStmt" else name
                for sub, child in value.items():
                    if type(child) is dict or type(child) is list:
                        push((child, (kind, value), sub))
            elif type(value) is dict or type(value) is list:
                push((value, None, name))


def _is_filter(expr: Any, column: str, *, qualified: bool, subjects: Collection[int]) -> bool:
    """Whether ``expr`` is ``[alias.]column = <subject>``."""
    node = expr.get("A_Expr") if isinstance(expr, dict) else None
    if not isinstance(node, dict) or node.get("kind") != "AEXPR_OP":
        return False
    if [n.get("String", {}).get("sval") for n in node.get("name", [])] != ["="]:
        return False
    left = node.get("lexpr", {}).get("ColumnRef", {}).get("fields", [])
    names = [f.get("String", {}).get("sval") for f in left]
    if names[-1:] != [column] or len(names) != (2 if qualified else 1):
        return False
    right = node.get("rexpr", {})
    if "ParamRef" in right:
        return True
    value = right.get("A_Const", {}).get("ival", {}).get("ival")
    if isinstance(value, int) and not isinstance(value, bool):
        return not subjects or value in subjects
    marker = right.get("ColumnRef", {}).get("fields", [])
    return len(marker) == 1 and bool(_MARKER.match(marker[0].get("String", {}).get("sval", "")))


def _filters(where: Any, column: str, *, qualified: bool, subjects: Collection[int]) -> bool:
    """Whether ``where`` is the filter, or an AND with the filter among its arguments."""
    if _is_filter(where, column, qualified=qualified, subjects=subjects):
        return True
    boolean = where.get("BoolExpr") if isinstance(where, dict) else None
    if not isinstance(boolean, dict) or boolean.get("boolop") != "AND_EXPR":
        return False
    return any(
        _is_filter(arg, column, qualified=qualified, subjects=subjects)
        for arg in boolean.get("args", [])
    )
