"""The Push model and parse_push(): Parse's synchronous /push validation, in Parse's order and wording."""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from pushgw import parse_quirks
from pushgw.errors import PUSH_MISCONFIGURED, InvalidBadge, ParseError

_AUDIENCE_BOTH = "Channels and query can not be set at the same time."
_AUDIENCE_NONE = 'Sending a push requires either "channels" or a "where" query.'
_BAD_INTERVAL = "expiration_interval must be a number greater than 0"
_BOTH_EXPIRIES = "Both expiration_time and expiration_interval cannot be set"

# The date forms Parse's `new Date(string)` is used with: YYYY-MM-DD[(T| )HH:MM[:SS[.fff]]][Z|±HH:MM].
_DATE = re.compile(
    r"^(\d{4})-(\d{2})-(\d{2})"
    r"(?:[T ](\d{2}):(\d{2})(?::(\d{2})(?:\.(\d{1,9}))?)?(Z|[+-]\d{2}:\d{2})?)?$"
)
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_HANDLED_KEYS = frozenset(
    {"where", "channels", "data", "push_time", "expiration_time", "expiration_interval"}
)


@dataclass(frozen=True, slots=True)
class PushTime:
    """A normalized `push_time`: `text` is what `_PushStatus.pushTime` stores, `epoch_ms` the instant.

    For a local-time push (`is_local`) `epoch_ms` is the wall-clock time read as UTC; each installation's
    `timeZone` decides the real instant.
    """

    text: str
    epoch_ms: int
    is_local: bool


@dataclass(frozen=True, slots=True)
class Push:
    """A validated push request, credentials already stripped."""

    where: Any
    data: Any
    push_time: PushTime | None
    expiry_ms: int | float | None
    expiration_interval_s: int | float | None
    options: dict[str, Any] = field(default_factory=dict)

    @property
    def payload(self) -> Any:
        """`body.data || {}` as Parse stores it in `_PushStatus.payload`."""
        return self.data if parse_quirks.js_truthy(self.data) else {}


def parse_push(body: dict[str, Any], *, now: datetime) -> Push:
    """Validate a /push body exactly as PushRouter.handlePOST + PushController.sendPush do, or raise."""
    where = audience_where(body)
    expiry_ms = _expiration_time(body)
    interval = _expiration_interval(body)
    if expiry_ms and interval:
        raise ParseError(PUSH_MISCONFIGURED, _BOTH_EXPIRIES)
    if interval and "push_time" not in body:
        expiry_ms = _epoch_ms(now) + interval * 1000
    push_time = _push_time(body)
    data = body.get("data")
    if isinstance(data, dict) and not parse_quirks.is_valid_badge(data.get("badge")):
        raise InvalidBadge("Invalid value for badge, expected number or 'Increment' or {increment: number}")
    return Push(where, data, push_time, expiry_ms, interval, body_options(body))


def body_options(body: dict[str, Any]) -> dict[str, Any]:
    """The body keys that are neither audience, data, time nor expiry (`notification`, `push_type`, …)."""
    return {key: value for key, value in body.items() if key not in _HANDLED_KEYS}


def audience_where(body: dict[str, Any]) -> Any:
    """`where`, or `channels` as the query Parse makes of it; ParseError when both or neither are set."""
    has_where, has_channels = "where" in body, "channels" in body
    if has_where and has_channels:
        raise ParseError(PUSH_MISCONFIGURED, _AUDIENCE_BOTH)
    if has_where:
        return body["where"]
    if has_channels:
        return {"channels": {"$in": body["channels"]}}
    raise ParseError(PUSH_MISCONFIGURED, _AUDIENCE_NONE)


def _expiration_time(body: dict[str, Any]) -> int | float | None:
    if "expiration_time" not in body:
        return None
    value = body["expiration_time"]
    epoch_ms, _ = _time_value(value)
    return epoch_ms


def _expiration_interval(body: dict[str, Any]) -> int | float | None:
    if "expiration_interval" not in body:
        return None
    value = body["expiration_interval"]
    if not _is_json_number(value) or value <= 0:
        raise ParseError(PUSH_MISCONFIGURED, _BAD_INTERVAL)
    result: int | float = value
    return result


def _push_time(body: dict[str, Any]) -> PushTime | None:
    if "push_time" not in body:
        return None
    value = body["push_time"]
    epoch_ms, has_zone = _time_value(value)
    try:
        instant = _EPOCH + timedelta(milliseconds=epoch_ms)
    except OverflowError:
        raise _not_valid_time(value) from None
    if not 1 <= instant.year <= 9999:
        raise _not_valid_time(value)
    text = instant.strftime("%Y-%m-%dT%H:%M:%S.") + f"{instant.microsecond // 1000:03d}"
    is_local = parse_quirks.push_time_is_local(value) and not has_zone
    return PushTime(text if is_local else text + "Z", epoch_ms, is_local)


def _time_value(value: Any) -> tuple[int, bool]:
    """A JSON number (seconds) or date string → (epoch ms truncated like a JS Date, string had a zone)."""
    if _is_json_number(value):
        epoch_ms = float(value) * 1000
        if not parse_quirks.is_valid_js_date_ms(epoch_ms):
            raise _not_valid_time(value)
        return math.trunc(epoch_ms), False
    if isinstance(value, str):
        parsed = _parse_date_string(value)
        if parsed is None:
            raise _not_valid_time(value)
        return parsed
    raise _not_valid_time(value)


def _parse_date_string(text: str) -> tuple[int, bool] | None:
    match = _DATE.match(text)
    if match is None:
        return None
    year, month, day, hour, minute, second, fraction, zone = match.groups()
    millis = int((fraction or "0").ljust(3, "0")[:3])
    try:
        wall = datetime(int(year), int(month), int(day), int(hour or 0), int(minute or 0), int(second or 0))
    except ValueError:
        return None
    offset = timedelta()
    if zone and zone != "Z":
        sign = 1 if zone[0] == "+" else -1
        offset = sign * timedelta(hours=int(zone[1:3]), minutes=int(zone[4:6]))
    try:
        instant = wall.replace(tzinfo=UTC) - offset + timedelta(milliseconds=millis)
    except OverflowError:
        return None
    return _epoch_ms(instant), zone is not None


def _not_valid_time(value: Any) -> ParseError:
    return ParseError(PUSH_MISCONFIGURED, f"{parse_quirks.js_string(value)} is not valid time.")


def _is_json_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _epoch_ms(moment: datetime) -> int:
    return (moment - _EPOCH) // timedelta(milliseconds=1)
