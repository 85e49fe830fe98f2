"""The Provider protocol, the deviceType/pushType → transport table, and building the configured providers."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from pushgw.messages import Device
from workers.outcomes import Outcome

APNS, FCM, PPNS = "apns", "fcm", "ppns"
TOKEN_TRANSPORTS = frozenset({APNS, FCM})
UNSUPPORTED = "unsupported"
_APPLE_TYPES = frozenset({"ios", "osx", "tvos", "watchos"})
_FCM_PUSH_TYPES = frozenset({None, "", "gcm", "fcm"})


@dataclass(frozen=True, slots=True)
class PushContext:
    """What a provider needs to know about the push as a whole."""

    app_id: str
    push_id: str
    options: Mapping[str, Any]
    expiry_ms: float | None
    attempt: int = 1  # > 1: these devices failed transiently before (APNs sends them on the quarantine lane)


@dataclass(slots=True)  # not frozen: one per device sent to, and a frozen init costs twice as much
class Notification:
    """What one device receives: Parse `data` after localization and badge resolution."""

    device: Device
    data: dict[str, Any]


class Provider(Protocol):
    transport: str

    async def send(self, push: PushContext, notifications: Sequence[Notification]) -> list[Outcome]:
        """One outcome per notification, in order; never raises for a device."""
        ...

    async def close(self) -> None: ...


def transport_for(device_type: Any, push_type: Any) -> str:
    """Contract §15.1: Apple types → APNs; android (gcm/fcm/no pushType) and fcm → FCM; embedded or
    android+ppns → PPNS; everything else (web, expo, winrt, …) is unsupported."""
    if device_type in _APPLE_TYPES:
        return APNS
    if device_type == "embedded" or (device_type == "android" and push_type == "ppns"):
        return PPNS
    if device_type == "fcm" or (device_type == "android" and push_type in _FCM_PUSH_TYPES):
        return FCM
    return UNSUPPORTED
