"""The retry policy: tiers, backoff with jitter, Retry-After, bounded attempts."""

from __future__ import annotations

import random

from workers.retries import RetryPolicy

POLICY = RetryPolicy(tiers_s=[5, 30, 120, 600, 1800], max_attempts=5)


def test_backoff_grows_with_attempts_within_the_tiers() -> None:
    rng = random.Random(7)
    delays = [POLICY.delay_for(attempt, None, rng) for attempt in range(1, 5)]
    assert delays == sorted(delays)
    assert all(delay in POLICY.tiers_s for delay in delays if delay is not None)


def test_retry_after_is_never_undercut() -> None:
    assert POLICY.delay_for(1, 100.0, random.Random(1)) == 120
    assert POLICY.delay_for(1, 5000.0, random.Random(1)) == 1800


def test_attempts_are_bounded() -> None:
    assert POLICY.delay_for(5, None, random.Random(1)) is None
    assert RetryPolicy([1], max_attempts=1).delay_for(1, None, random.Random(1)) is None


def test_jitter_spreads_retries() -> None:
    delays = {
        RetryPolicy([1, 2, 3, 4, 5, 6, 7, 8, 9, 10], 9, base_s=4).delay_for(1, None, random.Random(seed))
        for seed in range(50)
    }
    assert len(delays) > 2
