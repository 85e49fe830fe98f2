"""Parse Server's own push work items (route C) → `<prefix>.parse` → the fleet finishes the push exactly.

Parse's side is reproduced write for write (contract §9.4, parse-server-integration §2.3): the pending
`_PushStatus`, the badge `$inc` on every matched installation with a token, `setRunning(count)`, and one
item per skip page in the observed message format, published the way deploy/parse-server's adapter does.
"""

from __future__ import annotations

import asyncio
import json
import math
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
import structlog

from pushgw.connections import create_broker
from pushgw.mongo import create_client
from pushgw.push import audience_where, parse_push
from pushgw.push_status import new_status_document
from tests.fixtures.fleet import RunningWorker
from tests.fixtures.gateway import SettingsFactory
from tests.fixtures.mongo import MongoServer
from tests.fixtures.parse_data import installation, seed_schema
from tests.fixtures.rabbit import RabbitAdmin
from tests.fixtures.tcp_proxy import TcpProxy
from tests.fixtures.waiting import until
from workers.dead_letters import replay

WORKER = {"batch_size": 2, "requeue_delay_s": 0.1}
RECORD_ALL = {"transports": ["apns", "fcm", "ppns"]}
APP_ID = "app1"


def parse_accepts(database: Any, push_id: str, body: dict[str, Any], batch_size: int) -> list[bytes]:
    """What Parse Server does between the 200 and its queue: status row, badges, count, work items."""
    now = datetime.now(UTC)
    database["_PushStatus"].insert_one(
        new_status_document(push_id, parse_push(body, now=now), now=now, scheduled=False)
    )
    where = {**audience_where(body)}
    where.setdefault("deviceToken", {"$exists": True})
    mongo_where = {key: value for key, value in where.items() if key != "channels"}
    if "channels" in where:
        mongo_where["channels"] = {"$in": where["channels"]["$in"]}
    if body.get("data", {}).get("badge") == "Increment":
        database["_Installation"].update_many(mongo_where, {"$inc": {"badge": 1}})
    count = database["_Installation"].count_documents(mongo_where)
    pages = math.ceil(count / batch_size)
    database["_PushStatus"].update_one(
        {"_id": push_id, "status": "pending"}, {"$set": {"status": "running", "count": pages}}
    )
    return [
        json.dumps(
            {
                "body": body,
                "query": {"where": where, "limit": batch_size, "skip": skip, "order": "objectId"},
                "pushStatus": {"objectId": push_id},
                "applicationId": APP_ID,
            },
            separators=(",", ":"),
        ).encode()
        for skip in range(0, count, batch_size)
    ]


@dataclass
class ParseSide:
    """The test's database (where "Parse Server" writes) and a way to start pushgw workers on it."""

    database: Any
    start_worker: Callable[..., RunningWorker]


@pytest.fixture
def parse_side(
    make_settings: SettingsFactory, worker_factory: Callable[..., RunningWorker], mongo: Any, db_name: str
) -> ParseSide:
    def start_worker(**worker: Any) -> RunningWorker:
        return worker_factory(make_settings(worker={**WORKER, **worker}, recording=RECORD_ALL))

    return ParseSide(mongo[db_name], start_worker)


def final_status(database: Any, push_id: str) -> dict[str, Any]:
    def final() -> dict[str, Any] | None:
        row: dict[str, Any] | None = database["_PushStatus"].find_one({"_id": push_id})
        return row if row and row["status"] in ("succeeded", "failed") else None

    return until(final, timeout_s=30, what=f"push {push_id} to finish")


def test_parse_queue_items_finish_the_push_once_with_parse_badges(
    parse_side: ParseSide, rabbit: RabbitAdmin
) -> None:
    database = parse_side.database
    seed_schema(database)
    devices = [
        installation("ios", badge=3), installation("ios"), installation("ios", badge=7),
        installation("android", badge=1), installation("embedded"),
        installation("ios", channels=["other"], badge=5),
    ]  # fmt: skip
    database["_Installation"].insert_many(devices)
    worker = parse_side.start_worker()
    body = {"channels": ["news"], "data": {"alert": "queued", "badge": "Increment"}}
    items = parse_accepts(database, "ParseQ0001", body, batch_size=2)
    assert len(items) == 2  # four token installations on "news", two per page
    # Pages arrive in any order and twice (Parse's adapter retries): the push is still planned once.
    rabbit.publish_to_queue("parse", [*reversed(items), items[0]], headers={"x-parse-channel": "c"})

    row = final_status(database, "ParseQ0001")
    assert row["status"] == "succeeded"
    assert (row["numSent"], row.get("numFailed", 0)) == (5, 0)
    assert row["sentPerType"] == {"ios": 3, "android": 1, "embedded": 1}
    assert "count" not in row  # Parse's outstanding-page counter is settled, not left behind
    delivered = worker.delivered("ParseQ0001")
    assert sorted(delivered) == sorted(d["_id"] for d in devices[:5])  # PPNS reached too
    badges = {d["_id"]: d.get("badge") for d in database["_Installation"].find()}
    assert [badges[d["_id"]] for d in devices] == [4, 1, 8, 2, None, 5]  # Parse's one increment only
    sent = worker.payloads("ParseQ0001")
    assert [sent[d["_id"]].get("badge") for d in devices[:3]] == [4, 1, 8]
    until(lambda: rabbit.count("parse") == 0, timeout_s=10, what="every parse item acked")


