"""PlanPush → one `_id`-sorted audience cursor → SendBatch items, with a resume point after every batch."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, TypeVar, cast

import bson
import pymongo
from pymongo.asynchronous.collection import AsyncCollection
from pymongo.asynchronous.cursor import AsyncRawBatchCursor
from pymongo.asynchronous.database import AsyncDatabase
from pymongo.errors import OperationFailure, PyMongoError

from pushgw import metrics
from pushgw.broker import Broker
from pushgw.clock import Clock
from pushgw.errors import INVALID_QUERY
from pushgw.logs import get_logger
from pushgw.messages import Device, PlanPush, SendBatch
from pushgw.mongo import Document
from pushgw.push_status import StatusStore, StatusStores
from pushgw.settings import AppSettings, WorkerSettings
from pushgw.topology import SEND
from pushgw.tracing import current_traceparent
from workers.audience import ClassSchema, QueryError, conjoin, translate_where
from workers.badge import BadgeError, badge_rule
from workers.devices import PROJECTION, count_planned, decode_rows, devices_of, row_id, split_rows
from workers.lookups import EqualityLookups, pinned_value
from workers.retries import TRANSIENT_CODES
from workers.row_cursor import row_batches
from workers.send_share import SendShare
from workers.sender import Sender, SentUnit

T = TypeVar("T")
log = get_logger(__name__)
_CURSOR_BATCH = 2000


def plan_key(item: PlanPush) -> str:
    """`all`, or `utc+60` / `utc-300` for one UTC offset group of a local-time push."""
    if item.utc_offset_min is None:
        return "all"
    return f"utc{item.utc_offset_min:+d}"


@dataclass(frozen=True, slots=True)
class _Plan:
    """One planning run: the push, where its data lives, and the expiry its batches carry."""

    item: PlanPush
    app: AppSettings
    database: AsyncDatabase[Document]
    store: StatusStore
    key: str
    expiry_ms: float | None


class _PublishWindow:
    """At most `size` publishes awaiting their broker confirm; leaving the block cancels what is left."""

    def __init__(self, size: int) -> None:
        self._size = size
        self._tasks: deque[asyncio.Task[None]] = deque()

    async def add(self, publish: Coroutine[Any, Any, None]) -> None:
        try:
            if len(self._tasks) >= self._size:
                await self._tasks.popleft()
        except BaseException:  # an earlier publish failed, or planning was cancelled: `publish` never runs
            publish.close()
            raise
        self._tasks.append(asyncio.create_task(publish))

    async def drain(self) -> None:
        while self._tasks:
            await self._tasks.popleft()

    async def __aenter__(self) -> _PublishWindow:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)


class Planner:
    """Reads each push's audience once and publishes it as send batches; resumable and single-owner."""

    def __init__(
        self,
        settings: WorkerSettings,
        broker: Broker,
        clock: Clock,
        owner: str,
        sender: Sender,
        *,
        stores: StatusStores,
        sends: SendShare | None = None,
    ) -> None:
        self._settings = settings
        self._broker = broker
        self._clock = clock
        self._owner = owner
        self._sender = sender
        self._stores = stores
        self._sends = sends
        self._lookups: dict[tuple[str, str, str], EqualityLookups] = {}
        self._schemas = SchemaCache(settings.schema_cache_s)

    async def plan_push(
        self, item: PlanPush, app: AppSettings, database: AsyncDatabase[Document], redelivered: bool = True
    ) -> None:
        if item.scheduled:
            return  # the intake's copy of a scheduled push: the scheduler starts it from its _PushStatus
        store = self._stores.store(database, app.collection_prefix)
        key = plan_key(item)
        try:
            await self._plan_push(item, app, database, redelivered, store=store, key=key)
        except BaseException:
            await self._give_up(store, item.push_id, key)
            raise

    async def _give_up(self, store: StatusStore, push_id: str, key: str) -> None:
        """Planning stopped before it was done (an error: the delivery is retried; a lost broker
        connection or a worker stopping: the broker delivers it again). If this worker held the plan's
        lease, it gives it up, so that the next delivery resumes the plan at once rather than being
        dropped as someone else's until the lease expires (`planner_lease_s`, then the watchdog)."""
        try:
            if await store.release_plan(push_id, key, self._owner):
                log.info("plan_released", push_id=push_id, plan=key)
        except PyMongoError as error:  # the database is what failed: the lease expires on its own
            log.warning("plan_release_failed", push_id=push_id, plan=key, error=str(error))

    async def _plan_push(
        self,
        item: PlanPush,
        app: AppSettings,
        database: AsyncDatabase[Document],
        redelivered: bool,
        *,
        store: StatusStore,
        key: str,
    ) -> None:
        # The audience is translated (and a one-user audience read) while the plan is claimed: reads have
        # no effect, and a lost claim just drops them.
        reading = asyncio.create_task(self._read_audience(item, app, database))
        reading.add_done_callback(_retrieved)
        try:
            if (
                not redelivered
                and self._settings.send_small_pushes_inline
                and item.utc_offset_min is None
                and not item.badge_applied
                and await self._send_unclaimed(
                    _Plan(item, app, database, store, key, self._expiry_ms(item)), reading
                )
            ):
                return
            state = await store.claim_plan(item.push_id, key, self._owner, self._settings.planner_lease_s)
            if state is None:
                return  # terminal, planned already, or another worker holds the lease
            self._observe_lag(item)
            plan = _Plan(item, app, database, store, key, state.get("expiry_ms") or self._expiry_ms(item))
            badge_rule(item.data)
            mongo_filter, rows = await asyncio.shield(reading)  # never cancelled, see below
            # A whole-collection scan can take longer than mongo.timeout_ms before its first row (SecantusDB
            # answers after the full scan): planning gets its own, longer deadline.
            with pymongo.timeout(self._settings.planning_timeout_s):
                devices, only_batch = await self._publish_batches(
                    plan, mongo_filter, state, None if state else rows
                )
        except (QueryError, BadgeError) as error:
            await _fail(store, item.push_id, error.code, error.message)
            return
        except OperationFailure as error:
            if not is_query_error(error):
                raise
            # The database refused the query itself (e.g. $text without a text index): retrying cannot help.
            message = f"the database refused the query: {error.details or error}"
            await _fail(store, item.push_id, INVALID_QUERY, message)
            return
        finally:
            # Waited for, never cancelled: a pymongo operation cancelled mid-flight can leak its socket
            # (PYTHON-5867). Its error, if any, was raised above or does not matter (a lost claim).
            await asyncio.wait([reading])
        if devices is None:
            return  # lost the lease: the new owner continues
        if only_batch is not None and await self._send_only_batch(only_batch, app, database, store):
            self._finished(item.push_id, key, devices)
            return
        await self._finish_plan(plan, devices)

    async def _send_unclaimed(
        self, plan: _Plan, reading: asyncio.Task[tuple[dict[str, Any], list[Document] | None]]
    ) -> bool:
        """Sent before claimed: a push seen for the first time whose audience was read in one lookup and
        fits in one batch is sent first, then claimed and finished in one write (`finish_unclaimed`) —
        one `_PushStatus` update per transactional push instead of two. False: not such a push, nothing
        sent (the caller claims and plans it as usual). True: handled.
        """
        _, rows = await asyncio.shield(reading)  # never cancelled, see plan_push
        if rows is None:
            return False
        devices = devices_of(rows)
        if len(devices) > self._settings.batch_size:
            return False
        badge_rule(plan.item.data)
        push_id = plan.item.push_id
        if not devices and not await plan.store.finish_unclaimed(push_id, plan.key, self._owner, {}, 0):
            return False  # nothing was sent: plan it the usual way
        self._observe_lag(plan.item)
        if devices:
            await self._deliver_unclaimed(plan, devices)
        else:
            self._finished(push_id, plan.key, 0)
        return True

    async def _deliver_unclaimed(self, plan: _Plan, devices: list[Device]) -> None:
        """Send, then finish unclaimed. If that write finds the push no longer `pending` and unclaimed (a
        scheduled push the scheduler started, a cancel), the usual claim follows and records what was
        sent; if the claim is lost too, the push was cancelled or finished, or another worker has it (a
        duplicate of its queue message), and its devices may get it twice (docs/architecture.md)."""
        push_id, store = plan.item.push_id, plan.store
        batch = self._batch(plan, 0, devices)
        sent: SentUnit | None = None
        try:
            sent = await self._sender.deliver_only_batch(batch, plan.app, plan.database)
        except asyncio.CancelledError:
            raise
        except Exception as error:
            _inline_failed(batch, error)
        if sent is not None and await self._sender.finish_unclaimed(sent, store, self._owner):
            count_planned(devices)
            self._finished(push_id, plan.key, len(devices))
            return
        if await store.claim_plan(push_id, plan.key, self._owner, self._settings.planner_lease_s) is None:
            return
        count_planned(devices)
        if sent is None:  # queued like any other batch: the send queue's retries, then dead-lettering
            await self._publish(batch)
        elif await self._sender.record_only_batch(sent, store, self._owner):
            self._finished(push_id, plan.key, len(devices))
            return
        await self._finish_plan(plan, len(devices))

    def _finished(self, push_id: str, key: str, devices: int) -> None:
        metrics.PUSHES_FINISHED.labels("succeeded").inc()
        log.info("push_planned", push_id=push_id, plan=key, devices=devices, sent_inline=True)
        log.info("push_succeeded", push_id=push_id)

    def _observe_lag(self, item: PlanPush) -> None:
        metrics.QUEUE_LAG_SECONDS.labels("plan").observe(
            max(0.0, (self._clock.now() - item.accepted_at).total_seconds())
        )

    async def _finish_plan(self, plan: _Plan, devices: int) -> None:
        push_id = plan.item.push_id
        await plan.store.finish_plan(push_id, plan.key, self._owner, devices)
        if await plan.store.try_finalize(push_id):  # every unit was counted before the plan finished
            metrics.PUSHES_FINISHED.labels("succeeded").inc()
            log.info("push_succeeded", push_id=push_id)
        log.info("push_planned", push_id=push_id, plan=plan.key, devices=devices)

    async def _send_only_batch(
        self, batch: SendBatch, app: AppSettings, database: AsyncDatabase[Document], store: StatusStore
    ) -> bool:
        """Send the push's only batch here; if that raises, queue it like any other batch, so it gets the
        send queue's retries and dead-lettering instead of failing the plan."""
        try:
            return await self._sender.send_only_batch(batch, app, database, store, self._owner)
        except asyncio.CancelledError:
            raise
        except Exception as error:
            _inline_failed(batch, error)
        await self._publish(batch)
        return False

    def _expiry_ms(self, item: PlanPush) -> float | None:
        """Absolute expiry, or `expiration_interval` counted from the actual start (Parse loses it, §13)."""
        if item.expiry_ms is not None:
            return item.expiry_ms
        if item.expiration_interval_s:
            start = self._clock.now() + timedelta(seconds=item.expiration_interval_s)
            return start.timestamp() * 1000
        return None

    async def _read_audience(
        self, item: PlanPush, app: AppSettings, database: AsyncDatabase[Document]
    ) -> tuple[dict[str, Any], list[Document] | None]:
        """The audience's filter, and its rows when it names one user or device (None: stream them)."""
        runner = MongoSubqueries(database, app.collection_prefix, self._schemas)
        schema = await runner.schema_for("_Installation")
        translated = await translate_where(item.where, schema, runner, now=self._clock.now())
        mongo_filter = server_filter(translated, item.time_zones)
        pinned = pinned_value(mongo_filter, self._settings.installation_indexes)
        if pinned is None:
            return mongo_filter, None
        field, value = pinned
        collection = database.get_collection(app.collection_prefix + "_Installation")
        name = (database.name, collection.name, field)
        if name not in self._lookups:
            self._lookups[name] = EqualityLookups(collection, field, PROJECTION)
        return mongo_filter, await self._lookups[name].rows(value)

    async def _publish_batches(
        self,
        plan: _Plan,
        mongo_filter: dict[str, Any],
        state: dict[str, Any],
        rows: list[Document] | None,
    ) -> tuple[int | None, SendBatch | None]:
        """Publish every batch after the resume point, `plan_publish_window` confirms in flight; the
        checkpoint (every `plan_checkpoint_s`) only ever names batches whose publish was confirmed.

        Batches carry the audience rows as the database sent them (`SendBatch.rows`): the planner never
        decodes a fan-out, it cuts the stream every `batch_size` rows and reads only each batch's first and
        last `_id`; the count it plans is rows, and each sender counts the rows it skips (no token) done.
        An audience that fits in one batch of a fresh plan (a transactional push) is not published: it
        is returned as devices, for the planner to send itself (no queue round trip, one status write).
        """
        size = self._settings.batch_size
        index: int = state.get("next_index", 0)
        first_index = index
        planned: int = state.get("devices", 0)  # rows; the key predates rows (a checkpoint still resumes)
        last_id: str | None = state.get("last_id")
        batch: list[bytes] = []
        checkpointed_at = time.monotonic()
        async with (
            contextlib.AsyncExitStack() as stepped_back,
            _PublishWindow(self._settings.plan_publish_window) as window,
        ):
            async for page in self._pages(plan.database, plan.app, mongo_filter, last_id, rows):
                batch.extend(page)
                while len(batch) > size:  # `>`: a last batch of up to `size` rows may be the only one
                    if self._sends is not None and index == first_index:
                        # A fan-out: the other workers send it while this one streams (workers/send_share.py).
                        await stepped_back.enter_async_context(self._sends.streaming())
                    cut, batch = batch[:size], batch[size:]
                    last_id = row_id(cut[-1])
                    planned += await self._publish_unit(window, plan, index, cut, last_id)
                    index += 1
                    if time.monotonic() - checkpointed_at < self._settings.plan_checkpoint_s:
                        continue
                    await window.drain()
                    cursor = {"last_id": last_id, "next_index": index, "devices": planned}
                    if not await plan.store.checkpoint_plan(
                        plan.item.push_id,
                        plan.key,
                        self._owner,
                        cursor | {"expiry_ms": plan.expiry_ms},
                        self._settings.planner_lease_s,
                    ):
                        return None, None
                    checkpointed_at = time.monotonic()
            if batch and index == 0 and self._settings.send_small_pushes_inline:
                devices = devices_of(decode_rows(b"".join(batch)))
                count_planned(devices)
                return len(devices), (self._batch(plan, index, devices) if devices else None)
            if batch:
                planned += await self._publish_unit(window, plan, index, batch, row_id(batch[-1]))
            await window.drain()
        return planned, None

    async def _pages(
        self,
        database: AsyncDatabase[Document],
        app: AppSettings,
        mongo_filter: dict[str, Any],
        after: str | None,
        rows: list[Document] | None,
    ) -> AsyncIterator[list[bytes]]:
        """The audience as raw BSON rows, a cursor batch at a time: one cursor sorted on `_id` (see
        docs/architecture.md: never skip, never page), or the rows already read for a one-user audience.

        A broad audience is read along the `_id` index (hinted: an unhinted sort scans and sorts in
        memory); a narrow one that pins an indexed field (`user`, `installationId`) uses that index.
        """
        if rows is not None:
            yield [bson.encode(row) for row in rows]
            return
        query = conjoin(mongo_filter, {"_id": {"$gt": after}}) if after else mongo_filter
        collection = database.get_collection(app.collection_prefix + "_Installation")
        hint_id = not pins_indexed_field(mongo_filter, self._settings.installation_indexes)
        cursor = row_batches(collection, query, PROJECTION, batch_size=_CURSOR_BATCH, hint_id=hint_id)
        async for reply in _read_ahead(cursor):
            yield split_rows(reply)

    async def _publish_unit(
        self, window: _PublishWindow, plan: _Plan, index: int, rows: list[bytes], last_id: str
    ) -> int:
        """Publish one unit of `rows` (the last one's `_id` is `last_id`) through the window; returns what
        it plans (rows, or its devices).

        `worker.unit_rows = false` (a fleet that still runs workers of a build before units carried rows:
        they cannot read one) decodes the rows here and publishes devices, as those builds did."""
        if self._settings.unit_rows:
            unit = self._unit(plan, index, row_id(rows[0]), last_id, rows=b"".join(rows))
            planned = len(rows)
        else:
            devices = devices_of(decode_rows(b"".join(rows)))
            count_planned(devices)
            if not devices:
                return 0
            unit, planned = self._batch(plan, index, devices), len(devices)
        await window.add(self._publish(unit))
        return planned

    async def _publish(self, unit: SendBatch) -> None:
        await self._broker.publish(SEND, unit.to_bytes(), message_id=f"{unit.push_id}:{unit.unit}")

    def _batch(self, plan: _Plan, index: int, devices: list[Device]) -> SendBatch:
        return self._unit(plan, index, devices[0].object_id, devices[-1].object_id, devices=devices)

    def _unit(
        self,
        plan: _Plan,
        index: int,
        first_id: str,
        last_id: str,
        *,
        devices: list[Device] | None = None,
        rows: bytes | None = None,
    ) -> SendBatch:
        item = plan.item
        return SendBatch(
            app_id=item.app_id,
            push_id=item.push_id,
            unit=f"{plan.key}-b{index}",
            first_id=first_id,
            last_id=last_id,
            devices=devices or [],
            rows=rows,
            data=item.data,
            options=item.options,
            expiry_ms=plan.expiry_ms,
            utc_offset_min=item.utc_offset_min,
            accepted_at=item.accepted_at,
            badge_applied=item.badge_applied,
            traceparent=current_traceparent(),  # the unit's span is a child of this plan's
        )


