"""Hypothesis strategies (and the plain generators behind them) for SQL attacks.

Two kinds of input:

- mutations of real SQL: the statements of the case files (tests/cases/*.yaml)
  cut into tokens, then tokens inserted, deleted, swapped, duplicated or
  replaced by fragments that trip parsers (quotes, comments, dollar tags,
  unicode, operators, placeholders);
- SELECTs for alice built from a small grammar over the scenario tables:
  joins, random WHERE trees of AND/OR/NOT/=/<>/IN/IS NULL/LIKE/EXISTS over
  random columns and literals (42 and other ids), scalar and IN subqueries.

The generators take a ``Chooser`` (``random.Random`` fits), so the long fuzz
run (benchmarks/fuzz.py) and the hypothesis properties share one grammar;
``DrawChooser`` adapts hypothesis' ``draw`` so examples shrink.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Protocol, TypeVar

import yaml
from hypothesis import strategies as st

if TYPE_CHECKING:
    from collections.abc import Sequence

T = TypeVar("T")

CASES_DIR = Path(__file__).resolve().parent / "cases"
CASE_FILES = ("attacks.yaml", "redteam-public.yaml", "scenario.yaml")


class Chooser(Protocol):
    """The few random choices the generators make (``random.Random`` has them)."""

    def choice(self, seq: Sequence[T]) -> T:
        """One element of ``seq``."""
        ...

    def randint(self, a: int, b: int) -> int:
        """An integer in [a, b]."""
        ...


class DrawChooser:
    """A Chooser backed by hypothesis' ``draw`` (so failing examples shrink)."""

    def __init__(self, draw: st.DrawFn) -> None:
        self._draw = draw

    def choice(self, seq: Sequence[T]) -> T:
        """One element of ``seq``, shrinking towards the first."""
        return seq[self._draw(st.integers(0, len(seq) - 1))]

    def randint(self, a: int, b: int) -> int:
        """An integer in [a, b], shrinking towards ``a``."""
        return self._draw(st.integers(a, b))


# ---------------------------------------------------------------------- corpus


def load_corpus(files: Sequence[str] = CASE_FILES) -> tuple[str, ...]:
    """The SQL text of every case in the case files (duplicates removed, order kept)."""
    seen: dict[str, None] = {}
    for name in files:
        path = CASES_DIR / name
        if not path.exists():
            continue
        for entry in yaml.safe_load(path.read_text(encoding="utf-8")) or []:
            if isinstance(entry, dict) and isinstance(entry.get("sql"), str):
                seen.setdefault(entry["sql"], None)
    return tuple(seen)


CORPUS: tuple[str, ...] = load_corpus()


def load_corpus_with_params(
    files: Sequence[str] = CASE_FILES,
) -> tuple[tuple[str, tuple[int, ...]], ...]:
    """(sql, positional values) of the cases that bind a list of integers."""
    out: list[tuple[str, tuple[int, ...]]] = []
    for name in files:
        path = CASES_DIR / name
        if path.exists():
            for entry in yaml.safe_load(path.read_text(encoding="utf-8")) or []:
                params = entry.get("params") if isinstance(entry, dict) else None
                if isinstance(params, list) and all(type(v) is int for v in params):
                    out.append((str(entry["sql"]), tuple(params)))
    return tuple(out)


CORPUS_WITH_PARAMS = load_corpus_with_params()

#: Lexical pieces of SQL: quoted things first so they stay whole.
_TOKEN = re.compile(
    r"""(?sx)
      \$(?P<tag>[A-Za-z_]\w*)?\$.*?\$(?P=tag)?\$   # dollar quoted
    | [EeUuBbXxNn]?&?'(?:[^']|'')*'?               # string literals (maybe unterminated)
    | U&"(?:[^"]|"")*"? | "(?:[^"]|"")*"?          # quoted identifiers
    | --[^\n\r]* | /\*.*?(?:\*/|$)                  # comments
    | \d+(?:\.\d*)?(?:[eE][+-]?\d+)?               # numbers
    | [^\W\d]\w*                                   # words
    | %(?:\(\w+\))?[sbt%] | \$\d+                  # placeholders
    | ::|<>|!=|>=|<=|\|\||[-+*/%<>=~!@\#^&|`?]+    # operators
    | \s+ | .                                      # whitespace, anything else
    """
)

