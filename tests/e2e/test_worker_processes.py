"""Real `pushgw worker` processes: kill -9 mid-push, SIGTERM drain, a RabbitMQ restart mid-push."""

from __future__ import annotations

import subprocess
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from pushgw.settings import Settings
from tests.fixtures.gateway import RunningGateway, SettingsFactory
from tests.fixtures.mongo import MongoServer
from tests.fixtures.parse_data import installation
from tests.fixtures.processes import ProcessFactory, PushgwProcess
from tests.fixtures.rabbit import RABBIT_URL, RabbitAdmin
from tests.fixtures.waiting import until
from tests.integration.test_fleet import final_status, send

GatewayFactory = Callable[[Settings], RunningGateway]
WORKER = {
    "batch_size": 200, "planner_lease_s": 3, "watchdog_interval_s": 0.5, "requeue_delay_s": 0.2,
    "progress_interval_s": 0.2, "delay_tiers_s": [1, 2], "shutdown_timeout_s": 20, "send_prefetch": 4,
}  # fmt: skip
RECORDING = {"transports": ["apns", "fcm", "ppns"], "store": "mongo", "latency_ms": 150}


def worker_config(tmp_path: Path, mongo_server: MongoServer, db_name: str, prefix: str) -> Path:
    path = tmp_path / "worker.toml"
    worker = "\n".join(f"{key} = {value!r}".replace("'", '"') for key, value in WORKER.items())
    path.write_text(
        f'[mongo]\nuri = "{mongo_server.uri}"\n[queue]\nurl = "{RABBIT_URL}"\nprefix = "{prefix}"\n'
        f"[worker]\n{worker}\n"
        '[recording]\ntransports = ["apns", "fcm", "ppns"]\nstore = "mongo"\nlatency_ms = 150\n'
        f'[log]\nlevel = "info"\n[[apps]]\napp_id = "app1"\nmaster_key = "master1"\nmongo_database = "{db_name}"\n'
    )
    return path


def start_worker(processes: ProcessFactory, config: Path) -> PushgwProcess:
    worker = processes.start("worker", "--config", str(config))
    until(
        lambda: "worker_started" in worker.output or worker.process.poll() is not None,
        timeout_s=30,
        what="worker start",
    )
    assert worker.process.poll() is None, worker.output
    return worker


def seed(mongo: Any, db_name: str, count: int) -> list[str]:
    devices = [installation("ios" if n % 2 else "android") for n in range(count)]
    mongo[db_name]["_Installation"].insert_many(devices)
    return [device["_id"] for device in devices]


def sent_so_far(mongo: Any, db_name: str, push_id: str) -> int:
    row = mongo[db_name]["_PushStatus"].find_one({"_id": push_id}) or {}
    return int(row.get("numSent", 0))


def recorded(mongo: Any, db_name: str, push_id: str) -> Counter[str]:
    rows = mongo[db_name]["pushgw_recorded"].find({"push_id": push_id}, {"object_id": 1})
    return Counter(row["object_id"] for row in rows)


def assert_exact(mongo: Any, db_name: str, push_id: str, ids: list[str], max_duplicates: int) -> None:
    row = final_status(mongo, db_name, push_id, timeout_s=120)
    assert (row["status"], row["numSent"]) == ("succeeded", len(ids)), row
    assert "numFailed" not in row
    assert row["pushgw"]["devices_done"] == row["pushgw"]["audience"] == len(ids)
    received = recorded(mongo, db_name, push_id)
    assert set(received) == set(ids)
    duplicates = sum(received.values()) - len(ids)
    assert duplicates <= max_duplicates, f"{duplicates} duplicate deliveries"


@pytest.fixture
def fleet_setup(
    make_settings: SettingsFactory, gateway_factory: GatewayFactory, pushgw_processes: ProcessFactory,
    mongo_server: MongoServer, db_name: str, rabbit: RabbitAdmin, tmp_path: Path,
) -> tuple[RunningGateway, Path]:  # fmt: skip
    gateway = gateway_factory(make_settings(worker=WORKER, recording=RECORDING))
    return gateway, worker_config(tmp_path, mongo_server, db_name, rabbit.prefix)


def test_kill_9_mid_push_still_ends_succeeded_with_exact_counts(
    fleet_setup: tuple[RunningGateway, Path], pushgw_processes: ProcessFactory, mongo: Any, db_name: str
) -> None:
    gateway, config = fleet_setup
    ids = seed(mongo, db_name, 12_000)
    victim, survivor = start_worker(pushgw_processes, config), start_worker(pushgw_processes, config)
    push_id = send(gateway, {"where": {}, "data": {"alert": "kill -9"}})
    until(lambda: sent_so_far(mongo, db_name, push_id) >= 2_000, timeout_s=60, what="a fifth of the push")
    victim.kill()
    # What the victim had in flight since its last progress save may be sent again; nothing more.
    assert_exact(mongo, db_name, push_id, ids, max_duplicates=4 * 200)
    assert survivor.process.poll() is None


def test_sigterm_drains_in_flight_units_and_exits_0(
    fleet_setup: tuple[RunningGateway, Path], pushgw_processes: ProcessFactory, mongo: Any, db_name: str
) -> None:
    gateway, config = fleet_setup
    ids = seed(mongo, db_name, 6_000)
    first = start_worker(pushgw_processes, config)
    push_id = send(gateway, {"where": {}, "data": {"alert": "drain"}})
    until(lambda: sent_so_far(mongo, db_name, push_id) >= 400, timeout_s=60, what="the push under way")
    assert first.terminate(timeout_s=40) == 0
    assert "worker_drained" in first.output
    during = sent_so_far(mongo, db_name, push_id)
    assert during < len(ids), "the push finished before the drain; the test proves nothing"
    start_worker(pushgw_processes, config)
    assert_exact(mongo, db_name, push_id, ids, max_duplicates=0)


def test_rabbitmq_restart_mid_push_completes(
    fleet_setup: tuple[RunningGateway, Path], pushgw_processes: ProcessFactory, mongo: Any, db_name: str
) -> None:
    gateway, config = fleet_setup
    ids = seed(mongo, db_name, 8_000)
    worker = start_worker(pushgw_processes, config)
    push_id = send(gateway, {"where": {}, "data": {"alert": "restart"}})
    until(lambda: sent_so_far(mongo, db_name, push_id) >= 1_000, timeout_s=60, what="the push under way")
    subprocess.run(["rabbitmqctl", "stop_app"], check=True, capture_output=True, timeout=120)
    during = sent_so_far(mongo, db_name, push_id)
    assert during < len(ids), "the push finished before the broker stopped; the test proves nothing"
    subprocess.run(["rabbitmqctl", "start_app"], check=True, capture_output=True, timeout=120)
    subprocess.run(["rabbitmqctl", "await_startup"], check=True, capture_output=True, timeout=120)
    # In-flight units whose acks died with the broker are redelivered; recorded ones are skipped.
    assert_exact(mongo, db_name, push_id, ids, max_duplicates=2 * 4 * 200)
    assert worker.process.poll() is None
    assert "broker_connection_lost" in worker.output
    # The intake reconnected too: a new push is accepted and delivered.
    until(lambda: gateway.client().get("/ready").status_code == 200, timeout_s=30, what="intake ready")
    after = send(gateway, {"where": {"objectId": ids[0]}, "data": {"alert": "after the restart"}})
    row = final_status(mongo, db_name, after, timeout_s=30)
    assert (row["status"], row["numSent"]) == ("succeeded", 1), row
