"""`_PushStatus` records in Parse's storage format: ids, the first document, grouped inserts, failures."""

from __future__ import annotations

import asyncio
import json
import secrets
import string
from datetime import datetime, timedelta
from typing import Any

from bson.errors import InvalidDocument
from pymongo.asynchronous.collection import AsyncCollection
from pymongo.errors import BulkWriteError, PyMongoError

from pushgw import parse_quirks
from pushgw.clock import Clock, iso_millis, to_millis
from pushgw.messages import PlanPush
from pushgw.mongo import Document
from pushgw.push import Push

COLLECTION = "_PushStatus"
OWN = "pushgw"  # our bookkeeping inside _PushStatus; Parse readers show it as an ordinary object field
TERMINAL = ("succeeded", "failed")
_OBJECT_ID_ALPHABET = string.ascii_letters + string.digits


def new_object_id(size: int = 10) -> str:
    """A Parse objectId: `size` random alphanumerics, drawn as parse-server cryptoUtils.randomString does."""
    return "".join(_OBJECT_ID_ALPHABET[byte % 62] for byte in secrets.token_bytes(size))


def new_status_document(push_id: str, push: Push, *, now: datetime, scheduled: bool) -> Document:
    """The document Parse's StatusHandler.setInitial writes, field for field and type for type."""
    created = to_millis(now)
    document: Document = {"_id": push_id}
    document["pushTime"] = push.push_time.text if scheduled and push.push_time else iso_millis(created)
    document["query"] = parse_quirks.js_json(push.where)
    document["payload"] = parse_quirks.js_json(push.payload)
    document["source"] = "rest"
    if push.expiry_ms is not None:
        document["expiry"] = parse_quirks.bson_number(push.expiry_ms)
    if push.expiration_interval_s is not None:
        document["expiration_interval"] = parse_quirks.bson_number(push.expiration_interval_s)
    document["status"] = "scheduled" if scheduled else "pending"
    document["numSent"] = 0
    document["pushHash"] = parse_quirks.push_hash(push.payload)
    # Parse's "lock-down" ACL: readable only with the master key.
    document["_wperm"] = []
    document["_rperm"] = []
    document["_acl"] = {}
    document["_created_at"] = created
    document["_updated_at"] = created
    if push.options:
        # JSON text, not a subdocument: body keys may hold characters BSON keys cannot ("$", ".", NUL).
        document[OWN] = {"options": parse_quirks.js_json(push.options)}  # to rebuild scheduled pushes
    return document


def plan_from_status(document: Document, app_id: str, **changes: Any) -> PlanPush:
    """Rebuild a push's PlanPush from its `_PushStatus` (scheduler and watchdog: the row is the truth)."""
    own = document.get(OWN, {})
    return PlanPush(
        app_id=app_id,
        push_id=document["_id"],
        where=json.loads(document["query"]),
        data=json.loads(document["payload"]),
        push_time=document.get("pushTime"),
        expiry_ms=document.get("expiry"),
        expiration_interval_s=document.get("expiration_interval"),
        options=json.loads(own.get("options", "{}")),
        accepted_at=document["_created_at"],
        badge_applied=own.get("badge_applied", False),
        **changes,
    )


