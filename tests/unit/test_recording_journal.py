"""The recording provider's journal (`store = "file"`): one JSON line per delivered device, none for failures."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

from pushgw.clock import SystemClock
from pushgw.messages import Device
from workers.providers.provider import Notification, PushContext
from workers.providers.recording import RecordingProvider


def test_each_delivery_is_one_journal_line(tmp_path: Path) -> None:
    journal = tmp_path / "recorded.jsonl"
    devices = [
        Device("a1", "ios", "apns", device_token="ok1"),
        Device("a2", "ios", "apns", device_token="bad1"),
    ]

    async def send() -> None:
        provider = RecordingProvider(
            SystemClock(), fail_tokens={"bad": "failed:BadDeviceToken"}, journal=journal
        )
        context = PushContext("app", "push1", {}, None)
        await provider.send(context, [Notification(device, {"alert": "hi"}) for device in devices])
        await provider.send(context, [])
        await provider.close()

    asyncio.run(send())
    lines = [json.loads(line) for line in journal.read_text().splitlines()]
    assert [{k: v for k, v in line.items() if k != "at"} for line in lines] == [
        {"push_id": "push1", "object_id": "a1", "transport": "apns"}
    ]
    assert isinstance(lines[0]["at"], float)


def test_a_provider_that_keeps_nothing_still_answers_each_device() -> None:
    provider = RecordingProvider(SystemClock(), fail_tokens={"bad": "failed:BadDeviceToken"}, keep=False)
    devices = [
        Device("a1", "ios", "apns", device_token="ok1"),
        Device("a2", "ios", "apns", device_token="bad1"),
    ]
    context = PushContext("app", "push1", {}, None)
    outcomes = asyncio.run(provider.send(context, [Notification(device, {}) for device in devices]))
    assert [type(outcome).__name__ for outcome in outcomes] == ["Sent", "Failed"]
    assert provider.deliveries == []
