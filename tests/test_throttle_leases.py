"""Leases in the Redis store: far below a large limit, statements run without a round trip.

A lease reserves statement slots (and registers customers) in Redis dated at
its end, so every window that could hold their use counts them. These tests
play several instances on one real Redis with one frozen clock and check the
one property that matters against the times the statements were let through:
no window of the limit's length ever holds more than the limit, of
statements or of distinct customers. And that near the limit, or under a
small one, the store is exact: one round trip per statement.
"""

from __future__ import annotations

import random
import threading
from typing import Any

import pytest
import redis
from throttling import AGENT, NONE, T0, Clock

from accessguard.throttle.limits import Limits, Rule, Window
from accessguard.throttle.stores import LEASE_SLOTS
from accessguard.throttle.window import Throttle


def limits(*, statements: Window | None = None, customers: Window | None = None) -> Limits:
    return Limits(
        rules=(Rule(role="everyone", statements=statements, distinct_customers=customers),)
    )


def per_minute(count: int) -> Limits:
    return limits(statements=Window(count=count, seconds=60))


@pytest.fixture
def fresh(redis_url: str) -> str:
    with redis.Redis.from_url(redis_url) as client:
        client.flushdb()
    return redis_url


class Counted:
    """The store's script, counting its round trips (every call is one EVALSHA)."""

    def __init__(self, throttle: Throttle) -> None:
        store = throttle._store  # the test counts what the store sends
        self.script, self.calls = store._script, 0  # type: ignore[union-attr]
        store._script = self  # type: ignore[union-attr]

    def __call__(self, **kwargs: Any) -> Any:
        self.calls += 1
        return self.script(**kwargs)


def most_in_a_window(times: list[float], seconds: float) -> int:
    """The most of ``times`` any window (t - seconds, t] holds."""
    times = sorted(times)
    most, low = 0, 0
    for high, t in enumerate(times):
        while times[low] <= t - seconds:
            low += 1
        most = max(most, high - low + 1)
    return most


def most_customers_in_a_window(reads: list[tuple[float, int]], seconds: float) -> int:
    """The most distinct customers any window (t - seconds, t] holds."""
    return max(
        (len({c for when, c in reads if t - seconds < when <= t}) for t, _ in reads), default=0
    )


