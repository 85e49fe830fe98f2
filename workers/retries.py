"""The only retry policy: delay-queue tiers, exponential backoff with jitter, Retry-After, attempt bound."""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass

QUOTA_EXCEEDED_MIN_S = 60.0  # FCM QUOTA_EXCEEDED: wait at least a minute (providers.md §2.4)


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    tiers_s: Sequence[int]
    max_attempts: int
    base_s: float = 5.0

    def delay_for(self, attempt: int, retry_after_s: float | None, rng: random.Random) -> int | None:
        """The delay tier for retry number `attempt` (1 = first retry), or None when attempts are used up.

        Exponential backoff with ±50 % jitter, never shorter than the provider's Retry-After, rounded up to
        the next configured delay queue (the largest one caps it).
        """
        if attempt >= self.max_attempts:
            return None
        wanted = self.base_s * (2 ** (attempt - 1)) * rng.uniform(0.5, 1.5)
        if retry_after_s is not None:
            wanted = max(wanted, retry_after_s)
        return next((tier for tier in self.tiers_s if tier >= wanted), self.tiers_s[-1])