def _inline_failed(batch: SendBatch, error: Exception) -> None:
    log.warning(
        "inline_send_failed", push_id=batch.push_id, unit=batch.unit, error=f"{type(error).__name__}: {error}"
    )


def _retrieved(task: asyncio.Task[Any]) -> None:
    """Mark a task's exception as seen (asyncio logs unseen ones): its caller raised or dropped it."""
    if not task.cancelled():
        task.exception()


async def _fail(store: StatusStore, push_id: str, code: int, message: str) -> None:
    log.info("push_failed", push_id=push_id, code=code, error=message)
    if await store.fail(push_id, code, message):
        metrics.PUSHES_FINISHED.labels("failed").inc()


async def _read_ahead(cursor: AsyncRawBatchCursor[Document]) -> AsyncIterator[bytes]:
    """The cursor's replies (each its rows as BSON, back to back), the next getMore already on its way
    while the caller works on the current one: database and planner overlap instead of taking turns."""
    # A raw cursor's "document" is one whole reply.
    pending: asyncio.Future[list[Document]] = asyncio.ensure_future(cursor.to_list(1))
    try:
        while replies := await pending:
            # The next getMore leaves now, not after this reply's batches are published.
            pending = await _under_way(lambda: cursor.to_list(1))
            for reply in replies:
                yield cast(bytes, reply)
    finally:
        if not pending.done():
            pending.cancel()
            await asyncio.gather(pending, return_exceptions=True)
        await cursor.close()


