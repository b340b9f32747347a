"""USING and NATURAL joins: the columns they compare and merge, as PostgreSQL does.

``a JOIN b USING (k)`` compares ``a.k`` with ``b.k`` and gives the join one
column ``k`` (transformFromClauseItem, buildMergedJoinVar): an unqualified
``k`` then means the left input's column for an inner or left join, the right
input's for a right join (a full join's COALESCE is not analyzed). The left
input is the join tree so far, in which ``k`` must name exactly one column (a
column an earlier USING merged counts once). NATURAL is USING over every
column name both inputs have; it is analyzed only between tables of the
catalog, whose columns are known exactly.
"""

from __future__ import annotations

from sqlglot import exp

from accessguard.analysis.names import Env, Merged, Source, column_hits, ident, refuse
from accessguard.errors import Reason

#: what a USING/NATURAL join reads (source, column) and the equalities it asserts
Merge = tuple[list[tuple[Source, str]], list[tuple[exp.Expression, Env]]]


def using_names(join: exp.Join, tree: list[Source], right: Source, env: Env) -> list[str]:
    """The column names a USING or NATURAL join compares."""
    using = join.args.get("using")
    if using:
        names = [ident(u.this if isinstance(u, exp.Column) else u) for u in using]
        if len(set(names)) != len(names):
            refuse(Reason.SQL_UNANALYZABLE, "a column named twice in USING")
        return names
    if any(s.spec is None for s in [*tree, right]):
        refuse(Reason.SQL_UNANALYZABLE, "NATURAL JOIN is analyzed between tables only")
    visible = {m.name for m in _tree_merged(tree, env)}
    for source in tree:
        visible |= source.columns
    return sorted(visible & right.columns)


def merge(  # noqa: PLR0913 - one join's inputs
    names: list[str], tree: list[Source], right: Source, env: Env, *, side: str, strict: bool
) -> Merge:
    """Merge ``names`` of the join tree ``tree`` with ``right``; update ``env.merged``."""
    if side == "FULL":
        refuse(Reason.SQL_UNANALYZABLE, "FULL JOIN with USING or NATURAL is not analyzed")
    reads: list[tuple[Source, str]] = []
    equalities: list[tuple[exp.Expression, Env]] = []
    view = env.view([*tree, right], strict=strict)
    sources = {s.alias: s for s in tree}
    for name in names:
        entries = [m for m in _tree_merged(tree, env) if m.name == name]
        hits = column_hits(sources, entries, name)
        if len(hits) != 1 or not right.has(name):
            refuse(Reason.COLUMN_UNKNOWN, f"the join column {name} is not in both inputs")
        left = hits[0]
        reads += [(left, name), (right, name)]
        # both sides equal, as ON left.k = right.k (an outer join's binds its nullable side)
        equalities.append((exp.EQ(this=_col(left, name), expression=_col(right, name)), view))
        covers = entries[0].covers if entries else frozenset({id(left)})
        for entry in entries:
            env.merged.remove(entry)
        carrier = right if side == "RIGHT" else left
        env.merged.append(Merged(name=name, source=carrier, covers=covers | {id(right)}))
    return reads, equalities


def _tree_merged(tree: list[Source], env: Env) -> list[Merged]:
    ids = {id(s) for s in tree}
    return [m for m in env.merged if m.covers <= ids]


def _col(source: Source, name: str) -> exp.Column:
    return exp.Column(
        this=exp.Identifier(this=name, quoted=True),
        table=exp.Identifier(this=source.alias, quoted=True),
    )
