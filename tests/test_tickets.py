"""Ticket files: a duplicate id or an unknown status fails at load, naming file and line."""

from __future__ import annotations

from pathlib import Path

import pytest

from accessguard import FileTicketStore, PolicyError
from accessguard.tickets.stores import read_ticket_file


def write(tmp_path: Path, name: str, text: str) -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


T100 = "{id: T-100, assignee: alice, kind: order_issue, status: open, customer_id: 42}"
T101 = "{id: T-101, assignee: alice, kind: order_issue, status: closed, customer_id: 7}"


class TestTicketFile:
    def test_a_duplicate_id_names_file_and_line(self, tmp_path: Path) -> None:
        """Two tickets with one id fail at load, naming the second's line and the first's."""
        other = "{id: T-100, assignee: mallory, kind: order_issue, status: open, customer_id: 7}"
        path = write(tmp_path, "t.yaml", f"tickets:\n  - {T100}\n  - {T101}\n  - {other}\n")
        with pytest.raises(PolicyError) as info:
            read_ticket_file(path)
        assert info.value.path == str(path)
        assert info.value.line == 4
        assert "T-100" in info.value.message
        assert "line 2" in info.value.message

    def test_a_duplicate_id_in_json_names_its_line(self, tmp_path: Path) -> None:
        """JSON ticket files get the same check, with the line of the entry."""
        entry = '{"id": "T-1", "assignee": "a", "kind": "k", "status": "open"}'
        path = write(tmp_path, "t.json", f"[\n  {entry},\n  {entry}\n]\n")
        with pytest.raises(PolicyError) as info:
            read_ticket_file(path)
        assert info.value.line == 3

    @pytest.mark.parametrize("status", ["Open", "opne", "resolved"])
    def test_an_unknown_status_names_file_and_line(self, tmp_path: Path, status: str) -> None:
        """A status other than open or closed fails at load (a typo is not a closed ticket)."""
        bad = T101.replace("closed", status)
        path = write(tmp_path, "t.yaml", f"- {T100}\n- {bad}\n")
        with pytest.raises(PolicyError) as info:
            read_ticket_file(path)
        assert info.value.line == 2
        assert repr(status) in info.value.message

    def test_an_undecodable_file_names_its_line(self, tmp_path: Path) -> None:
        """A byte that is not UTF-8 is a PolicyError naming its line, not a UnicodeError."""
        path = tmp_path / "t.yaml"
        path.write_bytes(f"- {T100}\n- ".encode() + b"\xff\n")
        with pytest.raises(PolicyError) as info:
            read_ticket_file(path)
        assert info.value.line == 2

    def test_the_file_store_refuses_a_duplicate_at_construction(self, tmp_path: Path) -> None:
        """FileTicketStore loads through the same checks: no last-one-wins."""
        path = write(tmp_path, "t.yaml", f"- {T100}\n- {T100}\n")
        with pytest.raises(PolicyError):
            FileTicketStore(path)

    def test_a_valid_file_loads(self, tmp_path: Path) -> None:
        """Distinct ids with known statuses load in order."""
        path = write(tmp_path, "t.yaml", f"- {T100}\n- {T101}\n")
        assert [t.id for t in read_ticket_file(path)] == ["T-100", "T-101"]
