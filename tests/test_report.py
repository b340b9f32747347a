"""The HTML access report: self-contained, escaped, mallory highlighted, rendered by chromium."""

from __future__ import annotations

import datetime as dt
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest
from test_investigate import AGENT, T0, ledger_event, refusal_event, workload

from accessguard.investigate.report import render_report, write_report
from accessguard.investigate.summary import summarize

GENERATED = dt.datetime(2026, 3, 2, 12, 0, tzinfo=dt.UTC)
CHROMIUM_FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
)


def report(tmp_path: Path, events: list[dict[str, object]] | None = None) -> str:
    """Write the report of ``events`` (the scripted workload by default) and return its text."""
    out = tmp_path / "report.html"
    write_report(workload() if events is None else events, out, generated=GENERATED)
    return out.read_text(encoding="utf-8")


def outlier_rows(page: str) -> list[str]:
    """The data-user of every employee row marked as an outlier."""
    return re.findall(r'<tr class="outlier" data-user="([^"]*)"', page)


class TestSelfContained:
    def test_no_external_resources(self, tmp_path: Path) -> None:
        """The page loads nothing: no links, scripts, sources, imports or URLs."""
        page = report(tmp_path)
        for needle in ("http://", "https://", "<link", "<script", "src=", "@import", "url("):
            assert needle not in page, needle
        assert page.startswith("<!doctype html>")
        assert page.rstrip().endswith("</html>")

    def test_charts_are_inline_svg(self, tmp_path: Path) -> None:
        """Volume, refusal and throttle charts are inline SVG."""
        page = report(tmp_path)
        assert page.count('<svg class="chart line"') == 2
        assert page.count('<svg class="chart bar"') == 4  # customers, 2 refusals, throttles

    def test_mallory_is_highlighted(self, tmp_path: Path) -> None:
        """mallory, and only mallory, is marked far above peers in the table and charts."""
        page = report(tmp_path)
        assert outlier_rows(page) == ["mallory"]
        assert 'class="series outlier" data-user="mallory"' in page
        assert 'class="series outlier" data-user="alice"' not in page
        assert "20 distinct customers (median of the other support_agent employees: 0.5)" in page
        assert page.count("far above peers</span>") >= 3  # callout, legend, table

    def test_sections(self, tmp_path: Path) -> None:
        """Every section the issue asks for is there."""
        page = report(tmp_path)
        for key in ("outliers", "volume", "employees", "refusals", "throttles", "watch", "readers"):
            assert f"id='{key}'" in page or f'id="{key}"' in page, key
        assert "row_scope.other_subject" in page
        assert "throttle.distinct_customers" in page
        assert "No watch-list or canary customer was touched" in page

    def test_no_outlier(self, tmp_path: Path) -> None:
        """Without mallory, nobody is flagged and the page says so."""
        events = [e for e in workload() if e["user.name"] != "mallory"]
        page = report(tmp_path, events)
        assert outlier_rows(page) == []
        assert "No employee is far above the peers of her role." in page

    def test_empty_trail(self, tmp_path: Path) -> None:
        """An empty audit trail still gives a valid page."""
        page = report(tmp_path, [])
        assert "No ledger entries in this period." in page
        assert "</html>" in page

    def test_since(self, tmp_path: Path) -> None:
        """since drops earlier activity from the page."""
        out = tmp_path / "late.html"
        write_report(workload(), out, since=T0 + dt.timedelta(hours=2), generated=GENERATED)
        page = out.read_text(encoding="utf-8")
        assert 'data-user="erin"' in page
        assert 'data-user="mallory"' not in page


class TestEscaping:
    def test_strings_are_escaped(self, tmp_path: Path) -> None:
        """Names, tickets, reasons and watch labels from events are HTML-escaped."""
        evil = "<img src=x onerror=alert(1)>"
        events = [
            *workload(),
            refusal_event(user=evil, roles=AGENT, ticket='T-"1"', reason=evil, at=T0),
            ledger_event(
                user="mallory",
                roles=AGENT,
                ticket="<b>T</b>",
                kind="order_issue",
                subject=7,
                statements=1,
                rows=1,
                columns=["customers.name"],
                at=T0,
                watch=evil,
            ),
        ]
        page = report(tmp_path, events)
        assert evil not in page
        assert "<b>T</b>" not in page
        assert "&lt;img src=x onerror=alert(1)&gt;" in page

    def test_query_text_is_never_shown(self, tmp_path: Path) -> None:
        """db.query.text (already redacted) stays out of the report."""
        event = refusal_event(user="bob", roles=AGENT, ticket=None, reason="ticket.required", at=T0)
        event["db.query.text"] = "SELECT marker_7f3a FROM customers"
        page = report(tmp_path, [*workload(), event])
        assert "marker_7f3a" not in page

    def test_many_employees_share_a_grey(self) -> None:
        """Beyond the palette, ordinary readers are drawn grey; outliers stay red."""
        events = [
            ledger_event(
                user=f"agent{i:02}",
                roles=AGENT,
                ticket=f"T-{i}",
                kind="order_issue",
                subject=i,
                statements=1,
                rows=1,
                columns=["orders.id"],
                at=T0,
            )
            for i in range(12)
        ]
        page = render_report(summarize([*events, *workload()], since=None))
        assert (
            'data-user="agent00"><title>agent00</title><polyline fill="none" stroke="#adb5bd"'
            in page
        )
        assert outlier_rows(page) == ["mallory"]


