"""Instances counting one employee over windows of different lengths (limits.toml rolling out).

Every instance on one Redis shares the employee's sets; each counts only its
own window. A shorter window must never drop entries a longer one still
counts: before the horizon, an instance with a one-minute window trimmed the
ten-minute window's entries, and the ten-minute instance then let through
more than its limit. The clock is frozen; the Redis is real.
"""

from __future__ import annotations

import pytest
import redis
from throttling import AGENT, NONE, T0, Clock

from accessguard.throttle.limits import Limits, Rule, Window
from accessguard.throttle.window import Throttle


def rate(count: int, seconds: int) -> Limits:
    return Limits(rules=(Rule(role="everyone", statements=Window(count=count, seconds=seconds)),))


def people(count: int, seconds: int) -> Limits:
    window = Window(count=count, seconds=seconds)
    return Limits(rules=(Rule(role="everyone", distinct_customers=window),))


@pytest.fixture
def fresh(redis_url: str) -> str:
    with redis.Redis.from_url(redis_url) as client:
        client.flushdb()
    return redis_url


def in_window(times: list[float], at: float, seconds: float) -> int:
    return sum(1 for t in times if at - seconds < t <= at)


class TestStatements:
    def test_a_shorter_window_does_not_trim_what_a_longer_one_counts(self, fresh: str) -> None:
        """A counts 5 per 10 minutes, B 5 per minute: B's counts must not reopen A's window."""
        clock = Clock()
        a = Throttle(rate(5, 600), storage=fresh, clock=clock)
        b = Throttle(rate(5, 60), storage=fresh, clock=clock)
        let: list[float] = []
        by_a: list[float] = []
        try:
            for second in range(5):
                clock.now = T0 + second
                assert a.hit("eve", AGENT, None, NONE) is None
                let.append(clock.now)
                by_a.append(clock.now)
            clock.now = T0 + 100  # A's five have left B's window, not A's
            assert b.hit("eve", AGENT, None, NONE) is None  # B counts its own minute only
            let.append(clock.now)
            clock.now = T0 + 101
            verdict = a.hit("eve", AGENT, None, NONE)
            assert verdict is not None  # was None: B had dropped A's five
            assert verdict.count == 7  # A's five, B's one, and this one
            assert verdict.retry_after == pytest.approx(601 - 101)  # when A's 2nd leaves
            clock.now = T0 + 602.5  # A's first three have left its window: two more fit
            for _ in range(3):
                if a.hit("eve", AGENT, None, NONE) is None:
                    let.append(clock.now)
                    by_a.append(clock.now)
        finally:
            a.close()
            b.close()
        assert by_a[-2:] == [T0 + 602.5, T0 + 602.5]  # two of the three fit
        assert len(by_a) == 7
        for t in by_a:  # whenever A let one through, A's window held at most A's limit
            assert in_window(let, t, 600) <= 5

    def test_the_longer_horizon_lapses_once_no_instance_uses_it(self, fresh: str) -> None:
        """Two long windows after its last use, the set is kept for the short window only."""
        clock = Clock()
        a = Throttle(rate(50, 600), storage=fresh, clock=clock)
        b = Throttle(rate(50, 60), storage=fresh, clock=clock)
        horizon, key = "accessguard:eve/statements:window", "accessguard:eve/statements"

        def kept(client: redis.Redis) -> list[float]:
            scored = client.zrange(key, 0, -1, withscores=True)
            return [float(item[1]) - T0 for item in scored]

        try:
            assert a.hit("eve", AGENT, None, NONE) is None
            with redis.Redis.from_url(fresh) as client:
                assert client.hgetall(horizon) == {b"600": b"%d" % (T0 + 1200)}
                clock.now = T0 + 300
                assert b.hit("eve", AGENT, None, NONE) is None  # does not shorten it
                assert set(client.hkeys(horizon)) == {b"600", b"60"}
                assert kept(client) == [0, 300]
                clock.now = T0 + 1000
                assert b.hit("eve", AGENT, None, NONE) is None
                assert kept(client) == [1000]  # older than any window in use: dropped
                clock.now = T0 + 1199  # A idle for not quite two of its windows
                assert b.hit("eve", AGENT, None, NONE) is None
                assert kept(client) == [1000, 1199]  # in A's window, not B's: kept
                clock.now = T0 + 1200  # two of A's windows since its last statement: over
                assert b.hit("eve", AGENT, None, NONE) is None
                assert set(client.hkeys(horizon)) == {b"60"}
                assert kept(client) == [1199, 1200]  # B's minute only
        finally:
            a.close()
            b.close()

    def test_a_longer_window_keeps_the_set_alive_for_its_length(self, fresh: str) -> None:
        """The set lives as long as the longest window in use, not the last caller's."""
        clock = Clock()
        a = Throttle(rate(50, 600), storage=fresh, clock=clock)
        b = Throttle(rate(50, 60), storage=fresh, clock=clock)
        try:
            assert a.hit("eve", AGENT, None, NONE) is None
            assert b.hit("eve", AGENT, None, NONE) is None
            with redis.Redis.from_url(fresh) as client:
                assert client.ttl("accessguard:eve/statements") > 60
        finally:
            a.close()
            b.close()


