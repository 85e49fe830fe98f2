"""The watchdog exports what the alert rules watch: dead letters waiting, idle and expired running pushes."""

from __future__ import annotations

import json
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

from prometheus_client import REGISTRY

from pushgw.messages import PlanPush
from pushgw.settings import Settings
from tests.fixtures.fleet import RunningWorker
from tests.fixtures.gateway import RunningGateway, SettingsFactory
from tests.fixtures.parse_data import installation
from tests.fixtures.waiting import until
from tests.integration.test_fleet import FLEET, RECORD_ALL, send

WorkerFactory = Callable[..., RunningWorker]
GatewayFactory = Callable[[Settings], RunningGateway]
POISON = {**RECORD_ALL, "fail_tokens": {"bug-": "raise:provider bug"}}


def gauge(name: str) -> float | None:
    return REGISTRY.get_sample_value(name, {"app_id": "app1"})


def test_watchdog_exports_dead_letters_idle_and_expired_running_pushes(
    make_settings: SettingsFactory,
    gateway_factory: GatewayFactory,
    worker_factory: WorkerFactory,
    mongo: Any,
    db_name: str,
) -> None:
    mongo[db_name]["_Installation"].insert_many([installation("ios", deviceToken="bug-1")])
    worker = {**FLEET, "dead_letter_grace_s": 3600, "watchdog_interval_s": 0.2}
    settings = make_settings(worker=worker, recording=POISON, queue={"delivery_limit": 1})
    gateway, _ = gateway_factory(settings), worker_factory(settings)
    push_id = send(gateway, {"where": {}, "data": {"alert": "x"}})
    until(lambda: list(mongo[db_name]["pushgw_dead"].find()), timeout_s=30, what="a dead letter")

    until(lambda: gauge("pushgw_dead_letters_pending") == 1, timeout_s=10, what="1 dead letter pending")
    idle = until(lambda: gauge("pushgw_running_push_idle_seconds"), timeout_s=10, what="an idle push")
    assert 0 < idle < 60
    assert mongo[db_name]["_PushStatus"].find_one({"_id": push_id})["status"] == "running"
    assert gauge("pushgw_running_pushes_past_expiry") == 0

    expired = {
        "_id": "expired001",
        "status": "running",
        "expiry": 1_000,
        "pushgw": {"progress_at": datetime.now(UTC)},
    }
    mongo[db_name]["_PushStatus"].insert_one(expired)
    until(lambda: gauge("pushgw_running_pushes_past_expiry") == 1, timeout_s=10, what="1 push past expiry")


def test_an_unreadable_dead_letter_is_skipped_and_the_watchdog_ticks_on(
    make_settings: SettingsFactory, worker_factory: WorkerFactory, mongo: Any, db_name: str
) -> None:
    """An entry kept by a newer release (a mixed-version fleet, a rollback) is left for that release or
    `pushgw dlq`; the other entries are finalized and the watchdog goes on with its other work."""
    database = mongo[db_name]
    now = datetime.now(UTC)
    day_ago = now - timedelta(days=1)
    database["_PushStatus"].insert_one(
        {"_id": "deadplan01", "status": "running", "_created_at": now, "pushgw": {"progress_at": now}}
    )
    newer = json.dumps({"kind": "plan_push", "version": 2, "app_id": "app1", "push_id": "newer00001"})
    dead_plan = PlanPush(app_id="app1", push_id="deadplan01", where={}, accepted_at=day_ago)
    entry = {"app_id": "app1", "kind": "plan_push", "route": "plan", "dead_at": day_ago, "finalized": False}
    database["pushgw_dead"].insert_many(
        [
            {**entry, "_id": "0newer00001:plan", "push_id": "newer00001", "body": newer},
            {
                **entry,
                "_id": "deadplan01:plan",
                "push_id": "deadplan01",
                "body": dead_plan.to_bytes().decode(),
            },
        ]
    )
    worker = {**FLEET, "dead_letter_grace_s": 0, "watchdog_interval_s": 0.2, "stale_pending_s": 60}
    worker_factory(make_settings(worker=worker, recording=RECORD_ALL))

    def failed(push_id: str) -> dict[str, Any] | None:
        row: dict[str, Any] | None = database["_PushStatus"].find_one({"_id": push_id, "status": "failed"})
        return row

    row = until(lambda: failed("deadplan01"), timeout_s=10, what="the dead plan's push failed")
    assert row["errorMessage"]["message"] == "planning was dead-lettered after repeated failures"
    # Inserted only now: the watchdog's first tick found nothing stale, a later one must.
    database["_PushStatus"].insert_one({"_id": "stale00001", "status": "pending", "_created_at": day_ago})
    until(lambda: failed("stale00001"), timeout_s=10, what="the watchdog to fail a stale push")
    assert {e["_id"]: e["finalized"] for e in database["pushgw_dead"].find()} == {
        "0newer00001:plan": False, "deadplan01:plan": True,
    }  # fmt: skip