def test_unreadable_items_are_dead_lettered_and_do_not_block_the_queue(
    parse_side: ParseSide, rabbit: RabbitAdmin
) -> None:
    database = parse_side.database
    database["_Installation"].insert_many([installation("ios"), installation("android")])
    worker = parse_side.start_worker()
    good = parse_accepts(database, "ParseQ0002", {"where": {}, "data": {"alert": "x"}}, batch_size=100)
    stranger = json.loads(good[0])
    stranger["applicationId"] = "someone-else"
    no_audience = {**json.loads(good[0]), "body": {"data": {}}}
    bad = [b"not json", json.dumps(stranger).encode(), json.dumps(no_audience).encode()]
    rabbit.publish_to_queue("parse", [*bad, *good])

    row = final_status(database, "ParseQ0002")
    assert (row["status"], row["numSent"]) == ("succeeded", 2)
    assert sorted(worker.delivered("ParseQ0002")) == sorted(
        d["_id"] for d in database["_Installation"].find()
    )
    until(lambda: rabbit.count("parse") == 0, timeout_s=10, what="the poison items to leave the queue")


def test_items_for_a_finished_push_change_nothing(parse_side: ParseSide, rabbit: RabbitAdmin) -> None:
    database = parse_side.database
    database["_Installation"].insert_one(installation("ios"))
    worker = parse_side.start_worker()
    items = parse_accepts(database, "ParseQ0003", {"where": {}, "data": {"alert": "x"}}, batch_size=100)
    rabbit.publish_to_queue("parse", items)
    first = final_status(database, "ParseQ0003")
    rabbit.publish_to_queue("parse", items)  # a late duplicate from Parse's adapter spool
    until(lambda: rabbit.count("parse") == 0, timeout_s=10, what="the duplicate to be consumed")
    until(lambda: rabbit.count("plan") == 0, timeout_s=10, what="nothing left to plan")
    again = database["_PushStatus"].find_one({"_id": "ParseQ0003"})
    assert (again["status"], again["numSent"]) == (first["status"], first["numSent"]) == ("succeeded", 1)
    assert len(worker.delivered("ParseQ0003")) == 1


def test_a_parse_push_whose_items_never_arrive_is_failed_by_the_watchdog(parse_side: ParseSide) -> None:
    database = parse_side.database
    database["_Installation"].insert_one(installation("ios"))
    parse_accepts(
        database, "ParseQ0004", {"where": {}, "data": {"alert": "lost"}}, batch_size=100
    )  # not sent
    # An item that reached the fleet and marked the row, but whose plan never got published (dead-lettered).
    parse_accepts(database, "ParseQ0006", {"where": {}, "data": {"alert": "marked"}}, batch_size=100)
    long_ago = datetime.now(UTC) - timedelta(seconds=30)
    database["_PushStatus"].update_many(
        {"_id": {"$in": ["ParseQ0004", "ParseQ0006"]}}, {"$set": {"_updated_at": long_ago}}
    )
    database["_PushStatus"].update_one({"_id": "ParseQ0006"}, {"$set": {"pushgw.badge_applied": True}})
    parse_accepts(database, "ParseQ0005", {"where": {}, "data": {"alert": "recent"}}, batch_size=100)
    parse_side.start_worker(watchdog_interval_s=0.2, stalled_running_s=20)

    for push_id in ("ParseQ0004", "ParseQ0006"):
        row = final_status(database, push_id)
        assert row["status"] == "failed"
        assert "none of its work items reached pushgw's fleet" in row["errorMessage"]["message"]
    assert database["_PushStatus"].find_one({"_id": "ParseQ0005"})["status"] == "running"  # only 0 s idle


