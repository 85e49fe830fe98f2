"""Message counts of the work and dead-letter queues, by passive declare (the console and `pushgw doctor`)."""

from __future__ import annotations

import asyncio

import aio_pika
from aio_pika.abc import AbstractConnection
from aiormq.exceptions import AMQPError, ChannelClosed

from pushgw.settings import QueueSettings
from pushgw.topology import PARSE, PLAN, SEND

SHOWN_QUEUES = (PLAN, SEND, PARSE, "dead")  # `dead`: Topology.dead_queue's suffix


class BrokerUnreachable(Exception):
    """The broker did not accept a connection; the message says why."""


class QueueProbe:
    """One lazily opened connection, reopened after a failure; `memory://` has no depths to show."""

    def __init__(self, settings: QueueSettings, timeout_s: float = 5.0) -> None:
        self._settings = settings
        self._timeout_s = timeout_s
        self._connection: AbstractConnection | None = None
        self._lock = asyncio.Lock()

    async def depths(self) -> dict[str, int | None]:
        """`<prefix>.<queue>` → ready messages (None: no such queue); BrokerUnreachable if it cannot."""
        if self._settings.is_memory:
            return {}
        async with self._lock:
            connection = await self._connect()
            try:
                return {
                    f"{self._settings.prefix}.{route}": await self._count(connection, route)
                    for route in SHOWN_QUEUES
                }
            except (AMQPError, OSError, TimeoutError) as error:
                await self.close()
                raise BrokerUnreachable(f"{type(error).__name__}: {error}") from None

    async def _connect(self) -> AbstractConnection:
        if self._connection is None or self._connection.is_closed:
            try:
                self._connection = await aio_pika.connect(self._settings.url, timeout=self._timeout_s)
            except (AMQPError, OSError, TimeoutError) as error:
                raise BrokerUnreachable(str(error) or type(error).__name__) from None
        return self._connection

    async def _count(self, connection: AbstractConnection, route: str) -> int | None:
        # A passive declare of a missing queue closes its channel: one channel per queue.
        channel = await connection.channel()
        try:
            queue = await channel.declare_queue(f"{self._settings.prefix}.{route}", passive=True)
        except ChannelClosed:
            return None
        count = queue.declaration_result.message_count
        await channel.close()
        return int(count) if count is not None else 0

    async def close(self) -> None:
        connection, self._connection = self._connection, None
        if connection is not None and not connection.is_closed:
            await connection.close()
