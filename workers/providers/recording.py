"""The recording provider: accepts instantly, remembers every delivery; scripted failures by token prefix."""

from __future__ import annotations

import asyncio
import json
import os
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from pymongo.asynchronous.database import AsyncDatabase

from pushgw.clock import Clock
from pushgw.mongo import Document
from workers.outcomes import Deferred, Failed, Outcome, Sent
from workers.providers.provider import Notification, PushContext

RECORDED_COLLECTION = "pushgw_recorded"


@dataclass(slots=True)  # not frozen: built once per delivered device, frozen init costs 3x
class Recorded:
    push_id: str
    notification: Notification
    at: datetime
    expiry_ms: float | None


class RecordingProvider:
    """For tests, benchmarks and `pushgw dev`: every delivery is kept in memory, in `pushgw_recorded`
    (`databases`), as a JSON line appended to `journal` (push id, installation object id, transport, time),
    or nowhere (`keep=False`: an instant provider for load tests, which memory would otherwise distort).

    `fail_tokens` maps a token (or installation id) prefix to `failed:<Reason>`,
    `deferred:<Reason>[:<retry_after_s>]` or `raise:<message>` (a provider bug), so tests can script
    provider answers; `latency_ms` makes every call take that long, like a remote service.
    """

    transport = "recording"

    def __init__(
        self,
        clock: Clock,
        *,
        fail_tokens: dict[str, str] | None = None,
        databases: dict[str, AsyncDatabase[Document]] | None = None,
        journal: Path | None = None,
        keep: bool = True,
        latency_ms: int = 0,
    ) -> None:
        self._clock = clock
        self._fail_tokens = fail_tokens or {}
        self._databases = databases
        # One O_APPEND write per send call: lines of several worker processes never interleave.
        self._journal = os.open(journal, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600) if journal else None
        self._latency_s = latency_ms / 1000
        self._keep = keep  # False: accept and remember nothing
        self.deliveries: list[Recorded] = []

    async def send(self, push: PushContext, notifications: Sequence[Notification]) -> list[Outcome]:
        if self._latency_s:
            await asyncio.sleep(self._latency_s)  # simulated network round trip
        if self._fail_tokens:
            outcomes = [self._outcome(notification) for notification in notifications]
        else:  # nothing scripted: every device accepted
            outcomes = [Sent(notification.device) for notification in notifications]
        if self._keep:
            delivered = [n for n, o in zip(notifications, outcomes, strict=True) if isinstance(o, Sent)]
            if delivered:
                await self._remember(push, delivered, self._clock.now())
        return outcomes

    async def _remember(self, push: PushContext, delivered: list[Notification], now: datetime) -> None:
        if self._journal is not None:
            os.write(self._journal, "".join(_line(push, n, now) for n in delivered).encode())
        elif self._databases is None:
            self.deliveries.extend(Recorded(push.push_id, n, now, push.expiry_ms) for n in delivered)
        else:
            collection = self._databases[push.app_id].get_collection(RECORDED_COLLECTION)
            await collection.insert_many([_record(push, notification, now) for notification in delivered])

    def _outcome(self, notification: Notification) -> Outcome:
        device = notification.device
        address = device.device_token or device.installation_id or ""
        for prefix, script in self._fail_tokens.items():
            if address.startswith(prefix):
                kind, _, rest = script.partition(":")
                reason, _, after = rest.partition(":")
                if kind == "raise":
                    raise RuntimeError(f"scripted provider failure: {rest}")
                if kind == "deferred":
                    return Deferred(device, reason or "transient", float(after) if after else None)
                return Failed(device, reason or "failed")
        return Sent(device)

    async def close(self) -> None:
        if self._journal is not None:
            os.close(self._journal)
            self._journal = None


def _record(push: PushContext, notification: Notification, now: datetime) -> dict[str, Any]:
    device = notification.device
    return {
        "push_id": push.push_id,
        "object_id": device.object_id,
        "transport": device.transport,
        "device_type": device.device_type,
        "address": device.device_token or device.installation_id,
        "data": notification.data,
        "expiry_ms": push.expiry_ms,
        "at": now,
    }


def _line(push: PushContext, notification: Notification, now: datetime) -> str:
    device = notification.device
    record = {"push_id": push.push_id, "object_id": device.object_id, "transport": device.transport}
    return json.dumps(record | {"at": now.timestamp()}) + "\n"