def test_a_database_outage_longer_than_the_delivery_limit_allows_loses_no_parse_item(
    make_settings: SettingsFactory,
    worker_factory: Callable[..., RunningWorker],
    tcp_proxy: type[TcpProxy],
    mongo_server: MongoServer,
    rabbit: RabbitAdmin,
    mongo: Any,
    db_name: str,
) -> None:
    database = mongo[db_name]
    database["_Installation"].insert_many([installation("ios") for _ in range(3)])
    [item] = parse_accepts(database, "ParseQ0007", {"where": {}, "data": {"alert": "x"}}, batch_size=100)
    proxy, limit = tcp_proxy(mongo_server.port), 2
    uri = f"mongodb://127.0.0.1:{proxy.port}/?directConnection=true"
    settings = make_settings(
        worker={**WORKER, "requeue_delay_s": 0.05}, recording=RECORD_ALL, queue={"delivery_limit": limit},
        mongo={"uri": uri, "timeout_ms": 200},
    )  # fmt: skip
    dead_events = ("dead_letter_unreadable", "dead_letter_keep_retry", "work_item_dead_lettered")
    with structlog.testing.capture_logs() as events:
        worker = worker_factory(settings)
        until(lambda: any(e["event"] == "worker_started" for e in events), timeout_s=30, what="worker start")
        proxy.cut()
        rabbit.publish_to_queue("parse", [item])

        def outlasted_the_delivery_limit() -> bool:
            retries = [e for e in events if e["event"] == "parse_item_retry"]
            return len(retries) > limit + 1 or any(e["event"] in dead_events for e in events)

        until(outlasted_the_delivery_limit, timeout_s=30, what="more failed attempts than the limit allows")
        assert [e for e in events if e["event"] in dead_events] == []
        proxy.restore()
        row = final_status(database, "ParseQ0007")
    assert (row["status"], row["numSent"]) == ("succeeded", 3)
    assert len(worker.delivered("ParseQ0007")) == 3
    assert list(database["pushgw_dead"].find()) == []


def test_a_dead_lettered_parse_item_is_kept_and_replayed(
    parse_side: ParseSide, make_settings: SettingsFactory, rabbit: RabbitAdmin
) -> None:
    """A Parse Server item dead-lettered after repeated failures is kept for `pushgw dlq` like pushgw's own
    work (it used to be dropped as unreadable), and a replay sends it to the Parse queue again."""
    database = parse_side.database
    database["_Installation"].insert_many([installation("ios"), installation("android")])
    [item] = parse_accepts(database, "ParseQ0010", {"where": {}, "data": {"alert": "x"}}, batch_size=100)
    parse_side.start_worker()
    rabbit.publish_to_exchange("dead", item)  # what RabbitMQ does past the delivery limit
    [entry] = until(lambda: list(database["pushgw_dead"].find()), what="the dead letter kept")
    assert (entry["_id"], entry["kind"], entry["route"], entry["finalized"]) == (
        "ParseQ0010:parse",
        "parse",
        "parse",
        False,
    )

    async def replay_it() -> str:
        broker = create_broker(make_settings().queue)
        client = create_client(make_settings().mongo.uri or "", 5000)
        await broker.start()
        try:
            return await replay(broker, client[database.name], entry["_id"])
        finally:
            await broker.close()
            await client.close()

    assert asyncio.run(replay_it()) == "replayed"
    row = final_status(database, "ParseQ0010")
    assert (row["status"], row["numSent"]) == ("succeeded", 2)


def test_a_dead_lettered_parse_item_fails_its_unplanned_push_after_the_grace_period(
    parse_side: ParseSide, rabbit: RabbitAdmin
) -> None:
    database = parse_side.database
    database["_Installation"].insert_one(installation("ios"))
    [item] = parse_accepts(database, "ParseQ0011", {"where": {}, "data": {"alert": "x"}}, batch_size=100)
    parse_side.start_worker(dead_letter_grace_s=0, watchdog_interval_s=0.2)
    rabbit.publish_to_exchange("dead", item)  # what RabbitMQ does past the delivery limit
    row = final_status(database, "ParseQ0011")
    assert (row["status"], row["errorMessage"]["code"]) == ("failed", 1)
    assert "dead-lettered" in row["errorMessage"]["message"]
    until(lambda: database["pushgw_dead"].find_one({"finalized": True}), what="the entry finalized")
