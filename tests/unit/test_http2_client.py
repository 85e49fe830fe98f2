"""The HTTP/2 client's request framing against h2's, and its HPACK encoder against hpack's decoder (what every server runs in spirit): blocks decode to
exactly what was sent, repeated values shrink to one byte, per-request values stay out of the table."""

from __future__ import annotations

import random

import pytest
from h2.connection import H2Connection
from h2.exceptions import FlowControlError
from hpack import Decoder, NeverIndexedHeaderTuple

from workers.providers.h2_overrides import new_client_h2
from workers.providers.hpack_encoder import HeaderEncoder

STATIC = [(b":method", b"POST"), (b":scheme", b"https"), (b":authority", b"api.push.apple.com")]
JWT = (b"authorization", b"bearer " + b"j" * 180)


def request_headers(number: int) -> list[tuple[bytes, bytes]]:
    return [*STATIC, (b":path", b"/3/device/%064d" % number), JWT, (b"apns-topic", b"com.example.app"),
            (b"apns-id", b"%036d" % number)]  # fmt: skip


def decode(decoder: Decoder, block: bytes) -> list[tuple[bytes, bytes]]:
    return [tuple(header) for header in decoder.decode(block, raw=True)]  # type: ignore[misc]


def test_repeated_headers_are_sent_as_one_byte_index_and_unique_ones_stay_out_of_the_table() -> None:
    encoder, decoder = HeaderEncoder(), Decoder()
    first, second = encoder.encode(request_headers(1)), encoder.encode(request_headers(2))
    assert decode(decoder, first) == request_headers(1)
    assert decode(decoder, second) == request_headers(2)
    # method, scheme, authority, JWT, topic: 1 byte each; path: static name index + length + value;
    # apns-id (no static name): flags + name length + name + value length + value.
    assert len(second) == 5 + (1 + 1 + 74) + (1 + 1 + 7 + 1 + 36)
    assert list(decoder.header_table.dynamic_entries) == [(b"apns-topic", b"com.example.app"), JWT, STATIC[2]]


def test_never_indexed_headers_keep_their_flag_and_never_enter_the_table() -> None:
    encoder, decoder = HeaderEncoder(), Decoder()
    secret = NeverIndexedHeaderTuple(b"x-secret", b"s3cr3t")
    decoded = list(decoder.decode(encoder.encode([*STATIC, secret]), raw=True))
    assert isinstance(decoded[-1], NeverIndexedHeaderTuple)
    assert tuple(decoded[-1]) == tuple(secret)
    assert list(decoder.header_table.dynamic_entries) == [STATIC[2]]


def test_shrinking_the_table_is_signalled_and_evicts_what_no_longer_fits() -> None:
    encoder, decoder = HeaderEncoder(), Decoder()
    decode(decoder, encoder.encode(request_headers(1)))
    # The server's SETTINGS_HEADER_TABLE_SIZE bounds both ends.
    encoder.header_table_size = decoder.max_allowed_table_size = 256
    block = encoder.encode(request_headers(2))
    assert block[0] == 0x3F  # dynamic table size update, 5-bit prefix, continued
    assert decode(decoder, block) == request_headers(2)
    # The JWT no longer fits a quarter of the table: sent as a literal from now on.
    assert list(decoder.header_table.dynamic_entries) == [STATIC[2], (b"apns-topic", b"com.example.app")]
    encoder.header_table_size = decoder.max_allowed_table_size = 0
    encoder.header_table_size = decoder.max_allowed_table_size = 4096
    block = encoder.encode(request_headers(3))
    assert block[:2] == b"\x20\x3f"  # the lowest size in between, then the final one
    assert decode(decoder, block) == request_headers(3)


def test_random_header_blocks_decode_exactly_while_entries_are_evicted() -> None:
    rng = random.Random(7)
    encoder, decoder = HeaderEncoder(), Decoder()
    for number in range(5000):
        if rng.random() < 0.002:
            size = rng.choice([0, 100, 1024, 4096, 65536])
            encoder.header_table_size = decoder.max_allowed_table_size = size
        headers = [
            *STATIC,
            (b":path", b"/%d" % rng.randrange(10**9)),
            (b"authorization", b"bearer %d" % (number // 700) + b"j" * 150),
            (b"apns-topic", b"com.app.%d" % rng.randrange(30)),
            (b"x-%d" % rng.randrange(200), b"v" * rng.choice([0, 5, 40, 1500])),
            NeverIndexedHeaderTuple(b"x-secret", b"%d" % rng.randrange(4)),
        ]
        assert decode(decoder, encoder.encode(headers)) == [tuple(header) for header in headers]


def test_request_frames_are_the_bytes_h2_itself_would_send() -> None:
    """ClientH2's send_headers/send_data skip h2's frame objects: same bytes, same states, same windows."""
    fast, reference = new_client_h2(), new_client_h2()
    for connection in (fast, reference):
        connection.initiate_connection()
        connection.data_to_send()
    requests = [
        (1, [*request_headers(1), ("apns-priority", "10")], b'{"aps":{"alert":"hi"}}'),
        (3, request_headers(2), b""),  # END_STREAM on HEADERS
        (5, [*request_headers(3), (b"x-big", b"v" * 40_000)], b"b" * 1000),  # HEADERS + 2 CONTINUATIONs
        (7, [*request_headers(4), NeverIndexedHeaderTuple(b"x-secret", b"s")], b"c"),
    ]
    for stream_id, headers, body in requests:
        fast.send_headers(stream_id, headers, end_stream=not body)
        H2Connection.send_headers(reference, stream_id, headers, end_stream=not body)
        if body:
            fast.send_data(stream_id, body, end_stream=True)
            H2Connection.send_data(reference, stream_id, body, end_stream=True)
        assert fast.data_to_send() == reference.data_to_send()
        assert fast.streams[stream_id].state_machine.state == reference.streams[stream_id].state_machine.state
        assert fast.streams[stream_id].request_method == reference.streams[stream_id].request_method
    assert fast.outbound_flow_control_window == reference.outbound_flow_control_window
    assert fast.highest_outbound_stream_id == reference.highest_outbound_stream_id == 7


def test_request_body_beyond_the_flow_control_window_is_refused_like_h2() -> None:
    connection = new_client_h2()
    connection.initiate_connection()
    connection.send_headers(1, request_headers(1))
    for _ in range(3):
        connection.send_data(1, b"x" * 16_384)
    assert connection.local_flow_control_window(1) == 65_535 - 3 * 16_384
    with pytest.raises(FlowControlError):
        connection.send_data(1, b"x" * 16_384)  # one byte over the window
