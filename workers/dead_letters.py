"""Dead-lettered work: kept in `pushgw_dead` for `pushgw dlq`, finalized as failed after a grace period."""

from __future__ import annotations

import asyncio
import contextlib
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from pymongo.asynchronous.collection import AsyncCollection
from pymongo.asynchronous.database import AsyncDatabase
from pymongo.errors import DuplicateKeyError, PyMongoError

from pushgw import metrics
from pushgw.broker import Broker, Delivery
from pushgw.clock import Clock
from pushgw.logs import get_logger
from pushgw.messages import PlanPush, SendBatch, UnknownWorkItem, parse_work_item
from pushgw.mongo import Document
from pushgw.push_status import COLLECTION, StatusStore, fail_unplanned
from pushgw.settings import Settings
from pushgw.topology import PARSE, PLAN, SEND
from workers.devices import resolve_rows, split_rows
from workers.outcomes import Failed, Reason, Tally, utc_offset_key
from workers.parse_queue import UnreadableParseItem, read_parse_item
from workers.retries import infra_retry_delay_s

log = get_logger(__name__)
DEAD = "pushgw_dead"
DEAD_ROUTE = "dead"


def _stored(body: bytes) -> str | bytes:
    """A message body as kept: its JSON as text, readable in the database, or the bytes of a unit of rows
    (JSON, a newline, BSON: pushgw/messages.py)."""
    return body if b"\n" in body else body.decode()


def _body(entry: Document) -> bytes:
    body = entry["body"]
    return body.encode() if isinstance(body, str) else bytes(body)


def dead_collection(database: AsyncDatabase[Document]) -> AsyncCollection[Document]:
    return database.get_collection(DEAD)


def dead_id(item: PlanPush | SendBatch) -> str:
    return f"{item.push_id}:{item.unit if isinstance(item, SendBatch) else 'plan'}"


@dataclass(frozen=True, slots=True)
class _Dead:
    """What a dead letter is: one of pushgw's work items, or a Parse Server PushQueue item (route C)."""

    app_id: str
    push_id: str
    kind: str
    route: str
    entry_id: str


def _dead(body: bytes) -> _Dead:
    """UnknownWorkItem if it is neither."""
    try:
        item = parse_work_item(body)
    except UnknownWorkItem:
        try:
            parse_item = read_parse_item(body)
        except UnreadableParseItem as error:
            raise UnknownWorkItem(str(error)) from None
        push_id = parse_item.push_status.object_id
        return _Dead(parse_item.application_id, push_id, PARSE, PARSE, f"{push_id}:{PARSE}")
    route = PLAN if isinstance(item, PlanPush) else SEND
    return _Dead(item.app_id, item.push_id, item.kind, route, dead_id(item))


