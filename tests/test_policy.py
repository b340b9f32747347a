"""Policy loading: Casbin files compiled to a lookup table; bad files name file and line."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from accessguard import PolicyError, scenario
from accessguard.policy.rules import NO_TICKET, load_policy

POLICY = load_policy(scenario.policies_dir())


@pytest.fixture
def policy_dir(tmp_path: Path) -> Path:
    target = tmp_path / "policies"
    shutil.copytree(scenario.policies_dir(), target)
    return target


class TestCompiled:
    def test_compiled_table_agrees_with_casbin(self) -> None:
        """For every role, kind, column and action, the fast table equals Casbin's enforce."""
        catalog = POLICY.catalog
        kinds = {NO_TICKET, "order_issue", "review_abuse", "account_recovery", "other"}
        roles = {r.role for r in POLICY.rules} | {"nobody"}
        checked = 0
        for spec in catalog.tables.values():
            for column in spec.columns:
                for role in roles:
                    for kind in kinds:
                        for action in ("read", "update"):
                            access = (spec.qualified, column, action)
                            fast = POLICY.allows(frozenset({role}), kind, access)
                            slow = POLICY.enforce(role, kind, f"{spec.name}.{column}", action)
                            assert fast == slow, (role, kind, access)
                            checked += 1
        assert checked > 1000

    def test_employees_have_their_roles_and_everyone(self) -> None:
        """g lines give roles; every employee also holds 'everyone'."""
        assert POLICY.roles_of("alice") == {"support_agent", "everyone"}
        assert POLICY.roles_of("stranger") == {"everyone"}

    def test_wildcard_expands_to_declared_columns(self) -> None:
        """orders.* grants exactly the columns schema.toml declares."""
        granted = {
            c
            for t, c, a in POLICY.grants[("support_agent", "order_issue")]
            if t == "public.orders" and a == "read"
        }
        assert granted == set(POLICY.catalog.tables["public.orders"].columns)

    def test_role_inheritance_through_casbin(self, policy_dir: Path) -> None:
        """A role granted to a role is inherited (Casbin's role manager resolves it)."""
        with (policy_dir / "policy.csv").open("a") as fh:
            fh.write("g, lead_agent, support_agent\ng, zoe, lead_agent\n")
        policy = load_policy(policy_dir)
        assert {"lead_agent", "support_agent", "everyone"} <= policy.roles_of("zoe")

    def test_version_changes_with_the_files(self, policy_dir: Path) -> None:
        """Editing a policy file changes the policy version."""
        before = load_policy(policy_dir).version
        with (policy_dir / "policy.csv").open("a") as fh:
            fh.write("p, analyst, -, sellers.name, read\n")
        assert load_policy(policy_dir).version != before


class TestErrors:
    @pytest.mark.parametrize(
        ("line", "message"),
        [
            ("p, support_agent, order_issue, customers.email, delete", "unknown action"),
            ("p, support_agent, order_issue, customers.secret, read", "unknown column"),
            ("p, support_agent, order_issue, nosuch.id, read", "unknown table"),
            ("p, support_agent, order_issue, customers.email", "4 fields"),
            ("p, support_agent, order_issue, tickets.id, read", "never reachable"),
            ("p, support_agent, order_issue, customers.*, update", "only allowed for read"),
            ("x, a, b", "unknown line type"),
            ("g, alice", "2 fields"),
        ],
    )
    def test_bad_policy_line_names_file_and_line(
        self, policy_dir: Path, line: str, message: str
    ) -> None:
        """A malformed policy.csv line fails at load with the file and its line number."""
        path = policy_dir / "policy.csv"
        lines = path.read_text().splitlines()
        lines.insert(3, line)
        path.write_text("\n".join(lines) + "\n")
        with pytest.raises(PolicyError) as info:
            load_policy(policy_dir)
        assert info.value.line == 4
        assert info.value.path == str(path)
        assert message in str(info.value)
        assert "policy.csv:4" in str(info.value)

    def test_bad_schema_toml_names_line(self, policy_dir: Path) -> None:
        """A TOML syntax error in schema.toml names the line."""
        path = policy_dir / "schema.toml"
        path.write_text(path.read_text() + "\n[tables.broken\n")
        with pytest.raises(PolicyError) as info:
            load_policy(policy_dir)
        assert info.value.path == str(path)
        assert info.value.line is not None

    def test_bad_scope_column_names_its_section(self, policy_dir: Path) -> None:
        """A scope column that is not a column of the table is reported at its section."""
        path = policy_dir / "schema.toml"
        text = path.read_text().replace(
            'scope_column = "customer_id"\n', 'scope_column = "nope"\n', 1
        )
        path.write_text(text)
        with pytest.raises(PolicyError) as info:
            load_policy(policy_dir)
        expected = text.splitlines().index("[tables.orders]") + 1
        assert info.value.line == expected

    def test_bad_model_is_reported(self, policy_dir: Path) -> None:
        """A Casbin model without a matcher is refused at load."""
        path = policy_dir / "model.conf"
        path.write_text(path.read_text().split("[matchers]")[0])
        with pytest.raises(PolicyError) as info:
            load_policy(policy_dir)
        assert "model.conf" in str(info.value)

    def test_missing_directory(self, tmp_path: Path) -> None:
        """A policy directory that does not exist is a PolicyError, not a crash."""
        with pytest.raises(PolicyError):
            load_policy(tmp_path / "nope")


class TestWatchlist:
    def test_shipped_watchlist_loads(self) -> None:
        """The scenario's watch-list names customer 7 and canary 150."""
        assert ("customer", 7) in POLICY.watchlist.watched
        assert ("customer", 150) in POLICY.watchlist.canaries

    def test_malformed_watchlist_names_its_line(self, policy_dir: Path) -> None:
        """A [[watch]] entry without ticket_kinds fails at load with file and line."""
        path = policy_dir / "watchlist.toml"
        path.write_text("[[canary]]\nids = [1]\n\n[[watch]]\nids = [2]\n")
        with pytest.raises(PolicyError) as info:
            load_policy(policy_dir)
        assert info.value.path == str(path)
        assert info.value.line == 4
