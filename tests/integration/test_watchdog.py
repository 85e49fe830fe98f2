"""The watchdog exports what the alert rules watch: dead letters waiting, idle and expired running pushes."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from prometheus_client import REGISTRY

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
