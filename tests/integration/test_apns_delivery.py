"""Intake → RabbitMQ → worker → ApnsProvider → the APNs emulator over HTTP/2 + TLS → exact `_PushStatus`."""

from __future__ import annotations

import json
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import pytest

from pushgw.emulators.apns import ApnsEmulator
from pushgw.settings import Settings
from tests.fixtures.emulators import ProviderFleet, apns_credential, seed_installations
from tests.fixtures.fleet import RunningWorker
from tests.fixtures.gateway import RunningGateway
from tests.fixtures.parse_data import installation
from tests.integration.test_fleet import final_status, send
from workers.providers.apns_payload import apns_id


@pytest.fixture
def fleet(provider_fleet: ProviderFleet) -> ProviderFleet:
    def start(apns: list[dict[str, Any]], **app: Any) -> tuple[RunningGateway, RunningWorker, Settings]:
        return provider_fleet(apns=apns, **app)

    return start


def test_every_apple_type_gets_the_adapters_payload_and_headers(
    fleet: ProviderFleet, apns_factory: Callable[..., ApnsEmulator], mongo: Any, db_name: str
) -> None:
    emulator = apns_factory(topics=["com.example.app", "com.example.other"])
    devices = seed_installations(
        mongo, db_name, installation("ios", badge=4), installation("osx"), installation("tvos"),
        installation("ios", appIdentifier="com.example.other"),
    )  # fmt: skip
    other = {**apns_credential(emulator), "bundle_ids": ["com.example.other"]}
    gateway, _, _ = fleet([apns_credential(emulator, default=True), other])
    push_id = send(gateway, {
        "where": {}, "expiration_time": "2030-01-01T00:00:00Z",
        "data": {"alert": "hello", "title": "t", "badge": "Increment", "sound": "s", "uri": "x://y"},
    })  # fmt: skip
    row = final_status(mongo, db_name, push_id)
    assert (row["status"], row["numSent"], row["sentPerType"]) == (
        "succeeded",
        4,
        {"ios": 2, "osx": 1, "tvos": 1},
    )
    received = {n.token: n for n in emulator.notifications()}
    first = received[devices[0]["deviceToken"]]
    assert json.loads(first.payload_bytes) == {
        "aps": {"alert": {"body": "hello", "title": "t"}, "badge": 5, "sound": "s"},
        "uri": "x://y",
    }
    assert first.headers["apns-topic"] == "com.example.app"
    assert first.headers["apns-push-type"] == "alert"
    assert first.headers["apns-priority"] == "10"
    assert first.headers["apns-expiration"] == str(int(datetime(2030, 1, 1, tzinfo=UTC).timestamp()))
    assert first.apns_id == apns_id(push_id, devices[0]["deviceToken"])
    assert received[devices[3]["deviceToken"]].headers["apns-topic"] == "com.example.other"
    assert emulator.stats().provider_tokens == 1  # one JWT per team for the whole run


def test_silent_push_is_background_priority_5(
    fleet: ProviderFleet, apns_factory: Callable[..., ApnsEmulator], mongo: Any, db_name: str
) -> None:
    emulator = apns_factory()
    seed_installations(mongo, db_name, installation("ios"))
    gateway, _, _ = fleet([apns_credential(emulator)])
    push_id = send(gateway, {"where": {}, "data": {"content-available": 1, "k": "v"}})
    assert final_status(mongo, db_name, push_id)["numSent"] == 1
    (notification,) = emulator.notifications()
    assert (notification.headers["apns-push-type"], notification.headers["apns-priority"]) == (
        "background",
        "5",
    )


def test_certificate_auth(
    fleet: ProviderFleet, apns_factory: Callable[..., ApnsEmulator], mongo: Any, db_name: str
) -> None:
    emulator = apns_factory(auth="certificate")
    seed_installations(mongo, db_name, installation("ios"), installation("ios"))
    gateway, _, _ = fleet([apns_credential(emulator)])
    push_id = send(gateway, {"where": {}, "data": {"alert": "cert"}})
    assert final_status(mongo, db_name, push_id)["numSent"] == 2
    assert emulator.stats().accepted == 2


