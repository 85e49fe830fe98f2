"""The HTTP/2 client's request framing against h2's, its HPACK encoder against hpack's decoder (what every server runs in spirit): blocks decode to
exactly what was sent, repeated values shrink to one byte, per-request values stay out of the table; and its answer side (ClientH2's fast receive
path, HeaderDecoder) against h2's and hpack's own: same events, states, windows, HPACK table and errors."""

from __future__ import annotations

import random

import h2.events as ev
import pytest
from h2.config import H2Configuration
from h2.connection import H2Connection
from h2.exceptions import FlowControlError, ProtocolError
from h2.settings import ChangedSetting, SettingCodes
from hpack import Decoder, Encoder, NeverIndexedHeaderTuple, OversizedHeaderListError

from workers.providers.h2_overrides import ClientH2, new_client_h2
from workers.providers.hpack_decoder import HeaderDecoder
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


# the answer side: ClientH2.receive_data's fast path and HeaderDecoder against h2's and hpack's own


def server_h2() -> H2Connection:
    server = H2Connection(H2Configuration(client_side=False, header_encoding=None))
    server.initiate_connection()
    return server


def client_pair() -> tuple[ClientH2, ClientH2]:
    """Two clients in the same state: `fast` as it runs, `reference` fed through h2's own receive path and
    hpack's own decoder."""
    fast, reference = new_client_h2(), new_client_h2()
    reference.decoder = Decoder(reference.decoder.max_header_list_size)
    for connection in (fast, reference):
        connection.initiate_connection()
    return fast, reference


def described(value: object) -> object:
    """An h2 event (or what it holds) as plain data, to compare events field by field."""
    if isinstance(value, ev.Event | ChangedSetting):
        return (type(value).__name__, described(vars(value)))
    if isinstance(value, dict):
        return {key: described(item) for key, item in value.items()}
    if isinstance(value, list):
        return [described(item) for item in value]
    if isinstance(value, tuple) and len(value) == 2 and isinstance(value[0], bytes):
        return (type(value) is NeverIndexedHeaderTuple, bytes(value[0]), bytes(value[1]))
    return value


def state(connection: ClientH2) -> object:
    return (
        connection.state_machine.state,
        {
            stream_id: (
                stream.state_machine.state,
                stream.state_machine.headers_received,
                stream.state_machine.trailers_received,
                stream.closed_by,
                stream.inbound_flow_control_window,
                stream.outbound_flow_control_window,
                stream._actual_content_length,
                stream._expected_content_length,
            )
            for stream_id, stream in connection.streams.items()
        },
        connection.inbound_flow_control_window,
        connection.outbound_flow_control_window,
        list(connection.decoder.header_table.dynamic_entries),
        connection.decoder.header_table_size,
        connection.remote_settings.max_concurrent_streams,
    )


def feed(fast: ClientH2, reference: ClientH2, wire: bytes, rng: random.Random) -> tuple[object, object]:
    """`wire` to both clients, `fast` in random pieces (frames split anywhere, several frames per piece), the
    reference whole; both acknowledge received data as Http2Connection does. Returns both event lists."""
    events: dict[str, list[ev.Event]] = {"fast": [], "reference": []}
    position = 0
    while position < len(wire):
        size = rng.choice((1, 5, 9, 10, 17, 64, 300, 5000))
        events["fast"] += fast.receive_data(wire[position : position + size])
        position += size
    events["reference"] = H2Connection.receive_data(reference, wire)
    for connection, received in ((fast, events["fast"]), (reference, events["reference"])):
        for event in received:
            if isinstance(event, ev.DataReceived) and event.stream_id in connection.streams:
                connection.acknowledge_received_data(event.flow_controlled_length, event.stream_id)
    return described(events["fast"]), described(events["reference"])


def open_requests(server: H2Connection, clients: tuple[ClientH2, ...], count: int, body: bytes = b"") -> None:
    for number in range(1, count + 1):
        for client in clients:
            client.send_headers(2 * number - 1, request_headers(number), end_stream=not body)
            if body:
                client.send_data(2 * number - 1, body, end_stream=True)
    wire = clients[0].data_to_send()
    for client in clients[1:]:
        assert client.data_to_send() == wire
    server.receive_data(wire)


