"""0.1's module paths still import in 0.2, each with a DeprecationWarning naming the new path."""

from __future__ import annotations

import importlib
import subprocess
import sys

import pytest

from accessguard.moved import MOVED_MODULES, MOVED_NAMES


def _fresh(code: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(  # noqa: S603 - our own interpreter, our own code
        [sys.executable, "-W", "error::DeprecationWarning", "-c", code],
        capture_output=True,
        text=True,
        check=False,
    )


@pytest.mark.parametrize(("old", "new"), sorted(MOVED_MODULES.items()))
def test_a_moved_module_is_the_new_one_under_its_old_name(old: str, new: str) -> None:
    sys.modules.pop(old, None)
    with pytest.warns(DeprecationWarning, match=new.replace(".", r"\.")):
        module = importlib.import_module(old)
    assert module is importlib.import_module(new)


def test_the_warning_is_an_error_under_w_error() -> None:
    """Under ``-W error`` the old path fails loudly (so CI of users' code notices)."""
    done = _fresh("import accessguard.pgsink")
    assert done.returncode != 0
    assert "accessguard.audit.pgsink" in done.stderr


@pytest.mark.parametrize(
    ("package", "name"),
    [
        ("accessguard.audit", "JsonlSink"),
        ("accessguard.policy", "load_policy"),
        ("accessguard.tickets", "FileTicketStore"),
        ("accessguard.throttle", "load_limits"),
        ("accessguard.investigate", "Sums"),
    ],
)
def test_a_name_of_a_module_that_became_a_package(package: str, name: str) -> None:
    module = importlib.import_module(package)
    with pytest.warns(DeprecationWarning, match=f"moved to {package}"):
        value = getattr(module, name)
    homes = [importlib.import_module(home) for home in MOVED_NAMES[package]]
    assert any(value is getattr(home, name, None) for home in homes)


def test_an_unknown_name_is_still_an_attribute_error() -> None:
    audit = importlib.import_module("accessguard.audit")
    with pytest.raises(AttributeError):
        _ = audit.no_such_name
    with pytest.raises(AttributeError):
        _ = audit._private_of_sinks


def test_new_code_imports_no_old_path() -> None:
    """The library itself never goes through the deprecated paths."""
    done = _fresh(
        "import accessguard, accessguard.guard, accessguard.cli.app, accessguard.investigate.report"
    )
    assert done.returncode == 0, done.stderr
