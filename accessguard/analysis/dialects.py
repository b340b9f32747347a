"""One sqlglot Dialect instance per name, shared by analysis and the second wall.

A leaf of the analysis package: ``analysis`` (parsing) and ``analysis.rewrite``
(generating the SQL sent) both import it, and neither imports the other for it.
"""

from __future__ import annotations

from sqlglot.dialects.dialect import Dialect

_DIALECTS: dict[str, Dialect] = {}


def dialect(name: str) -> Dialect:
    """The Dialect named ``name`` (sqlglot builds a new one per lookup; we keep one)."""
    found = _DIALECTS.get(name)
    if found is None:
        found = _DIALECTS[name] = Dialect.get_or_raise(name)
    return found
