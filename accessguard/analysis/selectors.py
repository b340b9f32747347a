"""What chooses the rows a count or a rank counts (the count pivot).

``count(*)`` returns a number of rows, not a row's value, so the walker does
not weigh it as it weighs ``max(x)`` (``Facts.row_weight``): a count over a
group is a summary of the group. But the rows a count counts are chosen by
expressions: its argument (``count(CASE WHEN .. THEN 1 END)``), a ``FILTER``,
and for a window call its ``PARTITION BY`` and ``ORDER BY`` keys (as for
``row_number()``). Over an expression of a row's values, each
such call is a bit of one particular row: forty-two of them in one result row
spell out the totals of three orders past a row cap of two, and the ledger
counts one row. Such a call weighs as ``max(CASE ..)`` does.

A count of a bare column (``count(id)``, ``count(DISTINCT status)``) and a
window over bare columns (``row_number() OVER (PARTITION BY customer_id ORDER
BY created_at)``) choose nothing of their own and stay free. Whether a column
is bare is the walker's to say (it resolves names); this module only names
the expressions that must be.
"""

from __future__ import annotations

from sqlglot import exp

__all__ = ["COUNTING", "counted_by"]

#: calls whose value is a number of rows (or a position among them), not a row's value,
#: and that the walker does not weigh already (sqlglot types rank() and dense_rank() as
#: aggregates: they weigh as max(x) does, whatever their window)
COUNTING: tuple[type[exp.Func], ...] = (exp.Count, exp.CountIf, exp.RowNumber)


def counted_by(node: exp.Func) -> tuple[exp.Expression, ...] | None:
    """The expressions that choose which rows ``node`` (one of ``COUNTING``) counts.

    Its argument, and its window's ``PARTITION BY`` and ``ORDER BY`` keys; each
    must be a bare column for the call to weigh nothing. None when something
    the walker cannot reduce to bare columns chooses them: a condition
    (``FILTER``, ``count_if``), a named window (``OVER w``), or an argument
    list PostgreSQL's count does not take.
    """
    if isinstance(node, exp.CountIf) or node.args.get("expressions"):
        return None
    parent = node.parent
    if isinstance(parent, exp.Filter):
        return None
    found: list[exp.Expression] = []
    arg = node.this if isinstance(node, exp.Count) else None
    if isinstance(arg, exp.Distinct):
        if len(arg.expressions) != 1:
            return None
        arg = arg.expressions[0]
    if arg is not None and not isinstance(arg, exp.Star):
        found.append(arg)
    if isinstance(parent, exp.Window):
        if parent.args.get("alias") is not None:
            return None  # OVER w: the keys are in the WINDOW clause
        found.extend(parent.args.get("partition_by") or ())
        order = parent.args.get("order")
        if order is not None:
            found.extend(o.this if isinstance(o, exp.Ordered) else o for o in order.expressions)
    return tuple(found)
