"""The h2 connection state machine as this client configures it, with the h2 behaviours it overrides."""

from __future__ import annotations

import struct
from collections.abc import Iterable
from typing import Any

import h2.events as ev
from h2.config import H2Configuration
from h2.connection import (
    AllowedStreamIDs,
    ConnectionInputs,
    ConnectionState,
    H2Connection,
    _decode_headers,
)
from h2.errors import ErrorCodes
from h2.exceptions import FlowControlError, ProtocolError
from h2.settings import SettingCodes, Settings
from h2.stream import H2Stream, StreamInputs, StreamState
from h2.utilities import guard_increment_window, is_informational_response, utf8_encode_headers
from hpack.struct import HeaderWeaklyTyped
from hyperframe.frame import Frame, GoAwayFrame

from workers.providers.hpack_decoder import HeaderDecoder
from workers.providers.hpack_encoder import HeaderEncoder

_DATA, _HEADERS, _WINDOW_UPDATE, _CONTINUATION = 0x0, 0x1, 0x8, 0x9
_END_STREAM, _END_HEADERS, _PADDED, _PRIORITY = 0x1, 0x4, 0x8, 0x20
_OPEN, _HALF_CLOSED_LOCAL = StreamState.OPEN, StreamState.HALF_CLOSED_LOCAL  # request sent, answer expected
_FRAME_HEADER_SIZE = 9


