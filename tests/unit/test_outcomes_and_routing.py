"""Transport routing (contract §15.1), unit tallies, badge rules (§10) and device rows."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from pushgw.messages import Device
from workers.badge import BadgeError, BadgeRule, badge_rule, receives_badge
from workers.devices import to_device
from workers.outcomes import Failed, Sent, Tally, utc_offset_key
from workers.planner import plan_key
from workers.providers.provider import APNS, FCM, PPNS, UNSUPPORTED, transport_for
from workers.scheduler import parse_push_time, zone_groups


@pytest.mark.parametrize(
    ("device_type", "push_type", "transport"),
    [
        ("ios", None, APNS), ("osx", None, APNS), ("tvos", None, APNS), ("watchos", None, APNS),
        ("android", None, FCM), ("android", "gcm", FCM), ("android", "fcm", FCM), ("fcm", None, FCM),
        ("android", "ppns", PPNS), ("embedded", None, PPNS), ("web", None, UNSUPPORTED),
        ("expo", None, UNSUPPORTED), ("winrt", None, UNSUPPORTED), ("android", "none", UNSUPPORTED),
    ],
)  # fmt: skip
def test_transport_table(device_type: str, push_type: str | None, transport: str) -> None:
    assert transport_for(device_type, push_type) == transport


def device(device_type: str = "ios", **fields: object) -> Device:
    return Device(
        object_id="x", device_type=device_type, transport=transport_for(device_type, None), **fields
    )  # type: ignore[arg-type]


def test_tally_produces_parse_counters_and_our_reasons() -> None:
    tally = Tally()
    for outcome in (Sent(device("ios")), Sent(device("android")), Failed(device("web"), "unsupported")):
        tally.add(outcome)
    assert tally.increments() == {
        "numSent": 2, "numFailed": 1, "sentPerType.ios": 1, "sentPerType.android": 1,
        "failedPerType.web": 1, "failedPerReason.unsupported": 1,
    }  # fmt: skip
    assert tally.increments("5.5")["sentPerUTCOffset.5.5"] == 2
    assert Tally().increments() == {"numSent": 0}


def test_utc_offset_keys_are_hours() -> None:
    assert (utc_offset_key(60), utc_offset_key(-300), utc_offset_key(330), utc_offset_key(None)) == (
        "1",
        "-5",
        "5.5",
        None,
    )


@pytest.mark.parametrize(
    ("badge", "rule"),
    [("Increment", BadgeRule(increment=1)), ("increment", BadgeRule(increment=1)),
     ({"__op": "Increment", "amount": 3}, BadgeRule(increment=3)), (7, BadgeRule(set_to=7)),
     (0, BadgeRule()), (None, BadgeRule())],
)  # fmt: skip
def test_badge_rules(badge: object, rule: BadgeRule) -> None:
    assert badge_rule({"badge": badge}) == rule


def test_badge_values_of_the_wrong_type_fail_like_parse() -> None:
    with pytest.raises(BadgeError) as wrong_type:
        badge_rule({"badge": "5"})
    assert wrong_type.value.code == 111
    with pytest.raises(BadgeError) as string_amount:
        badge_rule({"badge": {"__op": "Increment", "amount": "3"}})
    assert (string_amount.value.code, string_amount.value.message) == (
        107,
        "incrementing must provide a number",
    )


def test_only_token_holders_receive_badges() -> None:
    assert receives_badge(device("ios", device_token="t"), None)
    assert not receives_badge(device("embedded"), None)
    assert not receives_badge(device("android", device_token="t"), ["ios"])


def test_token_transport_without_token_is_skipped() -> None:
    assert to_device({"_id": "a", "deviceType": "android", "deviceToken": ""}) is None
    assert to_device({"_id": "a", "deviceType": "ios"}) is None
    row = to_device({"_id": "a", "deviceType": "embedded", "installationId": "i", "badge": True})
    assert row is not None and (row.transport, row.installation_id, row.badge) == (PPNS, "i", None)


def test_push_time_text_round_trip() -> None:
    assert parse_push_time("2030-01-01T10:00:00.000Z") == (datetime(2030, 1, 1, 10, tzinfo=UTC), False)
    assert parse_push_time("2030-01-01T10:00:00.000") == (datetime(2030, 1, 1, 10), True)


def test_zone_groups_follow_daylight_saving() -> None:
    january, july = zone_groups(datetime(2030, 1, 15, 10)), zone_groups(datetime(2030, 7, 15, 10))
    assert "Europe/Paris" in january[60] and "Europe/Paris" in july[120]
    assert "Asia/Tokyo" in january[540] and "Asia/Tokyo" in july[540]
    assert min(january) == -720 and max(january) == 840


def test_plan_keys() -> None:
    from pushgw.messages import PlanPush

    base = PlanPush(app_id="a", push_id="p", where={}, accepted_at=datetime.now(UTC))
    assert plan_key(base) == "all"
    assert plan_key(base.model_copy(update={"utc_offset_min": -300})) == "utc-300"


def test_narrow_audiences_use_their_index_broad_ones_the_id_index() -> None:
    from workers.planner import pins_indexed_field

    indexed = ["_p_user", "installationId"]
    assert pins_indexed_field(
        {"$and": [{"_p_user": "_User$a"}, {"$or": [{"deviceToken": {"$exists": True}}]}]}, indexed
    )
    assert pins_indexed_field({"installationId": {"$in": ["a", "b"]}}, indexed)
    assert not pins_indexed_field({"$and": [{"channels": {"$in": ["news"]}}, {"$or": []}]}, indexed)
    assert not pins_indexed_field({"_p_user": {"$exists": True}}, indexed)
    assert not pins_indexed_field({"$or": [{"_p_user": "_User$a"}, {"badge": 1}]}, indexed)
