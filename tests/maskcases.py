"""The masking case file (tests/cases/masking.yaml): its loader, its policy, its expectations.

Shared by tests/test_masking.py; data a security engineer reviews, read strictly
(unknown keys, duplicate ids, wrong shapes fail loudly).
"""

from __future__ import annotations

import re
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from casefiles import CASES_DIR

import accessguard.scenario
from accessguard.policy.masking import apply, hmac_pads

CASES_FILE = CASES_DIR / "masking.yaml"
KEY = b"masking-test-key-0123456789abcdef"
#: what must never come back: customer 42's clear e-mail and phone, and pieces of them
CLEAR = ("c0042@mail.example", "c0042", "+1-555-0042", "555-0042", "+1-555")
_KEYS = {"id", "user", "ticket", "sql", "params", "expect", "reason", "rows", "sorted", "why"}
Rows = list[tuple[Any, ...]]


@dataclass(frozen=True, slots=True, kw_only=True)
class MaskCase:
    """One entry of masking.yaml."""

    id: str
    user: str
    ticket: str | None
    sql: str
    params: list[Any] | None
    expect: str
    reason: str | None
    rows: list[list[Any]] | None
    sorted: bool
    why: str


def load_cases() -> list[MaskCase]:
    """The cases of masking.yaml, validated strictly (unknown keys, duplicates, shapes)."""
    data = yaml.safe_load(CASES_FILE.read_text(encoding="utf-8"))
    assert isinstance(data, list)
    cases: list[MaskCase] = []
    for entry in data:
        assert isinstance(entry, dict), entry
        assert set(entry) <= _KEYS, set(entry) - _KEYS
        expect = entry["expect"]
        assert expect in {"allowed", "denied", "error"}, entry["id"]
        assert ("rows" in entry) == (expect == "allowed"), entry["id"]
        assert ("reason" in entry) == (expect == "denied"), entry["id"]
        cases.append(
            MaskCase(
                id=entry["id"],
                user=entry.get("user", "alice"),
                ticket=entry.get("ticket", "T-100"),
                sql=entry["sql"],
                params=entry.get("params"),
                expect=expect,
                reason=entry.get("reason"),
                rows=entry.get("rows"),
                sorted=bool(entry.get("sorted", False)),
                why=entry["why"],
            )
        )
    ids = [c.id for c in cases]
    assert len(ids) == len(set(ids)), "duplicate ids"
    return cases


CASES = load_cases()
ALLOWED = [c for c in CASES if c.expect == "allowed"]


def masked_policies(target: Path) -> Path:
    """The scenario's policies without limits, with the masked rules masking.yaml describes."""
    shutil.copytree(accessguard.scenario.policies_dir(), target)
    (target / "limits.toml").unlink()
    path = target / "policy.csv"
    text = path.read_text(encoding="utf-8")
    for column, mask in (("email", "email"), ("phone", "last4")):
        line = f"p, support_agent, order_issue, customers.{column}, read\n"
        assert line in text
        text = text.replace(
            line, f"p, support_agent, order_issue, customers.{column}, read:mask={mask}\n"
        )
    text += (
        "p, support_agent, order_issue, customers.phone, update\n"
        "p, support_agent, order_issue, customers.address, read:mask=hash\n"
        "p, account_specialist, account_recovery, customers.email, read:mask=hash\n"
        "p, account_specialist, account_recovery, customers.phone, read:mask=last4\n"
        "p, account_specialist, account_recovery, customers.address, read:mask=hash\n"
        "p, account_specialist, account_recovery, customers.created_at, read:mask=email\n"
    )
    path.write_text(text, encoding="utf-8")
    return target


_INLINE_HMAC = re.compile(r"\{hmac:([^}]*)\}")


def _cell(value: Any) -> Any:
    """A case file's cell as PostgreSQL returns it: pseudonyms computed, records as tuples."""
    if isinstance(value, list):
        return tuple(_cell(v) for v in value)
    if not isinstance(value, str):
        return value
    if value.startswith("hmac:"):
        return apply("hash", value.removeprefix("hmac:"), KEY)
    return _INLINE_HMAC.sub(lambda m: apply("hash", m.group(1), KEY) or "", value)


def expected(case: MaskCase) -> Rows:
    """The case's rows, with each "hmac:TEXT" replaced by the keyed pseudonym of TEXT."""
    assert case.rows is not None
    rows = [tuple(_cell(v) for v in row) for row in case.rows]
    return sorted(rows, key=repr) if case.sorted else rows


def comparable(rows: Rows, case: MaskCase) -> Rows:
    return sorted(rows, key=repr) if case.sorted else rows


def assert_no_clear_value(text: str) -> None:
    """``text`` (rows or an error, rendered) holds no clear e-mail or phone, and no key pad."""
    for clear in CLEAR:
        assert clear not in text, clear
    for pad in hmac_pads(KEY):
        assert pad.hex()[:8] not in text


def error_text(exc: BaseException) -> str:
    """An error as the application can read it: its message and every diagnostic field."""
    diag = getattr(exc, "diag", None)
    fields = ("message_primary", "message_detail", "message_hint", "context", "internal_query")
    extra = [str(getattr(diag, f, "") or "") for f in fields] if diag is not None else []
    return " | ".join([str(exc), *extra])
