"""Keep one connection up: connect now, and again with backoff whenever it is lost, until closed."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable

FIRST_DELAY_S, MAX_DELAY_S = 0.5, 10.0


class Reconnector:
    """Runs `connect` until it succeeds: at once from `start()`, after a backoff (0.5 s doubling to 10 s)
    from `soon()`. `errors` are the failures worth another try; each is reported to `on_failure`."""

    def __init__(
        self,
        connect: Callable[[], Awaitable[None]],
        errors: tuple[type[BaseException], ...],
        on_failure: Callable[[BaseException], None],
    ) -> None:
        self._connect, self._errors, self._on_failure = connect, errors, on_failure
        self._task: asyncio.Task[None] | None = None
        self.closing = False

    async def start(self) -> None:
        """Connect now if that works; otherwise keep trying in the background."""
        try:
            await self._connect()
        except self._errors as error:
            self._on_failure(error)
            self.soon()

    def soon(self) -> None:
        """Reconnect in the background (the link was lost); a no-op while one is under way or closing."""
        if self.closing or (self._task is not None and not self._task.done()):
            return
        self._task = asyncio.create_task(self._retry())

    async def _retry(self) -> None:
        delay_s = FIRST_DELAY_S
        while not self.closing:
            await asyncio.sleep(delay_s)  # reconnect backoff, never per message
            try:
                await self._connect()
                return
            except self._errors as error:
                self._on_failure(error)
                delay_s = min(delay_s * 2, MAX_DELAY_S)

    async def close(self) -> None:
        """No more attempts; one under way is cancelled."""
        self.closing = True
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
