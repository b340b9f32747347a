"""Alert rules (``alerts.toml`` beside the policy): pure data plus a loader.

Each ``[[rule]]`` names one of five kinds; the alerter (``accessguard.audit.alerts``)
evaluates them as the access ledger flushes. A malformed file names its line.

```toml
[[rule]]
name = "many_customers"          # unique; shown in every alert it raises
kind = "peer_baseline"           # distinct customers / rows / statements per window,
metric = "distinct_customers"    #   above `factor` times the role's median
window = "1 hour"                #   (over the last `baseline` of closed windows)
factor = 3.0
minimum = 20                     # never below this count, whatever the median
baseline = "7 days"

[[rule]]
name = "canary_touch"
kind = "canary"                  # any read of a canary (watched = true: of a
                                 #   watch-listed subject too)
[[rule]]
name = "read_after_close"
kind = "closed_ticket"           # statements or rows accounted after the ticket closed
grace = "5 seconds"

[[rule]]
name = "repeated_refusals"
kind = "refusals"                # refusals naming the same subject, by one employee
count = 20
window = "1 hour"

[[rule]]
name = "ticket_churn"
kind = "ticket_churn"            # tickets closed within `open_at_most` of opening,
count = 5                        #   per employee per `window`
window = "1 day"
open_at_most = "20 minutes"
self_assigned = true             # only tickets the employee assigned themselves

[webhook]                        # optional: POST each alert as JSON
url = "https://alerts.example/hook"   # or url_env = "ENV_VAR_NAME"
```
"""

from __future__ import annotations

import os
import re
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from accessguard.durations import parse_seconds
from accessguard.errors import PolicyError
from accessguard.policy.catalog import toml_error

ALERTS_FILE = "alerts.toml"
KINDS = ("peer_baseline", "canary", "closed_ticket", "refusals", "ticket_churn")
METRICS = ("distinct_customers", "rows", "statements")
SEVERITIES = ("low", "medium", "high", "critical")
#: keys each kind accepts besides name, kind, severity
_KEYS: dict[str, frozenset[str]] = {
    "peer_baseline": frozenset({"metric", "window", "factor", "minimum", "baseline"}),
    "canary": frozenset({"watched"}),
    "closed_ticket": frozenset({"grace"}),
    "refusals": frozenset({"count", "window"}),
    "ticket_churn": frozenset({"count", "window", "open_at_most", "self_assigned"}),
}
_NAME = re.compile(r"^[a-z][a-z0-9_.-]{0,63}$")


@dataclass(frozen=True, slots=True, kw_only=True)
class Rule:
    """One alert rule; fields a kind does not use keep their defaults."""

    name: str
    kind: str
    severity: str = "high"
    metric: str = "distinct_customers"
    window: int = 3600
    factor: float = 3.0
    minimum: int = 1
    baseline: int = 7 * 86400
    watched: bool = False
    grace: int = 5
    count: int = 1
    open_at_most: int = 1200
    self_assigned: bool = True


@dataclass(frozen=True, slots=True)
class AlertRules:
    """The rules of one alerts.toml, and where to POST alerts (if anywhere)."""

    rules: tuple[Rule, ...] = ()
    webhook: str | None = None
    text: str = ""

    def __bool__(self) -> bool:
        return bool(self.rules)


def load_alerts(path: Path) -> AlertRules:
    """Read ``alerts.toml`` (an absent file is no rules)."""
    if not path.exists():
        return AlertRules()
    data = path.read_bytes()
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = data.count(b"\n", 0, exc.start) + 1
        raise PolicyError("not valid UTF-8 text", path=str(path), line=line) from exc
    return parse_alerts(text, path)


