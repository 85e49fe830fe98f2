"""A worker that streams a fan-out's audience steps back from sending, so the other workers send it.

Planning a large push keeps one worker's event loop busy (decoding the audience, building and publishing
batches); the sends of those batches cost as much again. While any plan of this worker is streaming more
than one batch, its send consumer runs at a lower RabbitMQ consumer priority: the broker gives it sends only
while every other worker's send consumer is at its prefetch limit, or when it is the only one (a one-worker
fleet loses nothing). Afterwards it is back at the default priority.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

from pushgw.broker import Consumer

STEP_BACK_PRIORITY = -1


class SendShare:
    def __init__(self) -> None:
        self._consumer: Consumer | None = None
        self._streaming = 0
        self._changing = asyncio.Lock()

    def attach(self, consumer: Consumer) -> None:
        self._consumer = consumer

    @contextlib.asynccontextmanager
    async def streaming(self) -> AsyncIterator[None]:
        """Around the publishing of a multi-batch plan."""
        self._streaming += 1
        await self._apply()
        try:
            yield
        finally:
            self._streaming -= 1
            await asyncio.shield(self._apply())  # a cancelled plan must not leave the worker stepped back

    async def _apply(self) -> None:
        async with self._changing:
            if self._consumer is not None:
                await self._consumer.set_priority(STEP_BACK_PRIORITY if self._streaming else 0)
