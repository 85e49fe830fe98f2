"""Intake → RabbitMQ → worker → recording provider → `_PushStatus`, on real SecantusDB and RabbitMQ."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from typing import Any

import pytest

from pushgw.clock import SystemClock
from pushgw.messages import Device, SendBatch, parse_work_item
from pushgw.mongo import create_client
from pushgw.push_status import COLLECTION, StatusStore
from pushgw.settings import Settings
from tests.fixtures.fleet import RunningWorker
from tests.fixtures.gateway import RunningGateway, SettingsFactory, app_config
from tests.fixtures.parse_data import installation, seed_schema, user
from tests.fixtures.rabbit import RabbitAdmin
from tests.fixtures.waiting import until
from workers.devices import split_rows
from workers.outcomes import Sent, Tally

MASTER = {
    "X-Parse-Application-Id": "app1",
    "X-Parse-Master-Key": "master1",
    "Content-Type": "application/json",
}
FLEET = {"batch_size": 3, "delay_tiers_s": [1, 2], "requeue_delay_s": 0.1, "scheduler_interval_s": 0.2}
RECORD_ALL = {"transports": ["apns", "fcm", "ppns"]}


def send(gateway: RunningGateway, body: dict[str, Any]) -> str:
    response = gateway.client().post("/parse/push", content=json.dumps(body), headers=MASTER)
    assert response.status_code == 200, response.text
    push_id: str = response.headers["x-parse-push-status-id"]
    return push_id


def two_unit_push(
    make_settings: SettingsFactory,
    gateway_factory: Callable[[Settings], RunningGateway],
    worker_factory: Callable[..., RunningWorker],
    mongo: Any,
    db_name: str,
) -> str:
    """Five iOS installations, a gateway and a worker with batch_size 3, one push to all: two send units.
    Returns the push id once the push is `succeeded`."""
    mongo[db_name]["_Installation"].insert_many([installation("ios") for _ in range(5)])
    settings = make_settings(worker=FLEET, recording=RECORD_ALL)
    gateway, _ = gateway_factory(settings), worker_factory(settings)
    push_id = send(gateway, {"where": {}, "data": {"alert": "x"}})
    assert final_status(mongo, db_name, push_id)["status"] == "succeeded"
    return push_id


def final_status(mongo: Any, db_name: str, push_id: str, timeout_s: float = 30) -> dict[str, Any]:
    def final() -> dict[str, Any] | None:
        row: dict[str, Any] | None = mongo[db_name]["_PushStatus"].find_one({"_id": push_id})
        return row if row and row["status"] in ("succeeded", "failed") else None

    return until(final, timeout_s=timeout_s, what=f"push {push_id} to finish")


@pytest.fixture
def fleet(
    make_settings: SettingsFactory,
    gateway_factory: Callable[[Settings], RunningGateway],
    worker_factory: Callable[..., RunningWorker],
) -> Callable[..., tuple[RunningGateway, RunningWorker, Settings]]:
    def start(
        apps: list[dict[str, Any]] | None = None, **sections: Any
    ) -> tuple[RunningGateway, RunningWorker, Settings]:
        sections.setdefault("worker", FLEET)
        sections.setdefault("recording", RECORD_ALL)
        settings = make_settings(apps, **sections)
        return gateway_factory(settings), worker_factory(settings), settings

    return start


def test_channels_push_reaches_every_transport_and_counts_exactly(
    fleet: Any, mongo: Any, db_name: str
) -> None:
    database = mongo[db_name]
    seed_schema(database)
    devices = [
        installation("ios"), installation("ios"), installation("osx"), installation("android"),
        installation("fcm"), installation("embedded"), installation("android", pushType="ppns"),
        installation("web", deviceToken="sub"), installation("winrt", deviceToken="uri"),
        installation("android", deviceToken=None), installation("ios", channels=["other"]),
    ]  # fmt: skip
    database["_Installation"].insert_many(devices)
    gateway, worker, _ = fleet()
    push_id = send(gateway, {"channels": ["news"], "data": {"alert": "hi"}})
    row = final_status(mongo, db_name, push_id)
    assert row["status"] == "succeeded"
    assert (row["numSent"], row["numFailed"]) == (7, 2)
    assert row["sentPerType"] == {"ios": 2, "osx": 1, "android": 2, "fcm": 1, "embedded": 1}
    assert row["failedPerType"] == {"web": 1, "winrt": 1}
    assert row["failedPerReason"] == {"unsupported": 2}
    delivered = worker.delivered(push_id)
    assert sorted(delivered) == sorted(d["_id"] for d in devices[:7])
    assert len(delivered) == len(set(delivered))
    assert "units" not in row["pushgw"]


@pytest.mark.parametrize("unit_rows", [True, False], ids=["rows", "devices"])
def test_a_unit_of_tokenless_rows_is_counted_done_and_reaches_nobody(
    fleet: Any, mongo: Any, db_name: str, rabbit: RabbitAdmin, unit_rows: bool
) -> None:
    """Units carry raw rows and the sender decides which reach a device, or (`unit_rows = false`, for workers
    of older builds) the planner sends devices. The first unit (3 rows, `_id` order) reaches nobody, and
    the push must still end, with only the two token holders counted."""
    tokenless = [installation("android", deviceToken=None) for _ in range(3)]
    holders = [installation("ios"), installation("android")]
    mongo[db_name]["_Installation"].insert_many(tokenless + holders)
    gateway, worker, _ = fleet(worker={**FLEET, "unit_rows": unit_rows})
    tap = rabbit.tap("send")  # a copy of every unit the planner publishes
    push_id = send(gateway, {"channels": ["news"], "data": {"alert": "hi"}})
    row = final_status(mongo, db_name, push_id)
    assert (row["status"], row["numSent"], row.get("numFailed", 0)) == ("succeeded", 2, 0)
    assert row["sentPerType"] == {"ios": 1, "android": 1}
    assert sorted(worker.delivered(push_id)) == sorted(device["_id"] for device in holders)
    bodies = [message.body for message in rabbit.take_all(tap)]
    units = [parse_work_item(body) for body in bodies]
    assert all(isinstance(unit, SendBatch) for unit in units)
    if unit_rows:  # both units, as rows: 3 tokenless, then the 2 holders
        assert [(unit.first_id, unit.devices, len(split_rows(unit.rows or b""))) for unit in units] == [
            (tokenless[0]["_id"], [], 3), (holders[0]["_id"], [], 2),
        ]  # fmt: skip
    else:  # what builds before rows read: one JSON document of devices, no unit for the rows that reach nobody
        assert [[device["object_id"] for device in json.loads(body)["devices"]] for body in bodies] == [
            [holder["_id"] for holder in holders]
        ]
        assert all("rows" not in json.loads(body) for body in bodies)


def test_provider_not_configured_is_counted_failed(fleet: Any, mongo: Any, db_name: str) -> None:
    database = mongo[db_name]
    database["_Installation"].insert_many([installation("ios"), installation("android")])
    gateway, _, _ = fleet(recording={"transports": ["apns"]})
    row = final_status(mongo, db_name, send(gateway, {"where": {}, "data": {"alert": "x"}}))
    assert (row["status"], row["numSent"], row["numFailed"]) == ("succeeded", 1, 1)
    assert row["failedPerReason"] == {"provider-not-configured": 1}


def test_empty_audience_succeeds_with_nothing_sent(fleet: Any, mongo: Any, db_name: str) -> None:
    gateway, _, _ = fleet()
    row = final_status(mongo, db_name, send(gateway, {"channels": [], "data": {"alert": "x"}}))
    assert (row["status"], row["numSent"]) == ("succeeded", 0)
    assert "numFailed" not in row


def test_unknown_operator_fails_the_push_with_107(fleet: Any, mongo: Any, db_name: str) -> None:
    gateway, _, _ = fleet()
    row = final_status(mongo, db_name, send(gateway, {"where": {"deviceType": {"$foo": 1}}}))
    assert row["status"] == "failed"
    assert row["errorMessage"] == {"code": 107, "message": "bad constraint: $foo"}
    bad_in = final_status(mongo, db_name, send(gateway, {"channels": "news"}))
    assert (bad_in["status"], bad_in["errorMessage"]["code"]) == ("failed", 107)


def test_pointer_and_in_query_audiences(fleet: Any, mongo: Any, db_name: str) -> None:
    database = mongo[db_name]
    seed_schema(database)
    alice, bob = user("alice"), user("bob")
    database["_User"].insert_many([alice, bob])
    to_alice, to_bob = installation("ios", user=alice["_id"]), installation("android", user=bob["_id"])
    database["_Installation"].insert_many([to_alice, to_bob, installation("ios")])
    gateway, worker, _ = fleet()
    pointer = {"user": {"__type": "Pointer", "className": "_User", "objectId": alice["_id"]}}
    first = send(gateway, {"where": pointer, "data": {"alert": "a"}})
    second = send(
        gateway, {"where": {"user": {"$inQuery": {"className": "_User", "where": {"username": "bob"}}}}}
    )
    assert final_status(mongo, db_name, first)["numSent"] == 1
    assert final_status(mongo, db_name, second)["numSent"] == 1
    assert worker.delivered(first) == [to_alice["_id"]]
    assert worker.delivered(second) == [to_bob["_id"]]


def test_badge_increment_gives_each_device_its_own_value_once(fleet: Any, mongo: Any, db_name: str) -> None:
    database = mongo[db_name]
    devices = [
        installation("ios", badge=3),
        installation("ios"),
        installation("android", badge=1),
        installation("embedded"),
    ]
    database["_Installation"].insert_many(devices)
    gateway, worker, _ = fleet()
    push_id = send(gateway, {"where": {}, "data": {"alert": "hi", "badge": "Increment"}})
    assert final_status(mongo, db_name, push_id)["numSent"] == 4
    badges = {d["_id"]: d.get("badge") for d in database["_Installation"].find()}
    assert badges == {
        devices[0]["_id"]: 4,
        devices[1]["_id"]: 1,
        devices[2]["_id"]: 2,
        devices[3]["_id"]: None,
    }
    sent = worker.payloads(push_id)
    assert sent[devices[0]["_id"]]["badge"] == 4 and sent[devices[1]["_id"]]["badge"] == 1
    assert "badge" not in sent[devices[3]["_id"]]  # no token, no badge: "Increment" is not a value
    amount = send(
        gateway, {"where": {"deviceType": "ios"}, "data": {"badge": {"__op": "Increment", "amount": 5}}}
    )
    final_status(mongo, db_name, amount)
    assert database["_Installation"].find_one({"_id": devices[0]["_id"]})["badge"] == 9


def test_invalid_badge_types_fail_the_push_like_parse(fleet: Any, mongo: Any, db_name: str) -> None:
    mongo[db_name]["_Installation"].insert_one(installation("ios"))
    gateway, _, _ = fleet()
    row = final_status(mongo, db_name, send(gateway, {"where": {}, "data": {"badge": "5"}}))
    assert (row["status"], row["errorMessage"]["code"]) == ("failed", 111)
    row = final_status(
        mongo, db_name, send(gateway, {"where": {}, "data": {"badge": {"__op": "Increment", "amount": "3"}}})
    )
    assert row["errorMessage"] == {"code": 107, "message": "incrementing must provide a number"}


def test_localized_alerts_by_locale_prefix(fleet: Any, mongo: Any, db_name: str) -> None:
    devices = [installation("ios", localeIdentifier="fr-CA"), installation("android", localeIdentifier="fr-FR"),
               installation("ios", localeIdentifier="en-US"), installation("ios")]  # fmt: skip
    mongo[db_name]["_Installation"].insert_many(devices)
    gateway, worker, _ = fleet()
    push_id = send(
        gateway, {"where": {}, "data": {"alert": "Hello", "alert-fr": "Bonjour", "title-fr": "Titre"}}
    )
    final_status(mongo, db_name, push_id)
    sent = worker.payloads(push_id)
    assert sent[devices[0]["_id"]] == {"alert": "Bonjour", "title": "Titre"}
    assert sent[devices[1]["_id"]] == {"alert": "Bonjour", "title": "Titre"}
    assert sent[devices[2]["_id"]] == {"alert": "Hello"}
    assert sent[devices[3]["_id"]] == {"alert": "Hello"}


def test_expired_push_is_counted_failed_not_sent(fleet: Any, mongo: Any, db_name: str) -> None:
    mongo[db_name]["_Installation"].insert_many([installation("ios"), installation("android")])
    gateway, worker, _ = fleet()
    push_id = send(gateway, {"where": {}, "data": {"alert": "late"}, "expiration_time": 1000000000})
    row = final_status(mongo, db_name, push_id)
    assert (row["numSent"], row["numFailed"], row["failedPerReason"]) == (0, 2, {"expired": 2})
    assert worker.delivered(push_id) == []


def test_transient_failures_are_retried_then_given_up(fleet: Any, mongo: Any, db_name: str) -> None:
    flaky, good = installation("ios", deviceToken="flaky-1"), installation("ios")
    mongo[db_name]["_Installation"].insert_many([flaky, good])
    recording = {**RECORD_ALL, "fail_tokens": {"flaky-": "deferred:ServiceUnavailable:1"}}
    gateway, worker, _ = fleet(recording=recording, worker={**FLEET, "max_attempts": 3})
    push_id = send(gateway, {"where": {}, "data": {"alert": "x"}})
    row = final_status(mongo, db_name, push_id, timeout_s=60)
    assert (row["status"], row["numSent"], row["numFailed"]) == ("succeeded", 1, 1)
    assert row["failedPerReason"] == {"retries-exhausted": 1}
    assert worker.delivered(push_id) == [good["_id"]]


def test_a_unit_saves_its_outcomes_before_it_hands_deferred_devices_to_a_retry_unit(
    fleet: Any, rabbit: RabbitAdmin, mongo: Any, db_name: str
) -> None:
    """Once a retry unit is queued, the outcomes of the unit it came from are saved, the deferred device's
    included. A redelivery of that unit before its record lands (a worker dying in between) then leaves the
    device to the retry unit instead of sending it again, which, had the device's service recovered, would
    count it twice: once by the redelivered unit, once by the retry unit."""
    flaky, good = installation("ios", deviceToken="flaky-1"), installation("ios")
    mongo[db_name]["_Installation"].insert_many([flaky, good])
    recording = {**RECORD_ALL, "fail_tokens": {"flaky-": "deferred:ServiceUnavailable"}}
    gateway, _, _ = fleet(recording=recording, worker={**FLEET, "delay_tiers_s": [30]})
    push_id = send(gateway, {"where": {}, "data": {"alert": "x"}})
    until(lambda: rabbit.count("delay.30s") == 1, what="the retry unit to wait in its delay queue")
    [progress] = list(mongo[db_name]["pushgw_progress"].find({"_id": {"$regex": f"^{push_id}:"}}))
    assert progress["outcomes"] == {good["_id"]: "s", flaky["_id"]: "d:ServiceUnavailable:"}


def test_ten_thousand_installations_shared_by_two_workers_count_exactly(
    make_settings: SettingsFactory, gateway_factory: Callable[[Settings], RunningGateway],
    worker_factory: Callable[..., RunningWorker], mongo: Any, db_name: str,
) -> None:  # fmt: skip
    devices = [installation("ios" if n % 3 else "android") for n in range(10_000)]
    mongo[db_name]["_Installation"].insert_many(devices)
    settings = make_settings(worker={**FLEET, "batch_size": 250}, recording=RECORD_ALL)
    gateway = gateway_factory(settings)
    first, second = worker_factory(settings), worker_factory(settings)
    push_id = send(gateway, {"where": {}, "data": {"alert": "all"}})
    row = final_status(mongo, db_name, push_id, timeout_s=120)
    assert (row["status"], row["numSent"]) == ("succeeded", 10_000)
    assert row["sentPerType"] == {"ios": 6666, "android": 3334}
    delivered = first.delivered(push_id) + second.delivered(push_id)
    assert len(delivered) == 10_000 == len(set(delivered))
    assert first.delivered(push_id) and second.delivered(push_id)


def test_two_apps_each_reach_only_their_own_installations(fleet: Any, mongo: Any, db_name: str) -> None:
    mongo[db_name]["_Installation"].insert_one(installation("ios"))
    mongo[f"{db_name}_1"]["_Installation"].insert_many([installation("ios"), installation("ios")])
    gateway, _, _ = fleet([app_config("app1", "master1"), app_config("app2", "master2")])
    other = {"X-Parse-Application-Id": "app2", "X-Parse-Master-Key": "master2"}
    response = gateway.client().post("/parse/push", content=json.dumps({"where": {}}), headers=other)
    assert final_status(mongo, f"{db_name}_1", response.headers["x-parse-push-status-id"])["numSent"] == 2
    assert final_status(mongo, db_name, send(gateway, {"where": {}}))["numSent"] == 1
    mongo.drop_database(f"{db_name}_1")


def status_writes(mongo: Any, db_name: str, push: Callable[[], str]) -> list[str]:
    """The `_PushStatus` writes (change stream operation types) of one push, until it is final."""
    with mongo[db_name]["_PushStatus"].watch() as stream:
        push_id = push()
        events: list[dict[str, Any]] = []

        def finished() -> bool:
            while (event := stream.try_next()) is not None:
                if event["documentKey"]["_id"] == push_id:
                    events.append(event)
            return any(
                e.get("updateDescription", {}).get("updatedFields", {}).get("status") == "succeeded"
                for e in events
            )

        until(finished, timeout_s=30, what=f"push {push_id} to succeed")
    return [event["operationType"] for event in events]


def test_a_one_batch_push_is_sent_by_its_planner_in_two_status_updates(
    fleet: Any, mongo: Any, db_name: str
) -> None:
    mongo[db_name]["_Installation"].insert_many([installation("ios"), installation("android")])
    gateway, worker, _ = fleet()
    push_ids: list[str] = []

    def push() -> str:
        push_ids.append(send(gateway, {"where": {}, "data": {"alert": "x", "badge": "Increment"}}))
        return push_ids[-1]

    # Claim, then plan done + unit counted + succeeded in one write (queued: plan, unit, finalize apart).
    assert status_writes(mongo, db_name, push) == ["insert", "update", "update"]
    row = final_status(mongo, db_name, push_ids[0])
    assert (row["numSent"], row["sentPerType"], row["pushgw"]["audience"]) == (2, {"ios": 1, "android": 1}, 2)
    assert "count" not in row and "units" not in row["pushgw"]
    assert sorted(
        worker.payloads(push_ids[0])[d["_id"]].get("badge") for d in mongo[db_name]["_Installation"].find()
    ) == [1, 1]

    worker.stop()
    gateway, _, _ = fleet(worker={**FLEET, "send_small_pushes_inline": False})
    assert len(status_writes(mongo, db_name, push)) > 3
    assert final_status(mongo, db_name, push_ids[1])["numSent"] == 2


def test_a_one_user_push_is_sent_before_it_is_claimed_in_one_status_update(
    fleet: Any, mongo: Any, db_name: str
) -> None:
    database = mongo[db_name]
    seed_schema(database)
    alice = user("alice")
    database["_User"].insert_one(alice)
    phone, tablet = installation("ios", user=alice["_id"]), installation("android", user=alice["_id"])
    database["_Installation"].insert_many([phone, tablet, installation("ios")])
    gateway, worker, _ = fleet()
    pointer = {"user": {"__type": "Pointer", "className": "_User", "objectId": alice["_id"]}}
    push_ids: list[str] = []

    def push() -> str:
        push_ids.append(send(gateway, {"where": pointer, "data": {"alert": "x", "badge": "Increment"}}))
        return push_ids[-1]

    # pending → succeeded in one write: no `running` claim before the send (one lookup, one batch).
    assert status_writes(mongo, db_name, push) == ["insert", "update"]
    row = final_status(mongo, db_name, push_ids[0])
    assert (row["numSent"], row["sentPerType"]) == (2, {"ios": 1, "android": 1})
    assert row["pushgw"]["audience"] == row["pushgw"]["devices_done"] == 2
    assert sorted(worker.delivered(push_ids[0])) == sorted([phone["_id"], tablet["_id"]])
    assert [worker.payloads(push_ids[0])[device["_id"]].get("badge") for device in (phone, tablet)] == [1, 1]


def test_a_recorded_unit_delivered_again_finishes_its_push(
    make_settings: SettingsFactory,
    gateway_factory: Callable[[Settings], RunningGateway],
    worker_factory: Callable[..., RunningWorker],
    rabbit: RabbitAdmin,
    mongo: Any,
    db_name: str,
) -> None:
    """What a worker leaves when it stops between recording a push's last unit and finalizing the push (its
    handler cancelled by a broker blip, or kill -9): the plan done, every device counted, the push `running`,
    the unit still queued. Its redelivery must finish the push, and send nothing again."""
    row = installation("ios")
    mongo[db_name]["_Installation"].insert_one(row)
    settings = make_settings(worker=FLEET, recording=RECORD_ALL)
    push_id = send(gateway_factory(settings), {"where": {}, "data": {"alert": "x"}})
    assert len(rabbit.take_all("plan")) == 1  # no worker yet: planned below, by hand
    device = Device(row["_id"], "ios", "apns", row["installationId"], row["deviceToken"])
    unit = SendBatch(
        app_id="app1",
        push_id=push_id,
        unit="all-b0",
        first_id=row["_id"],
        last_id=row["_id"],
        devices=[device],
    )

    async def plan_and_record() -> None:
        client = create_client(settings.mongo.uri or "", settings.mongo.timeout_ms)
        try:
            store = StatusStore(client[db_name][COLLECTION], SystemClock())
            assert await store.claim_plan(push_id, "all", "crashed", 300) == {}
            assert await store.finish_plan(push_id, "all", "crashed", 1)
            tally = Tally()
            tally.add(Sent(device))
            assert await store.record_unit(push_id, unit.unit, tally.increments(), 1)
        finally:
            await client.close()

    asyncio.run(plan_and_record())
    assert mongo[db_name]["_PushStatus"].find_one({"_id": push_id})["status"] == "running"
    rabbit.publish_to_queue("send", [unit.to_bytes()])
    worker = worker_factory(settings)
    status = final_status(mongo, db_name, push_id, timeout_s=10)
    assert (status["status"], status["numSent"], status.get("numFailed", 0)) == ("succeeded", 1, 0)
    assert worker.delivered(push_id) == []
