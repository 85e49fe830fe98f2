"""Intake → RabbitMQ → worker → FcmProvider → the FCM emulator (OAuth + HTTP/2 + TLS) → exact `_PushStatus`."""

from __future__ import annotations

import json
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from pushgw.emulators.fcm import FcmEmulator
from pushgw.emulators.tls import write_service_account
from pushgw.settings import Settings
from tests.fixtures.emulators import ProviderFleet, fcm_settings, seed_installations
from tests.fixtures.fleet import RunningWorker
from tests.fixtures.gateway import RunningGateway
from tests.fixtures.parse_data import installation
from tests.integration.test_fleet import final_status, send


@pytest.fixture
def fleet(provider_fleet: ProviderFleet) -> ProviderFleet:
    def start(fcm: dict[str, Any], **app: Any) -> tuple[RunningGateway, RunningWorker, Settings]:
        return provider_fleet(fcm=fcm, **app)

    return start


def test_android_and_fcm_installations_get_the_parse_sdk_message(
    fleet: ProviderFleet, fcm_factory: Callable[..., FcmEmulator], mongo: Any, db_name: str
) -> None:
    emulator = fcm_factory()
    devices = seed_installations(
        mongo, db_name, installation("android"), installation("android", pushType=None),
        installation("android", pushType="fcm"), installation("fcm", localeIdentifier="fr-FR"),
    )  # fmt: skip
    gateway, _, _ = fleet(fcm_settings(emulator))
    expires = datetime.now(UTC).timestamp() + 3600
    push_id = send(gateway, {
        "where": {}, "expiration_time": expires, "collapse_id": "news",
        "data": {"alert": "hi", "alert-fr": "salut", "title": "t", "badge": "Increment", "uri": "x://y"},
    })  # fmt: skip
    row = final_status(mongo, db_name, push_id)
    assert (row["status"], row["numSent"], row["sentPerType"]) == ("succeeded", 4, {"android": 3, "fcm": 1})
    messages = {m.token: m.message for m in emulator.messages()}
    android = messages[devices[0]["deviceToken"]]["android"]
    assert android["priority"] == "HIGH"
    assert android["collapse_key"] == "news"
    assert 3500 <= int(android["ttl"].removesuffix("s")) <= 3600
    assert android["data"]["push_id"] == push_id
    assert json.loads(android["data"]["data"]) == {"alert": "hi", "title": "t", "uri": "x://y"}
    assert all(isinstance(value, str) for value in android["data"].values())
    french = messages[devices[3]["deviceToken"]]["android"]["data"]
    assert json.loads(french["data"])["alert"] == "salut"
    assert emulator.stats().oauth_tokens_issued == 1  # one access token for the whole run


def test_fcm_errors_and_cleanup(
    fleet: ProviderFleet, fcm_factory: Callable[..., FcmEmulator], mongo: Any, db_name: str
) -> None:
    emulator = fcm_factory(
        token_rules={"gone": "UNREGISTERED", "junk": "INVALID_ARGUMENT", "busy": "QUOTA_EXCEEDED"},
        retry_after_s=1,
    )
    devices = seed_installations(
        mongo, db_name, installation("android"), installation("android", deviceToken="gone-1"),
        installation("fcm", deviceToken="junk-1"), installation("android", deviceToken="busy-1"),
    )  # fmt: skip
    gateway, _, _ = fleet(fcm_settings(emulator), cleanup_invalid_tokens=True)
    push_id = send(gateway, {"where": {}, "data": {"alert": "hi"}})
    row = final_status(mongo, db_name, push_id, timeout_s=150)
    assert (row["status"], row["numSent"], row["numFailed"]) == ("succeeded", 1, 3)
    assert row["failedPerReason"] == {"UNREGISTERED": 1, "INVALID_ARGUMENT": 1, "retries-exhausted": 1}
    assert (
        emulator.stats().rejected["QUOTA_EXCEEDED"] == 2
    )  # retried once (the largest delay tier caps the 60 s)
    tokens = {d["_id"]: d.get("deviceToken") for d in mongo[db_name]["_Installation"].find()}
    assert (tokens[devices[1]["_id"]], tokens[devices[2]["_id"]]) == (None, None)
    assert tokens[devices[0]["_id"]] == devices[0]["deviceToken"]
    assert tokens[devices[3]["_id"]] == "busy-1"  # throttled, not dead


def test_a_service_account_the_token_endpoint_refuses_pauses_the_project(
    fleet: ProviderFleet, fcm_factory: Callable[..., FcmEmulator], mongo: Any, db_name: str, tmp_path: Path
) -> None:
    emulator = fcm_factory()
    stranger = write_service_account(
        tmp_path / "stranger.json",
        token_uri=emulator.token_url,
        project_id=emulator.project_id,
        client_email="stranger@elsewhere.iam.gserviceaccount.com",
    )
    seed_installations(mongo, db_name, *[installation("android") for _ in range(60)])
    gateway, _, _ = fleet(fcm_settings(emulator, service_account_file=str(stranger.path), pause_s=1))
    push_id = send(gateway, {"where": {}, "data": {"alert": "hi"}})
    row = final_status(mongo, db_name, push_id)
    assert (row["numFailed"], row["failedPerReason"]) == (60, {"retries-exhausted": 60})
    stats = emulator.stats()
    assert stats.requests == 0 and sum(stats.oauth_rejected.values()) <= 4  # one probe per attempt
