"""The policy: Casbin model and policy files, compiled for fast decisions.

The only module that imports casbin. pycasbin is untyped and logs raw request
values, so it is built here with its logging off, never exposed, and never
given an on/off switch. Casbin loads the model, holds the (wildcard-expanded)
policy and resolves role inheritance; deciding uses a table compiled from it
at load, so a decision costs a few set lookups whatever the policy's size.
"""

from __future__ import annotations

import csv
import hashlib
import io
import logging
import re
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

import casbin

from accessguard.errors import PolicyError
from accessguard.policy.catalog import Catalog, load_catalog
from accessguard.policy.masking import MASKS, MaskedColumn, mask_name, parse_action, pick
from accessguard.policy.watchlist import WATCHLIST_FILE, Watchlist, parse_watchlist

NO_TICKET = "-"
EVERYONE = "everyone"
ACTIONS = frozenset({"read", "update"})

MODEL_FILE = "model.conf"
POLICY_FILE = "policy.csv"
SHADOW_FILE = "policy.shadow.csv"
SCHEMA_FILE = "schema.toml"
LIMITS_FILE = "limits.toml"
#: every file of a policy directory: all of them (those present) make its version
POLICY_FILES = (MODEL_FILE, POLICY_FILE, SHADOW_FILE, SCHEMA_FILE, WATCHLIST_FILE, LIMITS_FILE)
#: files that may be absent (each with its meaning then: no shadow, no watch-list, no limits)
OPTIONAL_FILES = frozenset({SHADOW_FILE, WATCHLIST_FILE, LIMITS_FILE})

_WORD = re.compile(r"^(-|[A-Za-z_][A-Za-z0-9_.@-]*(\.\*)?)$")
#: a p line's action: ``read``, ``update`` or ``read:mask=NAME`` (accessguard.policy.masking)
_ACTION = re.compile(r"^[a-z]+(:mask=[A-Za-z0-9_]+)?$")

#: (table, column, action), table schema-qualified
Access = tuple[str, str, str]