class StatusStore:
    """Progress and accounting on one app's `_PushStatus`: leases, checkpoints, idempotent unit records."""

    def __init__(self, collection: AsyncCollection[Document], clock: Clock) -> None:
        self.collection = collection
        self._clock = clock

    async def claim_plan(self, push_id: str, key: str, owner: str, lease_s: float) -> Document | None:
        """Take the planning lease of one plan (`all`, or one UTC offset group); return the plan's saved
        state (`{}` for a fresh plan), or None if it is not ours to run.

        A fresh plan (the usual case) is claimed by one update that also proves it has no state to resume.
        Otherwise an `update_one` then a read, not `find_one_and_update`: SecantusDB runs findAndModify as
        a scan of the whole collection (45 ms at 5,000 pushes, vs 1.2 ms for both of these). Only the
        lease holder writes the plan's fields, so the read sees what the claim left.
        """
        now = self._clock.now()
        plan = f"{OWN}.plans.{key}"
        lease = f"{plan}.lease_until"
        claim = {
            "$set": {
                "status": "running",
                f"{plan}.owner": owner,
                lease: now + timedelta(seconds=lease_s),
                f"{OWN}.progress_at": now,
            },
            "$max": {f"{OWN}.plans_expected": 1},
            "$inc": {f"{OWN}.devices_done": 0, f"{OWN}.audience": 0, f"{OWN}.plans_done": 0},
        }
        live = {"_id": push_id, "status": {"$in": ["pending", "running"]}}
        fresh = await self.collection.update_one({**live, plan: {"$exists": False}}, claim)
        if fresh.matched_count == 1:
            return {}
        resumed = await self.collection.update_one(
            {
                **live,
                f"{plan}.done": {"$ne": True},
                # "no lease or an expired one", without `$or`: SecantusDB drops the `_id` index under a
                # top-level `$or` and scans every push (41 ms vs 0.35 ms at 5,000 pushes).
                lease: {"$not": {"$gte": now}},
            },
            claim,
        )
        if resumed.matched_count != 1:
            return None
        document = await self.collection.find_one({"_id": push_id}, {plan: 1})
        state: Document = ((document or {}).get(OWN) or {}).get("plans", {}).get(key, {})
        return state

    async def checkpoint_plan(
        self, push_id: str, key: str, owner: str, cursor: Document, lease_s: float
    ) -> bool:
        """Record how far planning got and renew the lease; False when the lease was lost."""
        now = self._clock.now()
        prefix = f"{OWN}.plans.{key}"
        fields = {f"{prefix}.{name}": value for name, value in cursor.items()}
        result = await self.collection.update_one(
            {"_id": push_id, f"{prefix}.owner": owner, "status": "running"},
            {
                "$set": {
                    **fields,
                    f"{prefix}.lease_until": now + timedelta(seconds=lease_s),
                    f"{OWN}.progress_at": now,
                }
            },
        )
        return result.matched_count == 1

    async def finish_plan(self, push_id: str, key: str, owner: str, devices: int) -> bool:
        """Mark a plan complete and add its audience; applied once."""
        prefix = f"{OWN}.plans.{key}"
        result = await self.collection.update_one(
            {"_id": push_id, f"{prefix}.owner": owner, f"{prefix}.done": {"$ne": True}, "status": "running"},
            {
                "$set": {f"{prefix}.done": True, f"{OWN}.progress_at": self._clock.now()},
                "$inc": {f"{OWN}.audience": devices, f"{OWN}.plans_done": 1},
            },
        )
        return result.modified_count == 1

    async def record_unit(self, push_id: str, unit: str, increments: dict[str, Any], devices: int) -> bool:
        """Add one work unit's terminal outcomes; a unit already recorded (a redelivery) changes nothing."""
        result = await self.collection.update_one(
            {"_id": push_id, "status": "running", f"{OWN}.units.{unit}": {"$exists": False}},
            {
                "$inc": {**increments, f"{OWN}.devices_done": devices},
                "$set": {f"{OWN}.units.{unit}": True, f"{OWN}.progress_at": self._clock.now()},
            },
        )
        return result.modified_count == 1

    async def finish_only_unit(
        self, push_id: str, key: str, owner: str, increments: dict[str, Any], devices: int
    ) -> bool:
        """Finish a push whose one plan produced one unit, every device terminal: plan done, unit counted
        and `succeeded`, in one write. False (nothing written) unless this is the push's only plan and
        nothing was counted yet; the caller then records the usual way."""
        prefix = f"{OWN}.plans.{key}"
        result = await self.collection.update_one(
            {
                "_id": push_id,
                "status": "running",
                f"{prefix}.owner": owner,
                f"{prefix}.done": {"$ne": True},
                f"{OWN}.plans_expected": 1,
                f"{OWN}.plans_done": 0,
                f"{OWN}.devices_done": 0,
            },
            {
                "$set": {
                    "status": "succeeded",
                    f"{prefix}.done": True,
                    f"{OWN}.progress_at": self._clock.now(),
                },
                "$inc": {
                    **increments,
                    f"{OWN}.audience": devices,
                    f"{OWN}.devices_done": devices,
                    f"{OWN}.plans_done": 1,
                },
                "$unset": {"count": ""},
            },
        )
        return result.modified_count == 1

    async def try_finalize(self, push_id: str) -> bool:
        """`succeeded` once every plan is done and every planned device is counted; one caller wins."""
        document = await self.collection.find_one({"_id": push_id}, {"status": 1, OWN: 1})
        if document is None or document.get("status") != "running":
            return False
        own = document.get(OWN, {})
        done, audience, accounted = (
            own.get("plans_done", 0),
            own.get("audience", 0),
            own.get("devices_done", 0),
        )
        if done < own.get("plans_expected", 1) or accounted != audience:
            return False
        result = await self.collection.update_one(
            {
                "_id": push_id,
                "status": "running",
                f"{OWN}.plans_done": done,
                f"{OWN}.audience": audience,
                f"{OWN}.devices_done": accounted,
            },
            {"$set": {"status": "succeeded"}, "$unset": {f"{OWN}.units": "", "count": ""}},
        )
        return result.modified_count == 1

    async def fail(self, push_id: str, code: int, message: str) -> bool:
        return await fail_push(self.collection, push_id, code, message)


