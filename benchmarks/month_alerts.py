"""How well the alert rules single out the month's planted insiders (issue 20).

Counted per employee: an employee is flagged by a rule when it raised at
least one alert naming them. Precision is the share of flagged employees who
are insiders; recall the share of insiders flagged (by any rule, and by each
rule). Alert-level precision counts alerts instead of employees. For each
insider: the rules that flagged them and how long after they first acted as
an insider the first alert came ("while they act").
"""

from __future__ import annotations

import datetime as dt
from collections import Counter, defaultdict
from typing import Any

from accessguard.audit.sinks import Event


def _ts(text: str) -> float:
    return dt.datetime.fromisoformat(text).timestamp()


def _ratio(part: int, whole: int) -> float | None:
    return round(part / whole, 3) if whole else None


def score(alerts: list[Event], truth: dict[str, Any]) -> dict[str, Any]:
    """Precision and recall of the alerts against ``truth`` (month_desk.Truth.as_json)."""
    insiders = {name: kind for kind, name in truth["insiders"].items()}
    flagged: dict[str, dict[str, float]] = defaultdict(dict)  # user -> rule -> first alert time
    per_rule: Counter[str] = Counter()
    on_insiders = 0
    for alert in alerts:
        user, rule = str(alert.get("user.name")), str(alert.get("rule.name"))
        when = _ts(str(alert["@timestamp"]))
        per_rule[rule] += 1
        on_insiders += user in insiders
        first = flagged[user].get(rule)
        flagged[user][rule] = when if first is None else min(first, when)
    hits = [u for u in flagged if u in insiders]
    rules: dict[str, Any] = {}
    for rule in sorted(per_rule):
        users = [u for u in flagged if rule in flagged[u]]
        caught = [u for u in users if u in insiders]
        rules[rule] = {
            "alerts": per_rule[rule],
            "employees": sorted(users),
            "precision": _ratio(len(caught), len(users)),
            "recall": _ratio(len(caught), len(insiders)),
        }
    acted = {n: _ts(t) for n, t in truth.get("acted", {}).items()}
    each: dict[str, Any] = {}
    for name, kind in sorted(insiders.items(), key=lambda item: item[1]):
        first = min(flagged[name].values()) if name in flagged else None
        start = acted.get(name)
        each[kind] = {
            "employee": name,
            "flagged": name in flagged,
            "rules": sorted(flagged.get(name, {})),
            "minutes_to_first_alert": (
                round((first - start) / 60, 1) if first is not None and start is not None else None
            ),
        }
    return {
        "alerts": len(alerts),
        "flagged": sorted(flagged),
        "precision": _ratio(len(hits), len(flagged)),
        "recall": _ratio(len(hits), len(insiders)),
        "alert_precision": _ratio(on_insiders, len(alerts)),
        "insiders": each,
        "rules": rules,
    }
