"""Stored PPNS pushes: one per-app log of entries in commit order, replay after `last`, and presence.

**The log** (`_PPNSLog`): each stored batch of one push is one entry `{_id: seq, time, push_id, data,
installations: [...]}`. Entries are written in a transaction that also advances the app's sequence document
(`_PPNSSequence`, `{seq, time_ms}`): concurrent writers conflict on that document and retry, so entries commit
in `seq` order and `seq` and `time` only ever grow. A device therefore sees strictly increasing `time`s, and a
reader that has seen `time` T never later finds a push below T, without any installation's state being read
or written: a broadcast to 500 installations is one insert and one update, not 500 compare-and-sets. Each
worker group-commits its stores: the entries of every batch it stores at once share one transaction.

**Presence** (`_PPNSBacklog`, one small document per installation): the installation's newest connection
(`holder` = `<node id>/<connection id>`, claimed by a read and a compare-and-set) and the newest `time`
written to a socket (`written_time`). Documents written by versions before the log also hold `pushes`; those
are still replayed (read only, never written again).

Retention: an entry is replayed while it is younger than the retention window (a TTL index removes it
later), unexpired, and among the installation's newest `backlog_cap` retained pushes.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import hashlib
import json
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Literal

from pymongo import ASCENDING, AsyncMongoClient, UpdateOne
from pymongo.asynchronous.client_session import AsyncClientSession
from pymongo.asynchronous.database import AsyncDatabase
from pymongo.errors import BulkWriteError, DuplicateKeyError, OperationFailure, PyMongoError

from ppns.protocol import format_time
from pushgw.errors import PushgwError
from pushgw.group_commit import GroupCommit, settle
from pushgw.logs import get_logger
from pushgw.mongo import app_database
from pushgw.settings import PpnsSettings, Settings

log = get_logger(__name__)
COLLECTION = "_PPNSBacklog"  # presence, one document per installation
LOG = "_PPNSLog"
SEQUENCE = "_PPNSSequence"
WRITTEN = "_PPNSWritten"  # which installations a push was written to (the `unwritten` replay policy)
_SEQUENCE_ID = "log"
_MAX_SWAPS = 50
_STORE_ATTEMPTS = 3
Document = dict[str, Any]
NoLastPolicy = Literal["retained", "unwritten", "none"]
# SecantusDB answers `_id $in` in time quadratic in the list (100 ids: 12 ms, 500: 0.2 s, 2,000: 3 s).
IN_CHUNK = 50
_WITHOUT_AUDIENCE = {"installations": 0}


class BacklogContentionError(PushgwError):
    """Too many concurrent writers for one installation; the batch is retried by the queue."""


@dataclass(frozen=True, slots=True)
class StoredPush:
    time: str
    push_id: str
    data: dict[str, Any]
    seq: int | None = None  # its log entry (None: kept in a presence document by an earlier version)


@dataclass(frozen=True, slots=True)
class StoreRequest:
    installation_id: str
    push_id: str
    data: dict[str, Any]
    expiry_ms: float | None


@dataclass(frozen=True, slots=True)
class Entry:
    """One log entry: one push for several installations, `seq` in the app's commit order."""

    seq: int
    time: str
    push_id: str
    data: dict[str, Any]
    installations: list[str]

    def push(self) -> StoredPush:
        return StoredPush(time=self.time, push_id=self.push_id, data=self.data, seq=self.seq)


@dataclass(frozen=True, slots=True)
class Stored:
    """A push as committed for one installation, and the entry it is part of."""

    installation_id: str
    push: StoredPush
    entry: Entry


@dataclass(frozen=True, slots=True)
class Presence:
    holder: str | None


@dataclass(frozen=True, slots=True)
class Retention:
    window_ms: int
    cap: int


@dataclass(frozen=True, slots=True)
class _Group:
    """The requests of one store that become one entry: same push, same payload, same expiry."""

    key: str
    push_id: str
    data: dict[str, Any]
    expiry_ms: float | None
    installations: list[str]


class _LogWriter(GroupCommit[list[_Group], dict[str, Entry]]):
    """The stores of one worker at once: one transaction for all their entries (entries already stored,
    e.g. by a redelivered batch, are returned as they are)."""

    def __init__(self, backlog: Backlog) -> None:
        super().__init__(max_batch=64)
        self._backlog = backlog

    async def write(self, groups: list[_Group]) -> dict[str, Entry]:
        return await self._submit(groups)

    async def _write(self, batch: list[tuple[list[_Group], asyncio.Future[dict[str, Entry]]]]) -> None:
        groups = {group.key: group for groups, _ in batch for group in groups}
        entries = await self._backlog.commit(list(groups.values()))
        for _, future in batch:
            settle(future, entries)


