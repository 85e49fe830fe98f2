"""Admission of requests to one HTTP/2 connection: the server's stream limit, FIFO waiting for a stream."""

from __future__ import annotations

import asyncio
import contextlib
from collections import deque
from collections.abc import Sized

from workers.providers.http2_errors import ConnectionLost, Http2Error, RequestTimeout


class StreamQueue:
    """Requests beyond `limit` (the server's SETTINGS_MAX_CONCURRENT_STREAMS) wait in FIFO order.

    `open_streams` is the connection's live collection of open streams. A woken waiter holds a reservation
    until it opens its stream, so a request arriving meanwhile cannot take the stream from it.
    """

    def __init__(self, open_streams: Sized) -> None:
        self._loop = asyncio.get_running_loop()
        self._open_streams = open_streams
        self._waiters: deque[asyncio.Future[None]] = deque()
        self._reserved = 0  # waiters woken for a free stream that have not opened it yet
        self.limit = 1
        self._is_open = False

    @property
    def is_open(self) -> bool:
        """Whether the connection takes new requests."""
        return self._is_open

    @property
    def queued(self) -> int:
        return len(self._waiters) + self._reserved

    @property
    def free_streams(self) -> int:
        return self.limit - len(self._open_streams) - len(self._waiters) - self._reserved

    @property
    def has_waiters(self) -> bool:
        return bool(self._waiters)

    def must_wait(self) -> bool:
        return bool(self._waiters) or len(self._open_streams) + self._reserved >= self.limit

    def open(self) -> None:
        self._is_open = True

    def close(self, error: Http2Error) -> None:
        """Take no new requests; the waiting ones fail with `error`."""
        self._is_open = False
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_exception(error)

    async def wait(self, deadline: float) -> None:
        """Return once a stream is free for this request in FIFO turn; `RequestTimeout` at `deadline`."""
        waiter: asyncio.Future[None] = self._loop.create_future()
        self._waiters.append(waiter)
        while True:
            timer = self._loop.call_at(deadline, self._expire, waiter)
            self.wake()
            try:
                await waiter
            except asyncio.CancelledError:
                if not waiter.done() or waiter.cancelled():
                    with contextlib.suppress(ValueError):
                        self._waiters.remove(waiter)
                elif waiter.exception() is None:  # woken, then cancelled: pass the turn on
                    self._reserved -= 1
                    self.wake()
                raise
            finally:
                timer.cancel()
            self._reserved -= 1
            if not self._is_open:
                raise ConnectionLost("connection is not usable", retry_safe=True)
            if len(self._open_streams) < self.limit:
                return
            waiter = self._loop.create_future()  # the limit fell meanwhile: back to the head of the line
            self._waiters.appendleft(waiter)

    def wake(self) -> None:
        free = self.limit - len(self._open_streams) - self._reserved
        waiters = self._waiters
        while free > 0 and waiters:
            waiter = waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)
                self._reserved += 1
                free -= 1

    def _expire(self, waiter: asyncio.Future[None]) -> None:
        if not waiter.done():
            self._waiters.remove(waiter)
            waiter.set_exception(RequestTimeout("no free stream before the timeout", retry_safe=True))