def parse_alerts(text: str, path: Path) -> AlertRules:
    """The rules in ``text`` (read from ``path``)."""
    where = str(path)
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        message, line = toml_error(exc)
        raise PolicyError(f"not valid TOML: {message}", path=where, line=line) from exc
    unknown = set(data) - {"rule", "webhook"}
    if unknown:
        raise PolicyError(
            f"unknown sections: {', '.join(sorted(unknown))} (rule or webhook)", path=where
        )
    entries = data.get("rule", [])
    if not isinstance(entries, list):
        raise PolicyError("[[rule]] must be an array of tables", path=where, line=_line(text, 0))
    rules: list[Rule] = []
    seen: set[str] = set()
    for index, entry in enumerate(entries):
        line = _line(text, index)
        rule = _rule(entry, where, line)
        if rule.name in seen:
            raise PolicyError(f"rule {rule.name!r} appears twice", path=where, line=line)
        seen.add(rule.name)
        rules.append(rule)
    webhook = _webhook(data.get("webhook"), where, _section_line(text, "webhook"))
    return AlertRules(rules=tuple(rules), webhook=webhook, text=text)


def _rule(entry: object, path: str, line: int | None) -> Rule:
    if not isinstance(entry, dict):
        raise PolicyError("[[rule]] entries must be tables", path=path, line=line)
    name, kind = entry.get("name"), entry.get("kind")
    if not isinstance(name, str) or not _NAME.match(name):
        raise PolicyError(
            "[[rule]] needs name = a lower-case word (a-z, 0-9, _ . -)", path=path, line=line
        )
    if kind not in KINDS:
        raise PolicyError(
            f"rule {name}: kind must be one of {', '.join(KINDS)}", path=path, line=line
        )
    unknown = set(entry) - {"name", "kind", "severity"} - _KEYS[kind]
    if unknown:
        raise PolicyError(
            f"rule {name}: unknown keys for kind {kind}: {', '.join(sorted(unknown))}",
            path=path,
            line=line,
        )
    options: dict[str, Any] = {}
    try:
        for key, value in entry.items():
            if key in {"name", "kind"}:
                continue
            options[key] = _option(key, value)
    except ValueError as exc:
        raise PolicyError(f"rule {name}: {exc}", path=path, line=line) from exc
    return Rule(name=name, kind=kind, **options)


def _option(key: str, value: object) -> object:
    if key == "severity":
        if value not in SEVERITIES:
            raise ValueError(f"severity must be one of {', '.join(SEVERITIES)}")
        return value
    if key == "metric":
        if value not in METRICS:
            raise ValueError(f"metric must be one of {', '.join(METRICS)}")
        return value
    if key in {"window", "baseline", "grace", "open_at_most"}:
        return parse_seconds(value)
    if key == "factor":
        if isinstance(value, bool) or not isinstance(value, int | float) or not value > 0:
            raise ValueError("factor must be a number above 0")
        return float(value)
    if key in {"count", "minimum"}:
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{key} must be a whole number, 1 or more")
        return value
    if not isinstance(value, bool):  # watched, self_assigned
        raise ValueError(f"{key} must be true or false")  # noqa: TRY004 - a bad file entry
    return value


def _webhook(section: object, path: str, line: int | None) -> str | None:
    if section is None:
        return None
    if not isinstance(section, dict) or set(section) - {"url", "url_env"} or len(section) != 1:
        raise PolicyError("[webhook] takes one of url or url_env", path=path, line=line)
    if "url_env" in section:
        name = section["url_env"]
        if not isinstance(name, str):
            raise PolicyError("[webhook] url_env must be a name", path=path, line=line)
        url: object = os.environ.get(name)
        if url is None:
            return None
    else:
        url = section["url"]
    if not isinstance(url, str) or not url.startswith(("http://", "https://")) or len(url) > 2048:
        raise PolicyError("[webhook] url must be an http:// or https:// URL", path=path, line=line)
    return url


def _line(text: str, index: int) -> int | None:
    pattern = re.compile(r"^[ \t]*\[\[[ \t]*rule[ \t]*\]\]", re.MULTILINE)
    hits = [m.start() for m in pattern.finditer(text)]
    return text.count("\n", 0, hits[index]) + 1 if index < len(hits) else None


def _section_line(text: str, section: str) -> int | None:
    match = re.search(rf"^[ \t]*\[[ \t]*{section}[ \t]*\]", text, re.MULTILINE)
    return text.count("\n", 0, match.start()) + 1 if match else None