class ClientH2(H2Connection):
    def __init__(self, config: H2Configuration) -> None:
        super().__init__(config)
        self._received = b""  # the start of a frame whose end has not arrived yet
        self._fast_receive = True  # False for good once h2's own frame buffer holds a partial frame
        # Whether h2 would pass received headers on untouched (the fast path skips its no-op pipeline).
        self._plain_inbound_headers = not (
            config.normalize_inbound_headers
            or config.validate_inbound_headers
            or isinstance(config.header_encoding, str)
        )
        self.decoder = HeaderDecoder(self.decoder.max_header_list_size)

    def receive_data(self, data: Any) -> list[ev.Event]:
        """h2's receive_data, with the frames of answers (HEADERS, DATA, WINDOW_UPDATE) handled without h2's
        frame objects, frame buffer and per-frame `repr()`.

        Frames are split here; one is taken on the fast path only when h2 would surely handle it the plain
        way: an open connection, a stream of ours still expecting its answer, no padding, no priority, a
        complete header block, and no header block of h2's waiting for CONTINUATIONs. The fast path then
        runs h2's own steps in h2's order (HPACK decoding through the connection's decoder, the stream's
        state machine, flow-control windows, content-length tracking) and returns the same events. Every
        other frame goes, whole and in order, through h2's own receive_data.
        """
        if not self._fast_receive:
            return super().receive_data(data)
        buffer = self._received + data if self._received else bytes(data)
        events: list[ev.Event] = []
        position, end = 0, len(buffer)
        unpack, streams, pending_headers = _FRAME_HEADER.unpack_from, self.streams, self.incoming_buffer
        while end - position >= _FRAME_HEADER_SIZE:
            high, low, kind, flags, stream_id = unpack(buffer, position)
            length = high << 8 | low
            start = position + _FRAME_HEADER_SIZE
            if length > self.max_inbound_frame_size:  # h2 raises FrameTooLargeError
                self._fast_receive, self._received = False, b""
                events += super().receive_data(buffer[position:])
                return events
            if start + length > end:
                break
            stream_id &= 0x7FFFFFFF
            stream = streams.get(stream_id)
            answered: list[ev.Event] | None = None
            if (
                (stream is not None or (kind == _WINDOW_UPDATE and not stream_id))
                and not pending_headers._headers_buffer
                and self.state_machine.state is ConnectionState.CLIENT_OPEN
            ):
                try:
                    answered = self._receive_fast(kind, flags, stream, buffer[start : start + length])
                except ProtocolError as error:
                    self._received = b""
                    self._terminate_connection(error.error_code)
                    raise
            if answered is None:
                answered = super().receive_data(buffer[position : start + length])
            events += answered
            position = start + length
        self._received = buffer[position:]
        return events

    def _receive_fast(
        self, kind: int, flags: int, stream: H2Stream | None, payload: bytes
    ) -> list[ev.Event] | None:
        """The events of one frame as h2 would give them, or None when h2 itself must handle it."""
        if kind == _WINDOW_UPDATE:
            return self._receive_window_update(stream, payload)
        if stream is None or not _answering(stream):
            return None
        if kind == _HEADERS:
            if (
                flags & (_END_HEADERS | _PADDED | _PRIORITY) != _END_HEADERS
                or stream.state_machine.headers_received
            ):
                return None  # split or decorated header blocks, trailers: h2's path
            return self._receive_answer_headers(stream, payload, bool(flags & _END_STREAM))
        if kind == _DATA and not flags & _PADDED:
            return self._receive_answer_data(stream, payload, bool(flags & _END_STREAM))
        return None

    def _receive_answer_data(self, stream: H2Stream, data: bytes, end_stream: bool) -> list[ev.Event]:
        """h2's _receive_data_frame + H2Stream.receive_data (unpadded: the flow-controlled length is the
        data's), without their debug-log calls and typing.cast() calls."""
        self._inbound_flow_control_window_manager.window_consumed(len(data))
        machine = stream.state_machine
        events = machine.process_input(StreamInputs.RECV_DATA)
        received: ev.DataReceived = events[0]  # type: ignore[assignment]
        stream._inbound_window_manager.window_consumed(len(data))
        stream._track_content_length(len(data), end_stream)
        if end_stream:
            ended = machine.process_input(StreamInputs.RECV_END_STREAM)
            received.stream_ended = ended[0]  # type: ignore[assignment]
            events += ended
        received.data = data
        received.flow_controlled_length = len(data)
        return events

    def _receive_answer_headers(self, stream: H2Stream, block: bytes, end_stream: bool) -> list[ev.Event]:
        """h2's _receive_headers_frame + H2Stream.receive_headers for a response on an open stream of ours."""
        headers = _decode_headers(self.decoder, block)
        if not self._plain_inbound_headers or is_informational_response(headers):
            return stream.receive_headers(headers, end_stream, self.config.header_encoding)[1]
        machine = stream.state_machine
        events = machine.process_input(StreamInputs.RECV_HEADERS)
        response: ev.ResponseReceived = events[0]  # type: ignore[assignment]  # (no cast(): a call per answer)
        if end_stream:
            ended = machine.process_input(StreamInputs.RECV_END_STREAM)
            response.stream_ended = ended[0]  # type: ignore[assignment]
            events += ended
        stream._initialize_content_length(headers)
        response.headers = list(headers)
        return events

    def _receive_window_update(self, stream: H2Stream | None, payload: bytes) -> list[ev.Event] | None:
        """h2's _receive_window_update_frame: a well-formed increment for the connection or an open stream."""
        increment = int.from_bytes(payload) if len(payload) == 4 else 0
        if not 1 <= increment <= _MAX_WINDOW:
            return None  # malformed: hyperframe's errors
        if stream is None:  # stream 0: the connection's window
            self.outbound_flow_control_window = guard_increment_window(
                self.outbound_flow_control_window, increment
            )
            return [ev.WindowUpdated(stream_id=0, delta=increment)]
        if not _answering(stream):
            return None
        frames, events = stream.receive_window_update(increment)
        if frames:
            self._prepare_for_sending(frames)
        return events

    def send_headers(  # noqa: PLR0917 (h2's signature)
        self,
        stream_id: int,
        headers: Iterable[HeaderWeaklyTyped],
        end_stream: bool = False,
        priority_weight: int | None = None,
        priority_depends_on: int | None = None,
        priority_exclusive: bool | None = None,
    ) -> None:
        """h2's send_headers for a request on a new stream, without its per-frame objects.

        The same state transitions in the same order (connection, then stream, then END_STREAM; the
        header block is encoded only after them, as HPACK changes are irreversible), the same bytes on
        the wire (HEADERS + CONTINUATIONs past the peer's frame size), a third of the CPU. Anything else
        (priority, trailers, an existing stream) takes h2's own path.
        """
        if stream_id in self.streams or not (
            priority_weight is None and priority_depends_on is None and priority_exclusive is None
        ):
            super().send_headers(
                stream_id, headers, end_stream, priority_weight, priority_depends_on, priority_exclusive
            )
            return
        self.state_machine.process_input(ConnectionInputs.SEND_HEADERS)
        stream = self._begin_new_stream(stream_id, AllowedStreamIDs.ODD)
        stream.state_machine.process_input(StreamInputs.SEND_HEADERS)
        if end_stream:
            stream.state_machine.process_input(StreamInputs.SEND_END_STREAM)
        wire = [_bytes_header(header) for header in headers]
        method = wire[0][1] if wire and wire[0][0] == b":method" else None
        stream.request_method = method if isinstance(method, bytes) else None
        block = self.encoder.encode(wire)
        size = self.max_outbound_frame_size
        first, rest = block[:size], block[size:]
        flags = (_END_STREAM if end_stream else 0) | (0 if rest else _END_HEADERS)
        frames = [_frame_header(len(first), _HEADERS, flags, stream_id), first]
        while rest:
            part, rest = rest[:size], rest[size:]
            frames += [_frame_header(len(part), _CONTINUATION, 0 if rest else _END_HEADERS, stream_id), part]
        self._data_to_send += b"".join(frames)

    def send_data(
        self, stream_id: int, data: bytes | memoryview, end_stream: bool = False, pad_length: Any = None
    ) -> None:
        """h2's send_data without padding, without its frame objects: the same flow-control checks and
        window accounting, the same state transitions, the same DATA frame."""
        stream = self.streams.get(stream_id)
        size = len(data)
        if pad_length is not None or stream is None or size > self.max_outbound_frame_size:
            super().send_data(stream_id, data, end_stream, pad_length)
            return
        window = min(self.outbound_flow_control_window, stream.outbound_flow_control_window)
        if size and size > window:
            raise FlowControlError(f"Cannot send {size} bytes, flow control window is {window}")
        self.state_machine.process_input(ConnectionInputs.SEND_DATA)
        stream.state_machine.process_input(StreamInputs.SEND_DATA)
        if end_stream:
            stream.state_machine.process_input(StreamInputs.SEND_END_STREAM)
        stream.outbound_flow_control_window -= size
        self.outbound_flow_control_window -= size
        self._data_to_send += _frame_header(size, _DATA, _END_STREAM if end_stream else 0, stream_id)
        self._data_to_send += data

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


