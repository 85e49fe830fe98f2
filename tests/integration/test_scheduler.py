"""Scheduled pushes start on time (absolute and per-time-zone local time), and cancel stops a push."""

from __future__ import annotations

import json
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

from pushgw.settings import Settings
from tests.fixtures.clock import SettableClock
from tests.fixtures.fleet import RunningWorker
from tests.fixtures.gateway import RunningGateway, SettingsFactory, app_config
from tests.fixtures.parse_data import installation, seed_schema, user
from tests.fixtures.processes import ProcessFactory
from tests.fixtures.waiting import until
from tests.integration.test_fleet import FLEET, RECORD_ALL, final_status, send

WorkerFactory = Callable[..., RunningWorker]
GatewayFactory = Callable[[Settings], RunningGateway]


def status_of(mongo: Any, db_name: str, push_id: str) -> dict[str, Any]:
    row: dict[str, Any] = mongo[db_name]["_PushStatus"].find_one({"_id": push_id})
    return row


def scheduled_settings(make_settings: SettingsFactory, **worker: Any) -> Settings:
    return make_settings([app_config(scheduled_push=True)], worker={**FLEET, **worker}, recording=RECORD_ALL)


def test_absolute_push_time_waits_then_starts_with_expiry_from_start(
    make_settings: SettingsFactory,
    gateway_factory: GatewayFactory,
    worker_factory: WorkerFactory,
    mongo: Any,
    db_name: str,
) -> None:
    mongo[db_name]["_Installation"].insert_many([installation("ios"), installation("android")])
    settings = scheduled_settings(make_settings)
    clock = SettableClock()
    gateway, worker = gateway_factory(settings), worker_factory(settings, clock)
    at = datetime.now(UTC) + timedelta(days=1)
    push_id = send(gateway, {"where": {}, "data": {"alert": "later"}, "push_time": at.isoformat().replace("+00:00", "Z"),
                             "expiration_interval": 3600})  # fmt: skip
    # A due push sent after it proves the scheduler has looked at the future one, and left it alone.
    marker = send(gateway, {"where": {}, "push_time": "2001-01-01T00:00:00Z"})
    assert final_status(mongo, db_name, marker)["status"] == "succeeded"
    assert status_of(mongo, db_name, push_id)["status"] == "scheduled"
    assert worker.delivered(push_id) == []
    clock.set(at + timedelta(seconds=1))
    row = final_status(mongo, db_name, push_id)
    assert (row["status"], row["numSent"]) == ("succeeded", 2)
    expiries = {record.expiry_ms for record in worker.recorder.deliveries if record.push_id == push_id}
    [expiry] = expiries
    assert abs(expiry - (clock.now().timestamp() + 3600) * 1000) < 10_000


def test_past_push_time_is_due_at_once(
    make_settings: SettingsFactory,
    gateway_factory: GatewayFactory,
    worker_factory: WorkerFactory,
    mongo: Any,
    db_name: str,
) -> None:
    mongo[db_name]["_Installation"].insert_one(installation("ios"))
    settings = scheduled_settings(make_settings)
    gateway, _ = gateway_factory(settings), worker_factory(settings)
    row = final_status(mongo, db_name, send(gateway, {"where": {}, "push_time": "2001-01-01T00:00:00Z"}))
    assert (row["status"], row["numSent"], row["pushTime"]) == ("succeeded", 1, "2001-01-01T00:00:00.000Z")


def test_a_scheduled_one_user_push_started_by_the_scheduler_reaches_each_device_once(
    make_settings: SettingsFactory,
    gateway_factory: GatewayFactory,
    worker_factory: WorkerFactory,
    mongo: Any,
    db_name: str,
) -> None:
    """The scheduler makes it `running` before the planner sees it: the planner sends it (one lookup, one
    batch), finds it no longer pending, claims it and records what it sent, without sending it again."""
    seed_schema(mongo[db_name])
    alice = user("alice")
    mongo[db_name]["_User"].insert_one(alice)
    phone, tablet = installation("ios", user=alice["_id"]), installation("android", user=alice["_id"])
    mongo[db_name]["_Installation"].insert_many([phone, tablet, installation("ios")])
    settings = scheduled_settings(make_settings)
    clock = SettableClock()
    gateway, worker = gateway_factory(settings), worker_factory(settings, clock)
    at = datetime.now(UTC) + timedelta(hours=1)
    where = {"user": {"__type": "Pointer", "className": "_User", "objectId": alice["_id"]}}
    push_id = send(
        gateway,
        {"where": where, "data": {"alert": "later"}, "push_time": at.isoformat().replace("+00:00", "Z")},
    )
    clock.set(at + timedelta(seconds=1))
    row = final_status(mongo, db_name, push_id)
    assert (row["status"], row["numSent"], row["sentPerType"]) == ("succeeded", 2, {"ios": 1, "android": 1})
    assert sorted(worker.delivered(push_id)) == sorted([phone["_id"], tablet["_id"]])


