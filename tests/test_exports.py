"""The public surface is pinned: adding or removing a name is a deliberate change."""

from __future__ import annotations

import accessguard

EXPECTED = [
    "AccessDenied",
    "AccessGuardError",
    "AuditError",
    "AuditSink",
    "ConfigurationError",
    "Decision",
    "Facts",
    "FileTicketStore",
    "Guard",
    "HttpTicketStore",
    "JsonlSink",
    "MemoryTicketStore",
    "Policy",
    "PolicyError",
    "PostgresTicketStore",
    "Reason",
    "Throttled",
    "Ticket",
    "__version__",
    "load_policy",
    "verify",
]


class TestExports:
    def test_all_is_pinned_and_sorted(self) -> None:
        """__all__ lists exactly the documented names, sorted."""
        assert accessguard.__all__ == EXPECTED
        assert sorted(accessguard.__all__) == accessguard.__all__

    def test_every_name_resolves(self) -> None:
        """Every name in __all__ is importable from the package."""
        for name in accessguard.__all__:
            assert getattr(accessguard, name) is not None

    def test_py_typed_is_shipped(self) -> None:
        """The package ships py.typed for type checkers."""
        from pathlib import Path

        assert (Path(accessguard.__file__).parent / "py.typed").exists()
