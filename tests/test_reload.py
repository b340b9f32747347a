"""Reload that cannot fail open or die.

Every file of the policy directory is part of the policy's version and is
watched; an undecodable or empty file is a malformed one (the last good
policy stays, a failure event is written, the watcher lives on); an absent
limits.toml still means no limits.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from accessguard import Guard, PolicyError, scenario
from accessguard.engine.watch import PolicyWatcher
from accessguard.policy.rules import load_policy
from accessguard.testing import MemoryAuditSink
from accessguard.throttle.limits import load_limits

SHADOW = "p, analyst, -, products.title, read\ng, dave, analyst\n"


@pytest.fixture
def policy_dir(tmp_path: Path) -> Path:
    """A copy of the scenario's policy directory, to edit."""
    target = tmp_path / "policies"
    shutil.copytree(scenario.policies_dir(), target)
    return target


@pytest.fixture
def copy_guard(policy_dir: Path, sink: MemoryAuditSink) -> Guard:
    """A guard on the copy, auditing to ``sink``."""
    return Guard.from_directory(policy_dir, tickets=scenario.tickets(), audit=sink)


def failures(sink: MemoryAuditSink) -> list[str]:
    """The messages of the failed reloads audited so far."""
    return [
        str(e["message"])
        for e in sink.events
        if e.get("event.action") == "policy.reload" and e["event.outcome"] == "failure"
    ]


def spoil(path: Path, line: int) -> None:
    """Put one byte that is not UTF-8 at the start of ``line`` of ``path``."""
    lines = path.read_bytes().split(b"\n")
    lines[line - 1] = b"\xff" + lines[line - 1]
    # in one step: a watcher polling meanwhile must not see the file empty (half
    # written), nor the temporary file (it is a change of the directory too, and a
    # reload of the unchanged policy would set ``reloaded`` before the spoiled one)
    spoiled = path.parent.parent / (path.name + ".spoiled")
    spoiled.write_bytes(b"\n".join(lines))
    spoiled.replace(path)


class TestUndecodableOrEmpty:
    @pytest.mark.parametrize(
        "name", ["policy.csv", "model.conf", "schema.toml", "limits.toml", "watchlist.toml"]
    )
    def test_an_undecodable_file_is_refused_naming_file_and_line(
        self, policy_dir: Path, name: str
    ) -> None:
        """Loading a directory with a non-UTF-8 byte raises PolicyError naming file and line."""
        spoil(policy_dir / name, 3)
        with pytest.raises(PolicyError) as info:
            Guard.from_directory(policy_dir, tickets=scenario.tickets())
        assert info.value.path.endswith(name)
        assert info.value.line == 3

    @pytest.mark.parametrize("text", ["", "\n  \n", "# no limits for now\n"])
    def test_an_empty_limits_file_is_an_error_not_no_limits(
        self, policy_dir: Path, text: str
    ) -> None:
        """An existing limits.toml with nothing in it is refused at load (absent is no limits)."""
        (policy_dir / "limits.toml").write_text(text)
        with pytest.raises(PolicyError) as info:
            Guard.from_directory(policy_dir, tickets=scenario.tickets())
        assert info.value.path.endswith("limits.toml")

    def test_an_absent_limits_file_means_no_limits(self, policy_dir: Path) -> None:
        """Without limits.toml the guard has no volume limits, as the contract says."""
        (policy_dir / "limits.toml").unlink()
        with Guard.from_directory(policy_dir, tickets=scenario.tickets()) as guard:
            assert guard.throttle is None

    @pytest.mark.parametrize("edit", ["empty-limits", "undecodable-policy", "empty-watchlist"])
    def test_reload_keeps_the_last_good_policy_and_audits(
        self, copy_guard: Guard, policy_dir: Path, sink: MemoryAuditSink, edit: str
    ) -> None:
        """An empty or undecodable edit fails the reload: policy, limits kept; one event."""
        assert copy_guard.throttle is not None
        version, limits = copy_guard.policy.version, copy_guard.throttle.limits
        if edit == "empty-limits":
            (policy_dir / "limits.toml").write_text("")
        elif edit == "undecodable-policy":
            spoil(policy_dir / "policy.csv", 2)
        else:
            (policy_dir / "watchlist.toml").write_text("# emptied\n")
        assert not copy_guard.reload()
        assert copy_guard.policy.version == version
        assert copy_guard.throttle.limits is limits
        assert len(failures(sink)) == 1