class TestLeases:
    def test_far_below_a_large_limit_most_statements_skip_redis(self, fresh: str) -> None:
        """130 statements under a limit of a million a minute: one script run per lease."""
        clock = Clock()
        throttle = Throttle(
            limits(statements=Window(count=1_000_000, seconds=60)), storage=fresh, clock=clock
        )
        sent = Counted(throttle)
        for _ in range(130):
            assert throttle.hit("mallory", AGENT, None, NONE) is None
        throttle.close()
        assert sent.calls == 2  # 1 + 64 leased, 1 + 64 leased
        with redis.Redis.from_url(fresh) as client:  # every slot is in Redis, dated ahead
            assert client.zcard("accessguard:mallory/statements") == 2 * (LEASE_SLOTS + 1)
            assert client.ttl("accessguard:mallory/statements") > 60

    def test_a_lease_lasts_one_second(self, fresh: str) -> None:
        """Past the lease's end the next statement asks Redis again."""
        clock = Clock()
        throttle = Throttle(
            limits(statements=Window(count=1_000_000, seconds=60)), storage=fresh, clock=clock
        )
        sent = Counted(throttle)
        throttle.hit("mallory", AGENT, None, NONE)
        clock.now += 1.0
        throttle.hit("mallory", AGENT, None, NONE)
        throttle.close()
        assert sent.calls == 2

    def test_small_limits_are_counted_exactly(self, fresh: str) -> None:
        """Under 120 a minute every statement is one script run: no lease."""
        clock = Clock()
        throttle = Throttle(
            limits(statements=Window(count=120, seconds=60)), storage=fresh, clock=clock
        )
        sent = Counted(throttle)
        passed = [throttle.hit("mallory", AGENT, None, NONE) is None for _ in range(130)]
        throttle.close()
        assert passed == [True] * 120 + [False] * 10
        assert sent.calls == 130

    def test_two_instances_together_stop_at_the_limit(self, fresh: str) -> None:
        """Alternating hits of two instances: exactly 400 pass, however the slots were leased."""
        clock = Clock()
        made = [Throttle(per_minute(400), storage=fresh, clock=clock) for _ in range(2)]
        passed = sum(made[i % 2].hit("mallory", AGENT, None, NONE) is None for i in range(1000))
        for throttle in made:
            throttle.close()
        assert passed == 400

    def test_threads_of_one_instance_share_its_leases(self, fresh: str) -> None:
        """Eight threads on one instance, one employee: exactly the limit passes, no slot lost."""
        clock = Clock()
        throttle = Throttle(per_minute(1000), storage=fresh, clock=clock)
        passed: list[bool] = []

        def work() -> None:  # until 50 refusals in a row: no slot of a lease left behind
            mine, refused = 0, 0
            for _ in range(5000):
                if throttle.hit("mallory", AGENT, None, NONE) is None:
                    mine, refused = mine + 1, 0
                elif (refused := refused + 1) >= 50:
                    break
            passed.extend([True] * mine)

        threads = [threading.Thread(target=work) for _ in range(8)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        throttle.close()
        assert sum(passed) == 1000

    def test_a_reload_ends_the_lease(self, fresh: str) -> None:
        """New limits: the slots leased under the old ones are not used."""
        clock = Clock()
        throttle = Throttle(
            limits(statements=Window(count=100_000, seconds=60)), storage=fresh, clock=clock
        )
        throttle.hit("mallory", AGENT, None, NONE)  # leases 64
        throttle.set_limits(limits(statements=Window(count=10, seconds=60)))
        # 1 + 64 already in the window: the tighter limit refuses at once
        verdict = throttle.hit("mallory", AGENT, None, NONE)
        throttle.close()
        assert verdict is not None

    def test_leased_slots_count_until_the_lease_ends(self, fresh: str) -> None:
        """Slots leased at 0 and used at 0.9 still count at 10.05 in a 10-second window."""
        clock = Clock()
        rate = limits(statements=Window(count=300, seconds=10))
        one, two = (Throttle(rate, storage=fresh, clock=clock) for _ in "12")
        passed = []
        for when, throttle, n in [
            (0.0, one, 1),
            (0.9, one, 18),
            (9.95, two, 400),
            (10.05, two, 50),
        ]:
            clock.now = T0 + when
            passed += [when for _ in range(n) if throttle.hit("eve", AGENT, None, NONE) is None]
        one.close()
        two.close()
        assert passed.count(0.9) == 18  # the lease the first hit took, used locally
        assert most_in_a_window(passed, 10) == 300  # reached, never passed

    def test_leased_customers_count_until_the_lease_ends(self, fresh: str) -> None:
        """A customer re-read on the lease at 0.9 still counts at 10.5 in a 10-second window."""
        clock = Clock()
        people = limits(customers=Window(count=300, seconds=10))
        one, two = (Throttle(people, storage=fresh, clock=clock) for _ in "12")
        reads: list[tuple[float, int]] = []
        plan = [(0.0, one, [1]), (0.9, one, [1]), (9.95, two, range(2, 400)), (10.5, two, [500])]
        for when, throttle, customers in plan:
            clock.now = T0 + when
            reads += [
                (when, c)
                for c in customers
                if throttle.hit("eve", AGENT, None, frozenset({c})) is None
            ]
        one.close()
        two.close()
        assert (0.9, 1) in reads
        assert most_customers_in_a_window(reads, 10) == 300

    def test_an_instance_counting_exactly_never_lowers_a_leased_date(self, fresh: str) -> None:
        """Instances with different limits (a reload rolling out): A leases, B counts exactly.
        B's read of a customer A leased must not date it back, or A's later read on the lease
        falls out of B's window and B lets one customer too many through."""
        clock = Clock()
        wide = limits(customers=Window(count=300, seconds=60))
        narrow = limits(customers=Window(count=200, seconds=60))
        a = Throttle(wide, storage=fresh, clock=clock)
        b = Throttle(narrow, storage=fresh, clock=clock)
        reads: list[tuple[float, int]] = []
        plan = [(0.0, a, [7]), (0.1, b, [7]), (0.9, a, [7]), (60.5, b, range(1000, 1300))]
        for when, throttle, customers in plan:
            clock.now = T0 + when
            hit = throttle.hit
            reads += [
                (when, c) for c in customers if hit("eve", AGENT, None, frozenset({c})) is None
            ]
        a.close()
        b.close()
        assert (0.9, 7) in reads  # on A's lease
        assert most_customers_in_a_window(reads, 60) == 200  # B's limit, never 201

    @pytest.mark.parametrize("seed", range(6))
    def test_no_window_ever_holds_more_than_the_limit(self, fresh: str, seed: int) -> None:
        """Three instances, random hits, waits and customers: the limits hold in every window."""
        rng = random.Random(seed)  # noqa: S311 - a reproducible script, not a secret
        clock = Clock()
        rate, people = Window(count=600, seconds=60), Window(count=300, seconds=600)
        made = [
            Throttle(limits(statements=rate, customers=people), storage=fresh, clock=clock)
            for _ in range(3)
        ]
        passed: list[float] = []
        reads: list[tuple[float, int]] = []
        for _ in range(4000):
            clock.now += rng.choice([0.0, 0.0, 0.01, 0.05, 0.3, 0.9, 2.5])
            customers = frozenset(rng.sample(range(1000), rng.choice([0, 1, 1, 2])))
            if rng.random() < 0.7 and reads:  # mostly customers already read
                customers = frozenset({rng.choice(reads)[1]})
            if rng.choice(made).hit("mallory", AGENT, None, customers) is None:
                passed.append(clock.now)
                reads += [(clock.now, c) for c in customers]
        for throttle in made:
            throttle.close()
        assert most_in_a_window(passed, rate.seconds) <= rate.count
        assert most_customers_in_a_window(reads, people.seconds) <= people.count
        assert len(passed) > 1000  # far from all refused: the limits were reached, not stuck
