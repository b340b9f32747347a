"""What the walker does with each kind of expression node, and small helpers over nodes.

Also the cast rule (issue 16): a cast runs the target type's input or cast
function, and a domain runs its CHECK; for a type the DBA defined that is
user code, which may read any table. Only PostgreSQL's built-in types are
allowed, by the name PostgreSQL reads (the SQL sent is generated from the
tree, so that name is sqlglot's PostgreSQL spelling of the type).
"""

from __future__ import annotations

import enum
import re

from sqlglot import exp
from sqlglot.expressions.datatypes import DType

from accessguard.analysis.facts import Const, Param, Value
from accessguard.analysis.functions import SCALAR_NODES
from accessguard.analysis.names import ident, refuse
from accessguard.analysis.pgcalls import call_identity
from accessguard.analysis.shape import LITERAL_BASE
from accessguard.errors import Reason

#: PostgreSQL's built-in types (pg_catalog), as sqlglot spells them for PostgreSQL,
#: lower case, without length/precision and array brackets. reg* types are
#: built in too but refused separately (they read the system catalogs).
BUILTIN_TYPES = frozenset(
    {
        "smallint", "int", "integer", "bigint", "real", "double precision", "decimal",
        "numeric", "money", "boolean", "text", "varchar", "char", "bpchar", '"char"',
        "name", "bytea", "date", "time", "timetz", "timestamp", "timestamptz", "interval",
        "json", "jsonb", "uuid", "xml", "inet", "cidr", "macaddr", "macaddr8", "bit",
        "varbit", "tsvector", "tsquery", "oid", "point", "line", "lseg", "box", "path",
        "polygon", "circle", "int4range", "int8range", "numrange", "daterange", "tsrange",
        "tstzrange",
    }
)  # fmt: skip

_TYPE_SUFFIX = re.compile(r"\s*(\([^()]*\))?\s*(\[\d*\]\s*)*$")


class Branch(enum.Enum):
    """What ``Walker.expr`` does with a node, by its class."""

    COLUMN = "column"
    QUERY = "query"
    EXISTS = "exists"
    PARAM = "param"
    STAR = "star"
    TYPE = "type"  # a scalar node, after the type checks
    VAR = "var"
    FUNCTION = "function"  # a function call, after the allowlist check
    SCALAR = "scalar"
    REFUSED = "refused"


def branch_of(cls: type[exp.Expression]) -> Branch:
    """The branch of a node class: the first of the walker's tests it passes, in order.

    ``issubclass`` of the class answers as ``isinstance`` of any instance, so
    remembering the answer per class (``BRANCHES``) changes no decision.
    """
    if issubclass(cls, exp.Column):
        return Branch.COLUMN
    if issubclass(cls, exp.Subquery | exp.Select | exp.SetOperation):
        return Branch.QUERY
    if issubclass(cls, exp.Exists):
        return Branch.EXISTS
    if issubclass(cls, exp.Parameter | exp.Placeholder):
        return Branch.PARAM
    if issubclass(cls, exp.Star):
        return Branch.STAR
    if issubclass(cls, exp.DataType):
        return Branch.TYPE if issubclass(cls, SCALAR_NODES) else Branch.REFUSED
    if issubclass(cls, exp.Var):
        return Branch.VAR
    if issubclass(cls, exp.Func) and not issubclass(cls, SCALAR_NODES):
        return Branch.FUNCTION
    if not issubclass(cls, SCALAR_NODES):
        return Branch.REFUSED
    return Branch.SCALAR


#: node class -> its branch, learnt on first sight (dict writes are atomic: no lock)
BRANCHES: dict[type[exp.Expression], Branch] = {}


#: sqlglot's own type names whose PostgreSQL spelling is not a reg* type: a DataType
#: of one of these and nothing else is generated as that name (checked at import)
_PLAIN_TYPES = frozenset(
    t
    for t in exp.DataType.Type
    if t is not exp.DataType.Type.USERDEFINED
    and not exp.DataType(this=t).sql(dialect="postgres").lower().startswith(("reg", '"reg'))
)


def reads_catalog(node: exp.DataType) -> bool:
    """Whether a type is a reg* type (a cast to one looks names up in the system catalogs).

    A type sqlglot knows, with no other argument, is decided by its name
    alone; anything else (a name sqlglot keeps as text, a qualified or
    parameterised type) by the SQL PostgreSQL would read.
    """
    if node.this in _PLAIN_TYPES and not any(
        value for key, value in node.args.items() if key != "this"
    ):
        return False
    return node.sql(dialect="postgres").lower().startswith(("reg", '"reg'))