class TestLimitsFile:
    def test_limits_added_while_running_take_effect(
        self, policy_dir: Path, sink: MemoryAuditSink
    ) -> None:
        """A limits.toml added to a guard that had none is enforced after the reload."""
        limits = policy_dir / "limits.toml"
        text = limits.read_text()
        limits.unlink()
        with Guard.from_directory(policy_dir, tickets=scenario.tickets(), audit=sink) as guard:
            assert guard.throttle is None
            limits.write_text(text)
            assert guard.reload()
            assert guard.throttle is not None
            assert guard.throttle.limits.version == load_limits(limits).version

    def test_limits_removed_while_running_stay_in_force(
        self, copy_guard: Guard, policy_dir: Path, sink: MemoryAuditSink
    ) -> None:
        """Deleting limits.toml is no switch: the reload fails, audited, the limits stay."""
        assert copy_guard.throttle is not None
        version, limits = copy_guard.policy.version, copy_guard.throttle.limits
        (policy_dir / "limits.toml").unlink()
        assert not copy_guard.reload()
        assert copy_guard.policy.version == version
        assert copy_guard.throttle.limits is limits
        assert any("limits.toml" in m for m in failures(sink))


class TestVersion:
    @pytest.mark.parametrize("name", ["limits.toml", "watchlist.toml", "policy.shadow.csv"])
    def test_every_policy_file_makes_the_version(self, policy_dir: Path, name: str) -> None:
        """An edit to limits, the watch-list or the shadow rules is a new policy version."""
        before = load_policy(policy_dir).version
        path = policy_dir / name
        path.write_text((path.read_text() if path.exists() else SHADOW) + "# edited\n")
        assert load_policy(policy_dir).version != before

    def test_a_limits_edit_reloads_as_a_new_version(
        self, copy_guard: Guard, policy_dir: Path, sink: MemoryAuditSink
    ) -> None:
        """Reloading after a limits.toml edit audits a replaced version."""
        old = copy_guard.policy.version
        with (policy_dir / "limits.toml").open("a") as fh:
            fh.write("# reviewed\n")
        assert copy_guard.reload()
        assert copy_guard.policy.version != old
        assert sink.events[-1]["message"] == f"policy {old} replaced by {copy_guard.policy.version}"


class TestWatcher:
    @pytest.mark.parametrize("name", ["watchlist.toml", "policy.shadow.csv", "limits.toml"])
    def test_an_edit_to_any_policy_file_reloads(
        self, copy_guard: Guard, policy_dir: Path, name: str
    ) -> None:
        """Editing (or adding) any one file of the policy directory alone triggers a reload."""
        watcher = PolicyWatcher(copy_guard, interval=3600)
        old = copy_guard.policy.version
        assert not watcher.poll()
        path = policy_dir / name
        path.write_text((path.read_text() if path.exists() else SHADOW) + "# edited\n")
        assert watcher.poll()
        assert copy_guard.policy.version != old

    def test_an_undecodable_edit_does_not_kill_the_watcher_thread(
        self, copy_guard: Guard, policy_dir: Path, sink: MemoryAuditSink
    ) -> None:
        """After a non-UTF-8 byte in policy.csv the thread lives and reloads the next edit."""
        watcher = PolicyWatcher(copy_guard, interval=0.05).start()
        try:
            assert watcher.ready.wait(10)
            old = copy_guard.policy.version
            spoil(policy_dir / "policy.csv", 2)
            assert watcher.reloaded.wait(10)
            watcher.reloaded.clear()
            assert watcher._thread is not None
            assert watcher._thread.is_alive()
            assert copy_guard.policy.version == old
            assert any("policy.csv:2" in m for m in failures(sink))
            shutil.copy(scenario.policies_dir() / "policy.csv", policy_dir / "policy.csv")
            with (policy_dir / "policy.csv").open("a") as fh:
                fh.write("p, analyst, -, sellers.name, read\n")
            assert watcher.reloaded.wait(10)
            assert copy_guard.policy.version != old
        finally:
            watcher.stop()

    def test_a_callback_that_raises_is_counted(self, copy_guard: Guard, policy_dir: Path) -> None:
        """Whatever a reload callback raises, poll() returns and counts it."""

        def broken() -> None:
            raise RuntimeError("boom")

        watcher = PolicyWatcher(copy_guard, interval=3600)
        watcher.set_update_callback(broken)
        (policy_dir / "extra.txt").write_text("x")
        assert watcher.poll()
        assert watcher.failures == 1
