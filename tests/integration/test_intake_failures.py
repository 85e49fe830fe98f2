"""When the broker or MongoDB is down the client gets a Parse-style error and no orphan push remains."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

from pushgw.settings import Settings
from tests.fixtures.gateway import RunningGateway, SettingsFactory
from tests.fixtures.mongo import MongoServer
from tests.fixtures.rabbit import RabbitAdmin
from tests.fixtures.tcp_proxy import TcpProxy
from tests.fixtures.waiting import until

MASTER = {
    "X-Parse-Application-Id": "app1",
    "X-Parse-Master-Key": "master1",
    "Content-Type": "application/json",
}
INTERNAL = {"code": 1, "message": "Internal server error."}


def post(gateway: RunningGateway, body: dict[str, Any], headers: dict[str, str] = MASTER) -> Any:
    return gateway.client().post("/parse/push", content=json.dumps(body), headers=headers)


def test_broker_down_answers_error_and_marks_the_record_failed(
    make_settings: SettingsFactory,
    gateway_factory: Callable[[Settings], RunningGateway],
    tcp_proxy: type[TcpProxy],
    rabbit: RabbitAdmin,
    mongo: Any,
    db_name: str,
) -> None:
    proxy = tcp_proxy(5672)
    settings = make_settings(
        queue={"url": f"amqp://guest:guest@127.0.0.1:{proxy.port}/", "publish_timeout_s": 1}
    )
    gateway = gateway_factory(settings)
    assert post(gateway, {"channels": ["a"]}).status_code == 200
    proxy.cut()
    response = post(gateway, {"channels": ["b"], "data": {"alert": "lost?"}})
    assert response.status_code == 500
    assert response.json() == INTERNAL
    assert gateway.client().get("/ready").status_code == 503
    rows = {row["query"]: row for row in mongo[db_name]["_PushStatus"].find()}
    failed = rows['{"channels":{"$in":["b"]}}']
    assert failed["status"] == "failed"
    assert failed["errorMessage"]["code"] == 1
    assert "could not be queued" in failed["errorMessage"]["message"]
    assert rows['{"channels":{"$in":["a"]}}']["status"] == "pending"
    queued = [json.loads(message.body)["where"] for message in rabbit.take_all("plan")]
    assert queued == [{"channels": {"$in": ["a"]}}]
    proxy.restore()
    until(
        lambda: post(gateway, {"channels": ["c"]}).status_code == 200,
        timeout_s=30,
        interval_s=0.25,
        what="reconnect",
    )


def test_request_id_retry_after_broker_failure_creates_the_push(
    make_settings: SettingsFactory,
    gateway_factory: Callable[[Settings], RunningGateway],
    tcp_proxy: type[TcpProxy],
    rabbit: RabbitAdmin,
    mongo: Any,
    db_name: str,
) -> None:
    proxy = tcp_proxy(5672)
    settings = make_settings(
        queue={"url": f"amqp://guest:guest@127.0.0.1:{proxy.port}/", "publish_timeout_s": 1}
    )
    gateway = gateway_factory(settings)
    headers = {**MASTER, "X-Parse-Request-Id": "retry-me"}
    proxy.cut()
    assert post(gateway, {"channels": ["a"]}, headers).status_code == 500
    proxy.restore()
    response = until(
        lambda: (answer := post(gateway, {"channels": ["a"]}, headers)).status_code == 200 and answer,
        timeout_s=30, interval_s=0.25, what="retry accepted",
    )  # fmt: skip
    push_id = response.headers["x-parse-push-status-id"]
    assert mongo[db_name]["_PushStatus"].find_one({"_id": push_id})["status"] == "pending"
    assert [json.loads(message.body)["push_id"] for message in rabbit.take_all("plan")] == [push_id]


def test_mongo_down_answers_error_and_queues_nothing(
    make_settings: SettingsFactory,
    gateway_factory: Callable[[Settings], RunningGateway],
    tcp_proxy: type[TcpProxy],
    mongo_server: MongoServer,
    rabbit: RabbitAdmin,
) -> None:
    proxy = tcp_proxy(mongo_server.port)
    uri = f"mongodb://127.0.0.1:{proxy.port}/?directConnection=true"
    gateway = gateway_factory(make_settings(mongo={"uri": uri, "timeout_ms": 1000}))
    assert post(gateway, {"channels": ["a"]}).status_code == 200
    proxy.cut()
    response = post(gateway, {"channels": ["b"]})
    assert response.status_code == 500
    assert response.json() == INTERNAL
    assert gateway.client().get("/ready").json()["mongo"] == "down"
    assert len(rabbit.take_all("plan")) == 1
