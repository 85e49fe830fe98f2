"""A pool of HTTP/2 connections to one origin, opened on demand and reopened with backoff after a loss."""

from __future__ import annotations

import asyncio
import functools
import random
import ssl
from collections.abc import Sequence

from hpack.struct import HeaderWeaklyTyped

from workers.providers.http2_connection import Http2Connection, open_connection
from workers.providers.http2_errors import ConnectFailed, ConnectionLost, Http2Error, RequestTimeout
from workers.providers.http2_stream import Response


class _Slot:
    __slots__ = ("connection", "failures", "last_error", "next_attempt_at", "opening")

    def __init__(self) -> None:
        self.connection: Http2Connection | None = None
        self.opening: asyncio.Task[None] | None = None
        self.failures = 0
        self.next_attempt_at = 0.0
        self.last_error: Http2Error | None = None


class Http2Pool:
    """Up to `connections` HTTP/2 connections to one origin, opened on demand and reopened after a loss.

    A request goes to the usable connection with the most free streams, preferring those whose server limit is
    above 1 (APNs throttles a connection to one stream after a rejection). After a failed connect, or a
    connection lost before it answered anything, its slot waits `reconnect_base_s` × 2^(failures-1), jittered,
    at most `reconnect_max_s`; meanwhile a request finding no connection fails at once with `ConnectFailed`.
    The pool knows nothing about authorization: callers put it in each request's headers.
    """

    def __init__(
        self,
        host: str,
        port: int,
        ssl_context: ssl.SSLContext,
        *,
        connections: int = 1,
        server_hostname: str | None = None,
        idle_ping_s: float = 30.0,
        ping_timeout_s: float = 10.0,
        connect_timeout_s: float = 10.0,
        reconnect_base_s: float = 0.5,
        reconnect_max_s: float = 30.0,
    ) -> None:
        self._origin = f"{host}:{port}"
        self._open = functools.partial(
            open_connection,
            host,
            port,
            ssl_context,
            server_hostname=server_hostname,
            idle_ping_s=idle_ping_s,
            ping_timeout_s=ping_timeout_s,
            connect_timeout_s=connect_timeout_s,
        )
        self._reconnect_base_s, self._reconnect_max_s = reconnect_base_s, reconnect_max_s
        self._slots = [_Slot() for _ in range(connections)]
        self._retired: set[Http2Connection] = set()  # replaced connections still draining after GOAWAY
        self._closed = False

    def connection_stats(self) -> list[tuple[int, int]]:
        """(max_streams, in_flight) per connection slot; (0, 0) where no usable connection is open."""
        return [
            (slot.connection.max_streams, slot.connection.in_flight)
            if slot.connection is not None and slot.connection.is_usable
            else (0, 0)
            for slot in self._slots
        ]

    async def request(
        self,
        method: bytes,
        path: bytes,
        headers: Sequence[HeaderWeaklyTyped] = (),
        body: bytes = b"",
        timeout_s: float = 10.0,
    ) -> Response:
        connection = self._pick()
        if connection is None:
            loop = asyncio.get_running_loop()
            deadline = loop.time() + timeout_s
            connection = await self._wait_for_connection(deadline)
            timeout_s = deadline - loop.time()
        return await connection.request(method, path, headers, body, timeout_s)

    async def close(self) -> None:
        """Stop opening connections, send GOAWAY on every open one and close it."""
        self._closed = True
        openings = [slot.opening for slot in self._slots if slot.opening is not None]
        for opening in openings:
            opening.cancel()
        await asyncio.gather(*openings, return_exceptions=True)
        connections = [slot.connection for slot in self._slots if slot.connection is not None]
        for slot in self._slots:
            slot.connection = None
        await asyncio.gather(*(connection.close() for connection in [*connections, *self._retired]))

    def _pick(self) -> Http2Connection | None:
        best, best_score = None, 0
        for slot in self._slots:
            connection = slot.connection
            if connection is None or not connection.is_usable:
                self._replace(slot)
                continue
            if connection.max_streams == 1 and connection.in_flight == 0 and connection.queued == 0:
                # Held to one stream (new under token auth, or throttled after a rejection): it gets a
                # request whenever that stream is free, since only its next success lifts the limit.
                return connection
            score = connection.free_streams + (1 << 40 if connection.max_streams > 1 else 0)
            if best is None or score > best_score:
                best, best_score = connection, score
        return best

    def _replace(self, slot: _Slot) -> None:
        if self._closed or slot.opening is not None:
            return
        lost = slot.connection
        if lost is not None:
            slot.connection = None
            if not lost.closed.done():
                self._retired.add(lost)
                lost.closed.add_done_callback(lambda _: self._retired.discard(lost))
            if lost.answered:
                slot.failures = 0
            else:
                self._back_off(slot, ConnectionLost("connection lost before any answer", retry_safe=True))
        loop = asyncio.get_running_loop()
        if loop.time() >= slot.next_attempt_at:
            slot.opening = loop.create_task(self._connect(slot))

    async def _connect(self, slot: _Slot) -> None:
        try:
            slot.connection = await self._open()
        except ConnectFailed as error:
            self._back_off(slot, error)
        finally:
            slot.opening = None

    def _back_off(self, slot: _Slot, error: Http2Error) -> None:
        slot.failures += 1
        delay_s = min(self._reconnect_max_s, self._reconnect_base_s * 2 ** (slot.failures - 1))
        slot.next_attempt_at = asyncio.get_running_loop().time() + delay_s * random.uniform(0.5, 1.0)
        slot.last_error = error

    async def _wait_for_connection(self, deadline: float) -> Http2Connection:
        loop = asyncio.get_running_loop()
        while True:
            if self._closed:
                raise ConnectionLost("pool is closed", retry_safe=True)
            openings = [slot.opening for slot in self._slots if slot.opening is not None]
            if not openings:
                errors = {str(slot.last_error) for slot in self._slots if slot.last_error is not None}
                raise ConnectFailed(f"no connection to {self._origin} ({'; '.join(errors)})")
            remaining_s = deadline - loop.time()
            if remaining_s <= 0:
                raise RequestTimeout("no connection before the timeout", retry_safe=True)
            await asyncio.wait(openings, timeout=remaining_s)
            connection = self._pick()
            if connection is not None:
                return connection
