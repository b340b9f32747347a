"""The README works as printed: its quick start and demo run and print what it shows.

Every ``$ accessguard ...`` command of the README's console blocks is run (the
venv and pytest lines are what CI itself runs), the quick start's Python block
is executed, and each shown output line must appear in what really printed:
times, temporary paths and the database name are the only things normalised.
The documentation's API page must name every public name.
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

import accessguard

if TYPE_CHECKING:
    pass

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text(encoding="utf-8")
QUICK_DB = "accessguard_quickstart"
_BLOCK = re.compile(r"```(\w+)\n(.*?)```", re.DOTALL)
_TIME = re.compile(r"\d{4}-\d\d-\d\d[ T]\d\d:\d\d:\d\d(\.\d+)?Z?|\d\d:\d\d:\d\d\.\d+")
_TMP = re.compile(r"[^\s(]*accessguard-demo-[a-z0-9_]+")


def blocks(section: str) -> list[tuple[str, str]]:
    """The fenced blocks (language, text) of one ``## `` section of the README."""
    start = README.index(f"## {section}\n")
    end = README.find("\n## ", start + 1)
    return _BLOCK.findall(README[start : end if end != -1 else None])


def normal(text: str) -> str:
    """Text with times and temporary paths replaced, and blanks folded, for comparison."""
    text = _TMP.sub("DEMO-DIR", _TIME.sub("T", text))
    return re.sub(r"[ \t]+", " ", text)


def shown_lines(text: str) -> list[str]:
    """The lines an output block promises (``...`` marks an abridged place)."""
    return [line for line in text.splitlines() if line.strip() and line.strip() != "..."]


def run(command: str, cwd: Path, dsn: str) -> str:
    """Run one README command (``accessguard ...``) and return what it printed."""
    if dsn:
        command = command.replace(f"postgresql://postgres@127.0.0.1:5432/{QUICK_DB}", dsn)
    argv = shlex.split(command)
    assert argv[0] == "accessguard", command
    done = subprocess.run(  # noqa: S603 - the README's own commands
        [sys.executable, "-m", "accessguard", *argv[1:]],
        cwd=cwd,
        capture_output=True,
        text=True,
        check=False,
        env={**os.environ, "ACCESSGUARD_AUDIT_KEY": ""},
    )
    assert done.returncode == 0, f"{command}\n{done.stdout}\n{done.stderr}"
    return done.stdout


@pytest.mark.db
class TestQuickStart:
    def test_quick_start_runs_as_printed(self, unused_database: str, tmp_path: Path) -> None:
        """scenario load, the Python block and who-read print what the README shows."""
        quick_db = unused_database  # scenario load creates it, as in the README
        shutil.copytree(ROOT / "policies", tmp_path / "policies")
        name = quick_db.rsplit("/", 1)[1]
        found = blocks("Quick start")
        consoles = [text for lang, text in found if lang == "console"]
        python = next(text for lang, text in found if lang == "python")
        expected = [text for lang, text in found if lang == "text"]
        assert len(consoles) == 2
        assert len(expected) == 1

        for block in consoles:
            command, _, shown = block.partition("\n")
            out = run(command.removeprefix("$ "), tmp_path, quick_db)
            for line in shown_lines(shown.replace(QUICK_DB, name)):
                assert normal(line) in normal(out), f"{line!r} not in:\n{out}"

            if "scenario load" in command:  # the Python block runs between the two
                script = tmp_path / "quickstart.py"
                script.write_text(
                    python.replace(f"postgresql://postgres@127.0.0.1:5432/{QUICK_DB}", quick_db),
                    encoding="utf-8",
                )
                done = subprocess.run(  # noqa: S603 - the README's own code
                    [sys.executable, str(script)],
                    cwd=tmp_path,
                    capture_output=True,
                    text=True,
                    check=True,
                    env={**os.environ, "ACCESSGUARD_AUDIT_KEY": ""},
                )
                assert done.stdout == expected[0]


class TestDemo:
    def test_demo_prints_the_lines_the_readme_shows(self, tmp_path: Path) -> None:
        """Every line of the README's demo output appears in a real run of `accessguard demo`."""
        shown = next(text for lang, text in blocks("The demo, with no server") if lang == "text")
        out = run("accessguard demo", tmp_path, "")
        for line in shown_lines(shown):
            assert normal(line) in normal(out), f"{line!r} not in the demo's output"


class TestDocumentation:
    def test_every_public_name_is_in_the_api_reference(self) -> None:
        """docs/api.md documents each name of accessguard.__all__."""
        api = (ROOT / "docs" / "api.md").read_text(encoding="utf-8")
        missing = [
            name
            for name in accessguard.__all__
            if name != "__version__" and f"::: accessguard.{name}\n" not in api
        ]
        assert missing == []

    def test_readme_links_resolve(self) -> None:
        """Every relative link of the README names a file of the repository."""
        links = re.findall(r"\]\(((?!https?:)[^)#]+)\)", README)
        assert links
        assert [link for link in links if not (ROOT / link).exists()] == []


class TestReasonTable:
    def test_every_reason_code_is_documented(self) -> None:
        """docs/policies.md's table explains every member of Reason."""
        from accessguard.errors import Reason

        page = (ROOT / "docs" / "policies.md").read_text(encoding="utf-8")
        assert [str(r) for r in Reason if f"`{r}`" not in page] == []


def test_the_clickhouse_sql_in_the_docs_is_the_sql_that_was_checked() -> None:
    """docs/audit.md shows the DDL, INSERT and queries benchmarks/clickhouse.py runs."""
    from benchmarks import clickhouse

    docs = (ROOT / "docs" / "audit.md").read_text(encoding="utf-8")
    for sql in (clickhouse.DDL, clickhouse.INSERT, clickhouse.WHO_READ, clickhouse.WHAT_READ):
        assert f"```sql\n{sql.strip()}\n```" in docs
