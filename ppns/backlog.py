"""Stored PPNS pushes per installation: strictly increasing `time`, retention and cap, replay after `last`.

One document per installation holds its retained pushes in `time` order. Every change is a compare-and-set
on `last_time_ms`, so two workers storing for one installation at once can never commit a later `time`
before an earlier one (a reader that has seen `time` T will never later find a push below T).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

from pymongo import AsyncMongoClient
from pymongo.asynchronous.collection import AsyncCollection
from pymongo.errors import DuplicateKeyError

from ppns.protocol import format_time
from pushgw.errors import PushgwError
from pushgw.mongo import app_database
from pushgw.settings import PpnsSettings, Settings

COLLECTION = "_PPNSBacklog"
_MAX_SWAPS = 50
Document = dict[str, Any]
NoLastPolicy = Literal["retained", "unwritten", "none"]
_EMPTY = {"pushes": [], "last_time_ms": 0, "last_time": None, "written_time": None}


class BacklogContentionError(PushgwError):
    """Too many concurrent writers for one installation; the batch is retried by the queue."""


@dataclass(frozen=True, slots=True)
class StoredPush:
    time: str
    push_id: str
    data: dict[str, Any]


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
        for _ in range(_MAX_SWAPS):
            document = await self._collection.find_one({"_id": installation_id})
            pushes: list[Document] = document["pushes"] if document else []
            for entry in pushes:
                if entry["push_id"] == push_id:
                    return _stored(entry)
            last_ms = int(document["last_time_ms"]) if document else 0
            time_ms = max(now_ms, last_ms + 1)
            entry = {
                "time": format_time(time_ms),
                "push_id": push_id,
                "data": data,
                "stored_ms": now_ms,
                "expires_ms": expiry_ms,
            }
            kept = [*self._live(pushes, now_ms), entry][-self._retention.cap :]
            if await self._swap(installation_id, document, last_ms, time_ms, kept):
                return _stored(entry)
        raise BacklogContentionError(f"installation {installation_id}: {_MAX_SWAPS} concurrent writers")

    async def _swap(
        self, installation_id: str, document: Document | None, last_ms: int, time_ms: int, kept: list[Any]
    ) -> bool:
        values = {"pushes": kept, "last_time_ms": time_ms, "last_time": format_time(time_ms)}
        if document is None:
            try:
                await self._collection.insert_one({"_id": installation_id, "written_time": None, **values})
            except DuplicateKeyError:
                return False
            return True
        result = await self._collection.update_one(
            {"_id": installation_id, "last_time_ms": last_ms}, {"$set": values}
        )
        return result.matched_count == 1

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
        """Retained, unexpired pushes strictly after `last`, oldest first, and the cursor to continue from.

        Without `last`: every retained push (`retained`), those never written to a socket (`unwritten`),
        or none (`none`)."""
        document = await self._collection.find_one({"_id": installation_id})
        if document is None:
            return [], last
        after = last
        if last is None and no_last == "unwritten":
            after = document.get("written_time")
        elif last is None and no_last == "none":
            return [], document["last_time"]
        pushes = [
            _stored(entry)
            for entry in self._live(document["pushes"], now_ms)
            if after is None or entry["time"] > after
        ]
        return pushes, after

    async def mark_written(self, installation_id: str, time: str) -> None:
        """Remember the newest push written to the device's socket (for a later handshake without `last`)."""
        await self._collection.update_one(
            {"_id": installation_id, "$or": [{"written_time": None}, {"written_time": {"$lt": time}}]},
            {"$set": {"written_time": time}},
        )

    async def claim(self, installation_id: str, holder: str) -> None:
        """Record `holder` (one connection on one node) as the installation's newest connection."""
        update = {"$set": {"holder": holder}, "$setOnInsert": _EMPTY}
        try:
            await self._collection.update_one({"_id": installation_id}, update, upsert=True)
        except DuplicateKeyError:  # a concurrent first store created the document
            await self._collection.update_one({"_id": installation_id}, {"$set": {"holder": holder}})

    async def presence(self, installation_ids: Sequence[str]) -> dict[str, Presence]:
        """The newest stored push `time` and the newest connection of each installation with a document."""
        cursor = self._collection.find(
            {"_id": {"$in": list(installation_ids)}}, {"last_time": 1, "holder": 1}
        )
        return {
            document["_id"]: Presence(document.get("last_time"), document.get("holder"))
            async for document in cursor
        }


def _unexpired(entry: Document, now_ms: int) -> bool:
    return entry["expires_ms"] is None or entry["expires_ms"] > now_ms


def _stored(entry: Document) -> StoredPush:
    return StoredPush(time=entry["time"], push_id=entry["push_id"], data=entry["data"])


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
