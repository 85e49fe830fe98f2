"""Stored PPNS pushes per installation: strictly increasing `time`, retention and cap, replay after `last`.

One document per installation holds its retained pushes in `time` order, the newest stored `time`
(`last_time`), the newest `time` written to a socket (`written_time`) and the installation's newest
connection (`holder` = `<node id>/<connection id>`, the presence registry). Every store is a compare-and-set
on `last_time_ms` *and* `holder`, so two workers storing for one installation at once can never commit a
later `time` before an earlier one (a reader that has seen `time` T will never later find a push below T),
and the holder a store returns is the one that was current when the push committed (a handshake that claims
the installation afterwards reads the push in its replay). Each entry also keeps `prev`, the `time` of the
installation's previous push, so a node receiving the push live can tell a gap from the next push in line.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

from pymongo import AsyncMongoClient, InsertOne, UpdateOne
from pymongo.asynchronous.collection import AsyncCollection
from pymongo.errors import BulkWriteError, DuplicateKeyError

from ppns.protocol import format_time
from pushgw.errors import PushgwError
from pushgw.mongo import app_database
from pushgw.settings import PpnsSettings, Settings

COLLECTION = "_PPNSBacklog"
_MAX_SWAPS = 50
Document = dict[str, Any]
NoLastPolicy = Literal["retained", "unwritten", "none"]
_EMPTY = {"pushes": [], "last_time_ms": 0, "last_time": None, "written_time": None}
# SecantusDB answers `_id $in` in time quadratic in the list (100 ids: 12 ms, 500: 0.2 s, 2,000: 3 s).
IN_CHUNK = 50


class BacklogContentionError(PushgwError):
    """Too many concurrent writers for one installation; the batch is retried by the queue."""


@dataclass(frozen=True, slots=True)
class StoredPush:
    time: str
    push_id: str
    data: dict[str, Any]
    prev: str | None = None  # the `time` of the installation's previous push (None: the first one)


@dataclass(frozen=True, slots=True)
class StoreRequest:
    installation_id: str
    push_id: str
    data: dict[str, Any]
    expiry_ms: float | None


@dataclass(frozen=True, slots=True)
class Stored:
    """A push as committed, with the installation's newest connection at that moment (None: never held)."""

    installation_id: str
    push: StoredPush
    holder: str | None


@dataclass(frozen=True, slots=True)
class Presence:
    newest_time: str | None
    holder: str | None


@dataclass(frozen=True, slots=True)
class Retention:
    window_ms: int
    cap: int


