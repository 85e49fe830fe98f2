"""The only retry policy: delay-queue tiers, exponential backoff with jitter, Retry-After, attempt bound, and
which infrastructure errors are transient."""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass

from pymongo.errors import ConnectionFailure, OperationFailure, PyMongoError, WriteConcernError

from pushgw.broker import Delivery, PublishError
from pushgw.logs import get_logger

log = get_logger(__name__)

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


# Server errors that mean "try again", never "your query is wrong" (MongoDB error codes).
TRANSIENT_CODES = frozenset({6, 7, 50, 89, 91, 189, 262, 9001, 10107, 11600, 11602, 13435, 13436})
_TRANSIENT_LABELS = ("RetryableWriteError", "TransientTransactionError")
INFRA_RETRY_MAX_S = 30.0


def is_transient(error: BaseException) -> bool:
    """True for an outage (MongoDB or the broker unreachable, slow, or failing over), which says nothing
    about the work item: it is handed back later without using up the queue's delivery limit."""
    if isinstance(error, ConnectionFailure | WriteConcernError | PublishError | OSError | TimeoutError):
        return True
    if not isinstance(error, PyMongoError):
        return False
    if error.timeout or any(error.has_error_label(label) for label in _TRANSIENT_LABELS):
        return True
    return isinstance(error, OperationFailure) and error.code in TRANSIENT_CODES


def infra_retry_delay_s(first_s: float, retries: int) -> float:
    """How long to hold a work item back after a transient error, when it was handed back `retries` times
    already: `first_s` (worker.requeue_delay_s), doubling per retry, at most 30 s."""
    return min(first_s * 2.0 ** min(retries, 16), INFRA_RETRY_MAX_S)


async def retry_later(
    delivery: Delivery, first_delay_s: float, error: Exception, event: str, **fields: str
) -> None:
    """Hand a delivery back after a transient error, with backoff, without using up its queue's delivery
    limit (a MongoDB or broker outage of any length fails no work); logs `event` with `fields`."""
    delay_s = infra_retry_delay_s(first_delay_s, delivery.retries)
    error_text = f"{type(error).__name__}: {error}"
    log.warning(event, **fields, error=error_text, retries=delivery.retries, delay_s=delay_s)
    await delivery.retry_later(delay_s)