class TestCustomers:
    def test_a_shorter_window_does_not_trim_customers_a_longer_one_counts(self, fresh: str) -> None:
        """A: 3 customers per hour; B: 3 per minute. B's reads must not forget A's customers."""
        clock = Clock()
        a = Throttle(people(3, 3600), storage=fresh, clock=clock)
        b = Throttle(people(3, 60), storage=fresh, clock=clock)
        try:
            for customer in (1, 2, 3):
                assert a.hit("eve", AGENT, None, frozenset({customer})) is None
            clock.now = T0 + 300
            assert b.hit("eve", AGENT, None, frozenset({4})) is None  # B's minute: one customer
            clock.now = T0 + 301
            verdict = a.hit("eve", AGENT, None, frozenset({5}))
            assert verdict is not None  # was None: B had dropped customers 1, 2 and 3
            assert verdict.count == 5
            assert a.hit("eve", AGENT, None, frozenset({2})) is not None  # 4 still in A's hour
        finally:
            a.close()
            b.close()


@pytest.mark.parametrize("store", ["memory", "redis"])
def test_a_reload_back_to_a_longer_window_finds_its_entries(store: str, fresh: str) -> None:
    """One instance, 10 minutes -> 1 minute -> 10 minutes: the long window's five still count.

    Both stores keep what the longest window in use counts, so the step back
    finds them (before, the store trimmed to the one-minute window and let two
    more through).
    """
    clock = Clock()
    storage = "memory://" if store == "memory" else fresh
    throttle = Throttle(rate(5, 600), storage=storage, clock=clock)
    try:
        for second in range(5):
            clock.now = T0 + second
            assert throttle.hit("eve", AGENT, None, NONE) is None
        throttle.set_limits(rate(5, 60))
        clock.now = T0 + 100
        assert throttle.hit("eve", AGENT, None, NONE) is None
        throttle.set_limits(rate(5, 600))
        clock.now = T0 + 101
        verdict = throttle.hit("eve", AGENT, None, NONE)
        assert verdict is not None
        assert verdict.count == 7
    finally:
        throttle.close()


#: (when, window seconds, statements) of three windows in use
MIDDLE = {
    # the 300 s window used while the 600 s one was, then the 60 s one right after
    "used-meanwhile": ((0, 600, 1), (500, 300, 4), (610, 60, 1), (620, 300, 5)),
    # the 600 s window lapses (two of its windows after its use), the 300 s one has not
    "after-the-lapse": ((0, 600, 1), (1000, 300, 4), (1210, 60, 1), (1220, 300, 5)),
}


@pytest.mark.parametrize("steps", MIDDLE.values(), ids=MIDDLE.keys())
@pytest.mark.parametrize("store", ["memory", "redis"])
def test_a_middle_window_keeps_its_entries(
    store: str, fresh: str, steps: tuple[tuple[int, int, int], ...]
) -> None:
    """Windows of 600, 300 and 60 s: every window in use keeps what it counts, not only the
    longest (the 300 s one, once the 600 s one has lapsed).

    Redis: three instances; memory: one process reloading between them. The
    horizon keeps every window in use, not only the longest.
    """
    clock = Clock()
    if store == "redis":
        made = {n: Throttle(rate(5, n), storage=fresh, clock=clock) for n in (600, 300, 60)}
        throttles = list(made.values())

        def hit(seconds: int) -> bool:
            return made[seconds].hit("eve", AGENT, None, NONE) is None

    else:
        one = Throttle(rate(5, 600), storage="memory://", clock=clock)
        throttles = [one]

        def hit(seconds: int) -> bool:
            one.set_limits(rate(5, seconds))
            return one.hit("eve", AGENT, None, NONE) is None

    let: list[tuple[float, int]] = []
    try:
        for when, seconds, count in steps:
            clock.now = T0 + when
            let += [(clock.now, seconds) for _ in range(count) if hit(seconds)]
    finally:
        for throttle in throttles:
            throttle.close()
    assert [t - T0 for t, s in let if s == 300] == [steps[1][0]] * 4
    times = [t for t, _ in let]
    for t, seconds in let:
        if seconds == 300:
            assert in_window(times, t, 300) <= 5


def test_a_refusing_instance_keeps_its_customer_window(fresh: str) -> None:
    """A refuses new customers all hour; B's one-minute window must not forget A's customers."""
    clock = Clock()
    a = Throttle(people(3, 3600), storage=fresh, clock=clock)
    b = Throttle(people(3, 60), storage=fresh, clock=clock)
    try:
        assert a.hit("eve", AGENT, None, frozenset({1})) is None
        clock.now = T0 + 100
        assert b.hit("eve", AGENT, None, frozenset({2, 3, 4})) is None
        for second in range(200, 3600, 300):  # A refuses a fifth customer all hour long
            clock.now = T0 + second
            assert a.hit("eve", AGENT, None, frozenset({99})) is not None
        clock.now = T0 + 3600  # B reads on: its trim must spare A's hour (A is in use)
        assert b.hit("eve", AGENT, None, frozenset({5})) is None
        clock.now = T0 + 3601  # customer 1 has left A's hour; 2, 3, 4 and 5 have not
        assert a.hit("eve", AGENT, None, frozenset({99})) is not None
        assert a.check("eve", AGENT, None, frozenset({99})) is not None
    finally:
        a.close()
        b.close()
