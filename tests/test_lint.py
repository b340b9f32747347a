"""Lint catches edits that open or silently weaken access (tests/cases/lint-edits.yaml)."""

from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path
from typing import Any

import pytest
import yaml

from accessguard import scenario
from accessguard.authoring.lint import lint
from accessguard.cli.tools import lint_command

CASES: list[dict[str, Any]] = yaml.safe_load(
    (Path(__file__).parent / "cases" / "lint-edits.yaml").read_text(encoding="utf-8")
)


def edited(tmp_path: Path, case: dict[str, Any]) -> tuple[Path, int | None]:
    """A copy of the scenario's policies with the case's edit; the edited line (if any)."""
    target = tmp_path / "policies"
    shutil.copytree(scenario.policies_dir(), target)
    path = target / case["file"]
    if case["edit"] == "delete":
        path.unlink()
        return target, None
    text = path.read_text(encoding="utf-8")
    if case["edit"] == "append":
        text = text.rstrip("\n") + "\n" + case["text"] + "\n"
        line = text.count("\n")
    else:
        assert case["old"] in text, f"{case['id']}: the edit's old text is not in the file"
        line = text[: text.index(case["old"])].count("\n") + 1
        text = text.replace(case["old"], case["new"], 1)
    path.write_text(text, encoding="utf-8")
    return target, line


@pytest.mark.parametrize("case", CASES, ids=[c["id"] for c in CASES])
class TestDangerousEdits:
    def test_lint_reports_the_edit(self, tmp_path: Path, case: dict[str, Any]) -> None:
        """The edit is reported with its code and severity, in the right file (and line)."""
        policies, line = edited(tmp_path, case)
        findings = [f for f in lint(policies) if f.code == case["code"]]
        assert findings, f"{case['id']}: no {case['code']} finding"
        assert all(f.severity == case["severity"] for f in findings)
        where = case.get("expect_in", case["file"])
        assert any(Path(f.path).name == where for f in findings)
        if case.get("line") == "edited":
            assert line in {f.line for f in findings}

    def test_strict_fails_where_plain_lint_passes(
        self, tmp_path: Path, case: dict[str, Any]
    ) -> None:
        """--strict exits 1 on the edit's warning; without it a warning alone exits 0."""
        policies, _line = edited(tmp_path, case)
        plain = lint_command(argparse.Namespace(policies=policies))
        strict = lint_command(argparse.Namespace(policies=policies, strict=True))
        assert strict[0] == 1
        assert plain[0] == (1 if any(f.severity == "error" for f in lint(policies)) else 0)


class TestCleanAndJson:
    def test_shipped_policies_pass_strict(self) -> None:
        """The shipped policies pass `lint --strict` (no warning either)."""
        args = argparse.Namespace(policies=scenario.policies_dir(), strict=True)
        assert lint_command(args) == (0, "no problems")

    def test_json_lists_findings_with_file_line_and_severity(self, tmp_path: Path) -> None:
        """--format json prints one object per finding with path, line, severity and code."""
        policies, line = edited(tmp_path, CASES[0])
        args = argparse.Namespace(policies=policies, strict=False, format="json")
        code, text = lint_command(args)
        found = json.loads(text)
        assert code == 0
        assert {"path", "line", "severity", "code", "message"} <= set(found[0])
        assert any(f["code"] == "rule.unscoped_table" and f["line"] == line for f in found)
