"""One request's HTTP/2 stream: its body going out under flow control, its answer coming in."""

from __future__ import annotations

import asyncio
from collections.abc import Iterable
from typing import NamedTuple

from h2.connection import H2Connection

from workers.providers.http2_errors import Http2Error


class Response(NamedTuple):
    """A complete answer. A NamedTuple because it is built once per request on the hot path."""

    status: int
    headers: dict[str, str]
    body: bytes


class Stream:
    """`answer` resolves with the `Response` or an `Http2Error`; `timer` fires at the request's deadline."""

    __slots__ = ("answer", "body", "headers", "status", "timer", "unsent")

    def __init__(self, answer: asyncio.Future[Response], timer: asyncio.TimerHandle) -> None:
        self.answer = answer
        self.timer = timer
        self.status = 0
        self.headers: dict[str, str] = {}
        self.body: bytes | bytearray = b""
        self.unsent: memoryview | None = None

    def send_body(self, h2: H2Connection, stream_id: int) -> bool:
        """Send what the flow-control windows allow of `unsent`; False while some of it must wait."""
        unsent = self.unsent
        while unsent is not None:
            size = min(len(unsent), h2.local_flow_control_window(stream_id), h2.max_outbound_frame_size)
            if size <= 0:
                break
            h2.send_data(stream_id, bytes(unsent[:size]), end_stream=size == len(unsent))
            unsent = unsent[size:] or None
        self.unsent = unsent
        return unsent is None

    def add_headers(self, headers: Iterable[tuple[bytes, bytes]]) -> None:
        for name, value in headers:
            if name == b":status":
                self.status = int(value)
            else:
                self.headers[name.decode("latin-1")] = value.decode("latin-1")

    def add_data(self, data: bytes) -> None:
        if not self.body:
            self.body = data
        elif isinstance(self.body, bytearray):
            self.body += data
        else:
            self.body = bytearray(self.body) + data

    def finish(self) -> None:
        self.timer.cancel()
        if not self.answer.done():
            self.answer.set_result(Response(self.status, self.headers, bytes(self.body)))

    def fail(self, error: Http2Error) -> None:
        self.timer.cancel()
        if not self.answer.done():
            self.answer.set_exception(error)
