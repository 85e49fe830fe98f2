"""The device emulator's readers lose data exactly where the real clients do (reference §7), so the PPNS
tests that pass against it would catch a server that batches, uses CRLF or sends over-long lines."""

from __future__ import annotations

import json
from typing import Any, cast

from tests.fixtures.ppns_devices import ARDUINO, LINUX, ClientProfile, EmulatedDevice


def reader(profile: ClientProfile) -> EmulatedDevice:
    unused = cast(Any, None)  # the readers never touch the socket or TLS objects
    return EmulatedDevice(profile, "i", "app1", unused, unused, unused, unused)


def line(alert: str, time: str = "2026-11-25T17:10:58.337Z", end: bytes = b"\n") -> bytes:
    message = {"time": time, "push_id": "AbCdEfGhIj", "data": {"alert": alert}}
    return json.dumps(message, separators=(",", ":")).encode() + end


def test_linux_reader_releases_one_message_per_record() -> None:
    device = reader(LINUX)
    device._receive(line("1") + line("2") + line("3"))
    assert device.alerts() == ["1"]
    device._receive(b"{}\n")
    assert device.alerts() == ["1", "2"]


def test_linux_reader_loses_pushes_after_crlf() -> None:
    device = reader(LINUX)
    for alert in "12345":
        device._receive(line(alert, end=b"\r\n"))
    assert device.desynced and device.alerts() == ["1"]


def test_linux_reader_loses_an_overlong_push_and_the_ones_after_it() -> None:
    device = reader(LINUX)
    for data in (line("x" * 3000), line("a"), line("b")):
        device._receive(data)
    assert device.alerts() == [] and device.desynced


def test_linux_reader_takes_the_first_key_ending_in_time() -> None:
    device = reader(LINUX)
    device._receive(
        b'{"data":{"alert":"a"},"expiration_time":"2099-01-01T00:00:00.000Z","time":"2026-11-25T17:10:58.337Z"}\n'
    )
    assert device.last == "2099-01-01T00:00:00.000Z"


def test_arduino_reader_cannot_use_a_push_over_127_bytes() -> None:
    device = reader(ARDUINO)
    device._receive(line("y" * 100) + line("ok"))
    assert device.truncated == 1 and device.alerts() == ["ok"]