def test_rejections_are_counted_by_reason_and_dead_tokens_kept_without_cleanup(
    fleet: ProviderFleet, apns_factory: Callable[..., ApnsEmulator], mongo: Any, db_name: str
) -> None:
    emulator = apns_factory(
        token_rules={"dead": "Unregistered", "bad0": "BadDeviceToken", "e500": "InternalServerError"}
    )
    devices = seed_installations(
        mongo, db_name, installation("ios"), installation("ios", deviceToken="dead" + "0" * 60),
        installation("ios", deviceToken="bad0" + "1" * 60), installation("ios", deviceToken="e500" + "2" * 60),
        installation("ios", deviceToken="not-hex"), installation("ios", deviceToken="ab" * 40),
    )  # fmt: skip
    gateway, _, _ = fleet([apns_credential(emulator)])
    push_id = send(gateway, {"where": {}, "data": {"alert": "x" * 5000}})
    row = final_status(mongo, db_name, push_id)
    assert (row["numSent"], row["numFailed"]) == (0, 6)
    assert row["failedPerReason"] == {"PayloadTooLarge": 5, "BadDeviceToken": 1}  # too large: never sent
    assert emulator.stats().requests == 0
    push_id = send(gateway, {"where": {}, "data": {"alert": "small"}})
    row = final_status(mongo, db_name, push_id)
    assert (row["status"], row["numSent"], row["numFailed"]) == ("succeeded", 2, 4)
    assert row["failedPerReason"] == {
        "Unregistered": 1, "BadDeviceToken": 2, "retries-exhausted": 1
    }  # fmt: skip
    assert emulator.stats().rejected["InternalServerError"] == 2  # first attempt and one retry
    tokens = {d["_id"]: d.get("deviceToken") for d in mongo[db_name]["_Installation"].find()}
    assert tokens == {d["_id"]: d["deviceToken"] for d in devices}  # cleanup is off by default
    # Tokens Apple just declared dead fail at once, without a request that would throttle a connection.
    requests = emulator.stats().requests
    push_id = send(gateway, {"where": {"deviceToken": {"$in": [devices[1]["deviceToken"], devices[2]["deviceToken"]]}},
                             "data": {"alert": "again"}})  # fmt: skip
    row = final_status(mongo, db_name, push_id)
    assert row["failedPerReason"] == {"Unregistered": 1, "BadDeviceToken": 1}
    assert emulator.stats().requests == requests


def test_cleanup_unsets_only_authoritative_dead_tokens(
    fleet: ProviderFleet, apns_factory: Callable[..., ApnsEmulator], mongo: Any, db_name: str
) -> None:
    emulator = apns_factory(
        token_rules={"dead": "Unregistered", "bad0": "BadDeviceToken"},
        unregistered_timestamp_ms=4_102_444_800_000,
    )
    devices = seed_installations(
        mongo, db_name, *[installation("ios") for _ in range(4)],
        installation("ios", deviceToken="dead" + "0" * 60),
        installation("ios", deviceToken="dead" + "1" * 60, _updated_at=datetime(2100, 6, 1, tzinfo=UTC)),
        installation("ios", deviceToken="bad0" + "1" * 60),
    )  # fmt: skip
    gateway, _, _ = fleet(
        [apns_credential(emulator), apns_credential(emulator, bundle_ids=["x"], environment="sandbox")],
        cleanup_invalid_tokens=True,
    )
    push_id = send(gateway, {"where": {}, "data": {"alert": "hi"}})
    row = final_status(mongo, db_name, push_id)
    assert (row["numSent"], row["numFailed"], row["pushgw"]["tokens_removed"]) == (4, 3, 1)
    tokens = {d["_id"]: d.get("deviceToken") for d in mongo[db_name]["_Installation"].find()}
    assert tokens[devices[4]["_id"]] is None  # 410 newer than the installation's last update
    assert tokens[devices[5]["_id"]] == devices[5]["deviceToken"]  # re-registered after the 410
    assert tokens[devices[6]["_id"]] == devices[6]["deviceToken"]  # two environments: not authoritative


def test_a_burst_of_dead_tokens_trips_the_breaker_instead_of_wiping_tokens(
    fleet: ProviderFleet, apns_factory: Callable[..., ApnsEmulator], mongo: Any, db_name: str
) -> None:
    emulator = apns_factory(token_rules={"dead": "Unregistered"})
    devices = seed_installations(
        mongo, db_name, *[installation("ios", deviceToken=f"dead{n:060x}") for n in range(30)]
    )
    gateway, _, _ = fleet([apns_credential(emulator)], cleanup_invalid_tokens=True)
    push_id = send(gateway, {"where": {}, "data": {"alert": "hi"}})
    row = final_status(mongo, db_name, push_id)
    assert (row["numFailed"], row["failedPerReason"]) == (30, {"Unregistered": 30})
    assert mongo[db_name]["_Installation"].count_documents({"deviceToken": {"$exists": True}}) == len(devices)


def test_a_broken_credential_pauses_instead_of_failing_every_device_at_full_speed(
    fleet: ProviderFleet, apns_factory: Callable[..., ApnsEmulator], mongo: Any, db_name: str
) -> None:
    emulator, impostor = apns_factory(), apns_factory()
    seed_installations(mongo, db_name, *[installation("ios") for _ in range(120)])
    wrong_key = apns_credential(emulator, key_file=str(impostor.token_key_file), pause_s=1)
    gateway, _, _ = fleet([wrong_key])
    push_id = send(gateway, {"where": {}, "data": {"alert": "hi"}})
    row = final_status(mongo, db_name, push_id)
    assert (row["numFailed"], row["failedPerReason"]) == (120, {"retries-exhausted": 120})
    # One request tests the credential; the refusal pauses it and the other devices wait, unsent.
    assert emulator.stats().rejected["InvalidProviderToken"] <= 4  # one probe per attempt and worker
