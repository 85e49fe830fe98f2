"""Poison work goes to the dead-letter queue, can be listed and replayed, and is finalized after the grace."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import pytest
import structlog

from pushgw.messages import SendBatch
from pushgw.settings import Settings
from tests.fixtures.fleet import RunningWorker
from tests.fixtures.gateway import RunningGateway, SettingsFactory
from tests.fixtures.mongo import MongoServer
from tests.fixtures.parse_data import installation
from tests.fixtures.processes import ProcessFactory
from tests.fixtures.rabbit import RabbitAdmin
from tests.fixtures.tcp_proxy import TcpProxy
from tests.fixtures.waiting import until
from tests.integration.test_fleet import FLEET, RECORD_ALL, final_status, send
from tests.integration.test_scheduler import _toml

WorkerFactory = Callable[..., RunningWorker]
GatewayFactory = Callable[[Settings], RunningGateway]
POISON = {**RECORD_ALL, "fail_tokens": {"bug-": "raise:provider bug"}}


def dead_entries(mongo: Any, db_name: str) -> list[dict[str, Any]]:
    return list(mongo[db_name]["pushgw_dead"].find())


def test_poison_unit_is_dead_lettered_listed_and_replayed(
    make_settings: SettingsFactory, gateway_factory: GatewayFactory, worker_factory: WorkerFactory,
    pushgw_processes: ProcessFactory, mongo: Any, db_name: str, tmp_path: Any,
) -> None:  # fmt: skip
    mongo[db_name]["_Installation"].insert_many(
        [installation("ios", deviceToken="bug-1"), installation("ios")]
    )
    settings = make_settings(
        worker={**FLEET, "dead_letter_grace_s": 3600}, recording=POISON, queue={"delivery_limit": 2}
    )
    gateway, broken = gateway_factory(settings), worker_factory(settings)
    push_id = send(gateway, {"where": {}, "data": {"alert": "x"}})
    [entry] = until(lambda: dead_entries(mongo, db_name), timeout_s=30, what="the unit to be dead-lettered")
    assert (entry["push_id"], entry["kind"], entry["finalized"]) == (push_id, "send_batch", False)
    config = tmp_path / "dlq.toml"
    config.write_text(_toml(settings))
    listed = pushgw_processes.run("dlq", "list", "--config", str(config))
    assert json.loads(listed.stdout.splitlines()[0]) | {"dead_at": None} == {
        "id": f"{push_id}:all-b0", "app_id": "app1", "push_id": push_id, "kind": "send_batch", "devices": 2,
        "dead_at": None, "finalized": False,
    }  # fmt: skip
    assert mongo[db_name]["_PushStatus"].find_one({"_id": push_id})["status"] == "running"

    broken.stop()  # the "fix": a worker whose provider no longer fails
    fixed = worker_factory(make_settings(worker=FLEET, recording=RECORD_ALL, queue={"delivery_limit": 2}))
    replayed = pushgw_processes.run("dlq", "replay", "--all", "--config", str(config))
    assert replayed.returncode == 0, replayed.stderr
    assert f"{push_id}:all-b0: replayed" in replayed.stdout
    row = final_status(mongo, db_name, push_id)
    assert (row["status"], row["numSent"]) == ("succeeded", 2)
    assert len(fixed.delivered(push_id)) == 2
    assert dead_entries(mongo, db_name) == []


def test_dead_unit_is_counted_failed_after_the_grace_period(
    make_settings: SettingsFactory,
    gateway_factory: GatewayFactory,
    worker_factory: WorkerFactory,
    mongo: Any,
    db_name: str,
) -> None:
    # Two units of raw rows: the dead one holds the poison token and a tokenless row (counted done, not failed).
    mongo[db_name]["_Installation"].insert_many(
        [
            installation("ios", deviceToken="bug-1"),
            installation("ios", deviceToken=None),
            installation("android"),
        ]
    )
    worker = {**FLEET, "batch_size": 2, "dead_letter_grace_s": 0, "watchdog_interval_s": 0.2}
    settings = make_settings(worker=worker, recording=POISON, queue={"delivery_limit": 1})
    gateway, _ = gateway_factory(settings), worker_factory(settings)
    push_id = send(gateway, {"where": {}, "data": {"alert": "x"}})
    row = final_status(mongo, db_name, push_id, timeout_s=60)
    assert (row["status"], row["numSent"], row["numFailed"]) == ("succeeded", 1, 1)
    assert row["failedPerReason"] == {"dead-lettered": 1}
    # The entry is marked finalized right after the push's counts are written: wait for that write too.
    until(
        lambda: [entry["finalized"] for entry in dead_entries(mongo, db_name)] == [True],
        timeout_s=10,
        what="the dead entry to be marked finalized",
    )


def test_unreadable_message_is_dead_lettered_not_retried(
    make_settings: SettingsFactory,
    worker_factory: WorkerFactory,
    rabbit: RabbitAdmin,
    mongo: Any,
    db_name: str,
) -> None:
    settings = make_settings(worker=FLEET, recording=RECORD_ALL)
    worker_factory(settings)
    body = json.dumps({"kind": "send_batch", "version": 99, "app_id": "app1", "push_id": "x"}).encode()
    rabbit.publish_to_exchange("work", body, routing_key="send")
    until(lambda: rabbit.count("send") == 0, what="the message to leave the send queue")
    assert dead_entries(mongo, db_name) == []  # unreadable: logged and dropped from the DLQ, never retried


def test_a_dead_letter_that_cannot_be_stored_yet_is_kept_once_the_database_is_back(
    make_settings: SettingsFactory,
    worker_factory: WorkerFactory,
    tcp_proxy: type[TcpProxy],
    mongo_server: MongoServer,
    rabbit: RabbitAdmin,
    mongo: Any,
    db_name: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    proxy = tcp_proxy(mongo_server.port)
    uri = f"mongodb://127.0.0.1:{proxy.port}/?directConnection=true"
    settings = make_settings(worker=FLEET, recording=RECORD_ALL, mongo={"uri": uri, "timeout_ms": 200})
    unit = SendBatch(app_id="app1", push_id="deadpush01", unit="all-b0", first_id="a", last_id="z")
    with structlog.testing.capture_logs() as events:
        worker_factory(settings)
        until(lambda: any(e["event"] == "worker_started" for e in events), timeout_s=30, what="worker start")
        proxy.cut()
        rabbit.publish_to_exchange("dead", unit.to_bytes())

        def failed_to_store() -> bool:  # logged by the consumer, or by aiormq when the consumer raised
            consumer_failed = any(
                record.getMessage() == "Consumer callback failed" for record in caplog.records
            )
            return consumer_failed or any(e["event"] == "dead_letter_keep_retry" for e in events)

        until(failed_to_store, timeout_s=10, what="the worker to fail to store the dead letter")
        proxy.restore()
        [entry] = until(lambda: dead_entries(mongo, db_name), timeout_s=5, what="the dead letter kept")
    assert (entry["_id"], entry["push_id"], entry["finalized"]) == ("deadpush01:all-b0", "deadpush01", False)
    until(lambda: rabbit.count("dead") == 0, what="the dead queue to be empty")
