"""The planner's audience cursor (workers/row_cursor.py) against a real SecantusDB: the same bytes, in the same
batches, as pymongo's own `find_raw_batches`, whose reply handling it replaces (it relies on pymongo
internals, so a pymongo upgrade that changes them must fail here)."""

from __future__ import annotations

import asyncio
from typing import Any

from pymongo import AsyncMongoClient, MongoClient

from tests.fixtures.mongo import MongoServer
from tests.fixtures.parse_data import installation
from workers.devices import PROJECTION, row_id, split_rows
from workers.row_cursor import row_batches


def test_the_audience_cursor_returns_what_find_raw_batches_returns(
    mongo_server: MongoServer, mongo: MongoClient[dict[str, Any]], db_name: str
) -> None:
    rows = [
        installation("ios" if n % 3 else "android", channels=["news"] if n % 4 else []) for n in range(45)
    ]
    mongo[db_name]["_Installation"].insert_many(rows)
    audience = {"channels": "news"}

    async def read() -> tuple[list[bytes], list[bytes], list[bytes]]:
        client: AsyncMongoClient[dict[str, Any]] = AsyncMongoClient(mongo_server.uri)
        try:
            collection = client[db_name]["_Installation"]
            ours = [
                reply
                async for reply in row_batches(collection, audience, PROJECTION, batch_size=10, hint_id=True)
            ]
            unhinted = [
                reply
                async for reply in row_batches(collection, audience, PROJECTION, batch_size=50, hint_id=False)
            ]
            cursor = (
                collection.find_raw_batches(audience, PROJECTION, batch_size=10).sort("_id", 1).hint("_id_")
            )
            return ours, unhinted, [reply async for reply in cursor]
        finally:
            await client.close()

    ours, unhinted, pymongos = asyncio.run(read())
    assert ours == pymongos  # byte for byte, batch for batch
    assert [len(split_rows(reply)) for reply in ours] == [10, 10, 10, 3]  # 33 of 45 are on "news"
    expected = sorted(row["_id"] for row in rows if row["channels"])
    assert [row_id(row) for reply in ours for row in split_rows(reply)] == expected  # `_id` order
    assert b"".join(unhinted) == b"".join(ours)