@dataclass(frozen=True, slots=True, kw_only=True)
class Rule:
    """One ``p`` line after wildcard expansion, with where it came from."""

    role: str
    kind: str
    table: str
    column: str
    action: str
    path: str
    line: int
    #: the mask a masked read goes through (``read:mask=email``); None: read clear
    mask: str | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class Policy:
    """A loaded, validated, compiled policy directory."""

    directory: Path
    catalog: Catalog
    version: str
    rules: tuple[Rule, ...]
    #: (role, ticket kind or "-") -> accesses granted
    grants: dict[tuple[str, str], frozenset[Access]]
    #: employee -> every role they hold (always includes "everyone")
    user_roles: dict[str, frozenset[str]]
    #: access -> the ticket kinds under which some rule grants it
    kinds_for: dict[Access, frozenset[str]]
    _enforcer: casbin.Enforcer = field(repr=False, compare=False)
    watchlist: Watchlist = field(default_factory=Watchlist)
    #: (role, ticket kind or "-") -> (table, column, mask) of its masked reads; a masked
    #: read is in ``grants`` too (as a read), and read clear only where a rule says so
    masked: dict[tuple[str, str], frozenset[MaskedColumn]] = field(default_factory=dict)
    #: (role, ticket kind or "-") -> (table, column) it reads clear
    clear: dict[tuple[str, str], frozenset[tuple[str, str]]] = field(default_factory=dict)
    _masks: dict[tuple[frozenset[str], str | None], frozenset[MaskedColumn]] = field(
        default_factory=dict, repr=False, compare=False
    )
    _granted: dict[tuple[frozenset[str], str | None], frozenset[Access]] = field(
        default_factory=dict, repr=False, compare=False
    )
    _readable: dict[tuple[frozenset[str], str | None], frozenset[str]] = field(
        default_factory=dict, repr=False, compare=False
    )

    @property
    def known_roles(self) -> frozenset[str]:
        """Every role a rule or a membership names."""
        named = {r.role for r in self.rules}
        for roles in self.user_roles.values():
            named |= roles
        return frozenset(named | {EVERYONE})

    def roles_of(self, user: str) -> frozenset[str]:
        return self.user_roles.get(user, frozenset({EVERYONE}))

    def granted(self, roles: frozenset[str], kind: str | None) -> frozenset[Access]:
        """Every access ``roles`` hold with no ticket, plus those of ticket ``kind``."""
        key = (roles, kind)
        found = self._granted.get(key)
        if found is None:
            found = frozenset().union(
                *(self.grants.get((r, NO_TICKET), ()) for r in roles),
                *((self.grants.get((r, kind), ()) for r in roles) if kind is not None else ()),
            )
            if len(self._granted) > 4096:
                self._granted.clear()
            self._granted[key] = found
        return found

    def readable(self, roles: frozenset[str], kind: str | None) -> frozenset[str]:
        """The tables ``roles`` may read some column of (with ticket ``kind``, as ``granted``)."""
        key = (roles, kind)
        found = self._readable.get(key)
        if found is None:
            found = frozenset(t for t, _c, action in self.granted(roles, kind) if action == "read")
            if len(self._readable) > 4096:
                self._readable.clear()
            self._readable[key] = found
        return found

    def masks_for(self, roles: frozenset[str], kind: str | None) -> frozenset[MaskedColumn]:
        """The columns ``roles`` read masked (with ticket ``kind``, as ``granted``), and how.

        A column is masked when some rule grants it masked and none grants it
        clear; when rules grant several masks, the least revealing is used
        (``accessguard.policy.masking.MASKS``).
        """
        key = (roles, kind)
        found = self._masks.get(key)
        if found is None:
            found = frozenset()
            if self.masked:
                kinds = (NO_TICKET,) if kind is None else (NO_TICKET, kind)
                pairs = [(r, k) for r in roles for k in kinds]
                clear = frozenset().union(*(self.clear.get(p, ()) for p in pairs))
                options: dict[tuple[str, str], set[str]] = defaultdict(set)
                for pair in pairs:
                    for table, column, mask in self.masked.get(pair, ()):
                        if (table, column) not in clear:
                            options[(table, column)].add(mask)
                found = frozenset((t, c, pick(names)) for (t, c), names in options.items())
            if len(self._masks) > 4096:
                self._masks.clear()
            self._masks[key] = found
        return found

    def masked_reads(
        self, roles: frozenset[str], kind: str | None, reads: frozenset[tuple[str, str]]
    ) -> tuple[tuple[str, str], ...]:
        """("table.column", mask) of each of ``reads`` that ``roles`` read masked only."""
        masks = self.masks_for(roles, kind)
        return tuple(
            sorted((f"{t.rsplit('.', 1)[-1]}.{c}", m) for t, c, m in masks if (t, c) in reads)
        )

    def mask_problem(
        self,
        roles: frozenset[str],
        kind: str | None,
        reads: frozenset[tuple[str, str]],
        writes: frozenset[tuple[str, str]],
        dialect: str,
    ) -> str | None:
        """Why a column of ``reads`` read masked only cannot be masked there; None if it can.

        Masks apply in a table's projection subquery (``analysis.rewrite``):
        the UPDATE target has none (its WHERE, SET and RETURNING see the
        stored values), and masks are PostgreSQL expressions.
        """
        read = [(t, c) for t, c, _m in self.masks_for(roles, kind) if (t, c) in reads]
        if not read:  # most statements: no masked column read, nothing to sort
            return None
        targets = {t for t, _c in writes}
        for table, column in sorted(read):
            obj = f"{table.rsplit('.', 1)[-1]}.{column}"
            if table in targets:
                return (  # a message, not SQL
                    f"{obj} is granted masked only: an UPDATE of its table cannot read it "  # noqa: S608
                    "(in WHERE, SET or RETURNING); read it with a SELECT."
                )
            if dialect != "postgres":
                return f"{obj} is granted masked only, and masks apply on PostgreSQL only."
        return None

    def allows(self, roles: frozenset[str], kind: str, access: Access) -> bool:
        """Whether any of ``roles`` is granted ``access`` under ticket ``kind`` ("-": none)."""
        return any(access in self.grants.get((role, kind), ()) for role in roles)

    def enforce(self, role: str, kind: str, obj: str, action: str) -> bool:
        """Ask Casbin itself (slow; for tests and ``explain``, not the hot path)."""
        return bool(self._enforcer.enforce(role, kind, obj, action))

    def rules_for(self, roles: frozenset[str], kind: str, access: Access) -> list[Rule]:
        return [
            r
            for r in self.rules
            if r.role in roles and r.kind == kind and (r.table, r.column, r.action) == access
        ]


