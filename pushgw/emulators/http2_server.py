"""A small asyncio HTTP/2-over-TLS server (HTTP/1.1 on request) with connection faults, for the emulators."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import ssl
from collections.abc import Callable, Collection, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from http import HTTPStatus
from typing import Any, cast

import h2.config
import h2.connection
import h2.events
import h2.exceptions
import h2.settings
import hpack
from hyperframe.frame import GoAwayFrame

_MAX_WINDOW = 2**31 - 1
_DEFAULT_WINDOW = 65_535
_MAX_HTTP1_BYTES = 1 << 20
_STATUS_BYTES = {status: str(status).encode() for status in range(100, 600)}
# Emulators must accept what real clients send and reply fast: h2's per-header checks cost more than the rest.
_H2_CONFIG = h2.config.H2Configuration(
    client_side=False,
    header_encoding=None,
    validate_inbound_headers=False,
    normalize_inbound_headers=False,
    validate_outbound_headers=False,
    normalize_outbound_headers=False,
)


@dataclass(slots=True)
class Response:
    status: int
    headers: Sequence[tuple[str, str]] = ()
    body: bytes = b""
    delay_s: float = 0.0
    after: Callable[[], None] | None = None  # runs once the response is written: faults such as GOAWAY


@dataclass(slots=True)
class Request:
    method: str
    path: str
    headers: dict[str, str]  # lower-case names; HTTP/2 pseudo-headers (":path", …) included
    body: bytes
    connection: Connection
    stream_id: int  # 0 on HTTP/1.1


@dataclass(frozen=True, slots=True)
class TokenRule:
    """The scripted answer for device tokens with a prefix: an error `reason`, or a 200 after `delay_ms`."""

    reason: str | None = None
    delay_ms: int = 0

    @classmethod
    def parse(cls, spec: str | TokenRule, reasons: Collection[str]) -> TokenRule:
        """A reason from `reasons`, or `delay:<ms>`."""
        if isinstance(spec, TokenRule) or spec in reasons:
            return spec if isinstance(spec, TokenRule) else cls(reason=spec)
        if not spec.startswith("delay:"):
            raise ValueError(f"unknown reason {spec!r}: use delay:<ms> or one of {sorted(reasons)}")
        return cls(delay_ms=int(spec.removeprefix("delay:")))

    @staticmethod
    def find(rules: Mapping[str, TokenRule], token: str) -> TokenRule | None:
        """The rule of the longest matching prefix."""
        matches = [prefix for prefix in rules if token.startswith(prefix)]
        return rules[max(matches, key=len)] if matches else None


class Connection(asyncio.Protocol):
    """One client connection as handlers see it; on HTTP/1.1 the HTTP/2-only faults just close it."""

    def __init__(self, server: Http2Server, transport: asyncio.Transport, connection_id: int) -> None:
        self.id = connection_id
        self.transport = transport
        self._server = server
        self._delayed: dict[int, asyncio.TimerHandle] = {}

    def update_max_concurrent_streams(self, limit: int) -> None: ...  # HTTP/2 only

    def send_goaway(self, debug: bytes = b"", last_stream_id: int | None = None, error_code: int = 0) -> None:
        """GOAWAY: streams up to `last_stream_id` are still answered, then the connection closes."""
        self.close()

    def close(self) -> None:
        self.flush()
        self.transport.close()

    def flush(self) -> None: ...  # writes what is buffered, in one transport.write

    def start(self) -> None: ...  # sends what the server says first

    def connection_lost(self, exc: Exception | None) -> None:
        for pending in self._delayed.values():
            pending.cancel()
        self._delayed.clear()
        self._server.forget(self)

    def _dispatch(self, request: Request) -> None:
        response = self._server.handler(request)
        delay_s = response.delay_s or self._server.response_delay_s
        if delay_s:
            loop, stream_id = asyncio.get_running_loop(), request.stream_id
            self._delayed[stream_id] = loop.call_later(delay_s, self._respond_later, stream_id, response)
        else:
            self._respond(request.stream_id, response)

    def _respond_later(self, stream_id: int, response: Response) -> None:
        if self._delayed.pop(stream_id, None) is not None:
            self._respond(stream_id, response)
            self._after_delayed()

    def _respond(self, stream_id: int, response: Response) -> None: ...

    def _after_delayed(self) -> None: ...


class H2ServerConnection(Connection):
    """The h2 state machine for one connection: requests in, responses out, one write per read."""

    def __init__(self, server: Http2Server, transport: asyncio.Transport, connection_id: int) -> None:
        super().__init__(server, transport, connection_id)
        self._h2 = _ServerH2(config=_H2_CONFIG)
        self._h2.encoder = _PlainEncoder()
        self._h2.local_settings = _local_settings(server.max_concurrent_streams)
        self._started = False
        self._received_bytes = 0
        self._requests: dict[int, tuple[list[tuple[bytes, bytes]], list[bytes]]] = {}
        self._unsent: dict[int, bytes] = {}
        self._goaway_stream_id: int | None = None

    def start(self) -> None:
        self._started = True
        self._h2.initiate_connection()
        self._h2.increment_flow_control_window(_MAX_WINDOW - _DEFAULT_WINDOW)
        self.flush()

    def update_max_concurrent_streams(self, limit: int) -> None:
        if self._started:
            self._h2.update_settings({h2.settings.SettingCodes.MAX_CONCURRENT_STREAMS: limit})
        else:
            self._h2.local_settings = _local_settings(limit)

    def send_goaway(self, debug: bytes = b"", last_stream_id: int | None = None, error_code: int = 0) -> None:
        if self._goaway_stream_id is not None:
            return
        last = self._h2.highest_inbound_stream_id if last_stream_id is None else last_stream_id
        self._goaway_stream_id = last
        # Written by hand: after h2's close_connection() it refuses to answer the streams GOAWAY keeps.
        frame = GoAwayFrame(0, last_stream_id=last, error_code=error_code, additional_data=debug)
        self.flush()
        self.transport.write(frame.serialize())
        self._close_when_idle()

    def data_received(self, data: bytes) -> None:
        try:
            events = self._h2.receive_data(data)
        except h2.exceptions.ProtocolError:
            # h2 has queued a GOAWAY (e.g. "Max inbound streams is 1"), as APNs does on a stream-limit breach.
            self.close()
            return
        requests = self._requests
        open_before = len(requests) + len(self._delayed)
        opened = 0
        for event in events:
            kind = type(event)
            if kind is h2.events.DataReceived:
                self._receive_body(event)  # type: ignore[arg-type]
            elif kind is h2.events.RequestReceived:
                requests[event.stream_id] = (event.headers, [])  # type: ignore[attr-defined]
                opened += 1
            elif kind is h2.events.StreamEnded:
                self._end_request(event.stream_id)  # type: ignore[attr-defined]
            else:
                self._handle_other(event)
        self.flush()
        # The requests of one read were all open at once for the client: none had an answer yet.
        if opened and open_before + opened > self._server.max_open_streams:
            self._server.max_open_streams = open_before + opened

    def flush(self) -> None:
        data = self._h2.data_to_send()
        if data and not self.transport.is_closing():
            self.transport.write(data)

    def _receive_body(self, event: h2.events.DataReceived) -> None:
        request = self._requests.get(event.stream_id)
        size = event.flow_controlled_length or 0
        if request is not None and event.data:
            request[1].append(event.data)
            if len(request[1]) > 1:  # a large body: its stream window needs updates too
                self._h2.acknowledge_received_data(size, event.stream_id)
                return
        # Bodies are far smaller than a stream window, so usually only the connection window needs topping up.
        self._received_bytes += size
        if self._received_bytes > _MAX_WINDOW // 2:
            self._h2.increment_flow_control_window(self._received_bytes)
            self._received_bytes = 0

    def _end_request(self, stream_id: int) -> None:
        request = self._requests.pop(stream_id, None)
        last_stream_id = _MAX_WINDOW if self._goaway_stream_id is None else self._goaway_stream_id
        if request is None or self.transport.is_closing() or stream_id > last_stream_id:
            return
        raw_headers, chunks = request
        headers = {name.decode(): value.decode() for name, value in raw_headers}
        body = chunks[0] if len(chunks) == 1 else b"".join(chunks)
        self._dispatch(
            Request(headers.get(":method", ""), headers.get(":path", ""), headers, body, self, stream_id)
        )

    def _handle_other(self, event: h2.events.Event) -> None:
        if isinstance(event, h2.events.StreamReset) and event.stream_id is not None:
            self._requests.pop(event.stream_id, None)
            self._unsent.pop(event.stream_id, None)
            pending = self._delayed.pop(event.stream_id, None)
            if pending is not None:
                pending.cancel()
        elif isinstance(event, h2.events.WindowUpdated):
            unsent, self._unsent = self._unsent, {}
            for stream_id, body in unsent.items():
                self._send_body(stream_id, body)
        elif isinstance(event, h2.events.ConnectionTerminated):
            self.close()

    def _respond(self, stream_id: int, response: Response) -> None:
        headers = [(b":status", _STATUS_BYTES[response.status])]
        headers.extend((name.encode(), value.encode()) for name, value in response.headers)
        body = response.body
        if body:
            headers.append((b"content-length", str(len(body)).encode()))
        try:
            self._h2.send_headers(stream_id, headers, end_stream=not body)
            if body:
                self._send_body(stream_id, body)
        except h2.exceptions.ProtocolError:  # reset by the client, or the connection is closing
            return
        if response.after is not None:
            response.after()

    def _send_body(self, stream_id: int, body: bytes) -> None:
        while body:
            window = self._h2.local_flow_control_window(stream_id)
            size = min(window, self._h2.max_outbound_frame_size, len(body))
            if size <= 0:
                self._unsent[stream_id] = body
                return
            self._h2.send_data(stream_id, body[:size], end_stream=size == len(body))
            body = body[size:]

    def _after_delayed(self) -> None:
        self.flush()
        if self._goaway_stream_id is not None:
            self._close_when_idle()

    def _close_when_idle(self) -> None:
        if not self._delayed and not self._unsent:
            self.close()


class Http1ServerConnection(Connection):
    """Minimal HTTP/1.1 for OAuth clients: one request with a Content-Length body, answered, then closed."""

    def __init__(self, server: Http2Server, transport: asyncio.Transport, connection_id: int) -> None:
        super().__init__(server, transport, connection_id)
        self._buffer = b""

    def data_received(self, data: bytes) -> None:
        self._buffer += data
        head, separator, body = self._buffer.partition(b"\r\n\r\n")
        if not separator or self._delayed or self.transport.is_closing():
            if len(self._buffer) > _MAX_HTTP1_BYTES:
                self.transport.abort()
            return
        lines = head.decode("latin-1").split("\r\n")
        method, _, path = lines[0].partition(" ")
        pairs = (line.partition(":") for line in lines[1:])
        headers = {name.strip().lower(): value.strip() for name, _, value in pairs}
        length = int(text) if (text := headers.get("content-length", "0")).isdigit() else 0
        if "transfer-encoding" in headers:
            self._respond(0, Response(411))
        elif len(body) >= length:
            self._dispatch(Request(method, path.rpartition(" ")[0], headers, body[:length], self, 0))

    def _respond(self, stream_id: int, response: Response) -> None:
        lines = [f"HTTP/1.1 {response.status} {HTTPStatus(response.status).phrase}", "connection: close"]
        lines.extend(f"{name}: {value}" for name, value in response.headers)
        lines.append(f"content-length: {len(response.body)}\r\n\r\n")
        self.transport.write("\r\n".join(lines).encode() + response.body)
        self.transport.close()


@dataclass(kw_only=True)
class Http2Server:
    """TLS listener: ALPN `h2` gets HTTP/2, `http/1.1` (if `http1`) minimal HTTP/1.1. Handlers are plain
    functions answered inline (no task per request); `Response.delay_s` defers an answer with a timer."""

    handler: Callable[[Request], Response]
    ssl_context: ssl.SSLContext
    host: str = "127.0.0.1"
    port: int = 0
    max_concurrent_streams: int = 1000
    response_delay_s: float = 0.0
    http1: bool = False
    on_connect: Callable[[Connection], None] | None = None
    on_close: Callable[[Connection], None] | None = None
    connections: dict[int, Connection] = field(default_factory=dict, init=False)
    max_open_streams: int = field(default=0, init=False)
    _ids: Iterator[int] = field(default_factory=itertools.count, init=False)
    _listener: asyncio.Server | None = field(default=None, init=False)
    _all_closed: asyncio.Event = field(default_factory=asyncio.Event, init=False)

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"https://{host}:{self.port}"

    async def start(self) -> None:
        self._all_closed = asyncio.Event()
        self._all_closed.set()
        self._listener = await asyncio.get_running_loop().create_server(
            lambda: _Negotiation(self), self.host, self.port, ssl=self.ssl_context, backlog=1024
        )
        self.port = self._listener.sockets[0].getsockname()[1]

    async def stop(self, timeout_s: float = 2.0) -> None:
        """Stop listening, GOAWAY every HTTP/2 connection, wait for them to close, abort stragglers."""
        if self._listener is None:
            return
        self._listener.close()
        for connection in list(self.connections.values()):
            connection.send_goaway()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._all_closed.wait(), timeout_s)
        for connection in list(self.connections.values()):
            connection.transport.abort()
        await self._listener.wait_closed()
        self._listener = None

    def open(self, transport: asyncio.Transport) -> Connection:
        """A new TLS connection: pick the protocol from ALPN, run the connect hook, send SETTINGS."""
        ssl_object = transport.get_extra_info("ssl_object")
        alpn = ssl_object.selected_alpn_protocol() if ssl_object is not None else None
        kind = Http1ServerConnection if self.http1 and alpn != "h2" else H2ServerConnection
        connection = kind(self, transport, next(self._ids) + 1)
        self.connections[connection.id] = connection
        self._all_closed.clear()
        if self.on_connect is not None:
            self.on_connect(connection)
        connection.start()
        return connection

    def forget(self, connection: Connection) -> None:
        if self.connections.pop(connection.id, None) is not None and self.on_close is not None:
            self.on_close(connection)
        if not self.connections:
            self._all_closed.set()


class _Negotiation(asyncio.Protocol):
    def __init__(self, server: Http2Server) -> None:
        self._server = server

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # Hands the transport to the class ALPN chose, so reads reach it without a hop. uvloop's TLS
        # transport is not an asyncio.Transport subclass, but has the same methods.
        tls_transport = cast(asyncio.Transport, transport)
        tls_transport.set_protocol(self._server.open(tls_transport))


class _ServerH2(h2.connection.H2Connection):
    @property
    def open_inbound_streams(self) -> int:
        # h2 scans all streams for each new one; below the limit, the scan (evicting closed ones) can wait.
        if len(self.streams) < self.local_settings.max_concurrent_streams:
            return len(self.streams)
        return super().open_inbound_streams


class _PlainEncoder(hpack.Encoder):
    """HPACK without Huffman coding: answers carry unique ids, and Python Huffman costs more than it saves."""

    def encode(self, headers: Any, huffman: bool = False) -> bytes:
        return super().encode(headers, huffman=False)


def _local_settings(max_concurrent_streams: int) -> h2.settings.Settings:
    codes = h2.settings.SettingCodes
    limits = {codes.MAX_CONCURRENT_STREAMS: max_concurrent_streams, codes.MAX_HEADER_LIST_SIZE: 8000}
    return h2.settings.Settings(client=False, initial_values=limits)