class Backlog:
    """The stored pushes of one app's installations (collection `_PPNSBacklog` in the app's database)."""

    def __init__(self, collection: AsyncCollection[Document], retention: Retention) -> None:
        self._collection = collection
        self._retention = retention

    async def store(
        self, installation_id: str, push_id: str, data: dict[str, Any], expiry_ms: float | None, now_ms: int
    ) -> StoredPush:
        """Store a push once (the same `push_id` again returns the stored one) with a `time` later than
        every earlier push of the installation; older and expired pushes beyond the limits are dropped."""
        stored = await self.store_one(StoreRequest(installation_id, push_id, data, expiry_ms), now_ms)
        return stored.push

    async def store_one(self, request: StoreRequest, now_ms: int) -> Stored:
        """`store`, returning the holder the push committed under."""
        for _ in range(_MAX_SWAPS):
            document = await self._collection.find_one({"_id": request.installation_id})
            stored, operation = self._plan(request, document, now_ms)
            if operation is None:
                return stored
            if await self._apply(operation):
                return stored
        raise BacklogContentionError(
            f"installation {request.installation_id}: {_MAX_SWAPS} concurrent writers"
        )

    async def store_many(self, requests: Sequence[StoreRequest], now_ms: int) -> list[Stored | Exception]:
        """Store one push per installation (distinct installations) with one read and one bulk write per
        `IN_CHUNK` installations; an installation whose compare-and-set lost a race is retried alone with
        `store_one`. Per request: the stored push or the error it failed with (PyMongoError or contention)."""
        results: list[Stored | Exception] = []
        for start in range(0, len(requests), IN_CHUNK):
            results += await self._store_chunk(requests[start : start + IN_CHUNK], now_ms)
        return results

    async def _store_chunk(self, requests: Sequence[StoreRequest], now_ms: int) -> list[Stored | Exception]:
        ids = [request.installation_id for request in requests]
        documents = {
            document["_id"]: document async for document in self._collection.find({"_id": {"$in": ids}})
        }
        planned = [
            self._plan(request, documents.get(request.installation_id), now_ms) for request in requests
        ]
        operations = [operation for _, operation in planned if operation is not None]
        complete = True
        if operations:
            try:
                result = await self._collection.bulk_write(operations, ordered=False)
                complete = result.matched_count + result.inserted_count == len(operations)
            except BulkWriteError:
                complete = False  # e.g. a concurrent first store inserted one of the documents
        if complete:
            return [stored for stored, _ in planned]
        # Some compare-and-sets lost a race: `store_one` is idempotent per push id, so redo them all.
        results: list[Stored | Exception] = []
        for request, (stored, operation) in zip(requests, planned, strict=True):
            if operation is None:
                results.append(stored)
                continue
            try:
                results.append(await self.store_one(request, now_ms))
            except Exception as error:
                results.append(error)
        return results

    def _plan(
        self, request: StoreRequest, document: Document | None, now_ms: int
    ) -> tuple[Stored, InsertOne[Document] | UpdateOne | None]:
        """The push `request` becomes against `document`, and the write that commits it (None: stored
        already, same push id)."""
        holder = document.get("holder") if document else None
        pushes: list[Document] = document["pushes"] if document else []
        previous: Document | None = None
        for entry in pushes:
            if entry["push_id"] == request.push_id:
                return Stored(request.installation_id, _stored(entry, previous), holder), None
            previous = entry
        last_ms = int(document["last_time_ms"]) if document else 0
        prev = document.get("last_time") if document else None
        time_ms = max(now_ms, last_ms + 1)
        entry = {
            "time": format_time(time_ms),
            "push_id": request.push_id,
            "data": request.data,
            "stored_ms": now_ms,
            "expires_ms": request.expiry_ms,
            "prev": prev,
        }
        kept = [*self._live(pushes, now_ms), entry][-self._retention.cap :]
        values = {"pushes": kept, "last_time_ms": time_ms, "last_time": entry["time"]}
        stored = Stored(request.installation_id, _stored(entry, None), holder)
        if document is None:
            return stored, InsertOne({"_id": request.installation_id, "written_time": None, **values})
        # `holder` in the filter: a handshake claiming the installation meanwhile makes this store retry,
        # so the holder returned is the one current at commit time.
        where = {"_id": request.installation_id, "last_time_ms": last_ms, "holder": holder}
        return stored, UpdateOne(where, {"$set": values})

    async def _apply(self, operation: InsertOne[Document] | UpdateOne) -> bool:
        try:
            result = await self._collection.bulk_write([operation])
        except (BulkWriteError, DuplicateKeyError):
            return False
        return result.matched_count + result.inserted_count == 1

    def _live(self, pushes: Sequence[Document], now_ms: int) -> list[Document]:
        oldest_ms = now_ms - self._retention.window_ms
        return [
            entry
            for entry in pushes
            if entry["stored_ms"] >= oldest_ms
            and (entry["expires_ms"] is None or entry["expires_ms"] > now_ms)
        ]

    async def replay(
        self, installation_id: str, last: str | None, no_last: NoLastPolicy, now_ms: int
    ) -> tuple[list[StoredPush], str | None]:
        """Retained, unexpired pushes strictly after `last`, oldest first, and the cursor to continue from
        once they are written: the installation's newest stored `time` (expired and dropped pushes count
        as passed), or `last` if that is newer.

        Without `last`: every retained push (`retained`), those never written to a socket (`unwritten`),
        or none (`none`)."""
        document = await self._collection.find_one({"_id": installation_id})
        return self.replay_of(document, last, no_last, now_ms)

    def replay_of(
        self, document: Document | None, last: str | None, no_last: NoLastPolicy, now_ms: int
    ) -> tuple[list[StoredPush], str | None]:
        """`replay` from a document already read (e.g. by `claim`)."""
        if document is None:
            return [], last
        after = last
        if last is None and no_last == "unwritten":
            after = document.get("written_time")
        elif last is None and no_last == "none":
            return [], document.get("last_time")
        pushes = [
            _stored(entry, None)
            for entry in self._live(document["pushes"], now_ms)
            if after is None or entry["time"] > after
        ]
        newest = document.get("last_time")
        cursor = after if newest is None or (after is not None and after > newest) else newest
        return pushes, cursor

    async def mark_written(self, installation_id: str, time: str) -> None:
        """Remember the newest push written to the device's socket (for a later handshake without `last`)."""
        await self.mark_written_many({installation_id: time})

    async def mark_written_many(self, written: dict[str, str]) -> None:
        """`mark_written` for many installations: one bulk write per `IN_CHUNK` (`$max`: never backwards;
        a null `written_time` sorts below every string)."""
        operations = [
            UpdateOne({"_id": installation_id}, {"$max": {"written_time": time}})
            for installation_id, time in written.items()
        ]
        for start in range(0, len(operations), IN_CHUNK):
            await self._collection.bulk_write(operations[start : start + IN_CHUNK], ordered=False)

    async def claim(self, installation_id: str, holder: str) -> tuple[str | None, Document]:
        """Record `holder` (one connection on one node) as the installation's newest connection; returns
        the holder it replaced (None: none) and the document as of the claim, so the handshake's replay
        needs no second read: the compare-and-set is on `holder` *and* `last_time_ms`, so no push was
        stored between the read and the claim, and every push stored after it routes to `holder`.
        A read and a compare-and-set, not findAndModify (a collection scan on SecantusDB)."""
        for _ in range(_MAX_SWAPS):
            document = await self._collection.find_one({"_id": installation_id})
            if document is None:
                document = {"_id": installation_id, **_EMPTY, "holder": holder}
                try:
                    await self._collection.insert_one(dict(document))
                except DuplicateKeyError:  # a concurrent first store created the document
                    continue
                return None, document
            previous = document.get("holder")
            result = await self._collection.update_one(
                {"_id": installation_id, "holder": previous, "last_time_ms": document["last_time_ms"]},
                {"$set": {"holder": holder}},
            )
            if result.matched_count == 1:
                document["holder"] = holder
                return (previous if isinstance(previous, str) else None), document
        raise BacklogContentionError(f"installation {installation_id}: {_MAX_SWAPS} concurrent claims")

    async def presence(self, installation_ids: Sequence[str]) -> dict[str, Presence]:
        """The newest stored push `time` and the newest connection of each installation with a document."""
        found: dict[str, Presence] = {}
        ids = list(installation_ids)
        for start in range(0, len(ids), IN_CHUNK):
            cursor = self._collection.find(
                {"_id": {"$in": ids[start : start + IN_CHUNK]}}, {"last_time": 1, "holder": 1}
            )
            async for document in cursor:
                found[document["_id"]] = Presence(document.get("last_time"), document.get("holder"))
        return found


def _unexpired(entry: Document, now_ms: int) -> bool:
    return entry["expires_ms"] is None or entry["expires_ms"] > now_ms


def _stored(entry: Document, previous: Document | None) -> StoredPush:
    """An entry; `prev` from the entry (or, for entries stored before `prev` was kept, the one before it)."""
    prev = entry["prev"] if "prev" in entry else (previous["time"] if previous else None)
    return StoredPush(time=entry["time"], push_id=entry["push_id"], data=entry["data"], prev=prev)


def open_backlogs(client: AsyncMongoClient[Document], settings: Settings) -> dict[str, Backlog]:
    """The backlog of every configured app, by app id, with the `[ppns]` retention limits."""
    ppns = settings.ppns or PpnsSettings()
    retention = Retention(window_ms=int(ppns.retention_s * 1000), cap=ppns.backlog_cap)
    return {
        app.app_id: Backlog(
            app_database(client, app).get_collection(app.collection_prefix + COLLECTION), retention
        )
        for app in settings.apps
    }
