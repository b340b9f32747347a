"""Old module paths of release 0.1, kept working with a DeprecationWarning.

Release 0.2 moved the modules into sub-packages that show the pipeline
(CHANGELOG.md lists every move). Code that imports an old path still works:

- a module that moved (``accessguard.pgsink``) is the new module under its old
  name, through a finder on ``sys.meta_path``;
- a name imported from a module that became a package
  (``from accessguard.audit import JsonlSink``) is looked up in the module
  that holds it now.

Both warn once per name. The old paths go in release 0.4.
"""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.machinery
import importlib.util
import sys
import types
import warnings

__all__ = ["MOVED_MODULES", "MOVED_NAMES", "install", "moved_name"]

#: old module path -> its new home
MOVED_MODULES = {
    "accessguard.catalog": "accessguard.policy.catalog",
    "accessguard.watchlist": "accessguard.policy.watchlist",
    "accessguard.tickets_http": "accessguard.tickets.http",
    "accessguard.lane": "accessguard.engine.lane",
    "accessguard.plan": "accessguard.engine.plan",
    "accessguard.probes": "accessguard.engine.probes",
    "accessguard.watch": "accessguard.engine.watch",
    "accessguard.telemetry": "accessguard.engine.telemetry",
    "accessguard.chain": "accessguard.audit.chain",
    "accessguard.verification": "accessguard.audit.verification",
    "accessguard.spool": "accessguard.audit.spool",
    "accessguard.pgsink": "accessguard.audit.pgsink",
    "accessguard.pgverify": "accessguard.audit.pgverify",
    "accessguard.ledger": "accessguard.audit.ledger",
    "accessguard.otelsink": "accessguard.audit.otelsink",
    "accessguard.investigations": "accessguard.investigate",
    "accessguard.investigations.core": "accessguard.investigate.core",
    "accessguard.investigations.rollup": "accessguard.investigate.rollup",
    "accessguard.investigations.sink": "accessguard.investigate.sink",
    "accessguard.investigations.trail": "accessguard.investigate.trail",
    "accessguard.investigations.command": "accessguard.cli.investigate",
    "accessguard.summary": "accessguard.investigate.summary",
    "accessguard.report": "accessguard.investigate.report",
    "accessguard.replay": "accessguard.investigate.replay",
    "accessguard.lint": "accessguard.authoring.lint",
    "accessguard.lint_access": "accessguard.authoring.lint_access",
    "accessguard.learn": "accessguard.authoring.learn",
    "accessguard.learn_report": "accessguard.authoring.learn_report",
    "accessguard.schema_pull": "accessguard.authoring.schema_pull",
    "accessguard.demo": "accessguard.scenario.demo",
}

#: a module path that is now a package -> the modules that hold its old names
MOVED_NAMES = {
    "accessguard.policy": ("accessguard.policy.rules",),
    "accessguard.tickets": ("accessguard.tickets.stores",),
    "accessguard.throttle": ("accessguard.throttle.window", "accessguard.throttle.limits"),
    "accessguard.audit": ("accessguard.audit.sinks",),
    "accessguard.investigate": ("accessguard.investigate.sums",),
    "accessguard.authoring": ("accessguard.authoring.cases", "accessguard.authoring.explain"),
}


def _warn(old: str, new: str) -> None:
    warnings.warn(
        f"{old} moved to {new} in accessguard 0.2; the old path goes in 0.4",
        DeprecationWarning,
        stacklevel=3,
    )


def moved_name(package: str, name: str) -> object:
    """A package's ``__getattr__``: an old module's name, found where it lives now."""
    for home in MOVED_NAMES.get(package, ()) if not name.startswith("_") else ():
        module = importlib.import_module(home)
        if hasattr(module, name):
            _warn(f"{package}.{name}", f"{home}.{name}")
            return getattr(module, name)
    raise AttributeError(f"module {package!r} has no attribute {name!r}")


class _Alias(importlib.abc.Loader):
    def __init__(self, target: str) -> None:
        self.target = target

    def create_module(self, spec: importlib.machinery.ModuleSpec) -> types.ModuleType:
        _warn(spec.name, self.target)
        return importlib.import_module(self.target)

    def exec_module(self, module: types.ModuleType) -> None:
        """The module ran under its new name already."""


class _Finder(importlib.abc.MetaPathFinder):
    def find_spec(
        self,
        fullname: str,
        path: object = None,  # noqa: ARG002 - the finder protocol's signature
        target: object = None,  # noqa: ARG002
    ) -> importlib.machinery.ModuleSpec | None:
        new = MOVED_MODULES.get(fullname)
        if new is None:
            return None
        return importlib.util.spec_from_loader(fullname, _Alias(new))


def install() -> None:
    """Put the finder on ``sys.meta_path`` (once)."""
    if not any(isinstance(finder, _Finder) for finder in sys.meta_path):
        sys.meta_path.insert(0, _Finder())  # before PathFinder: an old child path
        # (accessguard.investigations.core) must not load a second copy of the module