async def fail_push(collection: AsyncCollection[Document], push_id: str, code: int, message: str) -> bool:
    """End a push `failed` with Parse's `errorMessage` shape; never touches a terminal push."""
    result = await collection.update_one(
        {"_id": push_id, "status": {"$nin": list(TERMINAL)}},
        {"$set": {"status": "failed", "errorMessage": {"code": code, "message": message}}},
    )
    return result.modified_count == 1


async def fail_unstarted(
    collection: AsyncCollection[Document], push_id: str, code: int, message: str
) -> bool:
    """Mark a push that never started `failed`; never touches a push a worker already picked up."""
    result = await collection.update_one(
        {"_id": push_id, "status": {"$in": ["pending", "scheduled"]}},
        {"$set": {"status": "failed", "errorMessage": {"code": code, "message": message}}},
    )
    return result.modified_count == 1


class InsertBatcher:
    """Group commit for one collection: concurrent inserts share `insert_many` round trips.

    Each caller still learns the fate of its own document, and one batch is in flight at a time, so the
    database sees a few large writes instead of many small ones under load and single writes when idle.
    """

    def __init__(self, collection: AsyncCollection[Document], max_batch: int = 200) -> None:
        self._collection = collection
        self._max_batch = max_batch
        self._pending: list[tuple[Document, asyncio.Future[None]]] = []
        self._flusher: asyncio.Task[None] | None = None

    async def insert(self, document: Document) -> None:
        """Return once the document is acknowledged with the collection's write concern; raise otherwise."""
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._pending.append((document, future))
        if self._flusher is None or self._flusher.done():
            self._flusher = asyncio.create_task(self._flush())
        await future

    async def _flush(self) -> None:
        while self._pending:
            batch, self._pending = self._pending[: self._max_batch], self._pending[self._max_batch :]
            try:
                await self._collection.insert_many([document for document, _ in batch], ordered=False)
            except BulkWriteError as error:
                failed = {item["index"]: item for item in error.details.get("writeErrors", [])}
                for index, (_, future) in enumerate(batch):
                    _settle(future, _write_error(failed[index]) if index in failed else None)
            except (InvalidDocument, UnicodeEncodeError, OverflowError):
                await self._insert_one_by_one(batch)  # one unencodable document must not fail the others
            except Exception as error:  # every waiter must learn the outcome, whatever it was
                for _, future in batch:
                    _settle(future, error)
            else:
                for _, future in batch:
                    _settle(future, None)

    async def _insert_one_by_one(self, batch: list[tuple[Document, asyncio.Future[None]]]) -> None:
        for document, future in batch:
            try:
                await self._collection.insert_one(document)
            except (InvalidDocument, UnicodeEncodeError, OverflowError) as error:
                _settle(future, PyMongoError(f"document cannot be stored: {error}"))
            except Exception as error:  # every waiter must learn the outcome, whatever it was
                _settle(future, error)
            else:
                _settle(future, None)


def _write_error(item: dict[str, Any]) -> PyMongoError:
    return PyMongoError(f"write error {item.get('code')}: {item.get('errmsg')}")


def _settle(future: asyncio.Future[None], error: BaseException | None) -> None:
    if future.done():
        return
    if error is None:
        future.set_result(None)
    else:
        future.set_exception(error)