#: Fragments that trip parsers, inserted or swapped in by the mutator.
# fmt: off
FRAGMENTS: tuple[str, ...] = (
    " ", "\n", "\r", "\t", "\x0b", "\x0c", "\xa0", "\u2028", "\u200b", "\x00", "'", '"', "''",
    "$$", "$a$", "$1", "$ 1", "%s", "%(x)s", "%%", "?", ":x", "--", "/*", "*/", "/* /* */", ";",
    ",", ".", "(", ")", "[", "]", "::", "\\", "E'\\''", 'U&"\\0063"', "U&'\\0041'", "'\\'", "B'1'",
    "X'1F'", "N'x'", "OR", "AND", "NOT", "OR true", "OR 1=1", "IS NOT NULL", "IN",
    "IS DISTINCT FROM", "BETWEEN", "LIKE", "UNION SELECT", "UNION ALL", "EXCEPT", "INTERSECT",
    "JOIN", "LEFT JOIN", "ON true", "LATERAL", "WITH", "AS", "SELECT", "FROM", "WHERE", "GROUP BY",
    "ORDER BY", "HAVING", "LIMIT", "OFFSET", "FETCH", "INTO", "VALUES", "TABLE", "RETURNING",
    "FOR UPDATE", "COPY", "DO", "SET", "RESET", "BEGIN", "DELETE", "INSERT", "UPDATE", "CREATE",
    "DROP", "GRANT", "CALL", "EXECUTE", "42", "7", "0", "-1", "042", "4_2", "0x2A", "1e2", "42.0",
    "NULL", "true", "*", "customers", "orders", "payments", "reviews", "products", "sellers",
    "tickets", "account_flags", "sales_metrics", "public.", "archive.", "pg_catalog.",
    "information_schema.", "pg_temp.", "card_token", "created_at", "contact_email", "email", "id",
    "customer_id", "c", "o", "p", "x", '"Customers"', "CUSTOMERS", "pg_read_file('/etc/passwd')",
    "set_config('role','postgres',false)", "dblink('x','y')", "pg_sleep(1)", "current_user",
    "user", "to_json(c)", "count(*)", "row_number() OVER ()", "'x'::regclass", "(SELECT 1)",
    "(SELECT card_token FROM payments)", "EXISTS (SELECT 1 FROM payments)",
)
# fmt: on


def tokens(sql: str) -> list[str]:
    """``sql`` cut into lexical tokens (whitespace kept), concatenating back to ``sql``."""
    return [m.group(0) for m in _TOKEN.finditer(sql)]


def mutate(sql: str, rng: Chooser, steps: int) -> str:
    """Apply ``steps`` token mutations (insert, delete, swap, duplicate, replace) to ``sql``."""
    toks = tokens(sql) or [""]
    for _ in range(steps):
        op = rng.choice(("insert", "delete", "swap", "duplicate", "replace", "splice"))
        i = rng.randint(0, len(toks) - 1)
        if op == "insert":
            toks.insert(i, rng.choice((" ", "")) + rng.choice(FRAGMENTS) + rng.choice((" ", "")))
        elif op == "delete" and len(toks) > 1:
            del toks[i]
        elif op == "swap":
            j = rng.randint(0, len(toks) - 1)
            toks[i], toks[j] = toks[j], toks[i]
        elif op == "duplicate":
            toks.insert(i, toks[i])
        elif op == "replace":
            toks[i] = rng.choice(FRAGMENTS)
        elif op == "splice" and CORPUS:
            other = tokens(rng.choice(CORPUS))
            if other:
                j = rng.randint(0, len(other) - 1)
                toks[i:] = other[j:]
    return "".join(toks)


# ---------------------------------------------------------------------- grammar


@dataclass(frozen=True, slots=True)
class Table:
    """A scenario table as the grammar sees it: columns with a coarse type each."""

    name: str
    alias: str
    columns: tuple[tuple[str, str], ...]  # (name, "int" | "text" | "time" | "bool")


def _table(name: str, alias: str, columns: str) -> Table:
    """A Table from ``"col:type col:type ..."``."""
    return Table(name, alias, tuple((c, t) for c, t in (x.split(":") for x in columns.split())))


