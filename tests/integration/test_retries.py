"""A MongoDB outage longer than the queue's delivery limit allows fails no work: plans and units wait it out."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import structlog

from pushgw.settings import Settings
from tests.fixtures.fleet import RunningWorker
from tests.fixtures.gateway import RunningGateway, SettingsFactory
from tests.fixtures.mongo import MongoServer
from tests.fixtures.parse_data import installation
from tests.fixtures.rabbit import RabbitAdmin
from tests.fixtures.tcp_proxy import TcpProxy
from tests.fixtures.waiting import until
from tests.integration.test_fleet import FLEET, RECORD_ALL, final_status, send

DELIVERY_LIMIT = 2


def logged(events: list[dict[str, Any]], *names: str) -> list[dict[str, Any]]:
    return [event for event in events if event["event"] in names]


def test_a_database_outage_longer_than_the_delivery_limit_allows_fails_nothing(
    make_settings: SettingsFactory,
    gateway_factory: Callable[[Settings], RunningGateway],
    worker_factory: Callable[..., RunningWorker],
    tcp_proxy: type[TcpProxy],
    mongo_server: MongoServer,
    rabbit: RabbitAdmin,
    mongo: Any,
    db_name: str,
) -> None:
    devices = [installation("ios") for _ in range(5)]
    mongo[db_name]["_Installation"].insert_many(devices)
    proxy = tcp_proxy(mongo_server.port)  # the worker's database only: the gateway accepts the push
    # A dead letter would be finalized (its push failed) at the watchdog's next tick.
    worker = {**FLEET, "requeue_delay_s": 0.05, "dead_letter_grace_s": 0, "watchdog_interval_s": 0.2}
    sections: dict[str, Any] = {
        "worker": worker, "recording": RECORD_ALL, "queue": {"delivery_limit": DELIVERY_LIMIT}
    }  # fmt: skip
    gateway = gateway_factory(make_settings(**sections))
    uri = f"mongodb://127.0.0.1:{proxy.port}/?directConnection=true"
    with structlog.testing.capture_logs() as events:
        running = worker_factory(make_settings(**sections, mongo={"uri": uri, "timeout_ms": 200}))
        until(lambda: logged(events, "worker_started"), timeout_s=30, what="the worker to start")
        proxy.cut()
        push_id = send(gateway, {"where": {}, "data": {"alert": "x"}})

        def outlasted_the_delivery_limit() -> bool:
            retries = [event for event in logged(events, "unit_retry") if event["push_id"] == push_id]
            dead = logged(events, "dead_letter_keep_retry", "work_item_dead_lettered")
            return len(retries) > DELIVERY_LIMIT + 1 or bool(dead)

        until(outlasted_the_delivery_limit, timeout_s=30, what="more failed attempts than the limit allows")
        proxy.restore()
        row = final_status(mongo, db_name, push_id)
    assert (row["status"], row["numSent"], row.get("numFailed", 0)) == ("succeeded", 5, 0)
    assert sorted(running.delivered(push_id)) == sorted(device["_id"] for device in devices)
    assert logged(events, "dead_letter_keep_retry", "work_item_dead_lettered") == []
    assert list(mongo[db_name]["pushgw_dead"].find()) == []
    assert rabbit.count("dead") == 0


def test_a_plan_cut_off_from_the_broker_mid_way_is_resumed_at_once_not_after_its_lease(
    tcp_proxy: type[TcpProxy],  # first: the proxies close after the worker has stopped
    make_settings: SettingsFactory,
    gateway_factory: Callable[[Settings], RunningGateway],
    worker_factory: Callable[..., RunningWorker],
    mongo_server: MongoServer,
    mongo: Any,
    db_name: str,
) -> None:
    """The broker connection drops while a worker plans a push: the client library cancels the planning,
    and the worker gives up the plan's lease (`planner_lease_s`, 5 min by default). When the broker hands
    the plan out again, it is resumed from its checkpoint at once. (It used to be dropped as someone else's
    until the lease expired and the watchdog planned it again.)"""
    mongo[db_name]["_Installation"].insert_many([installation("ios") for _ in range(3000)])
    database_proxy, broker_proxy = tcp_proxy(mongo_server.port), tcp_proxy(5672)
    sections: dict[str, Any] = {"worker": {**FLEET, "batch_size": 10}, "recording": RECORD_ALL}
    gateway = gateway_factory(make_settings(**sections))
    through_proxies = {
        "mongo": {
            "uri": f"mongodb://127.0.0.1:{database_proxy.port}/?directConnection=true",
            "timeout_ms": 30000,
        },
        "queue": {"url": f"amqp://guest:guest@127.0.0.1:{broker_proxy.port}/"},
    }
    statuses = mongo[db_name]["_PushStatus"]

    def plan() -> dict[str, Any]:
        row = statuses.find_one({"_id": push_id}) or {}
        return dict(row.get("pushgw", {}).get("plans", {}).get("all", {}))

    with structlog.testing.capture_logs() as events:
        worker_factory(make_settings(**sections, **through_proxies))
        until(lambda: logged(events, "worker_started"), timeout_s=30, what="the worker to start")
        push_id = send(gateway, {"where": {}, "data": {"alert": "x"}})
        until(lambda: plan().get("owner"), what="the worker to claim the plan")
        database_proxy.hold()  # planning cannot finish
        assert not plan().get("done"), (
            "planning finished before the database was held; the test proves nothing"
        )
        broker_proxy.cut()
        until(lambda: logged(events, "broker_connection_lost"), what="the worker to lose the broker")
        database_proxy.release()
        until(lambda: logged(events, "plan_released"), what="the worker to give up the plan's lease")
        broker_proxy.restore()
        row = final_status(mongo, db_name, push_id)
    assert (row["status"], row["numSent"], row.get("numFailed", 0)) == ("succeeded", 3000, 0)
