"""ORDER BY, DISTINCT ON, GROUP BY and LIMIT: where output column names count.

PostgreSQL (findTargetlistEntrySQL92) matches a bare name in ORDER BY or
DISTINCT ON against the output columns first, then reads it as an input
column; a bare name in GROUP BY is a local input column first, then an
output name, then an outer column; any other expression reads input columns
only. After a set operation or a parenthesized query only output names and
positions are analyzed.
"""

from __future__ import annotations

from sqlglot import exp

from accessguard.analysis.names import (
    Env,
    Source,
    bare_name,
    local_input,
    outer_input,
    public_level,
    refuse,
)
from accessguard.errors import Reason

#: the arguments each clause may have (built once: a set display is built on every call)
_ORDERED_ARGS_OK = frozenset({"this", "desc", "nulls_first"})
_LIST_ARGS_OK = frozenset({"expressions"})
_LIMIT_ARGS_OK = frozenset({"this", "expression"})


class OutputNames:
    """The walker's clauses that may name output columns (a mixin of ``Clauses``)."""

    dialect: str

    def expr(self, node: exp.Expression, env: Env, ctes: dict[str, Source]) -> None:
        raise NotImplementedError  # the Walker's

    def _only_args(self, node: exp.Expression, allowed: frozenset[str] | set[str]) -> None:
        raise NotImplementedError  # the Clauses'

    def _sort_items(self, items: list[exp.Expression], env: Env, ctes: dict[str, Source]) -> None:
        """ORDER BY / DISTINCT ON of a SELECT: a bare output name first, else an expression."""
        for item in items:
            target = item
            if isinstance(item, exp.Ordered):
                self._only_args(item, _ORDERED_ARGS_OK)
                target = item.this
            name = bare_name(target)
            if name in env.outputs:
                _spread_key(env, name)
                continue  # the output column: what it reads is already counted
            _spread_key(env, target)
            self.expr(target, env, ctes)

    def _group(self, group: exp.Group, env: Env, ctes: dict[str, Source]) -> None:
        """GROUP BY: a bare name is a local input column, else an output name, else outer."""
        self._only_args(group, _LIST_ARGS_OK)
        for item in group.expressions:
            name = bare_name(item)
            if name is not None and name in env.outputs and not local_input(env, name):
                if self.dialect != "postgres" and outer_input(env, name):
                    refuse(Reason.SQL_UNANALYZABLE, f"GROUP BY {name} could name an outer column")
                _spread_key(env, name)
                continue
            _spread_key(env, item)
            self.expr(item, env, ctes)

    def _outer_modifiers(
        self, node: exp.Expression, outputs: frozenset[str], ctes: dict[str, Source]
    ) -> None:
        """ORDER BY of a set operation or a parenthesized query: output names only."""
        order = node.args.get("order")
        if order is not None:
            self._only_args(order, _LIST_ARGS_OK)
            for item in order.expressions:
                target = item.this if isinstance(item, exp.Ordered) else item
                if isinstance(item, exp.Ordered):
                    self._only_args(item, _ORDERED_ARGS_OK)
                positional = isinstance(target, exp.Literal) and not target.is_string
                if not positional and bare_name(target) not in outputs:
                    refuse(
                        Reason.SQL_UNANALYZABLE,
                        "ORDER BY after a set operation or a parenthesized query is analyzed "
                        "only by output column name or position",
                    )
        self._limits(node, ctes)

    def _limits(self, node: exp.Expression, ctes: dict[str, Source]) -> None:
        for key in ("limit", "offset"):
            mod = node.args.get(key)
            if mod is None:
                continue
            if isinstance(mod, exp.Fetch):  # FETCH FIRST n ROWS ONLY: a LIMIT by another name
                options = mod.args.get("limit_options")
                if options is not None and (
                    options.args.get("percent") or options.args.get("with_ties")
                ):
                    refuse(Reason.SQL_UNANALYZABLE, "FETCH ... PERCENT / WITH TIES is not analyzed")
                if mod.args.get("count") is not None:
                    self.expr(mod.args["count"], Env(None), ctes)
                continue
            self._only_args(mod, _LIMIT_ARGS_OK)
            self.expr(mod.args.get("expression") or mod.this, Env(None), ctes)


def _spread_key(env: Env, key: str | exp.Expression | None) -> None:
    """Refuse an ORDER BY, DISTINCT ON or GROUP BY key that is an output column computed over
    several rows of a scoped table (by name or position), at a level with rows of no scoped
    table: ``ORDER BY n LIMIT 1`` picks the row of joined products that the count ``n``
    chooses, as ``WHERE n = 0`` does (``Walker._spread_read``). A key that is an expression
    is walked, and its column references are checked there.
    """
    if not env.spread or not public_level(env):
        return
    positional = isinstance(key, exp.Literal) and not key.is_string
    if positional or (isinstance(key, str) and key in env.spread):
        refuse(
            Reason.SQL_UNANALYZABLE,
            "ordering or grouping rows with no row scope by a value computed over several "
            "rows of a scoped table is not analyzed",
        )