def _answering(stream: H2Stream) -> bool:
    """Whether the stream still expects (more of) its answer. By identity: Enum.__hash__ is Python code."""
    state = stream.state_machine.state
    return state is _HALF_CLOSED_LOCAL or state is _OPEN


def _frame_header(length: int, kind: int, flags: int, stream_id: int) -> bytes:
    return _FRAME_HEADER.pack(length >> 8, length & 0xFF, kind, flags, stream_id)


_FRAME_HEADER = struct.Struct(">HBBBL")
_MAX_WINDOW = 2**31 - 1


def _bytes_header(header: HeaderWeaklyTyped) -> HeaderWeaklyTyped:
    """A header as bytes; a HeaderTuple (never-indexed) keeps its class, as h2's utf8_encode_headers does."""
    name, value = header
    if name.__class__ is bytes and value.__class__ is bytes:
        return header
    return utf8_encode_headers([header])[0]


def new_client_h2() -> ClientH2:
    """A client-side h2 connection: bytes headers passed through unchecked, server push off."""
    h2 = ClientH2(
        H2Configuration(
            client_side=True,
            header_encoding=None,
            validate_outbound_headers=False,
            validate_inbound_headers=False,
            normalize_outbound_headers=False,
            normalize_inbound_headers=False,
        )
    )
    h2.encoder = HeaderEncoder()
    h2.local_settings = Settings(client=True, initial_values={SettingCodes.ENABLE_PUSH: 0})
    return h2
