"""The house's rules, checked on the source: imports point down, nothing reaches into privates.

Layers (lowest first); a module may import its own layer and the ones below::

    errors, durations, metrics              leaves
    policy, tickets                         the files the security team edits, the tickets
    analysis, throttle                      SQL text -> facts; volume limits
    decision                                pure: facts x context x policy -> decision
    audit                                   trail, chain, sinks, ledger
    engine                                  the gate: plans, probes, refusals, events, reload
    adapters                                thin shells over the engine, one per driver/framework
    guard                                   the facade: engine + connection factories
    investigate, authoring, testing         questions over the trail; tools for policy authors
    scenario                                the reference scenario and the demo
    cli                                     the command line (the only argparse user)

Imports form no cycle at all (runtime, lazy and typing-only alike); every
import points to the same or a lower layer.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from collections import defaultdict
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "accessguard"

LAYERS: list[set[str]] = [
    {"errors", "durations", "metrics", "moved"},
    {"policy", "tickets"},
    {"analysis", "throttle"},
    {"decision"},
    {"audit"},
    {"engine"},
    {"adapters"},
    {"guard"},
    {"investigate", "authoring", "testing"},
    {"scenario"},
    {"cli", "__main__"},
]
RANK = {name: rank for rank, names in enumerate(LAYERS) for name in names}


def _modules() -> dict[str, Path]:
    found = {}
    for path in PACKAGE.rglob("*.py"):
        parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        found[".".join(parts)] = path
    return found


MODULES = _modules()


def _typing_only(tree: ast.Module) -> set[int]:
    nodes: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            nodes.update(id(inner) for inner in ast.walk(node))
    return nodes


def _imports(module: str, path: Path) -> list[tuple[str, bool]]:
    """(imported accessguard module, typing only) for each import in ``module``."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    typing_only = _typing_only(tree)
    found: list[tuple[str, bool]] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [node.module, *(f"{node.module}.{alias.name}" for alias in node.names)]
        elif isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        else:
            continue
        found.extend(
            (name, id(node) in typing_only)
            for name in names
            if name in MODULES and name not in {module, "accessguard"}
        )
    return found


GRAPH = {module: _imports(module, path) for module, path in MODULES.items()}


def _layer(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else parts[0]


def _cycle(edges: dict[str, set[str]]) -> list[str] | None:
    """One cycle of ``edges``, as a path that starts and ends at the same module, or None."""
    state: dict[str, int] = {}  # 1 on the stack, 2 done
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(edges.get(node, ())):
            if state.get(nxt) == 1:
                return [*stack[stack.index(nxt) :], nxt]
            if nxt not in state and (found := visit(nxt)) is not None:
                return found
        stack.pop()
        state[node] = 2
        return None

    for start in sorted(edges):
        if start not in state and (found := visit(start)) is not None:
            return found
    return None


def test_every_module_has_a_layer() -> None:
    """A new top-level module or package must be placed in LAYERS (and in the README's tree)."""
    unplaced = sorted({_layer(m) for m in MODULES if m != "accessguard"} - set(RANK))
    assert not unplaced, f"place these in LAYERS: {unplaced}"


def test_imports_form_no_cycle() -> None:
    """No cycle at all: runtime, lazy and typing-only imports alike (a module that needs only
    part of a higher one's surface names it as a Protocol of its own)."""
    edges: dict[str, set[str]] = defaultdict(set)
    for module, imports in GRAPH.items():
        edges[module].update(name for name, _typing_only in imports)
    assert _cycle(edges) is None, " -> ".join(_cycle(edges) or [])


def test_imports_never_climb_a_layer() -> None:
    climbs = [
        f"{module} -> {name}"
        for module, imports in GRAPH.items()
        if module != "accessguard"  # the package's lazy re-exports sit above everything
        for name, _typing_only in imports
        if RANK[_layer(name)] > RANK[_layer(module)]
    ]
    assert not climbs, "\n".join(climbs)


def test_the_cycle_finder_finds_cycles() -> None:
    """The check above can fail: a planted cycle and a planted climb are found."""
    assert _cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert _cycle({"a": {"b"}, "b": set()}) is None
    assert RANK["engine"] > RANK["adapters"] is False or RANK["adapters"] > RANK["engine"]


def _private_names(tree: ast.Module) -> set[str]:
    """Private names a module defines (its own; a subclass's ``self._x`` of a base elsewhere is
    protected use, allowed): top-level and class members, and ``self._x`` attributes."""
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            names.add(node.name)
        elif isinstance(node, ast.Name) and isinstance(node.ctx, ast.Store):
            names.add(node.id)
        elif isinstance(node, ast.Attribute) and isinstance(node.ctx, ast.Store):
            names.add(node.attr)
        elif isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
            names.add(node.target.id)
    return {name for name in names if name.startswith("_") and not name.startswith("__")}


def _foreign_private_uses(module: str, path: Path) -> list[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    own = _private_names(tree)
    found: list[str] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("accessguard"):
            found.extend(
                f"{module}:{node.lineno}: imports {node.module}.{alias.name}"
                for alias in node.names
                if alias.name.startswith("_") and not alias.name.startswith("__")
            )
        elif (
            isinstance(node, ast.Attribute)
            and not (isinstance(node.value, ast.Name) and node.value.id in {"self", "cls"})
            and node.attr.startswith("_")
            and not node.attr.startswith("__")
            and node.attr not in own
            and node.attr not in DRIVER_PRIVATES
        ):
            found.append(f"{module}:{node.lineno}: {ast.unparse(node)}")
    return found


#: private members of the libraries we build on, reached on purpose (pinned versions)
DRIVER_PRIVATES = {"_query2pg", "_obj", "_adapters", "_meta", "_prepared"}


@pytest.mark.parametrize("module", sorted(MODULES))
def test_no_module_reaches_into_another_modules_privates(module: str) -> None:
    uses = _foreign_private_uses(module, MODULES[module])
    assert not uses, "\n".join(uses)


def test_the_pure_layers_do_not_load_the_driver() -> None:
    """The analysis, the policy files and the decision run without psycopg being imported;
    AccessDenied is still psycopg's InsufficientPrivilege once asked for."""
    code = (
        "import sys\n"
        "import accessguard.analysis, accessguard.policy.rules, accessguard.decision\n"
        "assert 'psycopg' not in sys.modules, 'the pure layers loaded psycopg'\n"
        "from accessguard.errors import AccessDenied\n"
        "import psycopg\n"
        "assert issubclass(AccessDenied, psycopg.errors.InsufficientPrivilege)\n"
    )
    done = subprocess.run(  # noqa: S603 - our own interpreter, our own code
        [sys.executable, "-c", code], capture_output=True, text=True, check=False
    )
    assert done.returncode == 0, done.stderr


def test_only_the_command_line_parses_arguments() -> None:
    """argparse is the CLI's: library functions take plain values, not a Namespace."""
    users = sorted(
        module
        for module, path in MODULES.items()
        if _layer(module) != "cli" and "argparse" in path.read_text(encoding="utf-8")
    )
    assert not users, users
