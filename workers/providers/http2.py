"""A small asyncio HTTP/2 client over TLS for APNs and FCM: one connection, or a pool of them to one origin.

`open_connection()` gives an `Http2Connection` (an asyncio Protocol driving h2); `Http2Pool` keeps N of them.
Requests beyond the server's SETTINGS_MAX_CONCURRENT_STREAMS wait in FIFO order on their connection; answers
resolve futures straight from the protocol callbacks; frames are written once per event-loop iteration.
The client never retries: every failure is an `Http2Error` whose `retry_safe` says whether the server surely
did not process the request (providers.md §1.6).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import random
import ssl
from collections import deque
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple, cast

import h2.events as ev
from h2.config import H2Configuration
from h2.connection import ConnectionState, H2Connection
from h2.errors import ErrorCodes
from h2.exceptions import ProtocolError
from h2.settings import SettingCodes, Settings
from hpack import Encoder, HeaderTuple
from hpack.struct import HeaderWeaklyTyped
from hpack.table import HeaderTable
from hyperframe.frame import Frame, GoAwayFrame

Header = tuple[bytes, bytes]
_EVICT_EVERY = 1024  # closed streams h2 keeps until it next counts open streams (see _ClientH2)
_CLOSE_WAIT_S = 2.0


class Http2Error(Exception):
    """Base of every error a caller classifies; `retry_safe`: the server surely did not process it."""

    def __init__(self, message: str, *, retry_safe: bool) -> None:
        super().__init__(message)
        self.retry_safe = retry_safe


class ConnectionLost(Http2Error):
    """The connection failed, closed or went away (GOAWAY) before the answer came."""


class ConnectFailed(ConnectionLost):
    """No connection could be opened (TCP, TLS, ALPN, no SETTINGS in time), or the pool is backing off."""

    def __init__(self, message: str) -> None:
        super().__init__(message, retry_safe=True)


class RequestTimeout(Http2Error):
    """No answer within `timeout_s`. Sent requests are reset with CANCEL and may have been processed."""


class StreamReset(Http2Error):
    """The server reset the stream; only REFUSED_STREAM guarantees it was not processed (RFC 9113 §8.7)."""

    def __init__(self, error_code: int) -> None:
        refused = error_code == ErrorCodes.REFUSED_STREAM
        super().__init__(
            f"stream reset by server: {getattr(error_code, 'name', error_code)}", retry_safe=refused
        )
        self.error_code = error_code


class Response(NamedTuple):
    """A complete answer. A NamedTuple because it is built once per request on the hot path."""

    status: int
    headers: dict[str, str]
    body: bytes


def _integer(value: int, prefix_bits: int, flags: int) -> bytes:
    limit = (1 << prefix_bits) - 1
    if value < limit:
        return bytes((flags | value,))
    encoded = bytearray((flags | limit,))
    value -= limit
    while value >= 0x80:
        encoded.append(value & 0x7F | 0x80)
        value >>= 7
    encoded.append(value)
    return bytes(encoded)


def _literal(data: bytes) -> bytes:
    return _integer(len(data), 7, 0) + data


_STATIC_NAMES = {name: index for index, (name, _) in reversed(list(enumerate(HeaderTable.STATIC_TABLE, 1)))}
_STATIC_PAIRS = {
    pair: _integer(index, 7, 0x80) for index, pair in enumerate(HeaderTable.STATIC_TABLE, 1) if pair[1]
}
_INDEXED = [_integer(index, 7, 0x80) for index in range(128)]
_UNINDEXED_NAMES = frozenset({b":path", b"apns-id", b"content-length"})  # a new value on every request
_DEFAULT_TABLE_SIZE = 4096


class _HeaderEncoder(Encoder):
    """HPACK for many similar requests, far cheaper than hpack's: no Huffman coding (pure-Python Huffman costs
    more CPU than its bytes are worth here), memoized representations, one dict lookup per repeated header.

    Repeated values (authorization, apns-topic, …) enter the dynamic table; `:path`, `_UNINDEXED_NAMES`,
    `NeverIndexedHeaderTuple`s and values over a quarter of the table never do, so they do not churn it.
    """

    def __init__(self) -> None:
        super().__init__()
        self._max_size = self._lowest_size = _DEFAULT_TABLE_SIZE
        self._resized = False
        self._size = 0
        self._inserted = 0  # insertions so far: the entry inserted n-th has index 62 + _inserted - 1 - n
        self._entries: deque[tuple[tuple[bytes, bytes], int]] = deque()  # (pair, size), oldest first
        self._known: dict[tuple[bytes, bytes], bytes | int] = dict(_STATIC_PAIRS)  # representation or n
        self._unindexed: dict[tuple[bytes, bool], bytes] = {}  # name part of literals without indexing

    @property
    def header_table_size(self) -> int:
        return self._max_size

    @header_table_size.setter
    def header_table_size(self, value: int) -> None:
        # The peer's SETTINGS_HEADER_TABLE_SIZE bounds our table; we never use more than the default.
        size = min(value, _DEFAULT_TABLE_SIZE)
        if size != self._max_size:
            self._max_size, self._lowest_size = size, min(size, self._lowest_size)
            self._resized = True
            self._evict()

    def encode(self, headers: Any, huffman: bool = False) -> bytes:
        parts = self._size_updates() if self._resized else []
        known, indexed = self._known, _INDEXED
        for header in headers:
            found = known.get(header)
            if found is None:
                parts.append(self._encode_new(header))
            elif isinstance(found, bytes):
                parts.append(found)
            else:
                index = 61 + self._inserted - found
                parts.append(indexed[index] if index < 128 else _integer(index, 7, 0x80))
        return b"".join(parts)

    def _encode_new(self, header: tuple[bytes, bytes]) -> bytes:
        name, value = header
        size = len(name) + len(value) + 32
        never = isinstance(header, HeaderTuple) and not header.indexable
        if never or name in _UNINDEXED_NAMES or size > self._max_size // 4:
            prefix = self._unindexed.get((name, never))
            if prefix is None:
                prefix = self._unindexed[name, never] = self._name_part(name, 4, 0x10 if never else 0)
            return prefix + _literal(value)
        self._entries.append(((name, value), size))
        self._known[name, value] = self._inserted
        self._inserted += 1
        self._size += size
        self._evict()
        return self._name_part(name, 6, 0x40) + _literal(value)

    @staticmethod
    def _name_part(name: bytes, prefix_bits: int, flags: int) -> bytes:
        index = _STATIC_NAMES.get(name)
        return _integer(index, prefix_bits, flags) if index else bytes((flags,)) + _literal(name)

    def _evict(self) -> None:
        while self._size > self._max_size:
            pair, size = self._entries.popleft()
            self._size -= size
            if self._known.get(pair) == self._inserted - len(self._entries) - 1:
                del self._known[pair]

    def _size_updates(self) -> list[bytes]:
        sizes = (
            [self._lowest_size, self._max_size] if self._lowest_size < self._max_size else [self._max_size]
        )
        self._resized, self._lowest_size = False, self._max_size
        return [_integer(size, 5, 0x20) for size in sizes]


class _ClientH2(H2Connection):
    @property
    def open_outbound_streams(self) -> int:
        # h2 counts open streams by scanning all of them on every send_headers (O(in-flight) per request);
        # Http2Connection enforces the server's limit itself, so h2's check may always pass.
        return 0

    def evict_closed_streams(self) -> None:
        H2Connection.open_outbound_streams.fget(self)  # type: ignore[attr-defined]

    def _receive_goaway_frame(self, frame: GoAwayFrame) -> tuple[list[Frame], list[ev.Event]]:
        frames, events = super()._receive_goaway_frame(frame)
        if frame.error_code == ErrorCodes.NO_ERROR:
            # h2 closes the connection on any GOAWAY; a graceful one still answers streams <= last_stream_id.
            self.state_machine.state = ConnectionState.CLIENT_OPEN
        return frames, events


class _Stream:
    __slots__ = ("answer", "body", "headers", "status", "timer", "unsent")

    def __init__(self, answer: asyncio.Future[Response], timer: asyncio.TimerHandle) -> None:
        self.answer = answer
        self.timer = timer
        self.status = 0
        self.headers: dict[str, str] = {}
        self.body: bytes | bytearray = b""
        self.unsent: memoryview | None = None


class Http2Connection(asyncio.Protocol):
    """One HTTP/2 connection over TLS; create it with `open_connection()`.

    `max_streams` is the server's current stream limit (APNs drops it to 1 after a rejection), `in_flight` the
    open streams, `queued` the requests waiting for one, `answered` the responses so far, `closed` a future
    done once the transport is closed. PING after `idle_ping_s` without inbound traffic; no answer within
    `ping_timeout_s` closes the connection.
    """

    def __init__(self, authority: str, *, idle_ping_s: float = 30.0, ping_timeout_s: float = 10.0) -> None:
        self._loop = asyncio.get_running_loop()
        self._h2 = _ClientH2(
            H2Configuration(
                client_side=True,
                header_encoding=None,
                validate_outbound_headers=False,
                validate_inbound_headers=False,
                normalize_outbound_headers=False,
                normalize_inbound_headers=False,
            )
        )
        self._h2.encoder = _HeaderEncoder()
        self._h2.local_settings = Settings(client=True, initial_values={SettingCodes.ENABLE_PUSH: 0})
        self._static: list[Header] = [(b":scheme", b"https"), (b":authority", authority.encode())]
        self._idle_ping_s, self._ping_timeout_s = idle_ping_s, ping_timeout_s
        self._transport: asyncio.Transport | None = None
        self._streams: dict[int, _Stream] = {}
        self._blocked: dict[int, _Stream] = {}  # streams whose body waits for flow-control window
        self._waiters: deque[asyncio.Future[None]] = deque()
        self._reserved = 0  # waiters woken for a free stream that have not opened it yet
        self._max_streams = 1
        self._usable = False
        self._flush_scheduled = False
        self._closed_streams = 0
        self.answered = 0
        self._last_received_at = self._loop.time()
        self._idle_timer: asyncio.TimerHandle | None = None
        self._ping_timer: asyncio.TimerHandle | None = None
        self._ready: asyncio.Future[None] = self._loop.create_future()
        self.closed: asyncio.Future[None] = self._loop.create_future()
        self._handlers: dict[type[ev.Event], Callable[[Any], None]] = {
            ev.ResponseReceived: self._on_response,
            ev.DataReceived: self._on_data,
            ev.StreamEnded: self._on_end,
            ev.StreamReset: self._on_reset,
            ev.RemoteSettingsChanged: self._on_settings,
            ev.WindowUpdated: self._on_window,
            ev.ConnectionTerminated: self._on_goaway,
            ev.PingAckReceived: self._on_ping_ack,
        }

    @property
    def max_streams(self) -> int:
        return self._max_streams

    @property
    def in_flight(self) -> int:
        return len(self._streams)

    @property
    def queued(self) -> int:
        return len(self._waiters) + self._reserved

    @property
    def free_streams(self) -> int:
        """Streams a new request could open now; negative when requests are queued."""
        return self._max_streams - len(self._streams) - len(self._waiters) - self._reserved

    @property
    def is_usable(self) -> bool:
        return self._usable

    async def request(
        self,
        method: bytes,
        path: bytes,
        headers: Sequence[HeaderWeaklyTyped] = (),
        body: bytes = b"",
        timeout_s: float = 10.0,
    ) -> Response:
        """One request, answered in full. `headers` follow the pseudo-headers as given: lowercase names,
        bytes preferred; wrap secrets in `hpack.NeverIndexedHeaderTuple`. `timeout_s` includes waiting for a
        stream. Raises `RequestTimeout`, `StreamReset` or `ConnectionLost`; never retries."""
        if not self._usable:
            raise ConnectionLost("connection is not usable", retry_safe=True)
        loop = self._loop
        deadline = loop.time() + timeout_s
        if self._waiters or len(self._streams) + self._reserved >= self._max_streams:
            await self._wait_for_stream(deadline)
        h2 = self._h2
        try:
            stream_id = h2.get_next_available_stream_id()
            h2.send_headers(
                stream_id,
                [(b":method", method), (b":path", path), *self._static, *headers],
                end_stream=not body,
            )
        except ProtocolError as error:  # stream ids used up, or h2 refuses: no new request fits here
            self._retire(ConnectionLost(f"cannot open a stream: {error}", retry_safe=True))
            raise ConnectionLost(f"cannot open a stream: {error}", retry_safe=True) from error
        stream = _Stream(loop.create_future(), loop.call_at(deadline, self._expire, stream_id))
        self._streams[stream_id] = stream
        if body:
            stream.unsent = memoryview(body)
            self._send_body(stream_id, stream)
        if not self._flush_scheduled:
            self._flush_scheduled = True
            loop.call_soon(self._flush)
        try:
            return await stream.answer
        except asyncio.CancelledError:
            self._abandon(stream_id)
            raise

    async def close(self) -> None:
        """Send GOAWAY and close; requests still open fail with `ConnectionLost`."""
        self._fail_all(ConnectionLost("connection closed by client", retry_safe=False))
        transport = self._transport
        if transport is None or self.closed.done():
            return
        try:
            self._h2.close_connection()
            self._flush()
        except ProtocolError:
            pass
        transport.close()
        try:
            await asyncio.wait_for(asyncio.shield(self.closed), _CLOSE_WAIT_S)
        except TimeoutError:
            transport.abort()
            await self.closed

    def abort(self, error: Http2Error | None = None) -> None:
        """Drop the connection at once; open requests fail with `error` (default: not retry-safe)."""
        self._fail_all(error or ConnectionLost("connection aborted by client", retry_safe=False))
        if self._transport is not None:
            self._transport.abort()

    # asyncio.Protocol

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = cast(asyncio.Transport, transport)
        ssl_object = transport.get_extra_info("ssl_object")
        if ssl_object is None or ssl_object.selected_alpn_protocol() != "h2":
            self._ready.set_exception(ConnectFailed("server did not negotiate h2 (ALPN)"))
            self._transport.abort()
            return
        self._h2.initiate_connection()
        self._flush()
        self._idle_timer = self._loop.call_later(self._idle_ping_s, self._check_idle)

    def data_received(self, data: bytes) -> None:
        self._last_received_at = self._loop.time()
        try:
            events = self._h2.receive_data(data)
        except ProtocolError as error:
            self.abort(ConnectionLost(f"HTTP/2 protocol error: {error}", retry_safe=False))
            return
        handlers = self._handlers
        for event in events:
            handler = handlers.get(type(event))
            if handler is not None:
                handler(event)
        if not self._flush_scheduled:
            # Scheduled after the answers' wake-ups, so requests they send go out in the same write.
            self._flush_scheduled = True
            self._loop.call_soon(self._flush)

    def connection_lost(self, exc: Exception | None) -> None:
        self._fail_all(ConnectionLost(f"connection lost: {exc or 'closed by server'}", retry_safe=False))
        for timer in (self._idle_timer, self._ping_timer):
            if timer is not None:
                timer.cancel()
        if not self._ready.done():
            self._ready.set_exception(ConnectFailed(f"connection closed during setup: {exc}"))
        self.closed.set_result(None)

    # h2 events

    def _on_response(self, event: ev.ResponseReceived) -> None:
        stream = self._streams.get(event.stream_id)
        if stream is None:
            return
        headers = stream.headers
        for name, value in event.headers:
            if name == b":status":
                stream.status = int(value)
            else:
                headers[name.decode("latin-1")] = value.decode("latin-1")

    def _on_data(self, event: ev.DataReceived) -> None:
        stream_id = event.stream_id
        self._h2.acknowledge_received_data(event.flow_controlled_length, stream_id)
        stream = self._streams.get(stream_id)
        if stream is None:
            return
        data = event.data
        if not stream.body:
            stream.body = data
        elif isinstance(stream.body, bytearray):
            stream.body += data
        else:
            stream.body = bytearray(stream.body) + data

    def _on_end(self, event: ev.StreamEnded) -> None:
        stream = self._streams.pop(event.stream_id, None)
        if stream is None:
            return
        stream.timer.cancel()
        if stream.unsent is not None:  # answered before the whole body was sent: stop sending it
            self._reset(event.stream_id, ErrorCodes.NO_ERROR)
        if not stream.answer.done():
            stream.answer.set_result(Response(stream.status, stream.headers, bytes(stream.body)))
        self.answered += 1
        self._stream_closed()

    def _on_reset(self, event: ev.StreamReset) -> None:
        stream = self._streams.pop(event.stream_id, None)
        if stream is not None:
            self._blocked.pop(event.stream_id, None)
            self._fail(stream, StreamReset(event.error_code))
            self._stream_closed()

    def _on_settings(self, event: ev.RemoteSettingsChanged) -> None:
        if SettingCodes.MAX_CONCURRENT_STREAMS in event.changed_settings or not self._ready.done():
            self._max_streams = self._h2.remote_settings.max_concurrent_streams
        if SettingCodes.INITIAL_WINDOW_SIZE in event.changed_settings:
            self._send_blocked()
        if not self._ready.done():
            self._usable = True
            self._ready.set_result(None)
        if self._waiters:
            self._wake_waiters()

    def _on_window(self, event: ev.WindowUpdated) -> None:
        if self._blocked:
            self._send_blocked()

    def _on_goaway(self, event: ev.ConnectionTerminated) -> None:
        last_id = event.last_stream_id or 0
        graceful = event.error_code == ErrorCodes.NO_ERROR
        message = f"GOAWAY {getattr(event.error_code, 'name', event.error_code)}, last stream {last_id}"
        for stream_id in [stream_id for stream_id in self._streams if stream_id > last_id or not graceful]:
            self._blocked.pop(stream_id, None)
            self._fail(self._streams.pop(stream_id), ConnectionLost(message, retry_safe=stream_id > last_id))
        self._retire(ConnectionLost(message, retry_safe=True))

    def _on_ping_ack(self, event: ev.PingAckReceived) -> None:
        if self._ping_timer is not None:
            self._ping_timer.cancel()
            self._ping_timer = None

    # streams

    async def _wait_for_stream(self, deadline: float) -> None:
        waiter: asyncio.Future[None] = self._loop.create_future()
        self._waiters.append(waiter)
        while True:
            timer = self._loop.call_at(deadline, self._expire_waiter, waiter)
            self._wake_waiters()
            try:
                await waiter
            except asyncio.CancelledError:
                if not waiter.done() or waiter.cancelled():
                    with contextlib.suppress(ValueError):
                        self._waiters.remove(waiter)
                elif waiter.exception() is None:  # woken, then cancelled: pass the turn on
                    self._reserved -= 1
                    self._wake_waiters()
                raise
            finally:
                timer.cancel()
            self._reserved -= 1
            if not self._usable:
                raise ConnectionLost("connection is not usable", retry_safe=True)
            if len(self._streams) < self._max_streams:
                return
            waiter = self._loop.create_future()  # the limit fell meanwhile: back to the head of the line
            self._waiters.appendleft(waiter)

    def _wake_waiters(self) -> None:
        free = self._max_streams - len(self._streams) - self._reserved
        waiters = self._waiters
        while free > 0 and waiters:
            waiter = waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)
                self._reserved += 1
                free -= 1

    def _expire_waiter(self, waiter: asyncio.Future[None]) -> None:
        if not waiter.done():
            self._waiters.remove(waiter)
            waiter.set_exception(RequestTimeout("no free stream before the timeout", retry_safe=True))

    def _expire(self, stream_id: int) -> None:
        stream = self._streams.pop(stream_id, None)
        if stream is not None:
            self._reset(stream_id, ErrorCodes.CANCEL)
            self._fail(stream, RequestTimeout("no answer before the timeout", retry_safe=False))
            self._stream_closed()

    def _abandon(self, stream_id: int) -> None:
        stream = self._streams.pop(stream_id, None)
        if stream is not None:
            stream.timer.cancel()
            self._reset(stream_id, ErrorCodes.CANCEL)
            self._stream_closed()

    def _stream_closed(self) -> None:
        self._closed_streams += 1
        if self._closed_streams % _EVICT_EVERY == 0:
            self._h2.evict_closed_streams()
        if self._waiters:
            self._wake_waiters()
        elif not self._usable and not self._streams and self._transport is not None:
            self._transport.close()  # drained after GOAWAY

    def _reset(self, stream_id: int, error_code: ErrorCodes) -> None:
        self._blocked.pop(stream_id, None)
        try:
            self._h2.reset_stream(stream_id, error_code)
        except ProtocolError:
            return
        self._schedule_flush()

    def _send_body(self, stream_id: int, stream: _Stream) -> None:
        h2, unsent = self._h2, stream.unsent
        while unsent is not None:
            size = min(len(unsent), h2.local_flow_control_window(stream_id), h2.max_outbound_frame_size)
            if size <= 0:
                self._blocked[stream_id] = stream
                break
            h2.send_data(stream_id, bytes(unsent[:size]), end_stream=size == len(unsent))
            unsent = unsent[size:] or None
        stream.unsent = unsent
        if unsent is None:
            self._blocked.pop(stream_id, None)

    def _send_blocked(self) -> None:
        for stream_id, stream in list(self._blocked.items()):
            self._send_body(stream_id, stream)

    # connection

    def _fail(self, stream: _Stream, error: Http2Error) -> None:
        stream.timer.cancel()
        if not stream.answer.done():
            stream.answer.set_exception(error)

    def _fail_waiters(self, error: Http2Error) -> None:
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_exception(error)

    def _retire(self, error: Http2Error) -> None:
        """Take no new requests; close once the open streams are answered."""
        self._usable = False
        self._fail_waiters(error)
        if not self._streams and self._transport is not None:
            self._transport.close()

    def _fail_all(self, error: Http2Error) -> None:
        self._usable = False
        self._fail_waiters(ConnectionLost(str(error), retry_safe=True))
        streams, self._streams = self._streams, {}
        self._blocked.clear()
        for stream in streams.values():
            self._fail(stream, error)

    def _schedule_flush(self) -> None:
        if not self._flush_scheduled:
            self._flush_scheduled = True
            self._loop.call_soon(self._flush)

    def _flush(self) -> None:
        self._flush_scheduled = False
        data = self._h2.data_to_send()
        if data and self._transport is not None and not self._transport.is_closing():
            self._transport.write(data)

    def _check_idle(self) -> None:
        idle_s = self._loop.time() - self._last_received_at
        if idle_s < self._idle_ping_s:
            self._idle_timer = self._loop.call_later(self._idle_ping_s - idle_s, self._check_idle)
            return
        if self._ping_timer is None:
            try:
                self._h2.ping(b"pushgw\x00\x00")
            except ProtocolError:  # the connection is closing anyway
                return
            self._schedule_flush()
            self._ping_timer = self._loop.call_later(self._ping_timeout_s, self._on_ping_timeout)
        self._idle_timer = self._loop.call_later(self._idle_ping_s, self._check_idle)

    def _on_ping_timeout(self) -> None:
        self._ping_timer = None
        self.abort(ConnectionLost(f"no PING answer within {self._ping_timeout_s} s", retry_safe=False))


async def open_connection(
    host: str,
    port: int,
    ssl_context: ssl.SSLContext,
    *,
    server_hostname: str | None = None,
    idle_ping_s: float = 30.0,
    ping_timeout_s: float = 10.0,
    connect_timeout_s: float = 10.0,
) -> Http2Connection:
    """Connect, negotiate h2 and wait for the server's SETTINGS. `ssl_context` gets ALPN ["h2"] set."""
    ssl_context.set_alpn_protocols(["h2"])
    authority = host if port == 443 else f"{host}:{port}"
    connection = Http2Connection(authority, idle_ping_s=idle_ping_s, ping_timeout_s=ping_timeout_s)
    try:
        async with asyncio.timeout(connect_timeout_s):
            await asyncio.get_running_loop().create_connection(
                lambda: connection, host, port, ssl=ssl_context, server_hostname=server_hostname or host
            )
            await asyncio.shield(connection._ready)
    except (OSError, TimeoutError, ConnectFailed, asyncio.CancelledError) as error:
        connection._ready.cancel()
        connection.abort()
        if isinstance(error, asyncio.CancelledError | ConnectFailed):
            raise
        raise ConnectFailed(f"cannot connect to {authority}: {error!r}") from error
    return connection


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