def type_name(node: exp.DataType) -> str:
    """The type's name as PostgreSQL reads it (without length, precision or brackets)."""
    if node.this is exp.DataType.Type.ARRAY and node.expressions:
        inner = node.expressions[0]
        return type_name(inner) if isinstance(inner, exp.DataType) else "array"
    kind = node.args.get("kind")
    if kind is None and isinstance(node.this, exp.DataType.Type):
        # the name is the built-in type's alone: generated once per type
        name = _TYPE_NAMES.get(node.this)
        if name is None:
            name = _TYPE_NAMES[node.this] = _type_name(node.this, None)
        return name
    return _type_name(node.this, kind)


#: ``type_name`` of each type that has no other argument
_TYPE_NAMES: dict[DType, str] = {}


def _type_name(this: object, kind: exp.Expression | None) -> str:
    text = exp.DataType(this=this, kind=kind).sql(dialect="postgres")
    return _TYPE_SUFFIX.sub("", text).strip().lower() if '"' not in text else text.strip()


def check_type(node: exp.DataType) -> None:
    """Refuse a type that reads the catalogs (reg*) or that PostgreSQL does not build in."""
    if reads_catalog(node):
        refuse(Reason.CATALOG_FORBIDDEN, "casts to reg* types read the system catalogs")
    if node.this is exp.DataType.Type.ARRAY:
        if node.expressions and all(isinstance(e, exp.DataType) for e in node.expressions):
            return  # the element type is checked as a child node
        refuse(Reason.TYPE_FORBIDDEN, "an array type the analyser cannot read")
    if not isinstance(node.this, exp.DataType.Type):
        refuse(Reason.TYPE_FORBIDDEN, "a type the analyser cannot read")
    kind = node.args.get("kind")
    if kind is not None and not isinstance(kind, exp.Identifier):
        refuse(Reason.TYPE_FORBIDDEN, "schema-qualified types are not allowed")
    name = type_name(node)
    if name not in BUILTIN_TYPES:
        refuse(
            Reason.TYPE_FORBIDDEN,
            f"type {name} is not one of PostgreSQL's built-in types (a cast to a type "
            "the database defines runs its code)",
        )


def display_name(node: exp.Expr) -> str:
    """The function or operator as PostgreSQL reads it, e.g. ``jsonb_path_exists`` or ``@?``.

    Generated from a copy whose arguments are all replaced by one placeholder
    name, so no literal of the statement can reach the text.
    """
    if isinstance(node, exp.Anonymous):
        return str(node.this).lower() if isinstance(node.this, str) else ident(node.this)
    # the skeleton, hence the name, is the node's class and which of its args hold a list
    shape = tuple(
        (key, isinstance(value, list))
        for key, value in node.args.items()
        if isinstance(value, exp.Expression | list) and value
    )
    name = _DISPLAY_NAMES.get((type(node), shape))
    if name is None:
        name = _display_name(node, shape)
        if len(_DISPLAY_NAMES) < _IDENTITIES_MAX:
            _DISPLAY_NAMES[type(node), shape] = name
    return name


#: ``display_name`` by node class and argument shape (generating one costs more than a walk)
_DISPLAY_NAMES: dict[tuple[type[exp.Expr], tuple[tuple[str, bool], ...]], str] = {}


def _display_name(node: exp.Expr, shape: tuple[tuple[str, bool], ...]) -> str:
    try:
        skeleton = type(node)(**{key: [_arg()] if many else _arg() for key, many in shape})
        text = skeleton.sql(dialect="postgres")
    except Exception:  # noqa: BLE001 - a name for a message: fall back to the node's key
        return node.key
    call = re.match(r"^\s*([A-Za-z_][A-Za-z0-9_.]*)\s*[(\[]", text)
    if call is not None and call.group(1) != _ARG:
        return call.group(1).lower()
    words = " ".join(text.replace(_ARG, " ").split())
    return f"operator {words}" if words and len(words) <= 20 else node.key


_ARG = "ag_arg"

#: how many distinct call shapes ``identity`` remembers (each costs one parse)
_IDENTITIES_MAX = 4096
_IDENTITIES: dict[tuple[object, ...], tuple[str, int] | None] = {}

#: an argument of a call's shape: (name, "list", length), (name, "node", None) or
#: (name, "=", value)
_Arg = tuple[str, str, object]