def chromium() -> str:
    """The chromium on PATH; skip without one, fail under CI=true."""
    found = shutil.which("chromium")
    if found is None:
        if os.environ.get("CI") == "true":
            pytest.fail("chromium is not installed (CI=true: the browser test must run)")
        pytest.skip("chromium is not installed")
    return found


def run_chromium(tmp_path: Path, page: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    """Run headless chromium on ``page`` with a throwaway profile, logging to stderr."""
    profile = tmp_path / f"profile-{len(list(tmp_path.glob('profile-*')))}"
    command = [
        chromium(),
        *CHROMIUM_FLAGS,
        f"--user-data-dir={profile}",
        "--enable-logging=stderr",
        "--v=0",
        *extra,
        page.resolve().as_uri(),
    ]
    return subprocess.run(  # noqa: S603 - fixed arguments, our own file
        command, capture_output=True, text=True, timeout=180, check=True
    )


def console_messages(stderr: str) -> list[str]:
    """The page's console output (errors included) as chromium logs it."""
    return [line for line in stderr.splitlines() if ":CONSOLE" in line]


class TestChromium:
    def test_renders_without_errors(self, tmp_path: Path) -> None:
        """Headless chromium renders the report: a real screenshot, no console messages."""
        page = tmp_path / "report.html"
        write_report(workload(), page, generated=GENERATED)
        shot = tmp_path / "shot.png"
        done = run_chromium(tmp_path, page, f"--screenshot={shot}", "--window-size=1280,2000")
        assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        assert shot.stat().st_size > 20_000
        assert console_messages(done.stderr) == []

    def test_dom_holds_charts_and_badge(self, tmp_path: Path) -> None:
        """The DOM chromium builds has the SVG charts and mallory's badge."""
        page = tmp_path / "report.html"
        write_report(workload(), page, generated=GENERATED)
        done = run_chromium(tmp_path, page, "--dump-dom")
        dom = done.stdout
        assert dom.count("<svg") >= 6
        assert "<polyline" in dom
        assert outlier_rows(dom) == ["mallory"]
        assert re.search(r'data-user="mallory"><td>mallory<span class="badge">far above peers', dom)
        assert console_messages(done.stderr) == []

    def test_console_errors_would_be_seen(self, tmp_path: Path) -> None:
        """The console check is not vacuous: a page with a script error is caught."""
        page = tmp_path / "broken.html"
        page.write_text("<!doctype html><p>x</p><script>undefinedFn()</script>", encoding="utf-8")
        done = run_chromium(tmp_path, page, "--dump-dom")
        assert any("undefinedFn" in line for line in console_messages(done.stderr))


def test_each_outlier_has_its_own_colour() -> None:
    """Two employees far above their peers are drawn in two colours, each named in the legend."""
    from accessguard.investigate.report import OUTLIERS

    heavy = [
        ledger_event(
            user=user,
            roles=AGENT,
            ticket=f"T-{user}-{i}",
            kind="order_issue",
            subject=1000 + i,
            statements=1,
            rows=1,
            columns=["orders.id"],
            at=T0,
        )
        for user in ("mallory", "trent")
        for i in range(40)
    ]
    summary = summarize([*heavy, *workload()], since=None)
    assert set(summary.outliers) >= {"mallory", "trent"}
    page = render_report(summary)
    drawn = {
        user: re.search(
            rf'data-user="{user}"><title>{user}</title><polyline fill="none" stroke="(#[0-9a-f]+)"',
            page,
        )
        for user in ("mallory", "trent")
    }
    colours = {user: found.group(1) for user, found in drawn.items() if found}
    assert set(colours) == {"mallory", "trent"}
    assert colours["mallory"] != colours["trent"]
    assert set(colours.values()) <= set(OUTLIERS)
