"""One HTTP/2 client connection over TLS: the asyncio Protocol driving h2, one answer future per request."""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import Callable, Sequence
from typing import Any, cast

import h2.events as ev
from h2.errors import ErrorCodes
from h2.exceptions import ProtocolError
from h2.settings import SettingCodes
from hpack.struct import HeaderWeaklyTyped

from workers.providers.h2_overrides import new_client_h2
from workers.providers.http2_errors import (
    ConnectFailed,
    ConnectionLost,
    Http2Error,
    RequestTimeout,
    StreamReset,
)
from workers.providers.http2_keepalive import KeepAlive
from workers.providers.http2_stream import Response, Stream
from workers.providers.http2_stream_queue import StreamQueue

Header = tuple[bytes, bytes]
_EVICT_EVERY = 1024  # closed streams h2 keeps until it next counts open streams (see ClientH2)
_CLOSE_WAIT_S = 2.0


class Http2Connection(asyncio.Protocol):
    """One HTTP/2 connection over TLS; create it with `open_connection()`.

    `max_streams` is the server's current stream limit (APNs drops it to 1 after a rejection), `in_flight` the
    open streams, `queued` the requests waiting for one, `answered` the responses so far, `closed` a future
    done once the transport is closed. PING after `idle_ping_s` without inbound traffic; no answer within
    `ping_timeout_s` closes the connection.
    """

    def __init__(self, authority: str, *, idle_ping_s: float = 30.0, ping_timeout_s: float = 10.0) -> None:
        self._loop = asyncio.get_running_loop()
        self._h2 = new_client_h2()
        self._static: list[Header] = [(b":scheme", b"https"), (b":authority", authority.encode())]
        self._transport: asyncio.Transport | None = None
        self._streams: dict[int, Stream] = {}
        self._blocked: dict[int, Stream] = {}  # streams whose body waits for flow-control window
        self._queue = StreamQueue(self._streams)
        self._keepalive = KeepAlive(
            self._h2,
            idle_ping_s=idle_ping_s,
            ping_timeout_s=ping_timeout_s,
            schedule_flush=self._schedule_flush,
            on_timeout=self.abort,
        )
        self._flush_scheduled = False
        self._closed_streams = 0
        self.answered = 0
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
        return self._queue.limit

    @property
    def in_flight(self) -> int:
        return len(self._streams)

    @property
    def queued(self) -> int:
        return self._queue.queued

    @property
    def free_streams(self) -> int:
        """Streams a new request could open now; negative when requests are queued."""
        return self._queue.free_streams

    @property
    def is_usable(self) -> bool:
        return self._queue.is_open

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
        if not self._queue.is_open:
            raise ConnectionLost("connection is not usable", retry_safe=True)
        loop = self._loop
        deadline = loop.time() + timeout_s
        if self._queue.must_wait():
            await self._queue.wait(deadline)
        stream_id = self._send_headers(
            [(b":method", method), (b":path", path), *self._static, *headers], body
        )
        stream = Stream(loop.create_future(), loop.call_at(deadline, self._expire, stream_id))
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
        self._keepalive.start()

    def data_received(self, data: bytes) -> None:
        self._keepalive.last_received_at = self._loop.time()
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
        self._keepalive.stop()
        if not self._ready.done():
            self._ready.set_exception(ConnectFailed(f"connection closed during setup: {exc}"))
        self.closed.set_result(None)

    # h2 events

    def _on_response(self, event: ev.ResponseReceived) -> None:
        stream = self._streams.get(event.stream_id)
        if stream is not None:
            stream.add_headers(event.headers)

    def _on_data(self, event: ev.DataReceived) -> None:
        stream_id = event.stream_id
        if event.flow_controlled_length:  # (an empty DATA with END_STREAM, as nghttpd ends answers, has none)
            self._h2.acknowledge_received_data(event.flow_controlled_length, stream_id)
        stream = self._streams.get(stream_id)
        if stream is not None:
            stream.add_data(event.data)

    def _on_end(self, event: ev.StreamEnded) -> None:
        stream = self._streams.pop(event.stream_id, None)
        if stream is None:
            return
        if stream.unsent is not None:  # answered before the whole body was sent: stop sending it
            self._reset(event.stream_id, ErrorCodes.NO_ERROR)
        stream.finish()
        self.answered += 1
        self._stream_closed()

    def _on_reset(self, event: ev.StreamReset) -> None:
        stream = self._streams.pop(event.stream_id, None)
        if stream is not None:
            self._blocked.pop(event.stream_id, None)
            stream.fail(StreamReset(event.error_code))
            self._stream_closed()

    def _on_settings(self, event: ev.RemoteSettingsChanged) -> None:
        if SettingCodes.MAX_CONCURRENT_STREAMS in event.changed_settings or not self._ready.done():
            self._queue.limit = self._h2.remote_settings.max_concurrent_streams
        if SettingCodes.INITIAL_WINDOW_SIZE in event.changed_settings:
            self._send_blocked()
        if not self._ready.done():
            self._queue.open()
            self._ready.set_result(None)
        if self._queue.has_waiters:
            self._queue.wake()

    def _on_window(self, event: ev.WindowUpdated) -> None:
        if self._blocked:
            self._send_blocked()

    def _on_goaway(self, event: ev.ConnectionTerminated) -> None:
        last_id = event.last_stream_id or 0
        graceful = event.error_code == ErrorCodes.NO_ERROR
        message = f"GOAWAY {getattr(event.error_code, 'name', event.error_code)}, last stream {last_id}"
        for stream_id in [stream_id for stream_id in self._streams if stream_id > last_id or not graceful]:
            self._blocked.pop(stream_id, None)
            self._streams.pop(stream_id).fail(ConnectionLost(message, retry_safe=stream_id > last_id))
        self._retire(ConnectionLost(message, retry_safe=True))

    def _on_ping_ack(self, event: ev.PingAckReceived) -> None:
        self._keepalive.on_ping_ack()

    # streams

    def _send_headers(self, headers: list[HeaderWeaklyTyped], body: bytes) -> int:
        h2 = self._h2
        try:
            stream_id = h2.get_next_available_stream_id()
            h2.send_headers(stream_id, headers, end_stream=not body)
        except ProtocolError as error:  # stream ids used up, or h2 refuses: no new request fits here
            self._retire(ConnectionLost(f"cannot open a stream: {error}", retry_safe=True))
            raise ConnectionLost(f"cannot open a stream: {error}", retry_safe=True) from error
        return stream_id

    def _expire(self, stream_id: int) -> None:
        stream = self._streams.pop(stream_id, None)
        if stream is not None:
            self._reset(stream_id, ErrorCodes.CANCEL)
            stream.fail(RequestTimeout("no answer before the timeout", retry_safe=False))
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
        if self._queue.has_waiters:
            self._queue.wake()
        elif not self._queue.is_open and not self._streams and self._transport is not None:
            self._transport.close()  # drained after GOAWAY

    def _reset(self, stream_id: int, error_code: ErrorCodes) -> None:
        self._blocked.pop(stream_id, None)
        try:
            self._h2.reset_stream(stream_id, error_code)
        except ProtocolError:
            return
        self._schedule_flush()

    def _send_body(self, stream_id: int, stream: Stream) -> None:
        if stream.send_body(self._h2, stream_id):
            self._blocked.pop(stream_id, None)
        else:
            self._blocked[stream_id] = stream

    def _send_blocked(self) -> None:
        for stream_id, stream in list(self._blocked.items()):
            self._send_body(stream_id, stream)

    # connection

    def _retire(self, error: Http2Error) -> None:
        """Take no new requests; close once the open streams are answered."""
        self._queue.close(error)
        if not self._streams and self._transport is not None:
            self._transport.close()

    def _fail_all(self, error: Http2Error) -> None:
        self._queue.close(ConnectionLost(str(error), retry_safe=True))
        streams = list(self._streams.values())
        self._streams.clear()  # in place: the stream queue counts this dict
        self._blocked.clear()
        for stream in streams:
            stream.fail(error)

    def _schedule_flush(self) -> None:
        if not self._flush_scheduled:
            self._flush_scheduled = True
            self._loop.call_soon(self._flush)

    def _flush(self) -> None:
        self._flush_scheduled = False
        data = self._h2.data_to_send()
        if data and self._transport is not None and not self._transport.is_closing():
            self._transport.write(data)


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
