"""The expression nodes and functions the analyser accepts.

An allowlist: a function or node type not named here is refused. Functions
are pure computations over values the statement already reads; nothing here
reads files, reaches other servers, runs dynamic SQL, touches session state
or returns rows of its own (pg_read_file, dblink, query_to_xml,
current_setting, set_config, generate_series and every user-defined function
are refused because they are *not* listed).
"""

from __future__ import annotations

from sqlglot import exp

#: sqlglot function classes that are safe to call.
ALLOWED_FUNCS: frozenset[type[exp.Func]] = frozenset(
    {
        # aggregates
        exp.Count,
        exp.Sum,
        exp.Avg,
        exp.Min,
        exp.Max,
        exp.GroupConcat,
        exp.ArrayAgg,
        exp.Stddev,
        exp.CountIf,
        # window functions
        exp.RowNumber,
        exp.Rank,
        exp.DenseRank,
        # text
        exp.Lower,
        exp.Upper,
        exp.Length,
        exp.Trim,
        exp.Substring,
        exp.Concat,
        exp.Initcap,
        exp.Left,
        exp.Right,
        exp.Replace,
        exp.StrPosition,
        # numbers
        exp.Abs,
        exp.Round,
        exp.Floor,
        exp.Ceil,
        # conditionals
        exp.Coalesce,
        exp.Nullif,
        exp.Greatest,
        exp.Least,
        exp.Case,
        exp.If,
        # time
        exp.CurrentTimestamp,
        exp.CurrentDate,
        exp.DateTrunc,
        exp.TimestampTrunc,
        exp.Extract,
        exp.Date,
        # casts
        exp.Cast,
        exp.TryCast,
    }
)

#: Aggregates that pack many input rows into one value (issue 23): over a scoped
#: table they would let one result row carry thousands of rows past the row
#: limit and the ledger, so the walker refuses them there. Only the allowed
#: ones matter; their kin are listed so that allowing one later keeps the rule.
PACKING: frozenset[type[exp.Func]] = frozenset(
    {
        exp.GroupConcat,  # string_agg, group_concat
        exp.ArrayAgg,
        exp.ArrayConcatAgg,
        exp.ArrayUnionAgg,
        exp.ArrayUniqueAgg,
        exp.JSONArrayAgg,  # json_agg
        exp.JSONObjectAgg,
        exp.JSONBObjectAgg,
        exp.ObjectAgg,
        exp.Array,  # ARRAY(subquery)
    }
)

#: Anonymous (unknown to sqlglot) names of packing aggregates, for the same rule.
PACKING_ANONYMOUS: frozenset[str] = frozenset(
    {"jsonb_agg", "xmlagg", "array_agg", "string_agg", "json_agg", "listagg"}
)

#: Functions sqlglot leaves as Anonymous that are safe (lower-case names).
ALLOWED_ANONYMOUS: frozenset[str] = frozenset({"btrim", "ltrim", "rtrim"})

#: Non-function nodes allowed inside expressions (operators, literals, ...).
SCALAR_NODES: tuple[type[exp.Expression], ...] = (
    exp.Literal,
    exp.Boolean,
    exp.Null,
    exp.Identifier,
    exp.Paren,
    exp.Tuple,
    exp.Alias,
    exp.And,
    exp.Or,
    exp.Not,
    exp.Xor,
    exp.EQ,
    exp.NEQ,
    exp.GT,
    exp.GTE,
    exp.LT,
    exp.LTE,
    exp.NullSafeEQ,
    exp.NullSafeNEQ,
    exp.Is,
    exp.In,
    exp.Between,
    exp.Like,
    exp.ILike,
    exp.Add,
    exp.Sub,
    exp.Mul,
    exp.Div,
    exp.Mod,
    exp.Neg,
    exp.DPipe,
    exp.Distinct,
    exp.DataType,
    exp.DataTypeParam,
    exp.Interval,
    exp.Where,
    exp.Group,
    exp.Having,
    exp.Order,
    exp.Ordered,
    exp.Filter,
    exp.Window,
    exp.WindowSpec,
    exp.Cast,
    exp.TryCast,
    exp.Case,
    exp.If,
)

#: Keyword arguments (Var) are accepted only as the unit of these functions.
UNIT_FUNCS: tuple[type[exp.Expression], ...] = (
    exp.DateTrunc,
    exp.TimestampTrunc,
    exp.Extract,
    exp.Interval,
)
