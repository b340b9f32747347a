"""psycopg's placeholder conversion, as the engine and every psycopg-based adapter use it.

``%s`` / ``%(name)s`` become ``$n`` (and ``%%`` becomes ``%``) exactly as
psycopg will send them, so what is analyzed is what is sent. It uses psycopg's
own converter (a private function, pinned by the psycopg version range).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from psycopg._queries import PostgresQuery, _query2pg

__all__ = ["convert_query"]


def convert_query(query: str, params: Sequence[Any] | Mapping[str, Any]) -> tuple[str, list[Any]]:
    """psycopg's conversion: ``%s``/``%(name)s`` -> ``$n``, and the values in ``$n`` order."""
    converted, _formats, order, parts = _query2pg(query.encode(), "utf-8")
    values = PostgresQuery.validate_and_reorder_params(parts, params, order)
    return converted.decode(), list(values)
