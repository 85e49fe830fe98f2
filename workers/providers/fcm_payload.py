"""Parse `data` → an FCM HTTP v1 `message` the Parse Android SDK understands (pure; contract §15.3).

The SDK's `ParseFirebaseMessagingService` reads the string data keys `push_id`, `time` and `data` (the
JSON text of the push's data), so this is a data-only message with priority HIGH, as Parse sends it.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

from pushgw.parse_quirks import js_json

MAX_TTL_S = 2_419_200  # FCM's maximum: 4 weeks
# Keys Parse's adapter removes from the `data` JSON string (they mean nothing to an Android device).
_DROPPED_KEYS = frozenset({"badge", "content-available", "mutable-content", "priority", "expiration_time"})


def ttl_for(expiry_ms: float | None, now_ms: float) -> str | None:
    """Seconds left until the push expires, clamped to FCM's range, as the duration string v1 wants.

    Seconds, not milliseconds: firebase-admin's `AndroidConfig.ttl` takes ms (firebase-admin-node #2524).
    """
    if expiry_ms is None:
        return None
    seconds = min(max(math.floor((expiry_ms - now_ms) / 1000), 0), MAX_TTL_S)
    return f"{seconds}s"


def iso_ms(moment: datetime) -> str:
    """JS `Date.toISOString()`: milliseconds and `Z`."""
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.") + f"{moment.microsecond // 1000:03d}Z"


def build_message(
    data: Mapping[str, Any],
    options: Mapping[str, Any],
    *,
    token: str,
    push_id: str,
    sent_at: datetime,
    expiry_ms: float | None,
    notification: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """The v1 `message` for one token. `rawPayload` (a top-level body key) replaces the mapping."""
    raw = options.get("rawPayload")
    if isinstance(raw, Mapping):
        return {**raw, "token": token}
    kept = {key: value for key, value in data.items() if key not in _DROPPED_KEYS}
    android: dict[str, Any] = {
        "priority": "HIGH",
        "data": {"push_id": push_id, "time": iso_ms(sent_at), "data": js_json(kept)},
    }
    ttl = ttl_for(expiry_ms, sent_at.timestamp() * 1000)
    if ttl is not None:
        android["ttl"] = ttl
    collapse_key = options.get("collapse_id")
    if collapse_key is not None:
        android["collapse_key"] = str(collapse_key)
    block = options.get("notification", notification)
    if isinstance(block, Mapping) and block:
        android["notification"] = dict(block)
    return {"token": token, "android": android}