def answer_everything(server: H2Connection) -> None:
    """Every kind of answer APNs (or a proxy in front of it) may give, on streams 1..31."""
    date = (b"date", b"Thu, 26 Nov 2026 04:30:00 GMT")
    server.send_headers(1, [(b":status", b"200"), (b"apns-id", b"a" * 36), date], end_stream=True)
    server.send_headers(3, [(b":status", b"200"), (b"apns-id", b"b" * 36), date], end_stream=True)
    bad = b'{"reason":"BadDeviceToken"}'
    server.send_headers(5, [(b":status", b"400"), (b"content-length", b"%d" % len(bad)), date])
    server.send_data(5, bad, end_stream=True)
    gone = b'{"reason":"Unregistered","timestamp":1732600000000}'
    server.send_headers(7, [(b":status", b"410"), (b"content-type", b"application/json")])
    server.send_data(7, gone[:20])
    server.send_data(7, gone[20:])
    server.end_stream(7)  # an empty DATA frame with END_STREAM
    server.send_headers(9, [(b":status", b"429"), (b"retry-after", b"30")])
    server.send_data(9, b'{"reason":"TooManyRequests"}', end_stream=True)
    server.send_headers(11, [(b":status", b"103"), (b"link", b"</x>")])  # informational, then the answer
    server.send_headers(11, [(b":status", b"200")], end_stream=True)
    server.send_headers(13, [(b":status", b"200")])
    server.send_data(13, b"body")
    server.send_headers(13, [(b"grpc-status", b"0")], end_stream=True)  # trailers
    server.send_headers(
        15, [(b":status", b"200"), (b"x-big", b"v" * 40_000)], end_stream=True
    )  # CONTINUATION
    server.reset_stream(17, 2)
    server.send_headers(19, [(b":status", b"200")])
    server.send_data(19, b"padded", pad_length=7, end_stream=True)
    # HEADERS with the PRIORITY flag (h2 will not send it as a server): depends on 0, weight 200, :status 200
    server._data_to_send += b"\x00\x00\x06\x01\x25\x00\x00\x00\x15\x00\x00\x00\x00\xc7\x88"
    server.send_headers(23, [(b":status", b"400"), NeverIndexedHeaderTuple(b"x-secret", b"s")])
    server.send_data(23, b"{}", end_stream=True)
    server.update_settings({SettingCodes.MAX_CONCURRENT_STREAMS: 1, SettingCodes.INITIAL_WINDOW_SIZE: 70_000})
    server.ping(b"12345678")
    server.increment_flow_control_window(1000)  # WINDOW_UPDATE on the connection
    server.increment_flow_control_window(500, stream_id=25)  # and on a stream still sending
    server.encoder.header_table_size = 256  # a table size update at the start of the next block
    server.send_headers(25, [(b":status", b"200"), (b"apns-id", b"c" * 36), date], end_stream=True)
    server.send_headers(27, [(b":status", b"200"), (b"apns-id", b"c" * 36), date])
    server.send_data(27, b"", end_stream=True)
    server.send_headers(29, [(b":status", b"200")], end_stream=True)


def test_answers_give_the_events_and_states_h2_itself_gives() -> None:
    """Every frame an answer can bring, split at random places: the fast receive path and h2's own path give
    the same events (field by field), stream states, windows, HPACK table and frames to send."""
    for seed in range(20):
        rng = random.Random(seed)
        server, (fast, reference) = server_h2(), client_pair()
        open_requests(server, (fast, reference), 12)
        for number in range(13, 15):  # two requests still sending their bodies (stream states OPEN)
            for client in (fast, reference):
                client.send_headers(2 * number - 1, request_headers(number))
                client.send_data(2 * number - 1, b"partial")
        for client in (fast, reference):
            client.send_headers(29, request_headers(15), end_stream=True)
        wire = fast.data_to_send()
        assert reference.data_to_send() == wire
        server.receive_data(wire)
        answer_everything(server)
        fast_events, reference_events = feed(fast, reference, server.data_to_send(), rng)
        assert fast_events == reference_events
        assert state(fast) == state(reference)
        assert fast.data_to_send() == reference.data_to_send()
        assert len(fast_events) > 40  # type: ignore[arg-type]


