"""`_PushStatus` records in Parse's storage format: ids, the first document, grouped inserts, failures."""

from __future__ import annotations

import asyncio
import json
import secrets
import string
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import bson
from bson.errors import InvalidDocument
from pymongo import UpdateMany, UpdateOne
from pymongo.asynchronous.collection import AsyncCollection
from pymongo.asynchronous.database import AsyncDatabase
from pymongo.errors import BulkWriteError, PyMongoError

from pushgw import parse_quirks
from pushgw.clock import Clock, iso_millis, to_millis
from pushgw.group_commit import GroupCommit, settle
from pushgw.messages import PlanPush
from pushgw.mongo import Document
from pushgw.push import Push

COLLECTION = "_PushStatus"
_RELEASED = datetime(1970, 1, 1, tzinfo=UTC)  # a lease given up: expired for everyone
OWN = "pushgw"  # our bookkeeping inside _PushStatus; Parse readers show it as an ordinary object field
TERMINAL = ("succeeded", "failed")
# Unit records and progress reads (a fan-out's units, not a one-batch push) wait this long for company: a
# 100,000-device push then costs the database ~60 updates and ~50 reads instead of ~200 of each.
FAN_OUT_LINGER_S = 0.01
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

    def __init__(
        self,
        collection: AsyncCollection[Document],
        clock: Clock,
        batcher: UpdateBatcher | None = None,
        reads: ProgressReads | None = None,
        *,
        records: UpdateBatcher | None = None,
    ) -> None:
        self.collection = collection
        self._clock = clock
        # Group commit of the per-unit and per-push commands across a worker's concurrent work (StatusStores):
        # claims and finishes, and unit records (merged per push) on their own, lingering batcher.
        self._batcher = batcher
        self._records = records or batcher
        self._reads = reads

    async def progress(self, push_id: str, unit: str | None = None) -> Document | None:
        """The push's `status` and accounting fields (`PROGRESS_FIELDS`), and whether `unit` is recorded
        (`pushgw.units.<unit>`, the only entry of that map it reads); None if there is no such push."""
        if self._reads is not None:
            return await self._reads.read(push_id, unit)
        return await self.collection.find_one({"_id": push_id}, progress_fields([unit]))

    async def _update(self, update: ConditionalUpdate) -> bool:
        batcher = self._records if update.mergeable else self._batcher
        if batcher is not None:
            return await batcher.update(update)
        where, change = update.build(secrets.token_hex(8), self._clock.now())
        result = await self.collection.update_one({"_id": update.push_id, **where}, change)
        return result.matched_count == 1

    async def claim_plan(self, push_id: str, key: str, owner: str, lease_s: float) -> Document | None:
        """Take the planning lease of one plan (`all`, or one UTC offset group); return the plan's saved
        state (`{}` for a fresh plan), or None if it is not ours to run.

        A fresh plan (the usual case) is claimed by one update that also proves it has no state to resume.
        Otherwise an `update_one` then a read, not `find_one_and_update`: SecantusDB runs findAndModify as
        a scan of the whole collection (45 ms at 5,000 pushes, vs 1.2 ms for both of these). Only the
        lease holder writes the plan's fields, so the read sees what the claim left.
        """
        plan = f"{OWN}.plans.{key}"
        lease = f"{plan}.lease_until"

        def claim(token: str, now: datetime) -> Document:
            return {
                "$set": {
                    "status": "running",
                    f"{plan}.owner": owner,
                    f"{plan}.claim": token,  # tells this claim from any other, read back after a lost race
                    lease: now + timedelta(seconds=lease_s),
                    f"{OWN}.progress_at": now,
                },
                "$max": {f"{OWN}.plans_expected": 1},
                "$inc": {f"{OWN}.devices_done": 0, f"{OWN}.audience": 0, f"{OWN}.plans_done": 0},
            }

        live = {"status": {"$in": ["pending", "running"]}}
        fresh = ConditionalUpdate(
            push_id,
            f"claim {key}",
            lambda token, now: ({**live, plan: {"$exists": False}}, claim(token, now)),
            lambda document, token: _plan(document, key).get("claim") == token,
        )
        if await self._update(fresh):
            return {}
        now = self._clock.now()
        resumed = await self.collection.update_one(
            {
                "_id": push_id,
                **live,
                f"{plan}.done": {"$ne": True},
                # "no lease or an expired one", without `$or`: SecantusDB drops the `_id` index under a
                # top-level `$or` and scans every push (41 ms vs 0.35 ms at 5,000 pushes).
                lease: {"$not": {"$gte": now}},
            },
            claim(secrets.token_hex(8), now),
        )
        if resumed.matched_count != 1:
            return None
        return _plan(await self.collection.find_one({"_id": push_id}, {plan: 1}), key)

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

    async def release_plan(self, push_id: str, key: str, owner: str) -> bool:
        """Give up the planning lease of a plan `owner` stopped running before it was done (an error, a
        lost broker connection, a worker stopping), so that the plan's next delivery resumes it from its
        checkpoint at once instead of after `planner_lease_s`; False if it was not `owner`'s."""
        prefix = f"{OWN}.plans.{key}"
        result = await self.collection.update_one(
            {"_id": push_id, f"{prefix}.owner": owner, f"{prefix}.done": {"$ne": True}},
            {"$set": {f"{prefix}.lease_until": _RELEASED}},
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
        record = ConditionalUpdate(
            push_id,
            f"unit {unit}",
            lambda token, now: (
                {"status": "running", f"{OWN}.units.{unit}": {"$exists": False}},
                {
                    "$inc": {**increments, f"{OWN}.devices_done": devices},
                    # the token: which delivery of the unit recorded it, read back after a lost race
                    "$set": {f"{OWN}.units.{unit}": token, f"{OWN}.progress_at": now},
                },
            ),
            lambda document, token: ((document or {}).get(OWN) or {}).get("units", {}).get(unit) == token,
            mergeable=True,
        )
        return await self._update(record)

    async def finish_only_unit(
        self, push_id: str, key: str, owner: str, increments: dict[str, Any], devices: int
    ) -> bool:
        """Finish a push whose one plan produced one unit, every device terminal: plan done, unit counted
        and `succeeded`, in one write. False (nothing written) unless this is the push's only plan and
        nothing was counted yet; the caller then records the usual way."""
        prefix = f"{OWN}.plans.{key}"
        finish = ConditionalUpdate(
            push_id,
            f"finish {key}",
            lambda _, now: (
                {
                    "status": "running",
                    f"{prefix}.owner": owner,
                    f"{prefix}.done": {"$ne": True},
                    f"{OWN}.plans_expected": 1,
                    f"{OWN}.plans_done": 0,
                    f"{OWN}.devices_done": 0,
                },
                _only_unit_finished(prefix, increments, devices, now),
            ),
            # Only the plan's owner ever marks it done, and it has not done so any other way yet.
            lambda document, _: bool(
                document
                and document.get("status") == "succeeded"
                and _plan(document, key).get("done") is True
                and _plan(document, key).get("owner") == owner
            ),
        )
        return await self._update(finish)

    async def finish_unclaimed(
        self, push_id: str, key: str, owner: str, increments: dict[str, Any], devices: int
    ) -> bool:
        """Finish a still `pending` push, never claimed, whose only unit was sent in full: plan done, unit
        counted and `succeeded`, in one write instead of a claim and a finish (workers/planner.py, "sent
        before claimed"). False (nothing written) once anyone claimed, cancelled or finished it."""
        prefix = f"{OWN}.plans.{key}"
        finish = ConditionalUpdate(
            push_id,
            f"claim {key}",  # the slot of the claim it replaces: never in one write with another claim
            lambda token, now: (
                {"status": "pending", prefix: {"$exists": False}},
                _only_unit_finished(
                    prefix, increments, devices, now, {f"{prefix}.owner": owner, f"{prefix}.claim": token}
                )
                | {"$max": {f"{OWN}.plans_expected": 1}},
            ),
            lambda document, token: (
                (document or {}).get("status") == "succeeded" and _plan(document, key).get("claim") == token
            ),
        )
        return await self._update(finish)

    async def try_finalize(self, push_id: str) -> bool:
        """`succeeded` once every plan is done and every planned device is counted; one caller wins."""
        document = await self.progress(push_id)
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


def _only_unit_finished(
    prefix: str, increments: dict[str, Any], devices: int, now: datetime, claim: Document | None = None
) -> Document:
    """The update that finishes a push of one plan and one unit: plan done, unit counted, `succeeded`."""
    return {
        "$set": {"status": "succeeded", f"{prefix}.done": True, f"{OWN}.progress_at": now, **(claim or {})},
        "$inc": {
            **increments,
            f"{OWN}.audience": devices,
            f"{OWN}.devices_done": devices,
            f"{OWN}.plans_done": 1,
        },
        "$unset": {"count": ""},
    }


def _plan(document: Document | None, key: str) -> Document:
    """One plan's saved state inside a `_PushStatus` document (`{}` when absent)."""
    state: Document = ((document or {}).get(OWN) or {}).get("plans", {}).get(key, {})
    return state


async def fail_push(collection: AsyncCollection[Document], push_id: str, code: int, message: str) -> bool:
    """End a push `failed` with Parse's `errorMessage` shape; never touches a terminal push."""
    return await _fail_where(collection, push_id, {"status": {"$nin": list(TERMINAL)}}, code, message)


async def fail_unplanned(
    collection: AsyncCollection[Document], push_id: str, code: int, message: str
) -> bool:
    """Mark a push no planner of ours ever claimed `failed` (e.g. one only Parse Server's queue fed)."""
    unplanned = {"status": {"$nin": list(TERMINAL)}, f"{OWN}.plans": {"$exists": False}}
    return await _fail_where(collection, push_id, unplanned, code, message)


async def fail_unstarted(
    collection: AsyncCollection[Document], push_id: str, code: int, message: str
) -> bool:
    """Mark a push that never started `failed`; never touches a push a worker already picked up."""
    unstarted = {"status": {"$in": ["pending", "scheduled"]}}
    return await _fail_where(collection, push_id, unstarted, code, message)


async def _fail_where(
    collection: AsyncCollection[Document], push_id: str, where: Document, code: int, message: str
) -> bool:
    result = await collection.update_one(
        {"_id": push_id, **where},
        {"$set": {"status": "failed", "errorMessage": {"code": code, "message": message}}},
    )
    return result.modified_count == 1


class InsertBatcher(GroupCommit[Document, None]):
    """Group commit of inserts into one collection (`insert_many`)."""

    def __init__(self, collection: AsyncCollection[Document], max_batch: int = 200) -> None:
        super().__init__(max_batch)
        self._collection = collection

    async def insert(self, document: Document) -> None:
        """Return once the document is acknowledged with the collection's write concern; raise otherwise."""
        await self._submit(document)

    async def _write(self, batch: list[tuple[Document, asyncio.Future[None]]]) -> None:
        try:
            await self._collection.insert_many([document for document, _ in batch], ordered=False)
        except BulkWriteError as error:
            failed = {item["index"]: item for item in error.details.get("writeErrors", [])}
            for index, (_, future) in enumerate(batch):
                settle(future, _write_error(failed[index]) if index in failed else None)
        except (InvalidDocument, UnicodeEncodeError, OverflowError):
            await self._insert_one_by_one(batch)  # one unencodable document must not fail the others
        else:
            for _, future in batch:
                settle(future, None)

    async def _insert_one_by_one(self, batch: list[tuple[Document, asyncio.Future[None]]]) -> None:
        for document, future in batch:
            try:
                await self._collection.insert_one(document)
            except (InvalidDocument, UnicodeEncodeError, OverflowError) as error:
                settle(future, PyMongoError(f"document cannot be stored: {error}"))
            except Exception as error:  # every waiter must learn the outcome, whatever it was
                settle(future, error)
            else:
                settle(future, None)


@dataclass(frozen=True, slots=True)
class ConditionalUpdate:
    """One conditional update of the `_PushStatus` document `push_id`.

    `build(token, now)` gives its filter (without `_id`) and its update, with the writer's random `token`
    and time in them where it needs a mark of its own or a timestamp; `applied(document, token)` tells from
    the document, read back, whether this very update was applied. Updates of one document with the same
    `slot` (one plan's claim, one unit's record) never share a write: their marks would be alike.
    """

    push_id: str
    slot: str
    build: Callable[[str, datetime], tuple[Document, Document]]
    applied: Callable[[Document | None, str], bool]
    mergeable: bool = False  # may be one update with the push's other mergeable ones (unit records)


_Waiting = tuple[ConditionalUpdate, asyncio.Future[bool]]


@dataclass(slots=True)
class _Operation:
    """One command of a bulk write: its waiters, and the documents it must match for all of them to be
    applied (an `update_many` one per waiter; a merged update one for all its waiters)."""

    where: Document
    update: Document
    members: list[_Waiting]
    merged: bool = False

    def command(self) -> UpdateOne | UpdateMany:
        ids = sorted({op.push_id for op, _ in self.members})
        if len(ids) == 1:
            return UpdateOne({"_id": ids[0], **self.where}, self.update)
        return UpdateMany({"_id": {"$in": ids}, **self.where}, self.update)

    @property
    def expected(self) -> int:
        return 1 if self.merged else len(self.members)


def merge_updates(parts: list[tuple[Document, Document]]) -> tuple[Document, Document] | None:
    """One filter and update doing what every part does, on the same document (None: they conflict).

    Filters are combined by conjunction (a field in two parts must have the same condition), `$inc`s are
    added up, and `$set`/`$unset`s combined (a field in two parts must get the same value)."""
    where: Document = {}
    update: Document = {}
    for part_where, part_update in parts:
        for field, condition in part_where.items():
            if where.setdefault(field, condition) != condition:
                return None
        for operator, fields in part_update.items():
            target = update.setdefault(operator, {})
            for field, value in fields.items():
                if operator == "$inc":
                    target[field] = target.get(field, 0) + value
                elif target.setdefault(field, value) != value:
                    return None
    if any(field in update.get("$inc", {}) for field in update.get("$set", {})):
        return None
    return where, update


class UpdateBatcher(GroupCommit[ConditionalUpdate, bool]):
    """Group commit of conditional updates on one collection: one `bulk_write` per round trip, in which the
    updates that came out identical for several documents (the claims of fresh plans, the finishes of
    one-device pushes) are one `update_many` over their `_id`s (SecantusDB: ~30 % less per document).

    A bulk write reports only how many documents matched. When all did (the usual case) each caller gets
    True; when fewer did (a lost race, e.g. two workers claiming one plan), the documents are read back
    once and each update's own `applied` check tells its caller what happened.
    """

    def __init__(
        self, collection: AsyncCollection[Document], clock: Clock, max_batch: int = 100, linger_s: float = 0.0
    ) -> None:
        super().__init__(max_batch, linger_s)
        self._collection = collection
        self._clock = clock

    async def update(self, update: ConditionalUpdate) -> bool:
        """True when this update matched its document (and was applied); raise when the write failed."""
        return await self._submit(update)

    async def _write(self, batch: list[_Waiting]) -> None:
        seen: set[tuple[str, str]] = set()
        now_ops: list[_Waiting] = []
        later: list[_Waiting] = []
        for entry in batch:
            slot = (entry[0].push_id, entry[0].slot)
            (later if slot in seen else now_ops).append(entry)
            seen.add(slot)
        await self._write_distinct(now_ops)
        if later:
            await self._write(later)

    async def _write_distinct(self, batch: list[_Waiting], merge: bool = True) -> None:
        token, now = secrets.token_hex(8), self._clock.now()
        operations = self._operations(batch, token, now, merge)
        failed: dict[int, Document] = {}
        try:
            result = await self._collection.bulk_write(
                [operation.command() for operation in operations], ordered=False
            )
            matched = result.matched_count
        except BulkWriteError as error:
            if error.details.get("writeConcernErrors"):
                raise  # not known to be durable: every caller fails, as `update_one` would have
            failed = {item["index"]: item for item in error.details.get("writeErrors", [])}
            matched = int(error.details.get("nMatched", 0))
        if not failed and matched == sum(operation.expected for operation in operations):
            for _, future in batch:
                settle(future, True)
            return
        again = await self._settle_from_documents(batch, operations, failed, token)
        if again:
            await self._write_distinct(again, merge=False)

    async def _settle_from_documents(
        self, batch: list[_Waiting], operations: list[_Operation], failed: dict[int, Document], token: str
    ) -> list[_Waiting]:
        """After a partial match: read the documents back, tell each caller whether its update was applied;
        the members of a merged update that did not apply, to be written again one by one."""
        ids = sorted({op.push_id for op, _ in batch})
        documents = {
            document["_id"]: document async for document in self._collection.find({"_id": {"$in": ids}})
        }
        again: list[_Waiting] = []
        for index, operation in enumerate(operations):
            refused = failed.get(index)
            if operation.merged and refused is None:
                document = documents.get(operation.members[0][0].push_id)
                if all(op.applied(document, token) for op, _ in operation.members):
                    for _, future in operation.members:
                        settle(future, True)
                else:  # one member's condition failed the whole update: each is retried on its own
                    again += operation.members
                continue
            for op, future in operation.members:
                applied = op.applied(documents.get(op.push_id), token)
                settle(future, _write_error(refused) if refused is not None and not applied else applied)
        return again

    @staticmethod
    def _operations(batch: list[_Waiting], token: str, now: datetime, merge: bool) -> list[_Operation]:
        """The bulk write's commands: the mergeable updates of one document as one update, then the
        updates that came out identical for several documents as one `update_many`."""
        built = [(entry, *entry[0].build(token, now)) for entry in batch]
        operations: list[_Operation] = []
        rest: list[tuple[_Waiting, Document, Document]] = []
        by_push: dict[str, list[tuple[_Waiting, Document, Document]]] = {}
        for entry, where, update in built:
            if merge and entry[0].mergeable:
                by_push.setdefault(entry[0].push_id, []).append((entry, where, update))
            else:
                rest.append((entry, where, update))
        for parts in by_push.values():
            merged = (
                merge_updates([(where, update) for _, where, update in parts]) if len(parts) > 1 else None
            )
            if merged is None:
                rest += parts
            else:
                operations.append(_Operation(*merged, [entry for entry, _, _ in parts], merged=True))
        groups: dict[bytes, _Operation] = {}  # by filter and update
        for entry, where, update in rest:
            key = bson.encode({"f": where, "u": update})
            groups.setdefault(key, _Operation(where, update, []))
            groups[key].members.append(entry)
        return operations + list(groups.values())


PROGRESS_FIELDS = {
    "status": 1,
    f"{OWN}.plans_done": 1,
    f"{OWN}.plans_expected": 1,
    f"{OWN}.audience": 1,
    f"{OWN}.devices_done": 1,
}


def progress_fields(units: Iterable[str | None]) -> dict[str, int]:
    """`PROGRESS_FIELDS` and the `units` entries asked for: the map holds one entry per recorded unit of the
    push (2,000 at a million devices), and every unit's sender reads progress twice."""
    return PROGRESS_FIELDS | {f"{OWN}.units.{unit}": 1 for unit in units if unit is not None}


class ProgressReads(GroupCommit[tuple[str, str | None], Document | None]):
    """Group commit of progress reads: the units of one push sent at once (a fan-out) share one read.

    A read asked for while another is in flight waits for the next one, so it never sees a state older
    than the moment it was asked for. Callers share the returned documents: they must not change them.
    """

    def __init__(
        self, collection: AsyncCollection[Document], max_batch: int = 50, linger_s: float = 0.0
    ) -> None:
        super().__init__(max_batch, linger_s)
        self._collection = collection

    async def read(self, push_id: str, unit: str | None = None) -> Document | None:
        return await self._submit((push_id, unit))

    async def _write(
        self, batch: list[tuple[tuple[str, str | None], asyncio.Future[Document | None]]]
    ) -> None:
        ids = sorted({push_id for (push_id, _), _ in batch})
        query = {"_id": ids[0] if len(ids) == 1 else {"$in": ids}}
        fields = progress_fields(unit for (_, unit), _ in batch)
        found = {document["_id"]: document async for document in self._collection.find(query, fields)}
        for (push_id, _), future in batch:
            settle(future, found.get(push_id))


class StatusStores:
    """A worker's `StatusStore` per `_PushStatus` collection, sharing that collection's group commits."""

    def __init__(self, clock: Clock) -> None:
        self._clock = clock
        self._stores: dict[tuple[str, str], StatusStore] = {}

    def store(self, database: AsyncDatabase[Document], prefix: str) -> StatusStore:
        collection = database.get_collection(prefix + COLLECTION)
        name = (database.name, collection.name)
        if name not in self._stores:
            self._stores[name] = StatusStore(
                collection,
                self._clock,
                UpdateBatcher(collection, self._clock),
                ProgressReads(collection, linger_s=FAN_OUT_LINGER_S),
                records=UpdateBatcher(collection, self._clock, linger_s=FAN_OUT_LINGER_S),
            )
        return self._stores[name]


def _write_error(item: dict[str, Any]) -> PyMongoError:
    return PyMongoError(f"write error {item.get('code')}: {item.get('errmsg')}")
