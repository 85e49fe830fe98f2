"""Group commit: concurrent callers share one database round trip, each still learning its own outcome."""

from __future__ import annotations

import asyncio
from abc import ABC, abstractmethod
from typing import Generic, TypeVar

Op = TypeVar("Op")
Result = TypeVar("Result")


class GroupCommit(ABC, Generic[Op, Result]):
    """Concurrent callers share one round trip: ops queued while one is in flight go together in the next,
    so the database sees a few large commands under load and single ones when idle. Each caller still
    learns the fate of its own op; `_write` settles every future of its batch.

    `linger_s` > 0: the first op of an idle batcher waits that long for company before it is written (for
    ops that are not on a latency path and cost the database per command, e.g. a fan-out's unit records)."""

    def __init__(self, max_batch: int, linger_s: float = 0.0) -> None:
        self._max_batch = max_batch
        self._linger_s = linger_s
        self._pending: list[tuple[Op, asyncio.Future[Result]]] = []
        self._flusher: asyncio.Task[None] | None = None

    async def _submit(self, op: Op) -> Result:
        future: asyncio.Future[Result] = asyncio.get_running_loop().create_future()
        self._pending.append((op, future))
        if self._flusher is None or self._flusher.done():
            self._flusher = asyncio.create_task(self._flush())
        return await future

    async def _flush(self) -> None:
        if self._linger_s:
            await asyncio.sleep(self._linger_s)
        while self._pending:
            batch, self._pending = self._pending[: self._max_batch], self._pending[self._max_batch :]
            try:
                await self._write(batch)
            except Exception as error:  # every waiter must learn the outcome, whatever it was
                for _, future in batch:
                    settle(future, error)
            finally:  # cancelled mid-write (shutdown): its waiters are cancelled too, never left hanging
                for _, future in batch:
                    future.cancel()  # a no-op on the settled ones

    @abstractmethod
    async def _write(self, batch: list[tuple[Op, asyncio.Future[Result]]]) -> None:
        """One round trip for `batch`, settling the future of each of its ops."""


def settle(future: asyncio.Future[Result], outcome: Result | BaseException) -> None:
    """Resolve a waiter once: an exception is raised to it, anything else is its result."""
    if future.done():
        return
    if isinstance(outcome, BaseException):
        future.set_exception(outcome)
    else:
        future.set_result(outcome)
