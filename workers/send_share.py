"""A worker that streams a fan-out's audience steps back from sending, so the other workers send it.

Streaming a large push is a chain of `getMore`s: the database waits for each request, and the request waits
for the planner's event loop, which a send in progress holds for milliseconds at a time. While any plan of
this worker is streaming more than one batch, its send consumer steps back (`Consumer.step_back`): it stops
receiving sends if another consumer is on the send queue, else it receives them at a lower RabbitMQ
priority, so a one-worker fleet loses nothing. Afterwards it receives as before.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

from pushgw.broker import Consumer


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
                await self._consumer.step_back(self._streaming > 0)
