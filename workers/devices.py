"""Audience rows → `Device`s: which installations a push reaches, and what a sender needs of each.

A fan-out's rows travel from the planner to the senders as the database sent them (BSON, `SendBatch.rows`):
the planner only cuts the stream into batches, and each sender decodes its own batch. Decoding and
converting a row is most of the per-installation CPU of a push (docs/architecture.md, "Rows, not
devices"), so it is spread over every worker instead of done once, in one process, by the planner.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable
from typing import Any

import bson
from bson.codec_options import CodecOptions

from pushgw import metrics
from pushgw.messages import Device, SendBatch
from pushgw.mongo import Document
from workers.providers.provider import TOKEN_TRANSPORTS, transport_for

# What a sender needs of an installation; `_id` comes first in every row (MongoDB stores it first).
# Not `_updated_at`: a date is the costliest field to decode, and only token cleanup needs it, for the few
# installations APNs answers 410 for (it reads them then, workers/token_cleanup.py).
PROJECTION = {
    "deviceType": 1, "pushType": 1, "deviceToken": 1, "installationId": 1, "badge": 1,
    "localeIdentifier": 1, "appIdentifier": 1, "timeZone": 1,
}  # fmt: skip

# Decoded as pushgw's client decodes (pushgw/mongo.py).
_CODEC: CodecOptions[dict[str, Any]] = CodecOptions(tz_aware=True)


_ABSENT = object()


def to_device(row: Document) -> Device | None:
    """The device row a sender needs, or None when the push does not reach the row (counted nowhere, as in
    Parse): neither a `deviceToken` field (even null, like `$exists`) nor a PPNS installation (pushgw's
    `audience_filter` rule), or a token transport without a token (Parse skips those; metric).

    Every value is checked here, so no validation pass is needed; written for speed (one call per device
    of every push: `__class__ is str` and positional arguments halve its cost)."""
    get = row.get
    device_type = get("deviceType")
    push_type = get("pushType")
    token = get("deviceToken", _ABSENT)
    if token is _ABSENT and device_type != "embedded" and push_type != "ppns":
        return None
    transport = transport_for(device_type, push_type)
    if token.__class__ is not str:
        token = None
    if not token and transport in TOKEN_TRANSPORTS:
        metrics.SKIPPED_DEVICES.labels(str(device_type)).inc()
        return None
    badge = get("badge")
    if not isinstance(badge, int | float) or badge.__class__ is bool:
        badge = None
    return Device(
        str(row["_id"]),
        str(device_type),
        transport,
        _text(get("installationId")),
        token,
        _text(push_type),
        badge,
        _text(get("localeIdentifier")),
        _text(get("appIdentifier")),
        _text(get("timeZone")),
    )


def devices_of(rows: Iterable[Document]) -> list[Device]:
    return [device for row in rows if (device := to_device(row)) is not None]


def decode_rows(raw: bytes) -> list[Document]:
    """Concatenated BSON rows (`SendBatch.rows`), decoded as pushgw's client decodes them."""
    return bson.decode_all(raw, _CODEC)


def split_rows(page: bytes) -> list[bytes]:
    """A raw cursor batch (BSON documents back to back) cut into one `bytes` per row, without decoding."""
    rows: list[bytes] = []
    offset, end = 0, len(page)
    while offset < end:
        size = int.from_bytes(page[offset : offset + 4], "little")
        if size < 5 or offset + size > end:
            raise bson.InvalidBSON(f"a row of {size} bytes at offset {offset} of a {end}-byte batch")
        rows.append(page[offset : offset + size])
        offset += size
    return rows


def row_id(row: bytes) -> str:
    """The `_id` of one raw row (a Parse objectId: a string)."""
    return str(bson.decode(row)["_id"])


def resolve_rows(item: SendBatch) -> tuple[SendBatch, int]:
    """A unit whose audience is `rows`, as one of `devices`, and how many of its rows reach no device (counted
    done by the unit, in no outcome); a unit of devices is returned as it is."""
    if item.rows is None:
        return item, 0
    rows = decode_rows(item.rows)
    devices = devices_of(rows)
    return item.model_copy(update={"devices": devices, "rows": None}), len(rows) - len(devices)


def count_planned(devices: Iterable[Device]) -> None:
    for transport, count in Counter(device.transport for device in devices).items():
        metrics.PLANNED_DEVICES.labels(transport).inc(count)


def _text(value: Any) -> str | None:
    return value if value.__class__ is str else None
