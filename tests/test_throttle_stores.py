"""One statement window and one customer window per employee, in memory and in Redis alike.

Every test here plays one script (statements, clock moves, reloads) on the
in-process store and on the real Redis, each with its own frozen clock at the
same times, and asserts that the two give exactly the same verdicts, then what
those verdicts must be.
"""

from __future__ import annotations

import math
import shutil
import textwrap
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import pytest
import redis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from accessguard import Guard, Reason, Throttled, scenario
from accessguard.guard import Session
from accessguard.testing import MemoryAuditSink
from accessguard.throttle.limits import Limits, Rule, Verdict, Window
from accessguard.throttle.limits import load_limits as _load_limits
from accessguard.throttle.window import Throttle, ThrottleStoreUnavailable

T0 = 1_750_000_000.0
AGENT = frozenset({"support_agent", "everyone"})
DAVE = frozenset({"analyst", "everyone"})
NONE: frozenset[int] = frozenset()


class FrozenClock:
    """A clock that moves only when the script moves it."""

    def __init__(self, now: float = T0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


@dataclass(frozen=True, slots=True)
class Hit:
    """One statement: ``mode`` is check, hit or record."""

    user: str
    kind: str | None = None
    customers: frozenset[int] = NONE
    mode: Literal["check", "hit", "record"] = "hit"
    roles: frozenset[str] = AGENT


@dataclass(frozen=True, slots=True)
class Wait:
    """The clock moves on."""

    seconds: float


@dataclass(frozen=True, slots=True)
class Reload:
    """New limits, as ``guard.reload()`` applies them."""

    limits: Limits


Step = Hit | Wait | Reload


def play(script: Sequence[Step], throttle: Throttle, clock: FrozenClock) -> list[Verdict | None]:
    """The verdict of every Hit of ``script`` (None: allowed; record() gives none)."""
    verdicts: list[Verdict | None] = []
    for step in script:
        if isinstance(step, Wait):
            clock.now += step.seconds
        elif isinstance(step, Reload):
            throttle.set_limits(step.limits)
        elif step.mode == "record":
            throttle.record(step.user, step.roles, step.kind, step.customers)
            verdicts.append(None)
        else:
            call = throttle.check if step.mode == "check" else throttle.hit
            verdicts.append(call(step.user, step.roles, step.kind, step.customers))
    return verdicts


def side_by_side(limits: Limits, script: Sequence[Step], redis_url: str) -> list[Verdict | None]:
    """Play ``script`` on memory and on Redis; assert the verdicts agree; return them."""
    runs = []
    for storage in ("memory://", redis_url):
        clock = FrozenClock()
        throttle = Throttle(limits, storage=storage, clock=clock)
        try:
            runs.append(play(script, throttle, clock))
        finally:
            throttle.close()
    memory, shared = runs
    assert outcomes(shared) == outcomes(memory)  # the readable diff first
    assert shared == memory  # then counts and waits, exactly
    return memory


def outcomes(verdicts: Sequence[Verdict | None]) -> list[str]:
    """``allowed`` or the reason, per statement."""
    return ["allowed" if v is None else str(v.reason) for v in verdicts]


def load(tmp_path: Path, text: str) -> Limits:
    """Limits from the text of a limits.toml."""
    path = tmp_path / f"limits-{uuid.uuid4().hex[:8]}.toml"
    path.write_text(textwrap.dedent(text), encoding="utf-8")
    return _load_limits(path)


def statements(count: int) -> Limits:
    """Only a statement rate: ``count`` per minute for everyone."""
    return Limits(rules=(Rule(role="everyone", statements=Window(count=count, seconds=60)),))


def customers(count: int) -> Limits:
    """Only the distinct-customers limit: ``count`` per hour for support_agent."""
    window = Window(count=count, seconds=3600)
    return Limits(rules=(Rule(role="support_agent", distinct_customers=window),))


def mallory(customer: int, kind: str | None = "order_issue") -> Hit:
    """mallory reads one customer of her tickets T-400..T-429 (customers 100..129)."""
    return Hit("mallory", kind, frozenset({customer}))


class TestOneStatementWindow:
    def test_two_ticket_kind_limits_share_one_window(self, tmp_path: Path, redis_url: str) -> None:
        """30 statements under order_issue's limit leave 90 of everyone's 120, not 120."""
        limits = load(
            tmp_path,
            """
            [roles.everyone]
            statements = { count = 120, per = "1 minute" }
            [roles.support_agent.ticket_kinds.order_issue]
            statements = { count = 30, per = "1 minute" }
            """,
        )
        script: list[Step] = []
        for _ in range(40):
            script += [Hit("alice", "order_issue"), Wait(0.5)]
        for _ in range(130):
            script += [Hit("alice", None), Wait(0.1)]
        got = side_by_side(limits, script, redis_url)
        assert got[:40].count(None) == 30
        assert got[40:].count(None) == 90  # 120 in the minute, not 150
        first = got[40 + 90]
        assert first is not None
        assert (first.limit, first.count) == ("statements: 120 per 1 minute", 121)
        assert first.retry_after == pytest.approx(60 - (20 + 9))  # the first entry leaves

    def test_a_tighter_reload_keeps_the_count(self, redis_url: str) -> None:
        """120 statements, then a reload to 100 a minute: none more until 21 have left."""
        script: list[Step] = []
        for _ in range(120):
            script += [Hit("dave", roles=DAVE), Wait(0.25)]
        script.append(Reload(statements(100)))
        for _ in range(100):
            script += [Hit("dave", roles=DAVE), Wait(0.1)]
        script += [Wait(25.005), Hit("dave", roles=DAVE), Wait(0.01), Hit("dave", roles=DAVE)]
        got = side_by_side(statements(120), script, redis_url)
        assert got[:120] == [None] * 120
        assert outcomes(got[120:220]) == ["throttle.statements"] * 100  # 120 a minute, not 220
        first = got[120]
        assert first is not None
        assert (first.limit, first.count) == ("statements: 100 per 1 minute", 121)
        assert first.retry_after == pytest.approx(20 * 0.25 + 60 - 30)  # the 21st oldest
        assert got[220] is None  # T0 + 65.005: the 21 of T0 .. T0 + 5 have left, 99 remain
        assert got[221] is not None  # and that one makes 100 again

    def test_a_looser_reload_keeps_the_count(self, redis_url: str) -> None:
        """100 statements under 100 a minute, then 120: exactly 20 more in that minute."""
        script: list[Step] = [Hit("dave", roles=DAVE) for _ in range(101)]
        script.append(Reload(statements(120)))
        script += [Hit("dave", roles=DAVE) for _ in range(30)]
        got = side_by_side(statements(100), script, redis_url)
        assert got[:101].count(None) == 100
        assert got[101:].count(None) == 20

    def test_a_reload_that_removes_the_rate_forgets_nothing(self, redis_url: str) -> None:
        """Statements let through without a rate do not count; those before it still do."""
        script: list[Step] = [Hit("dave", roles=DAVE) for _ in range(50)]
        script += [Reload(Limits()), *[Hit("dave", roles=DAVE) for _ in range(500)]]
        script += [Reload(statements(60)), *[Hit("dave", roles=DAVE) for _ in range(20)]]
        got = side_by_side(statements(60), script, redis_url)
        assert got[:550] == [None] * 550
        assert got[550:].count(None) == 10


class TestOneCustomerWindow:
    def test_mallory_across_two_limits(self, tmp_path: Path, redis_url: str) -> None:
        """10 customers under order_issue's limit leave 10 of support_agent's 20."""
        limits = load(
            tmp_path,
            """
            [roles.support_agent]
            distinct_customers = { count = 20, per = "1 hour" }
            [roles.support_agent.ticket_kinds.order_issue]
            distinct_customers = { count = 10, per = "1 hour" }
            """,
        )
        script: list[Step] = []
        for customer in range(100, 115):
            script += [mallory(customer), Wait(60)]
        for customer in range(110, 130):
            script += [mallory(customer, kind=None), Wait(60)]
        got = side_by_side(limits, script, redis_url)
        assert got[:15].count(None) == 10
        assert got[15:].count(None) == 10  # 20 in the hour, not 30
        refused = got[25]
        assert refused is not None
        assert (refused.limit, refused.count) == ("distinct_customers: 20 per 1 hour", 21)

    def test_mallory_across_a_reload(self, redis_url: str) -> None:
        """Fifteen customers, a reload to 10 an hour, back to 20: still 20 in the hour."""
        script: list[Step] = []
        for customer in range(100, 115):
            script += [mallory(customer), Wait(120)]
        script += [Reload(customers(10)), mallory(115), mallory(100)]
        script += [Reload(customers(20))]
        for customer in range(115, 130):
            script += [mallory(customer), Wait(60)]
        script += [Wait(3600 - 30 * 60 - 15 * 60), mallory(129)]  # 100 has left
        got = side_by_side(customers(20), script, redis_url)
        assert got[:15] == [None] * 15
        tightened = got[15]
        assert tightened is not None
        assert (tightened.limit, tightened.count) == ("distinct_customers: 10 per 1 hour", 16)
        assert got[16] is not None  # 15 in the window: even an old customer waits
        assert got[17:22] == [None] * 5  # 115..119: twenty in the hour
        assert outcomes(got[22:32]) == ["throttle.distinct_customers"] * 10
        assert got[32] is None


# A random mix of statements, clock moves and reloads: the stores never disagree.
LIMIT_SETS = [
    Limits(),
    statements(5),
    customers(3),
    Limits(
        rules=(
            Rule(role="everyone", statements=Window(count=8, seconds=60)),
            Rule(role="support_agent", distinct_customers=Window(count=4, seconds=600)),
            Rule(
                role="support_agent",
                ticket_kind="order_issue",
                statements=Window(count=3, seconds=60),
                distinct_customers=Window(count=2, seconds=600),
            ),
        )
    ),
    Limits(
        rules=(
            Rule(role="everyone", statements=Window(count=4, seconds=120)),
            Rule(role="support_agent", distinct_customers=Window(count=6, seconds=300)),
        )
    ),
]
HITS = st.builds(
    Hit,
    user=st.sampled_from(["mallory", "mallory", "alice"]),
    kind=st.sampled_from([None, "order_issue", "account_recovery"]),
    customers=st.frozensets(st.integers(100, 106), max_size=3),
    mode=st.sampled_from(["check", "hit", "hit", "hit", "record"]),
)
# -30: the clock stepped back (an NTP correction); the stores still agree
WAITS = st.builds(Wait, st.sampled_from([-30.0, 0.0, 0.5, 7.25, 30.0, 59.999, 60.0, 119.5, 601.0]))
STEPS = st.one_of(HITS, HITS, HITS, HITS, WAITS, st.builds(Reload, st.sampled_from(LIMIT_SETS)))


class TestAnyScript:
    @settings(max_examples=60, suppress_health_check=[HealthCheck.function_scoped_fixture])
    @given(limits=st.sampled_from(LIMIT_SETS), script=st.lists(STEPS, min_size=20, max_size=80))
    def test_memory_and_redis_agree(
        self, redis_url: str, limits: Limits, script: list[Step]
    ) -> None:
        """Any script of statements, waits and reloads gets the same verdicts in both stores."""
        with redis.Redis.from_url(redis_url) as client:
            client.flushdb()
        side_by_side(limits, script, redis_url)


class TestRedisScript:
    def test_one_round_trip_per_statement(self, redis_url: str) -> None:
        """A statement under both limits is one EVALSHA: no other command reaches Redis."""
        throttle = Throttle(_shipped(), storage=redis_url)
        throttle.hit("mallory", AGENT, "order_issue", frozenset({100}))  # loads the script
        sent = []
        with redis.Redis.from_url(redis_url) as client, redis.Redis.from_url(redis_url) as end:
            end.ping()  # its connection is open before the monitor starts
            with client.monitor() as monitor:
                for customer in range(101, 106):
                    throttle.hit("mallory", AGENT, "order_issue", frozenset({customer}))
                end.echo("end of the statements")
                while (command := monitor.next_command())[
                    "command"
                ] != "ECHO end of the statements":
                    if command["client_type"] != "lua" and command["db"] == _db(redis_url):
                        sent.append(command["command"].split()[0])
        throttle.close()
        assert sent == ["EVALSHA"] * 5

    def test_a_flushed_script_is_loaded_again(self, redis_url: str) -> None:
        """After SCRIPT FLUSH (a restart, a failover) the next statement still counts."""
        throttle = Throttle(customers(1), storage=redis_url)
        assert throttle.hit("mallory", AGENT, "order_issue", frozenset({100})) is None
        with redis.Redis.from_url(redis_url) as client:
            client.script_flush()
        assert throttle.hit("mallory", AGENT, "order_issue", frozenset({101})) is not None
        throttle.close()

    def test_a_script_error_refuses(self, redis_url: str) -> None:
        """A key the script cannot read (wrong type) refuses the statement: the store failed."""
        with redis.Redis.from_url(redis_url) as client:
            client.set("accessguard:mallory/statements", "not a sorted set")
        throttle = Throttle(_shipped(), storage=redis_url)
        with pytest.raises(ThrottleStoreUnavailable) as caught:
            throttle.hit("mallory", AGENT, "order_issue", frozenset({100}))
        assert caught.value.reason is Reason.THROTTLE_STORE_UNAVAILABLE
        throttle.close()

    def test_more_customers_than_the_limit_never_pass(self, redis_url: str) -> None:
        """21 customers in one statement: refused in both stores with no time it could pass."""
        got = side_by_side(customers(20), [Hit("mallory", None, frozenset(range(21)))], redis_url)
        assert got[0] is not None
        assert got[0].retry_after == math.inf


def _shipped() -> Limits:
    return _load_limits(scenario.policies_dir() / "limits.toml")


def _db(url: str) -> int:
    return int(url.rsplit("/", 1)[1])


@pytest.fixture(params=["memory", "redis"])
def storage(request: pytest.FixtureRequest) -> str:
    """The guard's throttle on the in-process store and on the real Redis."""
    if request.param == "memory":
        return "memory://"
    return str(request.getfixturevalue("redis_url"))


@pytest.fixture
def policy_dir(tmp_path: Path) -> Path:
    """A copy of the shipped policies, to edit and reload."""
    target = tmp_path / "policies"
    shutil.copytree(scenario.policies_dir(), target)
    return target


@pytest.fixture
def reloading_guard(policy_dir: Path, storage: str, sink: MemoryAuditSink) -> Iterator[Guard]:
    """The scenario's guard on ``storage`` with a frozen throttle clock."""
    with Guard.from_directory(
        policy_dir,
        tickets=scenario.tickets(),
        audit=sink,
        throttle_storage=storage,
        throttle_clock=FrozenClock(),
    ) as guard:
        yield guard


class TestGuardReload:
    def test_reload_tightens_the_running_window(
        self, reloading_guard: Guard, policy_dir: Path, sink: MemoryAuditSink
    ) -> None:
        """dave's 120 statements, then limits.toml says 100: the next one is throttled."""
        session = Session(user="dave")
        query = "SELECT title FROM products WHERE id = 1"
        for _ in range(120):
            reloading_guard.authorize(query, None, session, dialect="postgres")
        limits = policy_dir / "limits.toml"
        text = limits.read_text(encoding="utf-8")
        limits.write_text(text.replace("count = 120", "count = 100"), encoding="utf-8")
        assert reloading_guard.reload()
        with pytest.raises(Throttled) as caught:
            reloading_guard.authorize(query, None, session, dialect="postgres")
        assert caught.value.limit == "statements: 100 per 1 minute"
        queries = [e for e in sink.events if e.get("event.action") != "policy.reload"]
        assert [e.get("event.reason") for e in queries] == ["throttle.statements"]

    def test_a_failing_store_refuses_and_audits(
        self, policy_dir: Path, redis_url: str, sink: MemoryAuditSink
    ) -> None:
        """A script error in Redis (a key of the wrong type) refuses the statement, audited."""
        with redis.Redis.from_url(redis_url) as client:
            client.set("accessguard:alice/customers", "not a sorted set")
        with Guard.from_directory(
            policy_dir, tickets=scenario.tickets(), audit=sink, throttle_storage=redis_url
        ) as guard:
            with pytest.raises(Throttled) as caught:
                guard.authorize(
                    "SELECT name FROM customers WHERE id = 42",
                    None,
                    Session(user="alice", ticket="T-100"),
                    dialect="postgres",
                )
            assert caught.value.reason == "throttle.store_unavailable"
        assert sink.reasons() == ["throttle.store_unavailable"]
