"""Parse `data` → APNs and FCM messages (contract §15.2, §15.3), and the provider answer table."""

from __future__ import annotations

import json
import uuid
from datetime import UTC, datetime

import pytest

from workers.providers.apns_payload import (
    APNS_ID_NAMESPACE,
    apns_id,
    build_payload,
    build_request,
    is_valid_token,
)
from workers.providers.fcm_payload import build_message, ttl_for
from workers.providers.rejections import Verdict, classify_apns, classify_fcm

TOKEN = "ab" * 32


def test_apns_payload_matches_the_push_adapter_spec_example() -> None:
    data = {
        "alert": "alert", "title": "title", "badge": 100, "sound": "test", "content-available": 1,
        "mutable-content": 1, "category": "INVITE_CATEGORY", "threadId": "a-thread-id", "key": "value",
    }  # fmt: skip
    assert build_payload(data) == {
        "aps": {
            "alert": {"body": "alert", "title": "title"}, "badge": 100, "sound": "test",
            "content-available": 1, "mutable-content": 1, "category": "INVITE_CATEGORY",
            "thread-id": "a-thread-id",
        },
        "key": "value",
    }  # fmt: skip


@pytest.mark.parametrize(
    ("data", "aps", "extra"),
    [
        ({"alert": {"loc-key": "K"}, "title": "T"}, {"alert": {"loc-key": "K", "title": "T"}}, {}),
        ({"title": "only"}, {"alert": {"title": "only"}}, {}),
        ({"badge": "Increment", "alert": "a"}, {"alert": "a"}, {}),
        ({"content-available": True, "mutable-content": "1"}, {}, {}),
        ({"alert": "a", "aps": {"sound": "x", "alert": "b"}}, {"alert": "b", "sound": "x"}, {}),
        (
            {"targetContentIdentifier": "t", "interruptionLevel": "passive"},
            {"target-content-id": "t", "interruption-level": "passive"},
            {},
        ),
        (
            {
                "alert": "a",
                "uri": "x://y",
                "push_type": "alert",
                "collapseId": "c",
                "expiry": 5,
                "id": "i",
                "topic": "t",
                "priority": 5,
                "expiration_time": 1,
            },
            {"alert": "a"},
            {"uri": "x://y"},
        ),
    ],
)
def test_apns_payload_keys(data: dict[str, object], aps: dict[str, object], extra: dict[str, object]) -> None:
    assert build_payload(data) == {"aps": aps, **extra}


def test_apns_headers_take_data_then_top_level_then_snake_case_data() -> None:
    request = build_request(
        {"alert": "a", "collapseId": "camel", "collapse_id": "snake", "pushType": "voip"},
        {"collapse_id": "top", "push_type": "alert", "priority": 5},
        push_id="P1", token=TOKEN, topic="com.example.app", expiry_ms=1_795_630_607_723.0,
    )  # fmt: skip
    assert request.headers == {
        "apns-topic": "com.example.app.voip", "apns-push-type": "voip", "apns-priority": "5",
        "apns-id": apns_id("P1", TOKEN), "apns-expiration": "1795630608", "apns-collapse-id": "camel",
    }  # fmt: skip
    assert json.loads(request.body) == {"aps": {"alert": "a"}}
    fallback = build_request(
        {"alert": "a", "collapse_id": "snake"}, {}, push_id="P1", token=TOKEN, topic="t", expiry_ms=None
    )
    assert fallback.headers["apns-collapse-id"] == "snake"
    assert "apns-expiration" not in fallback.headers
    assert fallback.headers["apns-priority"] == "10"


def test_a_silent_push_is_background_with_priority_5() -> None:
    request = build_request(
        {"content-available": 1, "key": "v"}, {"priority": 10}, push_id="P", token=TOKEN, topic="t",
        expiry_ms=None,
    )  # fmt: skip
    assert (request.headers["apns-push-type"], request.headers["apns-priority"]) == ("background", "5")


def test_apns_id_is_a_stable_uuid_per_push_and_token() -> None:
    first = apns_id("P1", TOKEN)
    assert first == apns_id("P1", TOKEN) != apns_id("P2", TOKEN)
    assert len(first) == 36 and first == first.lower()
    for push_id, token in [("P1", TOKEN), ("aB3dE5gH7j", "f" * 64), ("x", "")]:  # UUIDv5, as documented
        assert apns_id(push_id, token) == str(uuid.uuid5(APNS_ID_NAMESPACE, f"{push_id}:{token}"))


@pytest.mark.parametrize(("token", "valid"), [(TOKEN, True), ("AB" * 40, True), ("abc", False), ("", False),
                                              ("zz" * 32, False)])  # fmt: skip
def test_token_format(token: str, valid: bool) -> None:
    assert is_valid_token(token) is valid


