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
        exp.Localtimestamp,
        exp.DateTrunc,
        exp.TimestampTrunc,
        exp.Extract,
        exp.Date,
        # casts
        exp.Cast,
        exp.TryCast,
        # ARRAY[a, b] (ARRAY(subquery) packs rows: see PACKING)
        exp.Array,
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

#: PostgreSQL's harmless built-in functions by their catalog identity: the name
#: pg_catalog gives them and how many arguments its definitions take (the
#: fewest, the most; None: variadic). Each computes a value from its arguments
#: alone: no file, no other server, no catalog, no session state, no row of
#: its own. A call the SQL sent makes (``nodes.identity``: the generated call
#: as PostgreSQL's parser reads it) is allowed when it is one of these, or
#: when sqlglot's class is in ``ALLOWED_FUNCS``; everything else is refused:
#: pg_read_file, lo_import, dblink, query_to_xml, current_setting, set_config,
#: txid_current, generate_series, every pg_* and every user-defined function.
#: Aggregates are not listed: only the ones sqlglot types (``ALLOWED_FUNCS``)
#: are allowed, so the walker knows which carry a row's value.
BUILTINS: dict[str, tuple[int, int | None]] = {
    # numbers
    "abs": (1, 1), "round": (1, 2), "trunc": (1, 2), "floor": (1, 1), "ceil": (1, 1),
    "ceiling": (1, 1), "sign": (1, 1), "sqrt": (1, 1), "cbrt": (1, 1), "power": (2, 2),
    "pow": (2, 2), "exp": (1, 1), "ln": (1, 1), "log": (1, 2), "log10": (1, 1),
    "mod": (2, 2), "div": (2, 2), "pi": (0, 0), "degrees": (1, 1), "radians": (1, 1),
    "gcd": (2, 2), "lcm": (2, 2), "scale": (1, 1), "width_bucket": (4, 4),
    "sin": (1, 1), "cos": (1, 1), "tan": (1, 1), "cot": (1, 1), "asin": (1, 1),
    "acos": (1, 1), "atan": (1, 1), "atan2": (2, 2),
    # text
    "lower": (1, 1), "upper": (1, 1), "initcap": (1, 1), "length": (1, 1),
    "char_length": (1, 1), "character_length": (1, 1), "octet_length": (1, 1),
    "bit_length": (1, 1), "btrim": (1, 2), "ltrim": (1, 2), "rtrim": (1, 2),
    "lpad": (2, 3), "rpad": (2, 3), "substr": (2, 3), "substring": (2, 3), "left": (2, 2),
    "right": (2, 2), "replace": (3, 3), "strpos": (2, 2), "position": (2, 2),
    "split_part": (3, 3), "repeat": (2, 2), "reverse": (1, 1), "starts_with": (2, 2),
    "translate": (3, 3), "concat": (1, None), "concat_ws": (2, None),
    "format": (1, None), "md5": (1, 1), "ascii": (1, 1), "chr": (1, 1),
    # formatting and conversion
    "to_char": (2, 2), "to_number": (2, 2), "to_date": (2, 2), "to_timestamp": (1, 2),
    # date and time (``AT TIME ZONE`` is timezone(zone, value))
    "date_trunc": (2, 3), "date_part": (2, 2), "extract": (2, 2), "timezone": (2, 2),
    "now": (0, 0), "statement_timestamp": (0, 0),  # Django's Now()
    "transaction_timestamp": (0, 0), "clock_timestamp": (0, 0),
    "age": (1, 2), "make_date": (3, 3), "isfinite": (1, 1),
    # json (``->`` and friends are in OPERATORS)
    "json_build_object": (0, None), "jsonb_build_object": (0, None),
    "json_build_array": (0, None), "jsonb_build_array": (0, None), "to_json": (1, 1),
    "to_jsonb": (1, 1), "json_typeof": (1, 1), "jsonb_typeof": (1, 1),
    "json_array_length": (1, 1), "jsonb_array_length": (1, 1),
    "json_extract_path": (2, None), "json_extract_path_text": (2, None),
    "jsonb_extract_path": (2, None), "jsonb_extract_path_text": (2, None),
    # arrays
    "array_length": (2, 2), "cardinality": (1, 1), "array_to_string": (2, 3),
    "string_to_array": (2, 3), "array_position": (2, 3),
    # nulls
    "num_nulls": (1, None), "num_nonnulls": (1, None),
}  # fmt: skip

#: Operators PostgreSQL reads for a sqlglot function node that are harmless: the
#: json/jsonb field and path extractions (``->``, ``->>``, ``#>``, ``#>>``).
OPERATORS: frozenset[str] = frozenset({"->", "->>", "#>", "#>>"})


def builtin(name: str, arity: int) -> bool:
    """Whether ``name`` called with ``arity`` arguments is one of ``BUILTINS`` or ``OPERATORS``."""
    if name.startswith("operator "):
        return name.removeprefix("operator ") in OPERATORS and arity == 2
    bounds = BUILTINS.get(name)
    if bounds is None:
        return False
    least, most = bounds
    return arity >= least and (most is None or arity <= most)


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
    # issue 16: what the ORMs write for ordinary queries
    exp.AtTimeZone,  # timezone(zone, value): Django's USE_TZ
    exp.Any,  # x = ANY(array or subquery)
    exp.All,
    exp.Bracket,  # an array subscript
    exp.Slice,  # an array slice a[1:2]
    exp.JSONPath,  # the key or index of ->, ->>, #>, #>>
    exp.JSONPathRoot,
    exp.JSONPathKey,
    exp.JSONPathSubscript,
)

#: Keyword arguments (Var) are accepted only as the unit of these functions.
UNIT_FUNCS: tuple[type[exp.Expression], ...] = (
    exp.DateTrunc,
    exp.TimestampTrunc,
    exp.Extract,
    exp.Interval,
)