TABLES: tuple[Table, ...] = (
    _table("customers", "c", "id:int name:text email:text phone:text address:text created_at:time"),
    _table("orders", "o", "id:int customer_id:int status:text total_cents:int created_at:time"),
    _table(
        "payments",
        "p",
        "id:int order_id:int customer_id:int amount_cents:int card_last4:text card_token:text",
    ),
    _table("products", "pr", "id:int seller_id:int title:text price_cents:int"),
    _table(
        "reviews", "r", "id:int product_id:int customer_id:int rating:int body:text hidden:bool"
    ),
    _table("account_flags", "f", "customer_id:int banned:bool reason:text"),
)
#: The tables alice's statements mostly use (others appear now and then).
_MAIN = TABLES[:4]

#: The column that carries each scoped table's customer.
_SCOPE_COLUMN = {
    "customers": "id",
    "orders": "customer_id",
    "payments": "customer_id",
    "account_flags": "customer_id",
}

#: Ways the scenario's tables really join: (left table, left col, right table, right col).
_JOINS: tuple[tuple[str, str, str, str], ...] = (
    ("customers", "id", "orders", "customer_id"),
    ("customers", "id", "payments", "customer_id"),
    ("orders", "id", "payments", "order_id"),
    ("orders", "customer_id", "payments", "customer_id"),
    ("customers", "id", "account_flags", "customer_id"),
    ("customers", "id", "reviews", "customer_id"),
    ("products", "id", "reviews", "product_id"),
)

_LITERALS: dict[str, tuple[str, ...]] = {
    "int": ("42", "42", "42", "7", "100", "421", "422", "0", "9", "115", "-1", "NULL"),
    "text": (
        "'pending'",
        "'shipped'",
        "'Name-0042'",
        "'c0042@mail.example'",
        "'2598'",
        "'tok_421_secret'",
        "'x'",
        "''",
        "NULL",
    ),
    "time": ("'2026-10-03 12:00:00+00'", "'2025-03-01'", "NULL"),
    "bool": ("true", "false", "NULL"),
}
_OPS: dict[str, tuple[str, ...]] = {
    "int": ("=", "=", "=", "<>", "<", ">=", "IS DISTINCT FROM", "IS NOT DISTINCT FROM"),
    "text": ("=", "<>", "LIKE", ">"),
    "time": ("<", ">=", "="),
    "bool": ("=", "IS DISTINCT FROM"),
}


@dataclass(frozen=True, slots=True)
class _Scope:
    """The aliases (and their tables) visible to an expression."""

    items: tuple[tuple[str, Table], ...]

    def column(self, rng: Chooser, kind: str | None = None) -> tuple[str, str]:
        """A qualified column ``alias.col`` and its type (of ``kind`` when one exists)."""
        alias, table = rng.choice(self.items)
        cols = [c for c in table.columns if kind is None or c[1] == kind] or list(table.columns)
        name, typ = rng.choice(cols)
        return f"{alias}.{name}", typ


