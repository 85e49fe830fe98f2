"""`_PushStatus` records in Parse's storage format: ids, the first document, grouped inserts, failures."""

from __future__ import annotations

import asyncio
import secrets
import string
from datetime import datetime
from typing import Any

from pymongo.asynchronous.collection import AsyncCollection
from pymongo.errors import BulkWriteError, PyMongoError

from pushgw import parse_quirks
from pushgw.clock import iso_millis, to_millis
from pushgw.mongo import Document
from pushgw.push import Push

COLLECTION = "_PushStatus"
_OBJECT_ID_ALPHABET = string.ascii_letters + string.digits


def new_object_id(size: int = 10) -> str:
    """A Parse objectId: `size` random alphanumerics (parse-server cryptoUtils.newObjectId)."""
    return "".join(secrets.choice(_OBJECT_ID_ALPHABET) for _ in range(size))


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
    return document


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
            except Exception as error:  # every waiter must learn the outcome, whatever it was
                for _, future in batch:
                    _settle(future, error)
            else:
                for _, future in batch:
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
