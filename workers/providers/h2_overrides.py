"""The h2 connection state machine as this client configures it, with the two h2 behaviours it overrides."""

from __future__ import annotations

import struct
from collections.abc import Iterable
from typing import Any

import h2.events as ev
from h2.config import H2Configuration
from h2.connection import AllowedStreamIDs, ConnectionInputs, ConnectionState, H2Connection
from h2.errors import ErrorCodes
from h2.exceptions import FlowControlError
from h2.settings import SettingCodes, Settings
from h2.stream import StreamInputs
from h2.utilities import utf8_encode_headers
from hpack.struct import HeaderWeaklyTyped
from hyperframe.frame import Frame, GoAwayFrame

from workers.providers.hpack_encoder import HeaderEncoder

_DATA, _HEADERS, _CONTINUATION = 0x0, 0x1, 0x9
_END_STREAM, _END_HEADERS = 0x1, 0x4


class ClientH2(H2Connection):
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


def _frame_header(length: int, kind: int, flags: int, stream_id: int) -> bytes:
    return _FRAME_HEADER.pack(length >> 8, length & 0xFF, kind, flags, stream_id)


_FRAME_HEADER = struct.Struct(">HBBBL")


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