def test_many_plain_answers_keep_the_header_table_and_windows_in_step() -> None:
    """Thousands of 200s and JSON errors through both paths: the HPACK table churns (new dates and ids
    evict old ones), DATA eats the windows and WINDOW_UPDATEs go out at the same moments."""
    rng = random.Random(7)
    server, (fast, reference) = server_h2(), client_pair()
    server.encoder.header_table_size = 512
    for batch in range(20):
        first = batch * 100 + 1
        for number in range(first, first + 100):
            for client in (fast, reference):
                client.send_headers(2 * number - 1, request_headers(number), end_stream=True)
        wire = fast.data_to_send()
        assert reference.data_to_send() == wire
        server.receive_data(wire)
        for number in range(first, first + 100):
            stream_id = 2 * number - 1
            headers = [(b":status", b"200" if number % 7 else b"400"), (b"apns-id", b"%036d" % number),
                       (b"date", b"second %d" % (number // 50)), (b"server", b"nghttpd")]  # fmt: skip
            server.send_headers(stream_id, headers, end_stream=number % 7 != 0)
            if number % 7 == 0:
                server.send_data(
                    stream_id, b'{"reason":"BadDeviceToken"}' * rng.randint(1, 60), end_stream=True
                )
        fast_events, reference_events = feed(fast, reference, server.data_to_send(), rng)
        assert fast_events == reference_events
        assert state(fast) == state(reference)
        back = fast.data_to_send()  # WINDOW_UPDATEs
        assert reference.data_to_send() == back
        server.receive_data(back)
        fast.evict_closed_streams()
        reference.evict_closed_streams()
        # late frames for streams answered and forgotten: a WINDOW_UPDATE, a DATA (answered with RST_STREAM)
        late = b"\x00\x00\x04\x08\x00%s\x00\x00\x01\x00" % (first * 2 - 1).to_bytes(4)
        late += b"\x00\x00\x02\x00\x01%s{}" % (first * 2 + 1).to_bytes(4)
        fast_events, reference_events = feed(fast, reference, late, rng)
        assert fast_events == reference_events
        assert state(fast) == state(reference)
        assert fast.data_to_send() == reference.data_to_send()


@pytest.mark.parametrize(
    "wire",
    [
        pytest.param(b"\x00\x00\x01\x01\x05\x00\x00\x00\x01\xfe", id="HEADERS with an index past the table"),
        pytest.param(b"\x00\x00\x01\x01\x05\x00\x00\x00\x01\x80", id="HEADERS with index 0"),
        pytest.param(b"\x00\x00\x02\x01\x05\x00\x00\x00\x01\x88\x3f", id="table size update after a header"),
        pytest.param(b"\x00\x00\x01\x00\x01\x00\x00\x00\x01x", id="DATA before the answer's HEADERS"),
        pytest.param(b"\x00\x00\x01\x09\x04\x00\x00\x00\x01\x88", id="CONTINUATION without HEADERS"),
        pytest.param(
            b"\x00\x00\x04\x08\x00\x00\x00\x00\x00\x7f\xff\xff\xff", id="connection window overflow"
        ),
        pytest.param(b"\x00\x00\x04\x08\x00\x00\x00\x00\x00\x00\x00\x00\x00", id="WINDOW_UPDATE of 0"),
        pytest.param(b"\x00\x00\x03\x08\x00\x00\x00\x00\x00\x00\x00\x01", id="WINDOW_UPDATE of 3 bytes"),
        pytest.param(b"\x00\x40\x01\x00\x00\x00\x00\x00\x01" + b"x" * 16_385, id="frame over the size limit"),
        pytest.param(
            b"\x00\x00\x04\x01\x04\x00\x00\x00\x01\x88\x5c\x01\x35"  # content-length 5, then 6 bytes of DATA
            b"\x00\x00\x06\x00\x01\x00\x00\x00\x01123456",
            id="DATA beyond content-length",
        ),
    ],
)
def test_malformed_answers_fail_the_connection_as_h2_does(wire: bytes) -> None:
    fast, reference = client_pair()
    for client in (fast, reference):
        client.send_headers(1, request_headers(1), end_stream=True)
        client.data_to_send()
        client.receive_data(b"\x00\x00\x00\x04\x00\x00\x00\x00\x00")  # the server's SETTINGS
    errors = []
    for client, receive in ((fast, ClientH2.receive_data), (reference, H2Connection.receive_data)):
        with pytest.raises(ProtocolError) as raised:
            receive(client, wire)
        errors.append((type(raised.value), raised.value.error_code))
    assert errors[0] == errors[1]
    assert fast.data_to_send() == reference.data_to_send()  # SETTINGS ack, GOAWAY with the same code
    assert fast.state_machine.state == reference.state_machine.state


def test_header_decoder_matches_hpack_while_the_table_churns() -> None:
    """Random header blocks from hpack's encoder (Huffman, indexing, never-indexed, table size updates)."""
    rng = random.Random(3)
    encoder, ours, theirs = Encoder(), HeaderDecoder(), Decoder()
    for round_number in range(2000):
        if round_number % 97 == 0:
            encoder.header_table_size = rng.choice((0, 100, 1000, 4096))
        headers = [
            (b":status", rng.choice((b"200", b"400", b"410"))),
            (b"apns-id", b"%036d" % rng.randrange(50)),
            *[(b"x-%d" % rng.randrange(30), b"v" * rng.randrange(40)) for _ in range(rng.randrange(4))],
        ]
        if rng.random() < 0.1:
            headers.append(NeverIndexedHeaderTuple(b"x-secret", b"s%d" % rng.randrange(5)))
        block = encoder.encode(headers, huffman=rng.random() < 0.5)
        assert described(ours.decode(block, raw=True)) == described(theirs.decode(block, raw=True))
        assert list(ours.header_table.dynamic_entries) == list(theirs.header_table.dynamic_entries)
    too_big = HeaderDecoder(max_header_list_size=100)
    with pytest.raises(OversizedHeaderListError):
        too_big.decode(encoder.encode([(b"x", b"v" * 80), (b"y", b"v" * 80)]), raw=True)
