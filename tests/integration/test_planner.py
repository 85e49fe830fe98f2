"""The planner against Parse-shaped `_Installation` data: every operator selects what Parse selects; resume."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import httpx2
import pytest

from pushgw.settings import Settings
from tests.fixtures.fleet import RunningWorker
from tests.fixtures.gateway import RunningGateway, SettingsFactory
from tests.fixtures.parse_data import installation, seed_schema, user
from tests.fixtures.ports import free_port
from tests.fixtures.waiting import until
from tests.integration.test_fleet import FLEET, RECORD_ALL, final_status, send

ALICE, BOB = user("alice", email="alice@example.com"), user("bob")
PARIS = installation("ios", _id="LkZekF55aD", channels=["news", "sports"], timeZone="Europe/Paris",
                     localeIdentifier="fr-FR", badge=3, appVersion="1.0")  # fmt: skip
NEW_YORK = installation("android", _id="DIED88CjaD", channels=["news", "weather"], GCMSenderId="123456789",
                        timeZone="America/New_York", localeIdentifier="en-US",
                        _updated_at=datetime(2026, 11, 25, 17, 16, 46, 476000, tzinfo=UTC))  # fmt: skip
PRIVATE = installation("ios", _id="eYygiNDRhU", channels=["news"], user=ALICE["_id"], _wperm=[ALICE["_id"]],
                       _rperm=[ALICE["_id"]], _acl={ALICE["_id"]: {"w": True, "r": True}})  # fmt: skip
TOKENLESS = installation("android", _id="abIg79augO", channels=["news"], deviceToken=None)
CUSTOM = installation("ios", _id="nhVNlGvcdc", channels=[], customField={"nested": 1}, user=BOB["_id"],
                      lastSeen=datetime(2026, 1, 2, 3, 4, 5, 678000, tzinfo=UTC), badge=0)  # fmt: skip
DEVICE = installation("embedded", _id="EmbDev0001", channels=["news"], parseVersion="1.0.0")
EVERYONE = [PARIS, NEW_YORK, PRIVATE, TOKENLESS, CUSTOM, DEVICE]
WITH_TOKEN = {"LkZekF55aD", "DIED88CjaD", "eYygiNDRhU", "nhVNlGvcdc"}


def date(iso: str) -> dict[str, str]:
    return {"__type": "Date", "iso": iso}


WHERE_CASES: list[tuple[str, Any, set[str]]] = [
    ("equality", {"deviceType": "ios"}, {"LkZekF55aD", "eYygiNDRhU", "nhVNlGvcdc"}),
    ("scalar against array", {"channels": "sports"}, {"LkZekF55aD"}),
    ("array equality", {"channels": ["news", "weather"]}, {"DIED88CjaD"}),
    ("$in", {"deviceType": {"$in": ["android", "embedded"]}}, {"DIED88CjaD", "EmbDev0001"}),
    ("$nin", {"deviceType": {"$nin": ["ios"]}}, {"DIED88CjaD", "EmbDev0001"}),
    ("$all", {"channels": {"$all": ["news", "weather"]}}, {"DIED88CjaD"}),
    ("$exists", {"timeZone": {"$exists": True}}, {"LkZekF55aD", "DIED88CjaD"}),
    ("$ne", {"localeIdentifier": {"$ne": "fr-FR"}}, {"DIED88CjaD", "eYygiNDRhU", "nhVNlGvcdc", "EmbDev0001"}),
    ("$gt number", {"badge": {"$gt": 0}}, {"LkZekF55aD"}),
    ("$lte number", {"badge": {"$lte": 0}}, {"nhVNlGvcdc"}),
    ("$regex with options", {"localeIdentifier": {"$regex": "^EN", "$options": "i"}}, {"DIED88CjaD"}),
    ("$or", {"$or": [{"channels": "sports"}, {"badge": 0}]}, {"LkZekF55aD", "nhVNlGvcdc"}),
    ("$and", {"$and": [{"channels": "news"}, {"deviceType": "android"}]}, {"DIED88CjaD"}),
    ("$nor", {"$nor": [{"deviceType": "ios"}]}, {"DIED88CjaD", "EmbDev0001"}),
    ("objectId", {"objectId": "LkZekF55aD"}, {"LkZekF55aD"}),
    ("updatedAt Date", {"updatedAt": {"$gt": date("2026-11-25T17:16:46.440Z")}}, {"DIED88CjaD"}),
    ("createdAt ISO string", {"createdAt": {"$lt": "2030-01-01T00:00:00.000Z"}}, WITH_TOKEN | {"EmbDev0001"}),
    ("custom Date", {"lastSeen": {"$lt": date("2026-06-01T00:00:00.000Z")}}, {"nhVNlGvcdc"}),
    ("dotted object key", {"customField.nested": 1}, {"nhVNlGvcdc"}),
    ("pointer", {"user": {"__type": "Pointer", "className": "_User", "objectId": ALICE["_id"]}}, {"eYygiNDRhU"}),
    ("pointer $exists", {"user": {"$exists": True}}, {"eYygiNDRhU", "nhVNlGvcdc"}),
    ("$inQuery", {"user": {"$inQuery": {"className": "_User", "where": {"username": "alice"}}}}, {"eYygiNDRhU"}),
    ("$notInQuery", {"user": {"$notInQuery": {"className": "_User", "where": {"username": "alice"}}}},
     WITH_TOKEN - {"eYygiNDRhU"} | {"EmbDev0001"}),
    ("$select", {"localeIdentifier": {"$select": {"query": {"className": "_User", "where": {"username": "alice"}}, "key": "locale"}}},
     {"LkZekF55aD"}),
    ("$dontSelect", {"localeIdentifier": {"$dontSelect": {"query": {"className": "_User", "where": {}}, "key": "locale"}}},
     WITH_TOKEN - {"LkZekF55aD"} | {"EmbDev0001"}),
    # The tokenless Android row matches too, but a token transport without a token is skipped, as in Parse.
    ("explicit deviceToken drops the implicit rule", {"deviceToken": {"$exists": False}}, {"EmbDev0001"}),
    ("ignored limit/skip/order", {"channels": "news", "limit": 1, "skip": 5, "order": "-createdAt"},
     {"LkZekF55aD", "DIED88CjaD", "eYygiNDRhU", "EmbDev0001"}),
]  # fmt: skip


@pytest.fixture
def parse_fleet(
    make_settings: SettingsFactory, gateway_factory: Callable[[Settings], RunningGateway],
    worker_factory: Callable[..., RunningWorker], mongo: Any, db_name: str,
) -> tuple[RunningGateway, RunningWorker]:  # fmt: skip
    database = mongo[db_name]
    seed_schema(database)
    database["_User"].insert_many([{**ALICE, "locale": "fr-FR"}, {**BOB, "locale": "de-DE"}])
    database["_Installation"].insert_many([dict(document) for document in EVERYONE])
    settings = make_settings(worker=FLEET, recording=RECORD_ALL)
    return gateway_factory(settings), worker_factory(settings)


def test_where_operators_select_what_parse_selects(parse_fleet: Any, mongo: Any, db_name: str) -> None:
    gateway, worker = parse_fleet
    pushes = {
        name: send(gateway, {"where": where, "data": {"alert": name}}) for name, where, _ in WHERE_CASES
    }
    wrong = {}
    for name, _, expected in WHERE_CASES:
        row = final_status(mongo, db_name, pushes[name])
        got = set(worker.delivered(pushes[name]))
        if row["status"] != "succeeded" or got != expected:
            wrong[name] = (row["status"], sorted(got), sorted(expected), row.get("errorMessage"))
    assert wrong == {}


def test_channels_push_matches_parse_and_reaches_ppns_devices(
    parse_fleet: Any, mongo: Any, db_name: str
) -> None:
    gateway, worker = parse_fleet
    push_id = send(gateway, {"channels": ["news"], "data": {"alert": "hi"}})
    row = final_status(mongo, db_name, push_id)
    assert set(worker.delivered(push_id)) == {"LkZekF55aD", "DIED88CjaD", "eYygiNDRhU", "EmbDev0001"}
    assert row["sentPerType"] == {"ios": 2, "android": 1, "embedded": 1}


@pytest.mark.parametrize(
    ("where", "code"),
    [
        ("abc", 102),
        ({"ACL": 1}, 102),
        ({"channels": {"$in": "x"}}, 107),
        ({"$or": {}}, 102),
        ({"badge": {"$regex": 5}}, 107),
    ],
)
def test_bad_queries_fail_with_parse_codes(
    parse_fleet: Any, mongo: Any, db_name: str, where: Any, code: int
) -> None:
    gateway, _ = parse_fleet
    row = final_status(mongo, db_name, send(gateway, {"where": where}))
    assert (row["status"], row["errorMessage"]["code"]) == ("failed", code)


def test_planner_resumes_after_the_last_published_range(
    make_settings: SettingsFactory, gateway_factory: Callable[[Settings], RunningGateway],
    worker_factory: Callable[..., RunningWorker], mongo: Any, db_name: str,
) -> None:  # fmt: skip
    devices = [installation("ios", _id=f"R{n:04d}") for n in range(10)]
    mongo[db_name]["_Installation"].insert_many(devices)
    settings = make_settings(worker=FLEET, recording=RECORD_ALL)
    gateway = gateway_factory(settings)
    push_id = send(gateway, {"where": {}, "data": {"alert": "resume"}})
    # A planner that published batches 0 and 1 (R0000-R0005) and then died, its lease expired:
    crashed = {
        "owner": "dead",
        "lease_until": datetime(2000, 1, 1, tzinfo=UTC),
        "last_id": "R0005",
        "next_index": 2,
        "devices": 6,
    }
    mongo[db_name]["_PushStatus"].update_one(
        {"_id": push_id},
        {"$set": {"status": "running", "pushgw.plans.all": crashed, "pushgw.plans_expected": 1,
                  "pushgw.audience": 0, "pushgw.devices_done": 0, "pushgw.plans_done": 0}},
    )  # fmt: skip
    worker = worker_factory(settings)
    until(
        lambda: (
            (mongo[db_name]["_PushStatus"].find_one({"_id": push_id}) or {}).get("pushgw", {}).get("audience")
            == 10
        )
    )
    until(lambda: sorted(worker.delivered(push_id)) == [f"R{n:04d}" for n in range(6, 10)])

    def units() -> list[str]:  # a unit is recorded just after its devices are delivered
        row = mongo[db_name]["_PushStatus"].find_one({"_id": push_id}) or {}
        return sorted(row.get("pushgw", {}).get("units", {}))

    until(lambda: units() == ["all-b2", "all-b3"], what="both resumed units recorded")
    row = mongo[db_name]["_PushStatus"].find_one({"_id": push_id})
    assert row["status"] == "running"  # batches 0 and 1 are still "in the queue" of this fiction


def test_worker_serves_prometheus_metrics(
    make_settings: SettingsFactory, gateway_factory: Callable[[Settings], RunningGateway],
    worker_factory: Callable[..., RunningWorker], mongo: Any, db_name: str,
) -> None:  # fmt: skip
    mongo[db_name]["_Installation"].insert_many([installation("ios"), installation("web", deviceToken="w")])
    port = free_port()
    settings = make_settings(worker={**FLEET, "metrics_port": port}, recording=RECORD_ALL)
    gateway, _ = gateway_factory(settings), worker_factory(settings)
    final_status(mongo, db_name, send(gateway, {"where": {}, "data": {"alert": "m"}}))
    with httpx2.Client() as client:
        metrics = client.get(f"http://127.0.0.1:{port}/metrics").text
    assert 'pushgw_devices_total{outcome="failed",reason="unsupported",transport="unsupported"}' in metrics
    assert 'pushgw_devices_total{outcome="sent",reason="",transport="apns"}' in metrics
    assert (
        "pushgw_batch_seconds_bucket" in metrics
        and 'pushgw_queue_lag_seconds_bucket{le="0.005",queue="send"}' in metrics
    )