def load_policy(directory: str | Path, *, policy_file: str = POLICY_FILE) -> Policy:
    """Load model.conf, policy.csv and schema.toml from ``directory``; PolicyError on any fault.

    ``policy_file="policy.shadow.csv"`` loads the shadow policy: the candidate
    rules a new restriction is rolled out with (see ``Guard``).

    Every file of the directory that is present (``POLICY_FILES``, limits and
    shadow included) must be UTF-8 text with something besides comments in
    it: an undecodable or empty file is a PolicyError naming it, as a
    malformed one is. All of them make the policy's version, so an edit to
    any of them is a new version.
    """
    directory = Path(directory)
    if not directory.is_dir():
        raise PolicyError("policy directory does not exist", path=str(directory))
    texts = {
        name: read_text(directory / name)
        for name in dict.fromkeys((*POLICY_FILES, policy_file))
        if name not in OPTIONAL_FILES or name == policy_file or (directory / name).exists()
    }
    catalog = load_catalog(directory / SCHEMA_FILE)
    model_path = directory / MODEL_FILE
    policy_path = directory / policy_file
    model_text = texts[MODEL_FILE]
    policy_text = texts[policy_file]
    rules, groupings = _parse_policy(policy_text, str(policy_path), catalog)
    enforcer = _build_enforcer(model_path, model_text, rules, groupings)
    grants: dict[tuple[str, str], set[Access]] = defaultdict(set)
    kinds: dict[Access, set[str]] = defaultdict(set)
    masked: dict[tuple[str, str], set[MaskedColumn]] = defaultdict(set)
    clear: dict[tuple[str, str], set[tuple[str, str]]] = defaultdict(set)
    for rule in rules:
        access = (rule.table, rule.column, rule.action)
        grants[(rule.role, rule.kind)].add(access)
        kinds[access].add(rule.kind)
        if rule.mask is not None:
            masked[(rule.role, rule.kind)].add((rule.table, rule.column, rule.mask))
        elif rule.action == "read":
            clear[(rule.role, rule.kind)].add((rule.table, rule.column))
    users = {user for user, _role in groupings}
    user_roles = {
        user: frozenset(enforcer.get_implicit_roles_for_user(user)) | {EVERYONE} for user in users
    }
    watchlist = parse_watchlist(texts.get(WATCHLIST_FILE, ""), directory / WATCHLIST_FILE)
    digest = hashlib.sha256(policy_file.encode())
    for name, text in sorted(texts.items()):
        digest.update(f"\0{name}\0".encode())
        digest.update(text.encode())
    return Policy(
        directory=directory,
        catalog=catalog,
        version=digest.hexdigest()[:12],
        rules=tuple(rules),
        grants={k: frozenset(v) for k, v in grants.items()},
        user_roles=user_roles,
        kinds_for={k: frozenset(v) for k, v in kinds.items()},
        _enforcer=enforcer,
        watchlist=watchlist,
        masked={k: frozenset(v) for k, v in masked.items()},
        clear={k: frozenset(v) for k, v in clear.items()},
    )


def read_text(path: Path) -> str:
    """A policy file's text; PolicyError (file, and line) if it cannot be read, is not
    UTF-8, or holds nothing but blank lines and ``#`` comments."""
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise PolicyError(f"cannot read file ({exc.strerror})", path=str(path)) from exc
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = data.count(b"\n", 0, exc.start) + 1
        raise PolicyError("not valid UTF-8 text", path=str(path), line=line) from exc
    if not any(line.strip() and not line.lstrip().startswith("#") for line in text.splitlines()):
        raise PolicyError("the file is empty (only blank lines and comments)", path=str(path))
    return text


