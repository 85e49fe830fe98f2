"""The retry policy: tiers, backoff with jitter, Retry-After, bounded attempts, transient infrastructure errors."""

from __future__ import annotations

import random

import pytest
from pymongo.errors import (
    AutoReconnect,
    DuplicateKeyError,
    ExecutionTimeout,
    NetworkTimeout,
    NotPrimaryError,
    OperationFailure,
    PyMongoError,
    ServerSelectionTimeoutError,
    WriteConcernError,
)

from pushgw.broker import PublishError
from workers.retries import RetryPolicy, infra_retry_delay_s, is_transient

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


def labelled(label: str) -> PyMongoError:
    return OperationFailure("command failed", code=2, details={"errorLabels": [label]})


@pytest.mark.parametrize(
    "error",
    [
        AutoReconnect("connection closed"), NetworkTimeout("timed out"), NotPrimaryError("stepped down"),
        ServerSelectionTimeoutError("no server"), ExecutionTimeout("maxTimeMS", code=50),
        OperationFailure("interrupted at shutdown", code=11600), WriteConcernError("wtimeout", code=64),
        labelled("RetryableWriteError"), labelled("TransientTransactionError"),
        PublishError("not connected to the broker"), ConnectionResetError(), TimeoutError(),
    ],
    ids=lambda error: type(error).__name__,
)  # fmt: skip
def test_outages_are_transient(error: BaseException) -> None:
    assert is_transient(error)


@pytest.mark.parametrize(
    "error",
    [
        OperationFailure("bad query", code=2), DuplicateKeyError("E11000", code=11000),
        PyMongoError("unknown"), ValueError("a bug"), KeyError("a bug"),
    ],
    ids=lambda error: type(error).__name__,
)  # fmt: skip
def test_errors_that_may_be_the_work_items_fault_are_not_transient(error: BaseException) -> None:
    assert not is_transient(error)


def test_infrastructure_retries_back_off_from_the_requeue_delay_to_30_s() -> None:
    assert [infra_retry_delay_s(1.0, retries) for retries in range(7)] == [1, 2, 4, 8, 16, 30, 30]
    assert infra_retry_delay_s(0.05, 0) == 0.05
    assert infra_retry_delay_s(1.0, 10_000) == 30
