"""Volume limits: limits.toml, distinct customers and statements per window, row caps, Redis."""

from __future__ import annotations

import math
import pickle
import textwrap
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import redis

from accessguard import ConfigurationError, PolicyError, Reason, Throttled, scenario
from accessguard.policy.rules import load_policy
from accessguard.throttle.limits import (
    EffectiveLimits,
    Limits,
    Rule,
    Verdict,
    Window,
    load_limits,
)
from accessguard.throttle.window import Throttle, ThrottleStoreUnavailable

LIMITS_FILE = scenario.policies_dir() / "limits.toml"
LIMITS = load_limits(LIMITS_FILE)
AGENT = frozenset({"support_agent", "everyone"})  # mallory, alice, bob
TRUST_SAFETY = frozenset({"trust_safety", "everyone"})  # carol
MALLORY = [frozenset({c}) for c in range(100, 130)]  # her thirty tickets' customers
T0 = 1_750_000_000.0
MINUTE, HOUR = 60.0, 3600.0
NONE: frozenset[int] = frozenset()
UNREACHABLE = "redis://:s3cret@127.0.0.1:1/0"

Factory = Callable[..., Throttle]


class FrozenClock:
    """A clock that moves only when a test moves it."""

    def __init__(self, now: float = T0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


def limits(
    *,
    customers: Window | None = None,
    statements: Window | None = None,
    rows: int | None = None,
) -> Limits:
    """Limits with one rule for every employee."""
    rule = Rule(
        role="everyone",
        distinct_customers=customers,
        statements=statements,
        rows_per_statement=rows,
    )
    return Limits(rules=(rule,))


@pytest.fixture
def clock() -> FrozenClock:
    return FrozenClock()


@pytest.fixture(params=["memory", "redis"])
def storage(request: pytest.FixtureRequest) -> str:
    """Each behaviour on the in-process store and on the real Redis."""
    if request.param == "memory":
        return "memory://"
    return str(request.getfixturevalue("redis_url"))


@pytest.fixture
def make(storage: str, clock: FrozenClock) -> Iterator[Factory]:
    """Build throttles on ``storage`` with the frozen clock; closed after the test."""
    made: list[Throttle] = []

    def factory(limits: Limits = LIMITS, url: str = storage) -> Throttle:
        throttle = Throttle(limits, storage=url, clock=clock)
        made.append(throttle)
        return throttle

    yield factory
    for throttle in made:
        throttle.close()


class TestDistinctCustomers:
    def test_mallory_reads_20_customers_and_the_21st_is_throttled(
        self, make: Factory, clock: FrozenClock
    ) -> None:
        """Twenty distinct customers in an hour pass; the 21st is refused with the limit."""
        throttle = make()
        for customers in MALLORY[:20]:
            assert throttle.hit("mallory", AGENT, "order_issue", customers) is None
            clock.advance(MINUTE)
        verdict = throttle.hit("mallory", AGENT, "order_issue", MALLORY[20])
        assert verdict is not None
        assert verdict.reason is Reason.THROTTLE_DISTINCT_CUSTOMERS
        assert verdict.limit == "distinct_customers: 20 per 1 hour"
        assert (verdict.window_seconds, verdict.count) == (3600, 21)
        assert verdict.retry_after == pytest.approx(HOUR - 20 * MINUTE)  # when 100 leaves

    def test_repeated_customers_do_not_count_twice(self, make: Factory) -> None:
        """Reading a customer already in the window again never uses up the limit."""
        throttle = make()
        for customers in MALLORY[:20]:
            assert throttle.hit("mallory", AGENT, "order_issue", customers) is None
        for _ in range(3):
            for customers in MALLORY[:20]:
                assert throttle.hit("mallory", AGENT, "order_issue", customers) is None
        assert throttle.check("mallory", AGENT, "order_issue", MALLORY[20]) is not None

    def test_after_the_hour_it_works_again(self, make: Factory, clock: FrozenClock) -> None:
        """The 21st customer passes once the first one has left the rolling hour."""
        throttle = make()
        for customers in MALLORY[:20]:
            assert throttle.hit("mallory", AGENT, "order_issue", customers) is None
            clock.advance(MINUTE)
        verdict = throttle.hit("mallory", AGENT, "order_issue", MALLORY[20])
        assert verdict is not None
        clock.advance(verdict.retry_after - 1)
        assert throttle.hit("mallory", AGENT, "order_issue", MALLORY[20]) is not None
        clock.advance(1)
        assert throttle.hit("mallory", AGENT, "order_issue", MALLORY[20]) is None
        assert throttle.hit("mallory", AGENT, "order_issue", MALLORY[21]) is not None

    def test_a_throttled_statement_adds_no_customer(self, make: Factory) -> None:
        """A refused statement's customers are not counted as read."""
        throttle = make()
        for customers in MALLORY[:19]:
            assert throttle.hit("mallory", AGENT, "order_issue", customers) is None
        two_new = MALLORY[19] | MALLORY[20]
        verdict = throttle.hit("mallory", AGENT, "order_issue", two_new)
        assert verdict is not None
        assert verdict.count == 21
        assert throttle.hit("mallory", AGENT, "order_issue", MALLORY[20]) is None

    def test_a_read_refreshes_the_customer_in_the_window(
        self, make: Factory, clock: FrozenClock
    ) -> None:
        """The window keeps each customer's last read, so re-reading one keeps it counted."""
        throttle = make()
        for customers in MALLORY[:20]:
            assert throttle.hit("mallory", AGENT, "order_issue", customers) is None
        clock.advance(50 * MINUTE)
        assert throttle.hit("mallory", AGENT, "order_issue", MALLORY[0]) is None
        clock.advance(10 * MINUTE)  # 101..119 left; 100 was read ten minutes ago
        assert throttle.hit("mallory", AGENT, "order_issue", frozenset(range(120, 139))) is None
        verdict = throttle.check("mallory", AGENT, "order_issue", frozenset({139}))
        assert verdict is not None
        assert verdict.retry_after == pytest.approx(50 * MINUTE)  # when 100 leaves again

    def test_more_customers_than_the_limit_at_once_never_pass(self, make: Factory) -> None:
        """One statement touching 21 customers is refused, with no time it could pass."""
        verdict = make().hit("mallory", AGENT, "order_issue", frozenset(range(100, 121)))
        assert verdict is not None
        assert verdict.count == 21
        assert verdict.retry_after == math.inf

    def test_check_consumes_nothing(self, make: Factory) -> None:
        """Peeking any number of times records no customer and no statement."""
        throttle = make()
        for customers in MALLORY:
            throttle.check("mallory", AGENT, "order_issue", customers)
        assert throttle.check("mallory", AGENT, "order_issue", frozenset(range(100, 120))) is None
        for customers in MALLORY[:20]:
            assert throttle.hit("mallory", AGENT, "order_issue", customers) is None

    def test_record_counts_customers_even_past_the_limit(self, make: Factory) -> None:
        """record() is for statements that ran: every customer they read is counted."""
        throttle = make()
        throttle.record("mallory", AGENT, "order_issue", frozenset(range(100, 125)))
        verdict = throttle.check("mallory", AGENT, "order_issue", frozenset({125}))
        assert verdict is not None
        assert verdict.count == 26

    def test_limits_are_per_employee(self, make: Factory) -> None:
        """mallory's customers do not count against alice."""
        throttle = make()
        for customers in MALLORY[:20]:
            assert throttle.hit("mallory", AGENT, "order_issue", customers) is None
        assert throttle.hit("mallory", AGENT, "order_issue", MALLORY[20]) is not None
        assert throttle.hit("alice", AGENT, "order_issue", MALLORY[20]) is None

    def test_a_role_without_the_limit_is_not_limited(self, make: Factory) -> None:
        """The scenario limits support_agent's customers only, not trust_safety's."""
        throttle = make()
        for customers in MALLORY:
            assert throttle.hit("carol", TRUST_SAFETY, "review_abuse", customers) is None

    def test_concurrent_reads_never_exceed_the_limit(self, make: Factory) -> None:
        """Forty customers read at once from eight threads: exactly twenty get through."""
        throttle = make()
        with ThreadPoolExecutor(max_workers=8) as pool:
            verdicts = list(
                pool.map(
                    lambda c: throttle.hit("mallory", AGENT, "order_issue", c),
                    MALLORY + [frozenset({c}) for c in range(200, 210)],
                )
            )
        assert sum(v is None for v in verdicts) == 20


class TestStatements:
    def test_120_statements_pass_and_the_121st_is_throttled(self, make: Factory) -> None:
        """At most 120 statements per employee per minute."""
        throttle = make()
        for _ in range(120):
            assert throttle.hit("alice", AGENT, "order_issue", NONE) is None
        verdict = throttle.hit("alice", AGENT, "order_issue", NONE)
        assert verdict is not None
        assert verdict.reason is Reason.THROTTLE_STATEMENTS
        assert verdict.limit == "statements: 120 per 1 minute"
        assert (verdict.window_seconds, verdict.count) == (60, 121)
        assert 0 < verdict.retry_after <= MINUTE

    def test_the_rate_applies_to_every_role(self, make: Factory) -> None:
        """The statement rate is set for everyone, so trust_safety has it too."""
        throttle = make()
        for _ in range(120):
            assert throttle.hit("carol", TRUST_SAFETY, "review_abuse", NONE) is None
        assert throttle.check("carol", TRUST_SAFETY, "review_abuse", NONE) is not None
        assert throttle.check("alice", AGENT, "order_issue", NONE) is None

    def test_next_minute_it_works_again(self, clock: FrozenClock) -> None:
        """Statements leave the window a minute after they ran (frozen clock, memory)."""
        throttle = Throttle(LIMITS, clock=clock)
        for _ in range(120):
            assert throttle.hit("alice", AGENT, "order_issue", NONE) is None
        clock.advance(30)
        verdict = throttle.hit("alice", AGENT, "order_issue", NONE)
        assert verdict is not None
        assert verdict.retry_after == pytest.approx(30)
        clock.advance(30)
        for _ in range(120):
            assert throttle.hit("alice", AGENT, "order_issue", NONE) is None

    def test_a_throttled_statement_does_not_count(self, clock: FrozenClock) -> None:
        """Statements refused by the rate itself are not counted against it."""
        throttle = Throttle(LIMITS, clock=clock)
        for _ in range(120):
            throttle.hit("alice", AGENT, "order_issue", NONE)
        clock.advance(59)
        for _ in range(50):
            assert throttle.hit("alice", AGENT, "order_issue", NONE) is not None
        clock.advance(1)
        for _ in range(120):
            assert throttle.hit("alice", AGENT, "order_issue", NONE) is None

    def test_a_statement_refused_for_customers_still_counts(self, make: Factory) -> None:
        """A statement the customer limit refuses counts against the rate, not the customers."""
        throttle = make(
            limits(customers=Window(count=1, seconds=3600), statements=Window(count=3, seconds=60))
        )
        assert throttle.hit("bob", AGENT, None, frozenset({1})) is None
        refused = throttle.hit("bob", AGENT, None, frozenset({2}))
        assert refused is not None
        assert refused.reason is Reason.THROTTLE_DISTINCT_CUSTOMERS
        assert throttle.hit("bob", AGENT, None, frozenset({1})) is None
        rate = throttle.hit("bob", AGENT, None, frozenset({1}))
        assert rate is not None
        assert rate.reason is Reason.THROTTLE_STATEMENTS

    def test_the_rate_is_checked_before_customers(self, make: Factory) -> None:
        """Over both limits, the verdict names the statement rate."""
        throttle = make(
            limits(customers=Window(count=1, seconds=3600), statements=Window(count=1, seconds=60))
        )
        assert throttle.hit("bob", AGENT, None, frozenset({1})) is None
        verdict = throttle.check("bob", AGENT, None, frozenset({2}))
        assert verdict is not None
        assert verdict.reason is Reason.THROTTLE_STATEMENTS


class TestVerdict:
    def test_a_verdict_becomes_a_throttled_error(self, make: Factory) -> None:
        """The guard raises verdict.error(): Throttled with the limit and the wait."""
        throttle = make()
        for customers in MALLORY[:20]:
            throttle.hit("mallory", AGENT, "order_issue", customers)
        verdict = throttle.check("mallory", AGENT, "order_issue", MALLORY[20])
        assert verdict is not None
        error = verdict.error()
        assert isinstance(error, Throttled)
        assert error.reason == "throttle.distinct_customers"
        assert error.limit == "distinct_customers: 20 per 1 hour"
        assert error.retry_after == verdict.retry_after
        assert "21 distinct customers in 1 hour" in str(error)


class TestRowCap:
    def test_scenario_row_cap_is_500_for_everyone(self) -> None:
        """One statement returns at most 500 rows of a scoped table, whatever the role."""
        throttle = Throttle(LIMITS)
        assert throttle.row_cap(AGENT, "order_issue") == 500
        assert throttle.row_cap(frozenset({"everyone"}), None) == 500

    def test_the_lowest_row_cap_that_applies_wins(self) -> None:
        """A role or ticket-kind rule can lower the cap, never raise it."""
        rules = (
            Rule(role="everyone", rows_per_statement=500),
            Rule(role="analyst", rows_per_statement=5000),
            Rule(role="support_agent", ticket_kind="order_issue", rows_per_statement=50),
        )
        throttle = Throttle(Limits(rules=rules))
        assert throttle.row_cap(frozenset({"analyst"}), None) == 500
        assert throttle.row_cap(AGENT, "order_issue") == 50
        assert throttle.row_cap(AGENT, "account_recovery") == 500

    def test_no_rule_means_no_cap(self) -> None:
        """Without a rule that sets it, there is no row cap."""
        assert Throttle(Limits()).row_cap(AGENT, None) is None


class TestEffectiveLimits:
    def test_most_restrictive_rule_wins(self) -> None:
        """Role, everyone and ticket-kind rules merge to the lowest count."""
        rules = (
            Rule(role="everyone", statements=Window(count=120, seconds=60)),
            Rule(role="support_agent", statements=Window(count=60, seconds=60)),
            Rule(
                role="support_agent",
                ticket_kind="order_issue",
                statements=Window(count=30, seconds=60),
            ),
        )
        merged = Limits(rules=rules)
        assert merged.for_roles(AGENT, "order_issue").statements == Window(count=30, seconds=60)
        assert merged.for_roles(AGENT, "account_recovery").statements == Window(
            count=60, seconds=60
        )
        assert merged.for_roles(TRUST_SAFETY, None).statements == Window(count=120, seconds=60)

    def test_everyone_applies_even_if_not_among_the_roles(self) -> None:
        """Rules for everyone apply to every employee, named or not."""
        got = LIMITS.for_roles(frozenset({"support_agent"}), None)
        assert got.statements == Window(count=120, seconds=60)

    def test_nothing_applies(self) -> None:
        """No rule for the roles: no limit at all."""
        assert Limits().for_roles(AGENT, "order_issue") == EffectiveLimits()

    def test_scenario_limits(self) -> None:
        """The shipped file holds the scenario's three limits."""
        got = LIMITS.for_roles(AGENT, "order_issue")
        assert got.distinct_customers == Window(count=20, seconds=3600)
        assert got.statements == Window(count=120, seconds=60)
        assert got.rows_per_statement == 500
        assert str(got.distinct_customers) == "20 per 1 hour"


# Malformed limits files: the text, the line the error must name, a fragment of its message.
BAD_FILES = [
    pytest.param(
        """\
        [roles.everyone]
        statements = { count = 120, per = "1 minute"
        """,
        2,
        "not valid TOML",
        id="not-toml",
    ),
    pytest.param(
        """\
        [roles.support_agent]
        rows_per_statement = 500
        distinct_customer = { count = 20, per = "1 hour" }
        """,
        3,
        "'distinct_customer'",
        id="unknown-key",
    ),
    pytest.param(
        """\
        version = 2
        [roles.everyone]
        rows_per_statement = 5
        """,
        1,
        "'version'",
        id="unknown-top-level-key",
    ),
    pytest.param(
        """\
        [roles.everyone]

        statements = { count = 120, per = "1 fortnight" }
        """,
        3,
        "duration",
        id="bad-duration",
    ),
    pytest.param(
        """\
        [roles.everyone]
        statements = { count = 120, per = "0 minutes" }
        """,
        2,
        "duration",
        id="zero-duration",
    ),
    pytest.param(
        """\
        [roles.everyone]
        distinct_customers = { count = 20, per = "367 days" }
        """,
        2,
        "at most 366 days",
        id="window-over-a-year",
    ),
    pytest.param(
        """\
        # limits
        [roles.support_agent]
        distinct_customers = { count = -20, per = "1 hour" }
        """,
        3,
        "at least 1",
        id="negative-count",
    ),
    pytest.param(
        """\
        [roles.everyone]
        rows_per_statement = 500
        [roles.analyst]
        rows_per_statement = -1
        """,
        4,
        "at least 1",
        id="negative-rows",
    ),
    pytest.param(
        """\
        [roles.everyone]
        rows_per_statement = 1.5
        """,
        2,
        "whole number",
        id="fractional-rows",
    ),
    pytest.param(
        """\
        [roles.everyone]
        statements = { count = 120 }
        """,
        2,
        "per =",
        id="missing-per",
    ),
    pytest.param(
        """\
        [roles.everyone.statements]
        per = "1 minute"
        count = 0
        """,
        3,
        "at least 1",
        id="count-in-subtable",
    ),
    pytest.param(
        """\
        [roles."*"]
        rows_per_statement = 500
        """,
        1,
        "roles.everyone",
        id="star-is-not-a-role",
    ),
    pytest.param(
        """\
        [roles.Support-Agent]
        rows_per_statement = 500
        """,
        1,
        "lower-case",
        id="role-not-a-name",
    ),
    pytest.param(
        """\
        [roles.support_agent]
        rows_per_statement = 5

        [roles.support_agent.ticket_kinds.order_issue]
        ticket_kinds = 1
        """,
        5,
        "'ticket_kinds'",
        id="unknown-key-under-a-kind",
    ),
    pytest.param(
        """\
        [roles.everyone]
        statements = { count = 120, per = "1 minute" }
        [roles.analyst]
        statements = { count = 600, per = "1 hour" }
        """,
        4,
        "one window",
        id="windows-differ",
    ),
    pytest.param(
        """\
        [roles]
        everyone = 5
        """,
        2,
        "must be a table",
        id="section-not-a-table",
    ),
]


class TestLimitsFile:
    @pytest.mark.parametrize(("text", "line", "fragment"), BAD_FILES)
    def test_malformed_file_names_the_line(
        self, tmp_path: Path, text: str, line: int, fragment: str
    ) -> None:
        """A malformed limits file fails at load with the file and line of the fault."""
        path = tmp_path / "limits.toml"
        path.write_text(textwrap.dedent(text), encoding="utf-8")
        with pytest.raises(PolicyError) as caught:
            load_limits(path)
        assert caught.value.path == str(path)
        assert caught.value.line == line
        assert fragment in caught.value.message
        assert str(caught.value).startswith(f"{path}:{line}: ")

    def test_unknown_role_is_an_error_only_when_roles_are_known(self, tmp_path: Path) -> None:
        """A misspelt role loads on its own, and fails with its line given known_roles."""
        path = tmp_path / "limits.toml"
        path.write_text(
            "[roles.everyone]\nrows_per_statement = 500\n\n"
            "[roles.support_agnet]\nrows_per_statement = 5\n",
            encoding="utf-8",
        )
        assert len(load_limits(path).rules) == 2
        with pytest.raises(PolicyError, match="unknown role 'support_agnet'") as caught:
            load_limits(path, known_roles=frozenset({"support_agent"}))
        assert caught.value.line == 4

    def test_unknown_ticket_kind_is_an_error_when_kinds_are_known(self, tmp_path: Path) -> None:
        """A misspelt ticket kind fails with its line given known_ticket_kinds."""
        path = tmp_path / "limits.toml"
        path.write_text(
            "[roles.support_agent.ticket_kinds.order_isue]\nrows_per_statement = 5\n",
            encoding="utf-8",
        )
        with pytest.raises(PolicyError, match="unknown ticket kind 'order_isue'") as caught:
            load_limits(path, known_ticket_kinds=frozenset({"order_issue"}))
        assert caught.value.line == 1

    def test_missing_file(self, tmp_path: Path) -> None:
        """A missing limits file is a PolicyError naming the file."""
        with pytest.raises(PolicyError, match="cannot read limits file") as caught:
            load_limits(tmp_path / "limits.toml")
        assert caught.value.line is None

    def test_ticket_kind_sections_and_empty_sections(self, tmp_path: Path) -> None:
        """Ticket-kind sections become rules; a section that sets nothing is none."""
        path = tmp_path / "limits.toml"
        path.write_text(
            "[roles.support_agent]\n[roles.support_agent.ticket_kinds.order_issue]\n"
            'distinct_customers = { count = 5, per = "60 minutes" }\n',
            encoding="utf-8",
        )
        loaded = load_limits(path)
        window = Window(count=5, seconds=3600)
        assert loaded.rules == (
            Rule(role="support_agent", ticket_kind="order_issue", distinct_customers=window),
        )
        assert loaded.for_roles(AGENT, None).distinct_customers is None
        assert loaded.for_roles(AGENT, "order_issue").distinct_customers == window

    def test_shipped_file_names_only_known_roles(self) -> None:
        """policies/limits.toml loads against the roles the shipped policy names."""
        policy = load_policy(scenario.policies_dir())
        loaded = load_limits(LIMITS_FILE, known_roles=policy.known_roles)
        assert loaded == LIMITS
        assert len(loaded.version) == 12


class TestRedis:
    def test_two_throttles_on_one_redis_share_counts(
        self, redis_url: str, clock: FrozenClock
    ) -> None:
        """Two instances on the same Redis see one employee's customers and statements."""
        one = Throttle(LIMITS, storage=redis_url, clock=clock)
        two = Throttle(LIMITS, storage=redis_url, clock=clock)
        try:
            for customers in MALLORY[:10]:
                assert one.hit("mallory", AGENT, "order_issue", customers) is None
            for customers in MALLORY[10:20]:
                assert two.hit("mallory", AGENT, "order_issue", customers) is None
            assert one.check("mallory", AGENT, "order_issue", MALLORY[20]) is not None
            for throttle in (one, two):
                for _ in range(60):
                    assert throttle.hit("alice", AGENT, "order_issue", NONE) is None
            verdict = one.hit("alice", AGENT, "order_issue", NONE)
            assert verdict is not None
            assert (verdict.reason, verdict.count) == (Reason.THROTTLE_STATEMENTS, 121)
        finally:
            one.close()
            two.close()

    def test_keys_are_prefixed_with_accessguard_and_the_user(self, redis_url: str) -> None:
        """Each employee has two sets, accessguard:<user>/statements and /customers, and the
        horizon of each (``:window``, the longest window in use, in seconds)."""
        throttle = Throttle(LIMITS, storage=redis_url)
        throttle.hit("mallory", AGENT, "order_issue", MALLORY[0])
        throttle.set_limits(limits(statements=Window(count=7, seconds=60)))
        throttle.hit("mallory", AGENT, "order_issue", MALLORY[1])
        throttle.close()
        with redis.Redis.from_url(redis_url) as client:
            keys = sorted(k.decode() for k in client.keys("*"))
            assert keys == [
                "accessguard:mallory/customers",
                "accessguard:mallory/customers:window",
                "accessguard:mallory/statements",
                "accessguard:mallory/statements:window",
            ]
            assert client.hkeys("accessguard:mallory/customers:window") == [b"3600"]
            assert client.hkeys("accessguard:mallory/statements:window") == [b"60"]
            assert 0 < client.ttl("accessguard:mallory/statements:window") <= 2 * 60 + 60
            assert 0 < client.ttl("accessguard:mallory/customers") <= 3600
            assert 0 < client.ttl("accessguard:mallory/statements") <= 60
            assert client.zcard("accessguard:mallory/statements") == 2

    def test_lua_script_agrees_with_the_memory_store(
        self, redis_url: str, clock: FrozenClock
    ) -> None:
        """The same reads at the same times get the same verdicts in Redis and in memory."""
        only_customers = limits(customers=Window(count=5, seconds=600))
        memory = Throttle(only_customers, clock=clock)
        shared = Throttle(only_customers, storage=redis_url, clock=clock)
        verdicts: list[Verdict] = []
        try:
            for i in range(300):
                customers = frozenset({(i * 7) % 13, (i * 5) % 11 + 13} if i % 4 else {i % 9})
                if i % 23 == 0:
                    customers = frozenset(range(30, 36))  # more than the limit at once
                mode = "record" if i % 10 == 0 else ("check", "hit")[i % 3 != 0]
                got = [getattr(t, mode)("bob", AGENT, None, customers) for t in (memory, shared)]
                assert got[0] == got[1], (i, mode)
                verdicts += [v for v in got[:1] if v is not None]
                clock.advance((i * 37) % 90)
        finally:
            shared.close()
        assert len(verdicts) > 50
        assert any(v.retry_after == math.inf for v in verdicts)
        assert any(0 < v.retry_after < math.inf for v in verdicts)


class TestStoreUnavailable:
    @pytest.mark.parametrize("call", ["check", "hit", "record"])
    def test_redis_unreachable_refuses(self, call: str) -> None:
        """With Redis down every call raises ThrottleStoreUnavailable; nothing is allowed."""
        throttle = Throttle(LIMITS, storage=UNREACHABLE, timeout=0.5)
        with pytest.raises(ThrottleStoreUnavailable) as caught:
            getattr(throttle, call)("mallory", AGENT, "order_issue", MALLORY[0])
        assert caught.value.reason is Reason.THROTTLE_STORE_UNAVAILABLE
        assert "s3cret" not in str(caught.value)
        throttle.close()

    def test_redis_unreachable_refuses_the_customer_limit_alone(self) -> None:
        """The Lua script's failure refuses too, when only the customer limit applies."""
        throttle = Throttle(limits(customers=Window(count=20, seconds=3600)), storage=UNREACHABLE)
        with pytest.raises(ThrottleStoreUnavailable):
            throttle.hit("mallory", AGENT, "order_issue", MALLORY[0])
        throttle.close()

    def test_the_error_survives_pickling(self) -> None:
        """ThrottleStoreUnavailable keeps its reason and message through pickle."""
        error = ThrottleStoreUnavailable("The throttle store is unavailable (x): refused.")
        copy = pickle.loads(pickle.dumps(error))  # noqa: S301 (our own object)
        assert (copy.reason, copy.message) == (error.reason, error.message)

    def test_unknown_storage_scheme(self) -> None:
        """A storage URL other than memory:// or redis:// is a configuration error."""
        with pytest.raises(ConfigurationError, match="memcached"):
            Throttle(LIMITS, storage="memcached://127.0.0.1:11211")


class TestOneDurationSyntax:
    @pytest.mark.parametrize(
        ("per", "seconds"),
        [("1 hour", 3600), ("1h", 3600), ("90s", 90), ("2 minutes", 120), ("1 week", 604800)],
    )
    def test_limits_accept_the_command_line_spelling_too(self, per: str, seconds: int) -> None:
        """limits.toml's `per` takes "1h" as well as "1 hour" (one syntax with --since)."""
        from accessguard.durations import parse_seconds
        from accessguard.investigate.sums import parse_since

        assert parse_seconds(per) == seconds
        assert parse_since(per).total_seconds() == seconds

    def test_a_limits_file_written_with_letters_loads(self, tmp_path: Path) -> None:
        """A limits.toml saying per = "1h" loads as the hour "1 hour" means."""
        from accessguard.throttle.limits import load_limits

        path = tmp_path / "limits.toml"
        path.write_text(
            '[roles.everyone]\nstatements = { count = 120, per = "1m" }\n'
            '[roles.support_agent]\ndistinct_customers = { count = 20, per = "1h" }\n',
            encoding="utf-8",
        )
        windows = {
            (rule.role, name): getattr(rule, name).seconds
            for rule in load_limits(path).rules
            for name in ("statements", "distinct_customers")
            if getattr(rule, name) is not None
        }
        assert windows == {
            ("everyone", "statements"): 60,
            ("support_agent", "distinct_customers"): 3600,
        }
