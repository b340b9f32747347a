"""``settings.ACCESSGUARD`` read for the Django adapter: the guard, the aliases, the resolver.

The lowest of the Django adapter's modules: it reads Django's settings and
nothing of the adapter's. ``accessguard.adapters.django`` re-exports
``get_guard`` and ``default_resolver``; the settings themselves are described
there.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from django.conf import settings
from django.utils.module_loading import import_string

from accessguard.engine.gate import Gate
from accessguard.errors import ConfigurationError, Reason
from accessguard.tickets.stores import FileTicketStore

if TYPE_CHECKING:
    from django.http import HttpRequest

Resolver = Callable[["HttpRequest"], "tuple[str, str | None] | None"]

DEFAULT_TICKET_HEADER = "X-Ticket"

_guards: dict[tuple[str, str, str], Gate] = {}
#: the settings dict last resolved, and its guard (cleared when the setting changes)
_resolved: list[tuple[dict[str, Any], Gate]] = []


def get_guard() -> Gate:
    """The guard named or described by ``settings.ACCESSGUARD`` (resolved once per setting)."""
    config = read_config()
    if _resolved and _resolved[0][0] is config:
        return _resolved[0][1]
    guard = _build_guard(config)
    _resolved[:] = [(config, guard)]
    return guard


def forget_guards() -> None:
    """Drop the guards built from ``settings.ACCESSGUARD`` (the setting changed)."""
    _guards.clear()
    _resolved.clear()


def _build_guard(config: dict[str, Any]) -> Gate:
    named = config.get("GUARD")
    if named is not None:
        found = import_string(named) if isinstance(named, str) else named
        if not isinstance(found, Gate) and callable(found):
            found = found()
        if not isinstance(found, Gate):
            raise ConfigurationError(
                "ACCESSGUARD['GUARD'] is not a Guard", reason=Reason.SETTINGS_INVALID
            )
        return found
    policies = config.get("POLICIES")
    if policies is None:
        raise ConfigurationError(
            "settings.ACCESSGUARD needs GUARD or POLICIES", reason=Reason.SETTINGS_INVALID
        )
    tickets, audit = config.get("TICKETS"), config.get("AUDIT")
    key = (str(policies), repr(tickets), repr(audit))
    guard = _guards.get(key)
    if guard is None:
        if isinstance(tickets, str | Path):
            tickets = FileTicketStore(tickets)
        guard = _guards[key] = Gate.from_directory(policies, tickets=tickets, audit=audit)
    return guard


def read_config() -> dict[str, Any]:
    """``settings.ACCESSGUARD``; ``ConfigurationError`` when it is missing or not a dict."""
    config = getattr(settings, "ACCESSGUARD", None)
    if not isinstance(config, dict):
        raise ConfigurationError("settings.ACCESSGUARD is missing", reason=Reason.SETTINGS_INVALID)
    return config


def guarded_aliases() -> frozenset[str]:
    """The aliases guarded in every thread: ``ACCESSGUARD["DATABASES"]`` (default: default).

    Without ``settings.ACCESSGUARD`` none (only ``guarded()`` blocks guard);
    a malformed setting guards ``default``, whose statements then fail closed.
    """
    if not settings.configured:
        return frozenset()
    config = getattr(settings, "ACCESSGUARD", None)
    if config is None:
        return frozenset()
    aliases = config.get("DATABASES", ["default"]) if isinstance(config, dict) else ["default"]
    return frozenset(str(a) for a in aliases)


def resolver() -> Resolver:
    """``ACCESSGUARD["RESOLVER"]`` (a callable or a dotted path), else ``default_resolver``."""
    found = read_config().get("RESOLVER")
    if found is None:
        return default_resolver
    chosen: Resolver = import_string(found) if isinstance(found, str) else found
    return chosen


def default_resolver(request: HttpRequest) -> tuple[str, str | None] | None:
    """The authenticated user's username and the ticket header; None when anonymous."""
    user = getattr(request, "user", None)
    if user is None or not getattr(user, "is_authenticated", False):
        return None
    header = str(read_config().get("TICKET_HEADER", DEFAULT_TICKET_HEADER))
    return str(user.get_username()), request.headers.get(header) or None
