"""parse_push(): Parse's synchronous validation and push_time/expiry normalization (contract §5, §12, §13)."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest

from pushgw.errors import InvalidBadge, ParseError
from pushgw.push import parse_push

NOW = datetime(2026, 11, 25, 17, 16, 46, 630000, tzinfo=UTC)
NOW_MS = 1795627006630


def error_of(body: dict[str, Any]) -> str:
    with pytest.raises(ParseError) as raised:
        parse_push(body, now=NOW)
    assert raised.value.code == 115
    return raised.value.message


@pytest.mark.parametrize(
    ("value", "text", "is_local", "epoch_ms"),
    [
        (1900000000, "2030-03-17T17:46:40.000", True, 1900000000000),
        (1900000000.1239, "2030-03-17T17:46:40.123", True, 1900000000123),
        ("2007-04-05T12:30-02:00", "2007-04-05T14:30:00.000Z", False, 1175783400000),
        ("2030-01-01T10:00:00Z", "2030-01-01T10:00:00.000Z", False, 1893492000000),
        ("2030-01-01T10:00:00", "2030-01-01T10:00:00.000", True, 1893492000000),
        ("2030-01-01 10:00", "2030-01-01T10:00:00.000", True, 1893492000000),
        ("2030-01-01T10:00:00.5Z", "2030-01-01T10:00:00.500Z", False, 1893492000500),
        ("2017-09-06", "2017-09-06T00:00:00.000", True, 1504656000000),
    ],
)
def test_push_time_normalization(value: Any, text: str, is_local: bool, epoch_ms: int) -> None:
    push = parse_push({"channels": ["a"], "push_time": value}, now=NOW)
    assert push.push_time is not None
    assert (push.push_time.text, push.push_time.is_local, push.push_time.epoch_ms) == (
        text,
        is_local,
        epoch_ms,
    )


@pytest.mark.parametrize("value", ["2030-02-30", "tomorrow", "2030-01-01T10:00+0200", "", True, [], 8.7e12])
def test_unparsable_push_time_is_error_d(value: Any) -> None:
    assert error_of({"channels": ["a"], "push_time": value}).endswith(" is not valid time.")


def test_interval_without_push_time_sets_expiry_from_now() -> None:
    push = parse_push({"channels": ["a"], "expiration_interval": 60}, now=NOW)
    assert (push.expiry_ms, push.expiration_interval_s) == (NOW_MS + 60_000, 60)


def test_interval_with_push_time_leaves_expiry_to_send_time() -> None:
    push = parse_push({"channels": ["a"], "expiration_interval": 60, "push_time": 1900000000}, now=NOW)
    assert (push.expiry_ms, push.expiration_interval_s) == (None, 60)


def test_expiration_time_seconds_and_string_become_ms() -> None:
    assert (
        parse_push({"channels": ["a"], "expiration_time": 1795630607.723}, now=NOW).expiry_ms == 1795630607723
    )
    push = parse_push({"channels": ["a"], "expiration_time": "2026-11-25T17:16:47.723Z"}, now=NOW)
    assert push.expiry_ms == 1795627007723


def test_zero_expiration_time_does_not_conflict_with_interval() -> None:
    # Parse checks `expiration_time && expiration_interval` after normalization: 0 is falsy.
    push = parse_push({"channels": ["a"], "expiration_time": 0, "expiration_interval": 5}, now=NOW)
    assert push.expiry_ms == NOW_MS + 5000


def test_channels_become_in_query_unvalidated() -> None:
    assert parse_push({"channels": "news"}, now=NOW).where == {"channels": {"$in": "news"}}
    assert parse_push({"where": None}, now=NOW).where is None


def test_null_audience_keys_count_as_present() -> None:
    assert (
        error_of({"where": None, "channels": None}) == "Channels and query can not be set at the same time."
    )


def test_invalid_badge_raises_the_500_error() -> None:
    with pytest.raises(InvalidBadge):
        parse_push({"channels": ["a"], "data": {"badge": "lots"}}, now=NOW)
    parse_push({"channels": ["a"], "data": "not an object"}, now=NOW)


def test_payload_is_data_or_empty_object() -> None:
    assert parse_push({"where": {}}, now=NOW).payload == {}
    assert parse_push({"where": {}, "data": None}, now=NOW).payload == {}
    assert parse_push({"where": {}, "data": []}, now=NOW).payload == []


def test_other_top_level_keys_travel_as_options() -> None:
    body = {"where": {}, "notification": {"title": "t"}, "priority": 5, "push_type": "background"}
    assert parse_push(body, now=NOW).options == {
        "notification": {"title": "t"},
        "priority": 5,
        "push_type": "background",
    }