async def _under_way(read: Callable[[], Awaitable[T]]) -> asyncio.Future[T]:
    """`read()` as a task, returned once that task has run up to its first wait (for the database's answer,
    its request sent): it has started, not merely been scheduled behind the caller's next steps."""
    started = asyncio.Event()

    async def run() -> T:
        started.set()
        return await read()

    task = asyncio.ensure_future(run())
    try:
        await started.wait()
    except BaseException:
        task.cancel()
        raise
    return task


def server_filter(translated: dict[str, Any], time_zones: list[str] | None = None) -> dict[str, Any]:
    """What the planner asks MongoDB: Parse's translated `where` (plus a local-time group's zones).

    pushgw's reachability rule (`audience_filter`: a token, or a PPNS installation) is checked on each
    row by `to_device` instead of in the query: SecantusDB uses no index once an `$or` is present (a
    single-user push took 4 s instead of 6 ms), and the rule only drops rows Parse would skip anyway.
    """
    return conjoin(translated, {"timeZone": {"$in": time_zones}}) if time_zones is not None else translated


def pins_indexed_field(mongo_filter: dict[str, Any], indexed: list[str]) -> bool:
    """True when the filter requires an equality or `$in` on an indexed field at its top level."""
    for key, value in mongo_filter.items():
        if key == "$and" and isinstance(value, list):
            if any(isinstance(part, dict) and pins_indexed_field(part, indexed) for part in value):
                return True
        elif key in indexed and (not isinstance(value, dict) or "$in" in value or "$eq" in value):
            return True
    return False