class SelectGrammar:
    """Random SELECTs over the scenario tables (alice's point of view: customer 42)."""

    def __init__(self, rng: Chooser, *, max_depth: int = 2, tricks: bool = False) -> None:
        self.rng = rng
        self.max_depth = max_depth
        #: also emit name-resolution tricks: inner names that PostgreSQL resolves
        #: to an outer column (whole-row aliases, output aliases, literal columns)
        self.tricks = tricks
        self._n = 0

    def _alias(self, table: Table) -> str:
        self._n += 1
        return f"{table.alias}{self._n}"

    def statement(self) -> str:
        """One top-level SELECT (or a UNION of two)."""
        if self.rng.randint(0, 9) == 0:
            left = self.select(0, None, width=1, order=False)
            return f"{left} UNION {self.select(0, None, width=1, order=False)}"
        return self.select(0, None)

    def select(
        self, depth: int, outer: _Scope | None, *, width: int | None = None, order: bool = True
    ) -> str:
        """A SELECT; ``outer`` is visible for correlation; ``width`` fixes the column count."""
        rng = self.rng
        table = rng.choice(_MAIN) if rng.randint(0, 7) else rng.choice(TABLES)
        items = [(self._alias(table), table)]
        from_sql = f"{table.name} {items[0][0]}"
        for _ in range(rng.randint(0, 2 if depth == 0 else 1)):
            from_sql += self._join(items)
        scope = _Scope(tuple(items))
        full = _Scope(scope.items + (outer.items if outer is not None else ()))
        n = width if width is not None else rng.randint(1, 3)
        if n == 1 and width is None and rng.randint(0, 5) == 0:
            projections = ["count(*)"]
        else:
            projections = [
                self._projection(scope, full, depth, single=width is not None) for _ in range(n)
            ]
        sql = f"SELECT {', '.join(projections)} FROM {from_sql}"
        conditions = []
        if rng.randint(0, 4):  # usually scope every table to the ticket's customer
            conditions += [
                f"{a}.{_SCOPE_COLUMN[t.name]} = 42"
                for a, t in items
                if t.name in _SCOPE_COLUMN and rng.randint(0, 9)
            ]
        if rng.randint(0, 3):
            conditions.append(self.condition(full, depth, 0))
        if conditions:
            sql += f" WHERE {' AND '.join(conditions)}"
        if order and width is None and depth == 0 and rng.randint(0, 3) == 0:
            alias, tbl = items[0]
            sql += f" ORDER BY {alias}.{tbl.columns[0][0]}"
        return sql

    def _join(self, items: list[tuple[str, Table]]) -> str:
        rng = self.rng
        names = {t.name for _a, t in items}
        options = [j for j in _JOINS if (j[0] in names) != (j[2] in names)]
        if not options or rng.randint(0, 5) == 0:
            table = rng.choice(_MAIN)
            alias = self._alias(table)
            left_alias = rng.choice(items)[0]
            items.append((alias, table))
            on = rng.choice(
                ("true", f"{alias}.id = {left_alias}.id", f"{alias}.{table.columns[0][0]} = 42")
            )
            kind = rng.choice(("JOIN", "LEFT JOIN", "CROSS JOIN"))
            suffix = "" if kind == "CROSS JOIN" else f" ON {on}"
            return f" {kind} {table.name} {alias}{suffix}"
        lt, lc, rt, rc = rng.choice(options)
        if rt in names:
            lt, lc, rt, rc = rt, rc, lt, lc
        left_alias = next(a for a, t in items if t.name == lt)
        table = next(t for t in TABLES if t.name == rt)
        alias = self._alias(table)
        items.append((alias, table))
        on = f"{alias}.{rc} = {left_alias}.{lc}"
        if rng.randint(0, 3) == 0:
            on += f" AND {alias}.{rng.choice(table.columns)[0]} IS NOT NULL"
        kind = rng.choice(("JOIN", "JOIN", "INNER JOIN", "LEFT JOIN"))
        return f" {kind} {table.name} {alias} ON {on}"

    def _projection(self, scope: _Scope, full: _Scope, depth: int, *, single: bool) -> str:
        rng = self.rng
        if self.tricks and depth < self.max_depth and rng.randint(0, 2) == 0:
            return f"({self._trick(full)})"
        pick = rng.randint(0, 9)
        if pick <= 5 or single:
            return scope.column(rng)[0]
        if pick in (6, 7):
            col, typ = scope.column(rng, "text")
            return f"lower({col})" if typ == "text" else col
        if pick == 8 and depth < self.max_depth:
            return f"({self._scalar(full, depth + 1)})"
        return rng.choice(("1", "'x'", f"{scope.column(rng)[0]} IS NULL"))

    def _trick(self, outer: _Scope) -> str:
        """A scalar subquery whose bare name PostgreSQL may resolve to an outer column."""
        rng = self.rng
        name = rng.choice(rng.choice(outer.items)[1].columns)[0]
        pick = rng.randint(0, 3)
        if pick == 0:  # an alias named like the outer column: not a whole-row reference
            return f"SELECT {name} FROM products {name} LIMIT 1"
        if pick == 1:  # an output alias is invisible to WHERE
            return f"SELECT 1 AS {name} FROM products x{self._n} WHERE {name} IS NOT NULL LIMIT 1"
        if pick == 2:  # an unaliased literal is named ?column?, not by its text
            return f"SELECT {name} FROM (SELECT '{name}' FROM products LIMIT 1) s{self._n}"
        return f"SELECT max(length({name}::text)) FROM (SELECT 1 AS other) s{self._n}"

    def _scalar(self, outer: _Scope, depth: int) -> str:
        rng = self.rng
        table = rng.choice(_MAIN)
        alias = self._alias(table)
        inner = _Scope(((alias, table),))
        full = _Scope(inner.items + outer.items)
        col = inner.column(rng, "int")[0]
        agg = rng.choice(("count(*)", f"max({col})", f"min({col})"))
        sql = f"SELECT {agg} FROM {table.name} {alias}"
        if rng.randint(0, 4):
            sql += f" WHERE {self.condition(full, depth, 0)}"
        return sql

    def condition(self, scope: _Scope, depth: int, level: int) -> str:
        """A boolean expression tree over ``scope`` (AND/OR/NOT of predicates)."""
        rng = self.rng
        pick = rng.randint(0, 9) if level < 3 else 9
        if pick <= 2:
            left = self.condition(scope, depth, level + 1)
            right = self.condition(scope, depth, level + 1)
            return f"({left} {rng.choice(('AND', 'AND', 'OR'))} {right})"
        if pick == 3:
            return f"NOT ({self.condition(scope, depth, level + 1)})"
        if pick == 4 and depth < self.max_depth:
            sub = self._subquery_predicate(scope, depth + 1)
            if sub:
                return sub
        return self.predicate(scope)

    def predicate(self, scope: _Scope) -> str:
        """One comparison: column op literal, column = column, IN list, IS NULL, true."""
        rng = self.rng
        pick = rng.randint(0, 9)
        col, typ = scope.column(rng)
        if pick <= 4:
            return f"{col} {rng.choice(_OPS[typ])} {rng.choice(_LITERALS[typ])}"
        if pick == 5:
            values = {rng.choice(_LITERALS[typ]) for _ in range(rng.randint(1, 3))}
            return f"{col} IN ({', '.join(sorted(values))})"
        if pick == 6:
            other, _typ = scope.column(rng, typ)
            return f"{col} = {other}"
        if pick == 7:
            return f"{col} IS {rng.choice(('NULL', 'NOT NULL'))}"
        if pick == 8:
            int_col, int_typ = scope.column(rng, "int")
            return f"{int_col} = 42" if int_typ == "int" else f"{col} IS NULL"
        return rng.choice(("true", "false", "1 = 1"))

    def _subquery_predicate(self, scope: _Scope, depth: int) -> str | None:
        rng = self.rng
        col, typ = scope.column(rng, "int")
        if typ != "int":
            return None
        table = rng.choice(_MAIN)
        alias = self._alias(table)
        inner = _Scope(((alias, table),))
        full = _Scope(inner.items + scope.items)
        inner_col = inner.column(rng, "int")[0]
        where = f" WHERE {self.condition(full, depth, 1)}" if rng.randint(0, 3) else ""
        if rng.randint(0, 1):
            return f"{col} IN (SELECT {inner_col} FROM {table.name} {alias}{where})"
        return f"EXISTS (SELECT 1 FROM {table.name} {alias}{where})"


# ---------------------------------------------------------------------- strategies


def arbitrary_sql() -> st.SearchStrategy[str]:
    """Arbitrary text, biased towards SQL's alphabet and parser-tripping fragments."""
    pieces = st.one_of(
        st.text(max_size=20),
        st.sampled_from(FRAGMENTS),
        st.text(alphabet="'\"$-/*;:%()\\ \n\rUuEe&0123456789", max_size=10),
    )
    return st.lists(pieces, max_size=30).map("".join)


@st.composite
def mutated_sql(draw: st.DrawFn) -> str:
    """A statement of the corpus with one to six token mutations."""
    chooser = DrawChooser(draw)
    base = chooser.choice(CORPUS)
    return mutate(base, chooser, chooser.randint(1, 6))


@st.composite
def alice_selects(draw: st.DrawFn, *, tricks: bool = False) -> str:
    """A SELECT over the scenario tables from the grammar (joins, WHERE trees, subqueries)."""
    return SelectGrammar(DrawChooser(draw), tricks=tricks).statement()