def test_local_time_push_reaches_each_zone_at_its_own_wall_clock(
    make_settings: SettingsFactory,
    gateway_factory: GatewayFactory,
    worker_factory: WorkerFactory,
    mongo: Any,
    db_name: str,
) -> None:
    tokyo, paris = (
        installation("ios", timeZone="Asia/Tokyo"),
        installation("android", timeZone="Europe/Paris"),
    )
    new_york, nowhere = installation("ios", timeZone="America/New_York"), installation("ios")
    mongo[db_name]["_Installation"].insert_many([tokyo, paris, new_york, nowhere])
    settings = scheduled_settings(make_settings)
    wall = datetime(2030, 1, 15, 10, 0)  # January: Tokyo +9, Paris +1, New York -5
    clock = SettableClock(start=wall.replace(tzinfo=UTC) - timedelta(hours=20))
    gateway, worker = gateway_factory(settings), worker_factory(settings, clock)
    push_id = send(gateway, {"where": {}, "data": {"alert": "10 am"}, "push_time": "2030-01-15T10:00:00"})
    assert status_of(mongo, db_name, push_id)["pushTime"] == "2030-01-15T10:00:00.000"

    clock.set(wall.replace(tzinfo=UTC) - timedelta(hours=9) + timedelta(seconds=1))
    until(lambda: worker.delivered(push_id) == [tokyo["_id"]], what="Tokyo at 10:00 local")
    assert status_of(mongo, db_name, push_id)["status"] == "running"
    clock.set(wall.replace(tzinfo=UTC) - timedelta(hours=1) + timedelta(seconds=1))
    until(
        lambda: sorted(worker.delivered(push_id)) == sorted([tokyo["_id"], paris["_id"]]),
        what="Paris at 10:00 local",
    )
    clock.set(wall.replace(tzinfo=UTC) + timedelta(hours=12, seconds=1))
    row = final_status(mongo, db_name, push_id, timeout_s=60)
    assert (row["status"], row["numSent"]) == ("succeeded", 3)
    assert row["sentPerUTCOffset"] == {"9": 1, "1": 1, "-5": 1}
    assert nowhere["_id"] not in worker.delivered(push_id)


def test_cancel_skips_the_remaining_work(
    make_settings: SettingsFactory, gateway_factory: GatewayFactory, worker_factory: WorkerFactory,
    pushgw_processes: ProcessFactory, mongo: Any, db_name: str, tmp_path: Any,
) -> None:  # fmt: skip
    slow = [installation("ios", deviceToken=f"slow-{n}") for n in range(3)]
    mongo[db_name]["_Installation"].insert_many([*slow, installation("ios")])
    recording = {**RECORD_ALL, "fail_tokens": {"slow-": "deferred:TooManyRequests:2"}}
    settings = make_settings(worker={**FLEET, "max_attempts": 10}, recording=recording)
    gateway, worker = gateway_factory(settings), worker_factory(settings)
    push_id = send(gateway, {"where": {}, "data": {"alert": "x"}})
    until(lambda: status_of(mongo, db_name, push_id).get("numSent") == 1, what="the first unit recorded")
    config = tmp_path / "cancel.toml"
    config.write_text(_toml(settings))
    result = pushgw_processes.run("push", "cancel", push_id, "--config", str(config))
    assert result.returncode == 0, result.stderr
    row = status_of(mongo, db_name, push_id)
    assert (row["status"], row["errorMessage"]) == ("failed", {"code": 1, "message": "cancelled"})
    again = pushgw_processes.run("push", "cancel", push_id, "--config", str(config))
    assert again.returncode == 1 and "already failed" in again.stderr
    status = pushgw_processes.run("push", "status", push_id, "--config", str(config))
    assert status.returncode == 1 and "cancelled" in status.stdout
    assert len(worker.delivered(push_id)) == 1


def _toml(settings: Settings) -> str:
    app = settings.apps[0]
    return (
        f'[mongo]\nuri = "{settings.mongo.uri}"\n[queue]\nurl = "{settings.queue.url}"\nprefix = "{settings.queue.prefix}"\n'
        f"delivery_limit = {settings.queue.delivery_limit}\n"
        f'[[apps]]\napp_id = "{app.app_id}"\nmaster_key = "{app.master_key.get_secret_value()}"\n'
        f'mongo_database = "{app.mongo_database}"\n'
    )


def test_push_status_command_shows_final_counts(
    make_settings: SettingsFactory, gateway_factory: GatewayFactory, worker_factory: WorkerFactory,
    pushgw_processes: ProcessFactory, mongo: Any, db_name: str, tmp_path: Any,
) -> None:  # fmt: skip
    mongo[db_name]["_Installation"].insert_many([installation("ios"), installation("web", deviceToken="w")])
    settings = make_settings(worker=FLEET, recording=RECORD_ALL)
    gateway, _ = gateway_factory(settings), worker_factory(settings)
    push_id = send(gateway, {"where": {}, "data": {"alert": "x"}})
    config = tmp_path / "status.toml"
    config.write_text(_toml(settings))
    result = pushgw_processes.run("push", "status", push_id, "--config", str(config))
    assert result.returncode == 0, result.stderr
    assert "2/2  sent 1  failed 1  succeeded" in result.stdout
    assert json.loads(result.stdout.split("failed by reason: ", 1)[1]) == {"unsupported": 1}
    unknown = pushgw_processes.run("push", "status", "nope", "--config", str(config))
    assert unknown.returncode == 2