class Backlog:
    """The stored pushes and the presence of one app's installations (collections in the app's database)."""

    def __init__(self, database: AsyncDatabase[Document], prefix: str, retention: Retention) -> None:
        self._client = database.client
        self._presence = database.get_collection(prefix + COLLECTION)
        self._log = database.get_collection(prefix + LOG)
        self._sequence = database.get_collection(prefix + SEQUENCE)
        self._written = database.get_collection(prefix + WRITTEN)
        self._retention = retention
        self._ready = False
        self._writer = _LogWriter(self)

    async def ensure(self) -> None:
        """The log's indexes and the sequence document (once per process)."""
        if self._ready:
            return
        await self._log.create_index([("installations", ASCENDING), ("time", ASCENDING)])
        await self._written.create_index([("installations", ASCENDING), ("time", ASCENDING)])
        await self._log.create_index("key", unique=True)
        for collection in (self._log, self._written):
            try:
                await collection.create_index(
                    "stored_at", expireAfterSeconds=max(1, self._retention.window_ms // 1000)
                )
            except OperationFailure as error:  # retention changed: the read-time check still applies it
                log.warning("ppns_log_ttl_index_kept", error=str(error))
        with contextlib.suppress(DuplicateKeyError):
            await self._sequence.insert_one({"_id": _SEQUENCE_ID, "seq": 0, "time_ms": 0})
        self._ready = True

    # --- storing -----------------------------------------------------------------------------------------

    async def store(
        self, installation_id: str, push_id: str, data: dict[str, Any], expiry_ms: float | None
    ) -> StoredPush:
        """Store one push for one installation (the same push again returns the stored one)."""
        stored = (await self.store_many([StoreRequest(installation_id, push_id, data, expiry_ms)]))[0]
        if isinstance(stored, Exception):
            raise stored
        return stored.push

    async def store_many(self, requests: Sequence[StoreRequest]) -> list[Stored | Exception]:
        """Store a batch: one entry per distinct (push, payload, expiry), all in one transaction shared with
        the worker's other stores at that moment. The same batch stored again (a redelivery) returns the
        entries already committed. Per request: its stored push, or the error the store failed with."""
        if not requests:
            return []
        groups, keys = _groups(requests)
        try:
            await self.ensure()
            entries = await self._writer.write(groups)
        except (PyMongoError, BacklogContentionError) as error:
            return [error] * len(requests)
        return [
            Stored(request.installation_id, entries[key].push(), entries[key])
            for request, key in zip(requests, keys, strict=True)
        ]

    async def commit(self, groups: list[_Group]) -> dict[str, Entry]:
        """The entries of `groups` by key: committed now, or, for a batch stored before (a redelivery, or
        a concurrent store of the same batch: the transaction meets its key), the entry already there."""
        found: dict[str, Entry] = {}
        missing = groups
        for _ in range(_STORE_ATTEMPTS):
            try:
                async with self._client.start_session() as session:
                    committed = await session.with_transaction(
                        functools.partial(self._append, groups=missing)
                    )
            except (DuplicateKeyError, BulkWriteError) as error:
                if not _duplicate(error):
                    raise
                keys = [group.key for group in missing]
                async for document in self._log.find({"key": {"$in": keys}}):
                    found[document["key"]] = _entry(document)
                missing = [group for group in missing if group.key not in found]
                if not missing:
                    return found
                continue
            return found | dict(committed)
        raise BacklogContentionError(f"{len(groups)} log entries: {_STORE_ATTEMPTS} conflicting stores")

    async def _append(self, session: AsyncClientSession, groups: list[_Group]) -> list[tuple[str, Entry]]:
        """Inside the transaction: the next `seq`s and `time`s after the sequence document's, the entries,
        and the sequence document advanced (the document concurrent stores conflict on)."""
        sequence = await self._sequence.find_one({"_id": _SEQUENCE_ID}, session=session) or {}
        seq, time_ms = int(sequence.get("seq", 0)), int(sequence.get("time_ms", 0))
        now = int(datetime.now(UTC).timestamp() * 1000)
        documents: list[Document] = []
        committed: list[tuple[str, Entry]] = []
        for group in groups:
            seq, time_ms = seq + 1, max(now, time_ms + 1)
            time = format_time(time_ms)
            documents.append(
                {
                    "_id": seq,
                    "key": group.key,
                    "time": time,
                    "push_id": group.push_id,
                    "data": group.data,
                    "expires_ms": group.expiry_ms,
                    "stored_ms": now,
                    "stored_at": datetime.fromtimestamp(now / 1000, UTC),
                    "installations": group.installations,
                }
            )
            committed.append((group.key, Entry(seq, time, group.push_id, group.data, group.installations)))
        await self._log.insert_many(documents, session=session)
        await self._sequence.update_one(
            {"_id": _SEQUENCE_ID}, {"$set": {"seq": seq, "time_ms": time_ms}}, upsert=True, session=session
        )
        return committed

    # --- reading -----------------------------------------------------------------------------------------

    async def newest(self) -> tuple[int, str]:
        """The app's newest committed `seq` and its `time` (0 and the epoch: nothing stored yet)."""
        document = await self._sequence.find_one({"_id": _SEQUENCE_ID}) or {}
        return int(document.get("seq", 0)), format_time(int(document.get("time_ms", 0)))

    async def seq_before(self, stored_at: datetime, newest: int) -> int:
        """The newest `seq` stored before `stored_at` (by the storing worker's clock); `newest` (the newest
        committed) if none was stored since."""
        since = self._log.find({"stored_at": {"$gte": stored_at}}, {"_id": 1})
        first = [int(document["_id"]) async for document in since.sort("_id", ASCENDING).limit(1)]
        return first[0] - 1 if first else newest

    async def entries_between(self, after: int, upto: int) -> list[Entry]:
        """The entries with `after` < seq ≤ `upto`, in `seq` order (a node filling a gap)."""
        cursor = self._log.find({"_id": {"$gt": after, "$lte": upto}}).sort("_id", ASCENDING)
        return [_entry(document) async for document in cursor]

    async def replay(
        self,
        installation_id: str,
        last: str | None,
        no_last: NoLastPolicy,
        now_ms: int,
        *,
        presence: Document | None = None,
        registered_after: str | None = None,
    ) -> tuple[list[StoredPush], str | None]:
        """Retained, unexpired pushes strictly after `last`, oldest first, and the cursor to continue from
        once they are written: the newest stored `time` for the installation (expired and dropped pushes
        count as passed), or `last` if that is newer.

        Without `last`: every retained push (`retained`), those after the newest one written to a socket
        (`unwritten`), or none stored before the handshake (`none`). `presence`: the document `claim`
        just read. `registered_after`: the newest entry the node had handed out when the connection
        registered; what came after reaches the connection live, so no policy starts later than that
        (another connection, e.g. an older one on another node, may have been written it meanwhile) and
        `backlog_cap` applies only to what came before."""
        if presence is None:
            presence = await self._presence.find_one({"_id": installation_id})
        after = last
        if last is None and no_last == "unwritten":
            after = await self._written_time(installation_id, presence)
            if after is not None and registered_after is not None:
                after = min(after, registered_after)
        elif last is None and no_last == "none" and registered_after is not None:
            after = registered_after
        elif last is None and no_last == "none":  # the node does not know what it handed out yet
            seq, newest_time = await self.newest()
            return [], newest_time if seq else None
        query: Document = {"installations": installation_id}
        if after is not None:
            query["time"] = {"$gt": after}
        found = [entry async for entry in self._log.find(query, _WITHOUT_AUDIENCE).sort("time", ASCENDING)]
        legacy = [
            entry for entry in (presence or {}).get("pushes", []) if after is None or entry["time"] > after
        ]
        entries = sorted(legacy, key=lambda entry: str(entry["time"])) + found
        newest = max((str(entry["time"]) for entry in entries), default=None)
        live = self._capped([entry for entry in entries if self._retained(entry, now_ms)], registered_after)
        pushes = [
            StoredPush(time=entry["time"], push_id=entry["push_id"], data=entry["data"], seq=entry.get("_id"))
            for entry in live
        ]
        cursor = after if newest is None or (after is not None and after > newest) else newest
        return pushes, cursor

    def _capped(self, entries: list[Document], registered_after: str | None) -> list[Document]:
        """The newest `backlog_cap` of the pushes stored before the connection registered, and every one
        stored after (those the device would have been written live had its replay not been running)."""
        if registered_after is None:
            return entries[-self._retention.cap :]
        before = [entry for entry in entries if entry["time"] <= registered_after]
        return before[-self._retention.cap :] + [
            entry for entry in entries if entry["time"] > registered_after
        ]

    def _retained(self, entry: Document, now_ms: int) -> bool:
        expires = entry.get("expires_ms")
        return entry["stored_ms"] >= now_ms - self._retention.window_ms and (
            expires is None or expires > now_ms
        )

    # --- presence ----------------------------------------------------------------------------------------

    async def _written_time(self, installation_id: str, presence: Document | None) -> str | None:
        """The newest `time` written to the installation's socket: the newest log entry marked written for
        it, or what an earlier version kept in its presence document."""
        cursor = self._written.find({"installations": installation_id}, {"time": 1}).sort("time", -1).limit(1)
        newest = [str(entry["time"]) async for entry in cursor]
        kept = (presence or {}).get("written_time")
        return max([*newest, *([kept] if isinstance(kept, str) else [])], default=None)

    async def mark_written(self, entries: dict[str, list[str]], legacy: dict[str, str]) -> None:
        """Remember which installations were written a push of the log (`entries`: by `time`; one inserted
        document per push and flush, however many devices: updating a document with large arrays costs
        SecantusDB a re-index of all of them), and for pushes an earlier version kept in presence
        documents, the newest `time` written (`$max`, one bulk write per `IN_CHUNK`)."""
        now = datetime.now(UTC)
        marks = [{"time": time, "installations": ids, "stored_at": now} for time, ids in entries.items()]
        if marks:
            await self._written.insert_many(marks, ordered=False)
        operations = [
            UpdateOne({"_id": installation_id}, {"$max": {"written_time": time}})
            for installation_id, time in legacy.items()
        ]
        for start in range(0, len(operations), IN_CHUNK):
            await self._presence.bulk_write(operations[start : start + IN_CHUNK], ordered=False)

    async def claim(self, installation_id: str, holder: str) -> tuple[str | None, Document]:
        """Record `holder` (one connection on one node) as the installation's newest connection; returns
        the holder it replaced (None: none) and the presence document as of the claim. A read and a
        compare-and-set, not findAndModify (a collection scan on SecantusDB)."""
        for _ in range(_MAX_SWAPS):
            document = await self._presence.find_one({"_id": installation_id})
            if document is None:
                document = {"_id": installation_id, "holder": holder, "written_time": None}
                try:
                    await self._presence.insert_one(dict(document))
                except DuplicateKeyError:  # a concurrent claim created the document
                    continue
                return None, document
            previous = document.get("holder")
            result = await self._presence.update_one(
                {"_id": installation_id, "holder": previous}, {"$set": {"holder": holder}}
            )
            if result.matched_count == 1:
                document["holder"] = holder
                return (previous if isinstance(previous, str) else None), document
        raise BacklogContentionError(f"installation {installation_id}: {_MAX_SWAPS} concurrent claims")

    async def presence(self, installation_ids: Sequence[str]) -> dict[str, Presence]:
        """The newest connection of each installation with a presence document."""
        found: dict[str, Presence] = {}
        ids = list(installation_ids)
        for start in range(0, len(ids), IN_CHUNK):
            cursor = self._presence.find({"_id": {"$in": ids[start : start + IN_CHUNK]}}, {"holder": 1})
            async for document in cursor:
                found[document["_id"]] = Presence(document.get("holder"))
        return found


def _duplicate(error: PyMongoError) -> bool:
    if isinstance(error, DuplicateKeyError):
        return True
    details = getattr(error, "details", None) or {}
    return any(item.get("code") == 11000 for item in details.get("writeErrors", []))


def _entry(document: Document) -> Entry:
    return Entry(
        seq=int(document["_id"]),
        time=str(document["time"]),
        push_id=str(document["push_id"]),
        data=document["data"],
        installations=[str(installation) for installation in document.get("installations", [])],
    )


def _group_key(request: StoreRequest) -> str:
    payload = json.dumps([request.data, request.expiry_ms], sort_keys=True, separators=(",", ":"))
    return f"{request.push_id}:{hashlib.sha1(payload.encode()).hexdigest()[:12]}"


def _groups(requests: Sequence[StoreRequest]) -> tuple[list[_Group], list[str]]:
    """Requests with the same push, payload and expiry → one group, and each request's group key. The key
    names the push, the payload and the installations, so the same batch stored twice is found again. A
    batch's devices share a few payload objects (one per locale), so each is encoded once, not per device."""
    bases: dict[tuple[str, int, float | None], str] = {}
    members: dict[str, list[StoreRequest]] = {}
    request_bases: list[str] = []
    for request in requests:
        same = (request.push_id, id(request.data), request.expiry_ms)
        base = bases.get(same)
        if base is None:
            base = bases[same] = _group_key(request)
        members.setdefault(base, []).append(request)
        request_bases.append(base)
    groups: dict[str, _Group] = {}
    for base, items in members.items():
        installations = sorted({item.installation_id for item in items})
        digest = hashlib.sha1("\n".join(installations).encode()).hexdigest()[:16]
        first = items[0]
        groups[base] = _Group(f"{base}:{digest}", first.push_id, first.data, first.expiry_ms, installations)
    return list(groups.values()), [groups[base].key for base in request_bases]


def open_backlogs(client: AsyncMongoClient[Document], settings: Settings) -> dict[str, Backlog]:
    """The backlog of every configured app, by app id, with the `[ppns]` retention limits."""
    ppns = settings.ppns or PpnsSettings()
    retention = Retention(window_ms=int(ppns.retention_s * 1000), cap=ppns.backlog_cap)
    backlogs: dict[str, Backlog] = {}
    for app in settings.apps:
        backlogs[app.app_id] = Backlog(app_database(client, app), app.collection_prefix, retention)
    return backlogs
