"""Delivery outcomes as values: each device of a push ends as exactly one Sent or Failed; Deferred retries."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from pushgw.messages import Device
from pushgw.parse_quirks import js_number_string


class Reason(StrEnum):
    """pushgw's own failure reasons; provider reasons (`BadDeviceToken`, `UNREGISTERED`, …) stay verbatim."""

    PROVIDER_NOT_CONFIGURED = "provider-not-configured"
    UNSUPPORTED = "unsupported"
    EXPIRED = "expired"
    EMPTY_PAYLOAD = "empty-payload"
    PAYLOAD_TOO_LARGE = "PayloadTooLarge"
    RETRIES_EXHAUSTED = "retries-exhausted"
    DEAD_LETTERED = "dead-lettered"


@dataclass(slots=True)  # not frozen: one per delivered device, and a frozen init costs twice as much
class Sent:
    device: Device


@dataclass(frozen=True, slots=True)
class Failed:
    """`dead_token`: the provider said, authoritatively, that the token is gone (a cleanup candidate);
    `dead_since_ms`: when, if it said (APNs 410 `timestamp`)."""

    device: Device
    reason: str
    dead_token: bool = False
    dead_since_ms: float | None = None


@dataclass(frozen=True, slots=True)
class Deferred:
    """A transient failure: try again later (`retry_after_s` from the provider, if it said)."""

    device: Device
    reason: str
    retry_after_s: float | None = None


Outcome = Sent | Failed | Deferred


@dataclass(slots=True)
class Tally:
    """Terminal outcomes of one work unit, as the `$inc` they add to `_PushStatus`."""

    sent_per_type: Counter[str] = field(default_factory=Counter)
    failed_per_type: Counter[str] = field(default_factory=Counter)
    failed_per_reason: Counter[str] = field(default_factory=Counter)

    def add(self, outcome: Sent | Failed) -> None:
        if isinstance(outcome, Sent):
            self.add_many(True, outcome.device.device_type, "", 1)
        else:
            self.add_many(False, outcome.device.device_type, outcome.reason, 1)

    def add_many(self, sent: bool, device_type: str, reason: str, count: int) -> None:
        """`count` outcomes alike: sent, or failed with `reason`, of one device type."""
        if sent:
            self.sent_per_type[device_type] += count
        else:
            self.failed_per_type[device_type] += count
            self.failed_per_reason[reason] += count

    @property
    def sent(self) -> int:
        return sum(self.sent_per_type.values())

    @property
    def failed(self) -> int:
        return sum(self.failed_per_type.values())

    def increments(self, utc_offset_key: str | None = None) -> dict[str, Any]:
        """Parse's counters (`numSent`, `sentPerType.<type>`, …) plus our `failedPerReason.<reason>`."""
        inc: dict[str, Any] = {"numSent": self.sent}
        if self.failed:
            inc["numFailed"] = self.failed
        inc.update({f"sentPerType.{kind}": count for kind, count in self.sent_per_type.items()})
        inc.update({f"failedPerType.{kind}": count for kind, count in self.failed_per_type.items()})
        inc.update({f"failedPerReason.{reason}": count for reason, count in self.failed_per_reason.items()})
        if utc_offset_key is not None:
            if self.sent:
                inc[f"sentPerUTCOffset.{utc_offset_key}"] = self.sent
            if self.failed:
                inc[f"failedPerUTCOffset.{utc_offset_key}"] = self.failed
        return inc


def utc_offset_key(utc_offset_min: int | None) -> str | None:
    """The `sentPerUTCOffset` key of a local-time unit: its UTC offset in hours (`"1"`, `"-5"`, `"5.5"`)."""
    return None if utc_offset_min is None else js_number_string(utc_offset_min / 60)