class DeadLetters:
    """Moves the dead-letter queue into MongoDB, where operators can list and replay it."""

    def __init__(
        self, settings: Settings, databases: dict[str, AsyncDatabase[Document]], clock: Clock
    ) -> None:
        self._settings = settings
        self._databases = databases
        self._clock = clock
        self._failed_stores = 0  # stores failed in a row: the backoff before handing a dead letter back

    async def keep(self, delivery: Delivery) -> None:
        """Consumer for `<prefix>.dead`: store the message, then ack it."""
        try:
            item = _dead(delivery.body)
        except UnknownWorkItem:
            log.error("dead_letter_unreadable", body=delivery.body[:200].decode(errors="replace"))
            await delivery.ack()
            return
        database = self._databases.get(item.app_id)
        if database is None:
            log.error("dead_letter_unknown_app", app_id=item.app_id, push_id=item.push_id)
            await delivery.ack()
            return
        document = {
            "_id": item.entry_id, "app_id": item.app_id, "push_id": item.push_id, "kind": item.kind,
            "route": item.route, "body": _stored(delivery.body),
            "dead_at": self._clock.now(), "finalized": False,
        }  # fmt: skip
        try:
            with contextlib.suppress(DuplicateKeyError):  # the same unit died twice: one entry is enough
                await dead_collection(database).insert_one(document)
        except PyMongoError as error:
            # Not kept yet: back to the dead queue (it has no delivery limit) after a backoff that grows with
            # each store failing in a row (the dead queue's messages carry no retry count of their own).
            delay_s = infra_retry_delay_s(self._settings.worker.requeue_delay_s, self._failed_stores)
            self._failed_stores += 1
            log.warning(
                "dead_letter_keep_retry",
                push_id=item.push_id,
                error=f"{type(error).__name__}: {error}",
                delay_s=delay_s,
            )
            await asyncio.sleep(delay_s)
            await delivery.requeue()
            return
        self._failed_stores = 0
        metrics.DEAD_LETTERS.labels(item.kind).inc()
        log.error("work_item_dead_lettered", push_id=item.push_id, kind=item.kind, id=document["_id"])
        await delivery.ack()

    async def count_pending(self, app_id: str) -> int:
        """Entries still waiting for `pushgw dlq replay` or the grace period."""
        pending = {"app_id": app_id, "finalized": False}
        return await dead_collection(self._databases[app_id]).count_documents(pending)

    async def finalize_expired(self) -> None:
        """After the grace period a dead unit's devices count as failed (and a dead plan fails its push)."""
        cutoff = self._clock.now() - timedelta(seconds=self._settings.worker.dead_letter_grace_s)
        for app in self._settings.apps:
            database = self._databases[app.app_id]
            store = StatusStore(database.get_collection(app.collection_prefix + COLLECTION), self._clock)
            async for entry in dead_collection(database).find(
                {"finalized": False, "dead_at": {"$lte": cutoff}}
            ):
                try:
                    await finalize(entry, store)
                except UnknownWorkItem as error:
                    # Kept by a release that wrote what this one cannot read: left to that release or to
                    # `pushgw dlq`, and the other entries are finalized all the same.
                    log.error("dead_letter_unreadable_entry", id=entry["_id"], error=str(error)[:300])
                    continue
                await dead_collection(database).update_one(
                    {"_id": entry["_id"]}, {"$set": {"finalized": True}}
                )


async def finalize(entry: Document, store: StatusStore) -> None:
    if entry["kind"] == PARSE:  # Parse Server's item for a push no planner of ours ever claimed
        message = "its Parse Server work item was dead-lettered after repeated failures"
        await fail_unplanned(store.collection, entry["push_id"], 1, message)
        return
    item = parse_work_item(_body(entry))
    if isinstance(item, PlanPush):
        await store.fail(item.push_id, 1, "planning was dead-lettered after repeated failures")
        return
    item, skipped = resolve_rows(item)
    tally = Tally()
    for device in item.devices:
        tally.add(Failed(device, Reason.DEAD_LETTERED))
    increments = tally.increments(utc_offset_key(item.utc_offset_min))
    if await store.record_unit(item.push_id, item.unit, increments, len(item.devices) + skipped):
        await store.try_finalize(item.push_id)


async def replay(broker: Broker, database: AsyncDatabase[Document], entry_id: str) -> str:
    """Re-publish one kept message to its queue and forget it; refused once it was finalized."""
    collection = dead_collection(database)
    entry = await collection.find_one({"_id": entry_id})
    if entry is None:
        return "not found"
    if entry["finalized"]:
        return "already finalized (its devices were counted failed); not replayed"
    await broker.publish(entry["route"], _body(entry), message_id=entry_id)
    await collection.delete_one({"_id": entry_id, "finalized": False})
    return "replayed"


def describe(entry: Document) -> dict[str, Any]:
    try:
        item: PlanPush | SendBatch | None = parse_work_item(_body(entry))
    except UnknownWorkItem:
        item = None  # kept by a release that wrote what this one cannot read: listed all the same
    devices = 0
    if isinstance(item, SendBatch):  # a fan-out's unit counts its rows
        devices = len(item.devices) + (len(split_rows(item.rows)) if item.rows is not None else 0)
    return {
        "id": entry["_id"], "app_id": entry["app_id"], "push_id": entry["push_id"], "kind": entry["kind"],
        "devices": devices, "dead_at": entry["dead_at"].isoformat(),
        "finalized": entry["finalized"],
    }  # fmt: skip