def identity(node: exp.Func) -> tuple[str, int] | None:
    """The pg_catalog function (or operator) the SQL sent calls for ``node``, and its arity.

    The SQL sent is generated from the tree, so what PostgreSQL runs is the
    generated call, whatever the statement spelled: ``identity`` generates the
    node with a placeholder name in place of each argument (as many as it
    has) and asks PostgreSQL's parser what it reads (``call_identity``), so
    ``pow(x, 2)``, ``power(x, 2)`` and ``pg_catalog.power(x, 2)`` are all
    ``("power", 2)``. Remembered per node class and argument shape.
    """
    shape: list[_Arg] = []
    for key, value in sorted(node.args.items()):
        if isinstance(value, list):
            if value:
                shape.append((key, "list", len(value)))
        elif isinstance(value, exp.Expression):
            shape.append((key, "node", None))
        elif value not in (None, False, ""):
            if not isinstance(value, str | bool | int):
                return None
            shape.append((key, "=", value))
    remembered = (type(node), *shape)
    if remembered in _IDENTITIES:
        return _IDENTITIES[remembered]
    found = _identity(type(node), shape)
    if len(_IDENTITIES) < _IDENTITIES_MAX:
        _IDENTITIES[remembered] = found
    return found


def _identity(cls: type[exp.Func], shape: list[_Arg]) -> tuple[str, int] | None:
    args: dict[str, object] = {}
    for key, kind, value in shape:
        if kind == "list" and isinstance(value, int):
            args[key] = [_arg() for _ in range(value)]
        elif kind == "node":
            args[key] = _arg()
        else:
            args[key] = value
    try:
        text = cls(**args).sql(dialect="postgres")
    except Exception:  # noqa: BLE001 - not generated: not identified, so refused
        return None
    return call_identity(text)


def _arg() -> exp.Column:
    return exp.Column(this=exp.Identifier(this=_ARG, quoted=False))


#: (isinstance with a tuple: a union type is built anew on every call)
#: what keeps the name of the column under it (a cast, parentheses)
_NAME_KEEPING = (exp.Cast, exp.TryCast, exp.Paren)
#: what ``conjuncts`` looks into
_CONJUNCTIONS = (exp.And, exp.Paren)
_PARAMETERS = (exp.Parameter, exp.Placeholder)


def output_name(proj: exp.Expression) -> str:
    """The name PostgreSQL gives a select-list item that has no alias (FigureColname, in part).

    Only names PostgreSQL gives too: anything else is ``?column?``, which no
    column of the catalog is called.
    """
    target = proj
    while isinstance(target, _NAME_KEEPING):
        target = target.this
    if isinstance(target, exp.Column) and isinstance(target.this, exp.Identifier):
        return ident(target.this)
    return "?column?"


def conjuncts(conditions: list[exp.Expression]) -> list[exp.Expression]:
    if len(conditions) == 1 and not isinstance(conditions[0], _CONJUNCTIONS):
        return list(conditions)  # one comparison (most ON clauses)
    out: list[exp.Expression] = []
    stack = list(conditions)
    while stack:
        node = stack.pop()
        while isinstance(node, exp.Paren):
            node = node.this
        if isinstance(node, exp.And):
            stack.extend((node.this, node.expression))
        else:
            out.append(node)
    return out


def constant(node: exp.Expression) -> Value | None:
    """An integer literal or a bound parameter (possibly cast to an integer type)."""
    while isinstance(node, exp.Paren):
        node = node.this
    if isinstance(node, exp.Cast) and node.to.is_type(*exp.DataType.INTEGER_TYPES):
        node = node.this
        while isinstance(node, exp.Paren):
            node = node.this
    if isinstance(node, exp.Literal) and not node.is_string:
        text = node.this
        if text.isdigit():
            return Const(int(text))
        return None
    if isinstance(node, _PARAMETERS):
        return Param(param_key(node))
    return None


def param_key(node: exp.Parameter | exp.Placeholder) -> int | str:
    if isinstance(node, exp.Parameter):
        inner = node.this
        if isinstance(inner, exp.Literal) and not inner.is_string and inner.this.isdigit():
            number = int(inner.this)
            if number >= LITERAL_BASE:  # a literal lifted out by shape_of
                return f"#{number - LITERAL_BASE}"
            return number - 1
        refuse(Reason.SQL_UNANALYZABLE, "a parameter the analyser cannot read")
    name = node.this
    if isinstance(name, exp.Identifier):
        name = name.this
    if not name:
        refuse(Reason.SQL_UNANALYZABLE, "an unnumbered placeholder")
    text = str(name)
    if text.startswith("_agq") and text[4:].isdigit():
        return int(text[4:])
    if text.startswith("_agl") and text[4:].isdigit():
        return f"#{text[4:]}"
    return text