def test_fcm_message_is_the_parse_android_sdk_shape() -> None:
    sent_at = datetime(2026, 11, 25, 17, 16, 46, 630_000, tzinfo=UTC)
    data = {"alert": "a", "title": "t", "uri": "x", "badge": 3, "content-available": 1, "priority": 1}
    message = build_message(
        data, {"collapse_id": "news"}, token="tok", push_id="Xy12Ab34Cd", sent_at=sent_at,
        expiry_ms=sent_at.timestamp() * 1000 + 3_600_500,
    )  # fmt: skip
    assert message == {
        "token": "tok",
        "android": {
            "priority": "HIGH",
            "data": {"push_id": "Xy12Ab34Cd", "time": "2026-11-25T17:16:46.630Z",
                     "data": '{"alert":"a","title":"t","uri":"x"}'},
            "ttl": "3600s",
            "collapse_key": "news",
        },
    }  # fmt: skip


def test_fcm_notification_block_and_raw_payload() -> None:
    sent_at = datetime(2026, 1, 1, tzinfo=UTC)
    with_block = build_message({"alert": "a"}, {}, token="t", push_id="p", sent_at=sent_at, expiry_ms=None,
                               notification={"title": "App"})  # fmt: skip
    assert with_block["android"]["notification"] == {"title": "App"}
    assert "ttl" not in with_block["android"]
    raw = build_message({"alert": "a"}, {"rawPayload": {"data": {"k": "v"}}}, token="t", push_id="p",
                        sent_at=sent_at, expiry_ms=None)  # fmt: skip
    assert raw == {"data": {"k": "v"}, "token": "t"}


@pytest.mark.parametrize(("expiry_ms", "ttl"), [(None, None), (500.0, "0s"), (1_000_000 + 61_900, "61s"),
                                                (1_000_000 + 30e9, "2419200s")])  # fmt: skip
def test_fcm_ttl_is_seconds_left_clamped(expiry_ms: float | None, ttl: str | None) -> None:
    assert ttl_for(expiry_ms, 1_000_000) == ttl


@pytest.mark.parametrize(
    ("status", "reason", "verdict"),
    [(200, None, Verdict.SENT), (410, "Unregistered", Verdict.DEAD_TOKEN),
     (400, "BadDeviceToken", Verdict.SUSPECT_TOKEN), (400, "DeviceTokenNotForTopic", Verdict.FAILED),
     (400, "TopicDisallowed", Verdict.FAILED), (413, "PayloadTooLarge", Verdict.FAILED),
     (403, "InvalidProviderToken", Verdict.CREDENTIAL), (403, "BadCertificate", Verdict.CREDENTIAL),
     (403, "ExpiredProviderToken", Verdict.REFRESH), (429, "TooManyRequests", Verdict.TRANSIENT),
     (500, "InternalServerError", Verdict.TRANSIENT), (503, "Shutdown", Verdict.TRANSIENT),
     (400, "IdleTimeout", Verdict.TRANSIENT), (502, None, Verdict.TRANSIENT), (400, "NewReason", Verdict.FAILED)],
)  # fmt: skip
def test_apns_answers(status: int, reason: str | None, verdict: Verdict) -> None:
    assert classify_apns(status, reason).verdict is verdict


@pytest.mark.parametrize(
    ("status", "code", "message", "verdict"),
    [(200, None, "", Verdict.SENT), (404, "UNREGISTERED", "", Verdict.DEAD_TOKEN),
     (403, "SENDER_ID_MISMATCH", "", Verdict.DEAD_TOKEN),
     (400, "INVALID_ARGUMENT", "The registration token is not a valid FCM registration token", Verdict.DEAD_TOKEN),
     (400, "INVALID_ARGUMENT", "Invalid value at 'message.data'", Verdict.FAILED),
     (401, "THIRD_PARTY_AUTH_ERROR", "", Verdict.CREDENTIAL), (401, None, "", Verdict.REFRESH),
     (403, None, "", Verdict.CREDENTIAL), (503, "UNAVAILABLE", "", Verdict.TRANSIENT),
     (500, "INTERNAL", "", Verdict.TRANSIENT)],
)  # fmt: skip
def test_fcm_answers(status: int, code: str | None, message: str, verdict: Verdict) -> None:
    assert classify_fcm(status, code, message).verdict is verdict


def test_quota_exceeded_waits_at_least_a_minute_and_retry_after_is_kept() -> None:
    assert classify_fcm(429, "QUOTA_EXCEEDED", "", 5.0).retry_after_s == 60.0
    assert classify_fcm(503, "UNAVAILABLE", "", 7.0).retry_after_s == 7.0
    assert classify_fcm(404, "UNREGISTERED", "", 7.0).retry_after_s is None