def _parse_policy(
    text: str, path: str, catalog: Catalog
) -> tuple[list[Rule], list[tuple[str, str]]]:
    rules: list[Rule] = []
    groupings: list[tuple[str, str]] = []
    for lineno, raw in enumerate(text.splitlines(), 1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        fields = [f.strip() for f in next(csv.reader(io.StringIO(line), skipinitialspace=True))]
        names = fields[1:4] if fields[0] == "p" else fields[1:]
        if any(not f or not _WORD.match(f) for f in names) or (
            fields[0] == "p" and len(fields) == 5 and not _ACTION.match(fields[4])
        ):
            raise PolicyError(f"malformed entry {line!r}", path=path, line=lineno)
        if fields[0] == "g":
            if len(fields) != 3:
                raise PolicyError("a g line has 2 fields: EMPLOYEE, ROLE", path=path, line=lineno)
            groupings.append((fields[1], fields[2]))
        elif fields[0] == "p":
            if len(fields) != 5:
                raise PolicyError(
                    "a p line has 4 fields: ROLE, TICKET_KIND, TABLE.COLUMN, ACTION",
                    path=path,
                    line=lineno,
                )
            rules.extend(_expand(fields[1:], path, lineno, catalog))
        else:
            raise PolicyError(f"unknown line type {fields[0]!r} (p or g)", path=path, line=lineno)
    return rules, groupings


def _expand(fields: list[str], path: str, lineno: int, catalog: Catalog) -> list[Rule]:
    role, kind, obj, written = fields
    parsed = parse_action(written)
    if parsed is None:
        name = mask_name(written)
        if name is not None:
            known = ", ".join(MASKS)
            message = f"unknown mask {name!r} in {written!r} (one of {known})"
        else:
            message = f"unknown action {written!r} (read, update or read:mask=NAME)"
        raise PolicyError(message, path=path, line=lineno)
    action, mask = parsed
    if action not in ACTIONS:
        raise PolicyError(f"unknown action {action!r} (read or update)", path=path, line=lineno)
    table_name, _, column = obj.partition(".")
    if not column or "." in column:
        raise PolicyError(f"object {obj!r} must be TABLE.COLUMN or TABLE.*", path=path, line=lineno)
    spec = catalog.by_name(table_name)
    if spec is None:
        raise PolicyError(
            f"unknown table {table_name!r} (not in schema.toml)", path=path, line=lineno
        )
    if not spec.reachable:
        raise PolicyError(f"table {table_name!r} is never reachable", path=path, line=lineno)
    if column == "*":
        if action != "read":
            raise PolicyError("TABLE.* is only allowed for read", path=path, line=lineno)
        columns: tuple[str, ...] = spec.columns
    elif column in spec.column_set:
        columns = (column,)
    else:
        raise PolicyError(f"unknown column {obj!r} (not in schema.toml)", path=path, line=lineno)
    return [
        Rule(
            role=role,
            kind=kind,
            table=spec.qualified,
            column=c,
            action=action,
            path=path,
            line=lineno,
            mask=mask,
        )
        for c in columns
    ]


def _build_enforcer(
    model_path: Path, model_text: str, rules: list[Rule], groupings: list[tuple[str, str]]
) -> casbin.Enforcer:
    # pycasbin's own logging writes raw request values: keep it off.
    logging.getLogger("casbin").setLevel(logging.CRITICAL)
    try:
        model = casbin.Enforcer.new_model(text=model_text)
        enforcer = casbin.Enforcer(model, enable_log=False)
    except Exception as exc:  # pycasbin raises bare errors for bad models
        raise PolicyError(f"not a valid Casbin model: {exc}", path=str(model_path)) from exc
    for section in ("r", "p", "g", "e", "m"):
        if section not in enforcer.get_model().model:
            raise PolicyError(f"model has no [{section}] section", path=str(model_path))
    if rules:
        enforcer.add_policies(
            sorted(
                {
                    (r.role, r.kind, f"{r.table.rsplit('.', 1)[1]}.{r.column}", r.action)
                    for r in rules
                }
            )
        )
    members = {(user, EVERYONE) for user, _role in groupings}
    if groupings:
        enforcer.add_grouping_policies(sorted(set(groupings) | members))
    return enforcer
