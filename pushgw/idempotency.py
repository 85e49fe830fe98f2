"""X-Parse-Request-Id ledger: a retried request gets the first answer instead of creating a second push."""

from __future__ import annotations

import asyncio
import hashlib
from dataclasses import dataclass
from datetime import datetime, timedelta

from pymongo.asynchronous.database import AsyncDatabase
from pymongo.errors import DuplicateKeyError, PyMongoError

from pushgw.clock import Clock
from pushgw.mongo import Document

COLLECTION = "pushgw_requests"


class RequestInFlight(Exception):
    """Another request with the same id is still being accepted."""


@dataclass(frozen=True, slots=True)
class Claim:
    key: str
    push_id: str
    is_replay: bool


class RequestLedger:
    """One document per (app, request id): `pending` while being accepted, `accepted` once answered 200.

    A failed attempt deletes its entry, so the SDK's retry runs again. An entry left `pending` by a crashed
    process is taken over after `stale_after_s`. Entries expire after `ttl_s` (TTL index).
    """

    def __init__(
        self, database: AsyncDatabase[Document], clock: Clock, *, ttl_s: int, stale_after_s: float
    ) -> None:
        self._collection = database.get_collection(COLLECTION)
        self._clock = clock
        self._ttl = timedelta(seconds=ttl_s)
        self._stale_after = timedelta(seconds=stale_after_s)
        self._wait_s = stale_after_s

    async def ensure_indexes(self) -> None:
        await self._collection.create_index("expire_at", expireAfterSeconds=0)

    async def claim(self, app_id: str, request_id: str, push_id: str) -> Claim:
        """Own the request id for `push_id`, or return the push id of the request that already owns it."""
        key = hashlib.sha256(f"{app_id}\0{request_id}".encode()).hexdigest()
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self._wait_s
        while True:
            now = self._clock.now()
            try:
                await self._collection.insert_one(self._entry(key, push_id, now))
                return Claim(key, push_id, is_replay=False)
            except DuplicateKeyError:
                pass
            existing = await self._collection.find_one({"_id": key})
            if existing is None:
                continue
            if existing["state"] == "accepted":
                return Claim(key, existing["push_id"], is_replay=True)
            if await self._take_over_stale(key, push_id, now):
                return Claim(key, push_id, is_replay=False)
            if loop.time() > deadline:
                raise RequestInFlight(request_id)
            await asyncio.sleep(0.02)  # waiting for the concurrent first attempt to finish

    async def _take_over_stale(self, key: str, push_id: str, now: datetime) -> bool:
        result = await self._collection.update_one(
            {"_id": key, "state": "pending", "claimed_at": {"$lt": now - self._stale_after}},
            {"$set": self._entry(key, push_id, now)},
        )
        return result.modified_count == 1

    def _entry(self, key: str, push_id: str, now: datetime) -> Document:
        return {
            "_id": key,
            "push_id": push_id,
            "state": "pending",
            "claimed_at": now,
            "expire_at": now + self._ttl,
        }

    async def accept(self, claim: Claim) -> None:
        await self._collection.update_one(
            {"_id": claim.key, "push_id": claim.push_id}, {"$set": {"state": "accepted"}}
        )

    async def release(self, claim: Claim) -> None:
        """Forget a failed attempt (best effort: a leftover entry goes stale and is taken over)."""
        try:
            await self._collection.delete_one(
                {"_id": claim.key, "push_id": claim.push_id, "state": "pending"}
            )
        except PyMongoError:
            return
