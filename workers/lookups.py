"""Group-committed audience reads: the audiences of concurrent one-user pushes in one `$in` query.

A transactional push (`where: {user: …}` or `{installationId: …}`) is one indexed equality. Read one by one,
each costs the database a whole command; pushes planned at the same moment share one
`{field: {$in: [...]}}` query instead, and each gets back exactly the rows its equality matches.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from typing import Any

from pymongo.asynchronous.collection import AsyncCollection

from pushgw.group_commit import GroupCommit, settle
from pushgw.mongo import Document

# SecantusDB answers `$in` in time quadratic in the list length; 50 values cost about as much as 4 single
# reads (see ppns/backlog.py IN_CHUNK).
MAX_VALUES = 50


# Fields that name one user or one device: an equality on them selects a handful of rows, never a broadcast
# (an indexed `channels` equality may select millions, which the streaming cursor must read instead).
IDENTITY_FIELDS = ("_id", "_p_user", "installationId", "deviceToken")


def pinned_value(mongo_filter: Mapping[str, Any], indexed: list[str]) -> tuple[str, str] | None:
    """`(field, value)` when the whole filter is one string equality on an indexed identity field."""
    if len(mongo_filter) != 1:
        return None
    ((field, value),) = mongo_filter.items()
    if isinstance(value, dict) and value.keys() == {"$eq"}:
        value = value["$eq"]
    if field not in IDENTITY_FIELDS or (field != "_id" and field not in indexed):
        return None
    return (field, value) if isinstance(value, str) else None


def matches(row: Document, field: str, value: str) -> bool:
    """MongoDB equality of a string against a stored field: the value itself or an element of an array."""
    stored = row.get(field)
    return stored == value or (isinstance(stored, list) and value in stored)


class EqualityLookups(GroupCommit[str, list[Document]]):
    """The rows (sorted on `_id`) whose `field` equals each value asked for, one query per round trip."""

    def __init__(
        self, collection: AsyncCollection[Document], field: str, projection: Mapping[str, Any]
    ) -> None:
        super().__init__(MAX_VALUES)
        self._collection = collection
        self._field = field
        self._projection = {**projection, field: 1}

    async def rows(self, value: str) -> list[Document]:
        return await self._submit(value)

    async def _write(self, batch: list[tuple[str, asyncio.Future[list[Document]]]]) -> None:
        values = sorted({value for value, _ in batch})
        query = {self._field: values[0] if len(values) == 1 else {"$in": values}}
        rows = await self._collection.find(query, self._projection).sort("_id", 1).to_list(None)
        for value, future in batch:
            settle(future, [row for row in rows if matches(row, self._field, value)])
