"""Parse `data` → the APNs JSON body and `apns-*` headers, as parse-server-push-adapter builds them (pure).

Contract §15.2: `aps` keys from Parse's names, header keys consumed (never in the body), every other key
at the top level next to `aps`; pushgw's fixes: `background` push type + priority 5 for a silent push, and a
deterministic `apns-id`.
"""

from __future__ import annotations

import hashlib
import json
import re
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

MAX_PAYLOAD_BYTES = 4096
MAX_VOIP_PAYLOAD_BYTES = 5120
MAX_COLLAPSE_ID_BYTES = 64
# UUIDv5 namespace of pushgw's apns-id values: uuid5(NAMESPACE_URL, "https://pushgw.dev/apns-id").
APNS_ID_NAMESPACE = uuid.uuid5(uuid.NAMESPACE_URL, "https://pushgw.dev/apns-id")
_NAMESPACE_BYTES = APNS_ID_NAMESPACE.bytes

# Keys the adapter consumes into headers; none of them is sent in the body.
_HEADER_KEYS = frozenset(
    {
        "push_type",
        "pushType",
        "priority",
        "collapse_id",
        "collapseId",
        "expiry",
        "id",
        "topic",
        "expiration_time",
    }
)
_RENAMED_APS_KEYS = {
    "sound": "sound",
    "category": "category",
    "threadId": "thread-id",
    "targetContentIdentifier": "target-content-id",
    "interruptionLevel": "interruption-level",
}
_TOPIC_SUFFIXES = {
    "voip": ".voip",
    "complication": ".complication",
    "fileprovider": ".pushkit.fileprovider",
    "liveactivity": ".push-type.liveactivity",
    "location": ".location-query",
    "pushtotalk": ".voip-ptt",
}
PUSH_TYPES = frozenset({"alert", "background", "mdm", *_TOPIC_SUFFIXES})
_HEX_TOKEN = re.compile(r"^(?:[0-9a-fA-F]{2})+$")


@dataclass(frozen=True, slots=True)
class ApnsRequest:
    """One notification ready for the wire: body bytes, the headers, and the topic's base bundle id."""

    body: bytes
    headers: dict[str, str]
    push_type: str


def is_valid_token(token: str) -> bool:
    """Apple warns the length may change: non-empty, even length, hex only (providers.md §1.3)."""
    return bool(_HEX_TOKEN.match(token))


def apns_id(push_id: str, token: str) -> str:
    """The same id for every attempt of one push to one token, so retries and Apple's logs correlate.

    `uuid.uuid5(APNS_ID_NAMESPACE, f"{push_id}:{token}")` as text, built without the UUID object (half the
    CPU of `str(uuid5(…))`, and this runs once per device).
    """
    digest = bytearray(hashlib.sha1(_NAMESPACE_BYTES + f"{push_id}:{token}".encode()).digest()[:16])
    digest[6] = (digest[6] & 0x0F) | 0x50  # version 5
    digest[8] = (digest[8] & 0x3F) | 0x80  # RFC 4122 variant
    text = digest.hex()
    return f"{text[:8]}-{text[8:12]}-{text[12:16]}-{text[16:20]}-{text[20:]}"


def build_payload(data: Mapping[str, Any]) -> dict[str, Any]:
    """The APNs JSON body for Parse `data` (already localized, badge already resolved per device)."""
    aps: dict[str, Any] = {}
    extra: dict[str, Any] = {}
    for key, value in data.items():
        if key in _HEADER_KEYS or key in ("title", "aps"):
            continue
        if key in _APS_SOURCE_KEYS:
            entry = _aps_entry(key, value, data.get("title"))
            if entry is not None:
                aps[entry[0]] = entry[1]
        else:
            extra[key] = value
    if "title" in data and "alert" not in data:
        aps["alert"] = {"title": data["title"]}
    override = data.get("aps")
    if isinstance(override, Mapping):
        aps.update(override)
    return {"aps": aps, **extra}


_APS_SOURCE_KEYS = frozenset({"alert", "badge", "content-available", "mutable-content", *_RENAMED_APS_KEYS})


def _aps_entry(key: str, value: Any, title: Any) -> tuple[str, Any] | None:
    if key == "alert":
        return "alert", _alert(value, title)
    if key == "badge":  # numbers only: "Increment" was resolved per device, anything else is dropped
        return ("badge", value) if isinstance(value, int | float) and not isinstance(value, bool) else None
    if key in ("content-available", "mutable-content"):  # the adapter sets them only for `=== 1`
        return (key, 1) if value == 1 and not isinstance(value, bool) else None
    return _RENAMED_APS_KEYS[key], value


def _alert(alert: Any, title: Any) -> Any:
    if title is None:
        return alert
    if isinstance(alert, Mapping):
        return {**alert, "title": title}
    return {"body": alert, "title": title}


def push_type_for(data: Mapping[str, Any], options: Mapping[str, Any], payload: Mapping[str, Any]) -> str:
    """`pushType` in data, then `push_type` at the top level, then in data; else derived from the payload."""
    chosen = _first(data.get("pushType"), options.get("push_type"), data.get("push_type"))
    if isinstance(chosen, str) and chosen:
        return chosen
    aps = payload.get("aps", {})
    silent = aps.get("content-available") == 1 and not any(key in aps for key in ("alert", "badge", "sound"))
    return "background" if silent else "alert"


def build_request(
    data: Mapping[str, Any],
    options: Mapping[str, Any],
    *,
    push_id: str,
    token: str,
    topic: str,
    expiry_ms: float | None,
) -> ApnsRequest:
    """Body and headers for one device. `topic` is the bundle id; the push type adds its suffix."""
    template = request_template(data, options, topic=topic, expiry_ms=expiry_ms)
    return with_apns_id(template, data, push_id, token)


def request_template(
    data: Mapping[str, Any], options: Mapping[str, Any], *, topic: str, expiry_ms: float | None
) -> ApnsRequest:
    """Everything but `apns-id`: the same for every device of a push that gets the same `data`."""
    payload = build_payload(data)
    push_type = push_type_for(data, options, payload)
    priority = _first(data.get("priority"), options.get("priority"))
    headers = {
        "apns-topic": str(data.get("topic") or topic) + _TOPIC_SUFFIXES.get(push_type, ""),
        "apns-push-type": push_type,
        "apns-priority": "5" if push_type == "background" else str(priority if priority is not None else 10),
    }
    expiration = data.get("expiry")
    if expiration is None and expiry_ms is not None:
        expiration = round(expiry_ms / 1000)
    if expiration is not None:
        headers["apns-expiration"] = str(expiration)
    collapse_id = _first(data.get("collapseId"), options.get("collapse_id"), data.get("collapse_id"))
    if collapse_id is not None:
        headers["apns-collapse-id"] = str(collapse_id)
    body = json.dumps(payload, separators=(",", ":"), ensure_ascii=False).encode()
    return ApnsRequest(body, headers, push_type)


def with_apns_id(template: ApnsRequest, data: Mapping[str, Any], push_id: str, token: str) -> ApnsRequest:
    """The template for one device: `data.id` if the push names one, else the push's id for this token."""
    headers = {**template.headers, "apns-id": str(data.get("id") or apns_id(push_id, token))}
    return ApnsRequest(template.body, headers, template.push_type)


def size_limit(push_type: str) -> int:
    return MAX_VOIP_PAYLOAD_BYTES if push_type == "voip" else MAX_PAYLOAD_BYTES


def _first(*values: Any) -> Any:
    return next((value for value in values if value is not None), None)
