"""Badges at send time: Parse's increment/set rules, each device's own new value, applied once per unit."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from pymongo import ReturnDocument
from pymongo.asynchronous.database import AsyncDatabase

from pushgw import parse_quirks
from pushgw.errors import INVALID_JSON
from pushgw.messages import Device
from pushgw.mongo import Document

INCORRECT_TYPE = 111
LEDGER = "pushgw_badges"
_INCREMENT_CONCURRENCY = 16
_CHUNK = 100


class BadgeError(Exception):
    """Parse fails the whole push when the badge update is invalid (asynchronously, after the 200)."""

    def __init__(self, code: int, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


@dataclass(frozen=True, slots=True)
class BadgeRule:
    """What `data.badge` asks for: `increment` by an amount, `set` a number, or nothing."""

    increment: int | float | None = None
    set_to: int | float | None = None


def badge_rule(data: Any) -> BadgeRule:
    """Parse's interpretation of `data.badge` (PushController.sendPush and the _Installation schema)."""
    badge = data.get("badge") if isinstance(data, dict) else None
    if not parse_quirks.js_truthy(badge):
        return BadgeRule()
    if parse_quirks.is_increment(badge):
        return BadgeRule(increment=1)
    if parse_quirks.is_increment_op(badge):
        amount = badge.get("amount") if isinstance(badge, dict) else None
        if not isinstance(amount, int | float) or isinstance(amount, bool):
            raise BadgeError(INVALID_JSON, "incrementing must provide a number")
        return BadgeRule(increment=amount)
    if isinstance(badge, int | float) and not isinstance(badge, bool):
        return BadgeRule(set_to=badge)
    raise BadgeError(
        INCORRECT_TYPE,
        f"schema mismatch for _Installation.badge; expected Number but got {_type_name(badge)}",
    )


def _type_name(value: Any) -> str:
    return {str: "String", bool: "Boolean", list: "Array", dict: "Object"}.get(type(value), "Unknown")


def receives_badge(device: Device, device_types: Sequence[str] | None) -> bool:
    """Parse updates every matched installation that has a token (all device types); configurable."""
    return bool(device.device_token) and (device_types is None or device.device_type in device_types)


async def apply_badges(
    database: AsyncDatabase[Document], ledger_id: str, rule: BadgeRule, devices: Sequence[Device], *,
    now: datetime, installations: str = "_Installation",
) -> dict[str, int | float]:  # fmt: skip
    """Apply `rule` to `devices` and return each one's badge to send.

    Increments are atomic per installation (find_one_and_update), so concurrent pushes each see their own
    value, and recorded in the unit's ledger chunk by chunk, so a redelivered unit reuses the values instead
    of incrementing again. The window: a worker killed during one chunk's increments leaves that chunk
    (at most `_CHUNK` installations) to be incremented again on redelivery.
    """
    if rule.set_to is not None:
        ids = [device.object_id for device in devices]
        await database.get_collection(installations).update_many(
            {"_id": {"$in": ids}}, {"$set": {"badge": rule.set_to}}
        )
        return dict.fromkeys(ids, rule.set_to)
    if rule.increment is None:
        return {}
    ledger = database.get_collection(LEDGER)
    recorded = await ledger.find_one({"_id": ledger_id})
    values: dict[str, int | float] = dict(recorded["values"]) if recorded else {}
    pending = [device for device in devices if device.object_id not in values]
    for start in range(0, len(pending), _CHUNK):
        chunk = pending[start : start + _CHUNK]
        fresh = await _increment(database.get_collection(installations), chunk, rule.increment, now)
        await ledger.update_one(
            {"_id": ledger_id},
            {"$set": {f"values.{key}": value for key, value in fresh.items()}},
            upsert=True,
        )
        values.update(fresh)
    return values


async def _increment(
    collection: Any, devices: Sequence[Device], amount: int | float, now: datetime
) -> dict[str, int | float]:
    slots = asyncio.Semaphore(_INCREMENT_CONCURRENCY)

    async def one(device: Device) -> tuple[str, int | float]:
        async with slots:
            after = await collection.find_one_and_update(
                {"_id": device.object_id},
                {"$inc": {"badge": amount}, "$set": {"_updated_at": now}},
                projection={"badge": 1},
                return_document=ReturnDocument.AFTER,
            )
        return device.object_id, (after or {}).get("badge", amount)

    return dict(await asyncio.gather(*(one(device) for device in devices)))