async def ensure_installation_indexes(
    database: AsyncDatabase[Document], prefix: str, fields: list[str]
) -> None:
    """pushgw's optional `_Installation` indexes (Parse creates none): idempotent, named `pushgw_<field>`."""
    collection = database.get_collection(prefix + "_Installation")
    for field in fields:
        await collection.create_index(field, name=f"pushgw_{field}")


def is_query_error(error: OperationFailure) -> bool:
    """True when MongoDB rejected the query itself rather than failing to run it."""
    return type(error) is OperationFailure and error.code not in TRANSIENT_CODES


class SchemaCache:
    """`_SCHEMA` documents kept for `ttl_s`, as Parse Server caches its schema: one read per class and
    period instead of one per push (a single-user push is otherwise one read more on the hot path)."""

    def __init__(self, ttl_s: float) -> None:
        self._ttl_s = ttl_s
        self._entries: dict[tuple[str, str], tuple[float, ClassSchema]] = {}

    async def schema_for(self, collection: AsyncCollection[Document], class_name: str) -> ClassSchema:
        key, now = (collection.full_name, class_name), time.monotonic()
        cached = self._entries.get(key)
        if cached is not None and now - cached[0] < self._ttl_s:
            return cached[1]
        schema = ClassSchema.from_document(await collection.find_one({"_id": class_name}))
        self._entries[key] = (now, schema)
        return schema


class MongoSubqueries:
    """Subquery reads for audience translation: `_SCHEMA`, other classes, and `_Join` relation tables."""

    def __init__(self, database: AsyncDatabase[Document], prefix: str, schemas: SchemaCache) -> None:
        self._database = database
        self._prefix = prefix
        self._schemas = schemas

    async def distinct_values(self, class_name: str, mongo_filter: dict[str, Any], field: str) -> list[Any]:
        """MongoDB `distinct` semantics: dotted paths followed, array values flattened."""
        return list(
            await self._database.get_collection(self._prefix + class_name).distinct(field, mongo_filter)
        )

    async def schema_for(self, class_name: str) -> ClassSchema:
        return await self._schemas.schema_for(
            self._database.get_collection(self._prefix + "_SCHEMA"), class_name
        )

    async def related_ids(self, owning_class: str, key: str, owning_id: str) -> list[str]:
        collection = self._database.get_collection(f"{self._prefix}_Join:{key}:{owning_class}")
        return [
            str(row["relatedId"]) async for row in collection.find({"owningId": owning_id}, {"relatedId": 1})
        ]
