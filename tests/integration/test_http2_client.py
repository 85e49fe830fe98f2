"""The HTTP/2 client against real TLS servers: nghttpd (C) for volume and limits, and a scripted h2 server for
what nghttpd cannot do on cue (runtime SETTINGS changes, GOAWAY, RST_STREAM, silence, dropped connections)."""

from __future__ import annotations

import asyncio
import datetime
import ipaddress
import shutil
import socket
import ssl
import subprocess
from collections.abc import Callable, Coroutine, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import h2.events as ev
import pytest
import uvloop
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from h2.config import H2Configuration
from h2.connection import H2Connection
from h2.errors import ErrorCodes
from h2.exceptions import ProtocolError
from h2.settings import SettingCodes, Settings
from hyperframe.frame import GoAwayFrame

from tests.fixtures.ports import free_port, listening_socket
from tests.fixtures.waiting import eventually, until
from workers.providers.http2 import (
    ConnectFailed,
    ConnectionLost,
    Http2Connection,
    Http2Pool,
    RequestTimeout,
    Response,
    StreamReset,
    open_connection,
)

T = TypeVar("T")
LOOPS = {"asyncio": asyncio.new_event_loop, "uvloop": uvloop.new_event_loop}


def run(scenario: Callable[[], Coroutine[Any, Any, T]], loop: str = "asyncio") -> T:
    with asyncio.Runner(loop_factory=LOOPS[loop]) as runner:
        return runner.run(scenario())


# certificates and servers


@dataclass(frozen=True)
class Certificate:
    cert_path: Path
    key_path: Path

    def client_context(self) -> ssl.SSLContext:
        return ssl.create_default_context(cafile=str(self.cert_path))

    def server_context(self, alpn: str = "h2") -> ssl.SSLContext:
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(self.cert_path, self.key_path)
        context.set_alpn_protocols([alpn])
        return context


@pytest.fixture(scope="module")
def certificate(tmp_path_factory: pytest.TempPathFactory) -> Certificate:
    """A self-signed P-256 certificate for 127.0.0.1, trusted by the client as its own CA."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
        .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), critical=False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )  # fmt: skip
    directory = tmp_path_factory.mktemp("http2-cert")
    paths = Certificate(directory / "cert.pem", directory / "key.pem")
    paths.cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    pem = serialization.Encoding.PEM
    paths.key_path.write_bytes(
        key.private_bytes(pem, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    return paths


@pytest.fixture
def nghttpd(certificate: Certificate, tmp_path: Path) -> Iterator[Callable[..., int]]:
    """Starts nghttpd (`--echo-upload`, a 2-byte /hello) with extra options; returns its port."""
    binary = shutil.which("nghttpd") or "/usr/sbin/nghttpd"
    if not Path(binary).exists():
        pytest.fail("nghttpd is not installed: apt-get install nghttp2")
    htdocs = tmp_path / "htdocs"
    htdocs.mkdir()
    (htdocs / "hello").write_bytes(b"hi")
    servers: list[subprocess.Popen[bytes]] = []

    def start(*options: str) -> int:
        port = free_port()
        command = [binary, "--echo-upload", "-d", str(htdocs), *options, str(port)]
        server = subprocess.Popen([*command, str(certificate.key_path), str(certificate.cert_path)],
                                  stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)  # fmt: skip
        servers.append(server)
        until(lambda: server.poll() is not None or is_listening(port), timeout_s=10, what="nghttpd to listen")
        assert server.poll() is None, server.stderr.read() if server.stderr else b""
        return port

    yield start
    for server in servers:
        server.terminate()
        server.wait(timeout=10)
        if server.stderr is not None:
            server.stderr.close()


def is_listening(port: int) -> bool:
    with socket.socket() as probe:
        return probe.connect_ex(("127.0.0.1", port)) == 0


class ServerConnection(asyncio.Protocol):
    """One server side connection. Requests act on their path when they end: /ok answers 200 with the stream id,
    /echo answers the body, /hold never answers, /refuse resets with REFUSED_STREAM, /reset with INTERNAL_ERROR."""

    def __init__(self, server: ScriptedServer) -> None:
        self.server = server
        self.h2 = H2Connection(H2Configuration(client_side=False, header_encoding=None))
        self.transport: asyncio.Transport | None = None
        self.requests: dict[int, tuple[bytes, list[tuple[bytes, bytes]], bytearray]] = {}
        self.held: list[int] = []
        self.open_streams = 0
        self.peak_streams = 0
        self.resets_received: list[tuple[int, int]] = []
        self.pings = 0
        self.goaway_received = False
        self.errors: list[str] = []

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        self.server.connections.append(self)
        if self.server.closing:  # finished its TLS handshake after the server began to close
            transport.abort()  # type: ignore[attr-defined]
            return
        limit = {SettingCodes.MAX_CONCURRENT_STREAMS: self.server.max_streams}
        self.h2.local_settings = Settings(client=False, initial_values=limit)
        self.h2.initiate_connection()
        self.flush()

    def data_received(self, data: bytes) -> None:
        try:
            events = self.h2.receive_data(data)
        except ProtocolError as error:
            self.errors.append(repr(error))
            self.flush()
            return
        for event in events:
            self.handle(event)
        self.flush()

    def handle(self, event: ev.Event) -> None:
        if isinstance(event, ev.RequestReceived):
            headers = list(event.headers or [])
            path = dict(headers)[b":path"]
            self.requests[event.stream_id] = (path, headers, bytearray())
            self.open_streams += 1
            self.peak_streams = max(self.peak_streams, self.open_streams)
        elif isinstance(event, ev.DataReceived):
            self.requests[event.stream_id][2].extend(event.data)
            self.h2.acknowledge_received_data(event.flow_controlled_length, event.stream_id)
        elif isinstance(event, ev.StreamEnded):
            self.act(event.stream_id)
        elif isinstance(event, ev.StreamReset):
            self.resets_received.append((event.stream_id, event.error_code))
            self.open_streams -= 1
        elif isinstance(event, ev.PingReceived):
            self.pings += 1
        elif isinstance(event, ev.ConnectionTerminated):
            self.goaway_received = True

    def act(self, stream_id: int) -> None:
        path = self.requests[stream_id][0]
        if path.startswith(b"/ok"):
            self.answer(stream_id, body=str(stream_id).encode())
        elif path.startswith(b"/echo"):
            self.answer(stream_id, body=bytes(self.requests[stream_id][2]))
        elif path.startswith(b"/hold"):
            self.held.append(stream_id)
        else:
            refused = path == b"/refuse"
            self.reset(stream_id, ErrorCodes.REFUSED_STREAM if refused else ErrorCodes.INTERNAL_ERROR)

    def answer(self, stream_id: int, status: int = 200, body: bytes = b"") -> None:
        headers = [(b":status", str(status).encode()), (b"apns-id", b"id-%d" % stream_id)]
        self.h2.send_headers(stream_id, headers)
        self.h2.send_data(stream_id, body, end_stream=True)
        self.open_streams -= 1
        self.flush()

    def answer_held(self) -> None:
        while self.held:
            self.answer(self.held.pop(0))

    def reset(self, stream_id: int, error_code: ErrorCodes) -> None:
        self.h2.reset_stream(stream_id, error_code)
        self.open_streams -= 1
        self.flush()

    def set_max_streams(self, limit: int) -> None:
        self.h2.update_settings({SettingCodes.MAX_CONCURRENT_STREAMS: limit})
        self.flush()

    def send_goaway(self, last_stream_id: int, error_code: ErrorCodes = ErrorCodes.NO_ERROR) -> None:
        # Written past h2, whose own GOAWAY would stop this side from answering streams <= last_stream_id.
        assert self.transport is not None
        self.transport.write(GoAwayFrame(0, last_stream_id=last_stream_id, error_code=error_code).serialize())

    def flush(self) -> None:
        data = self.h2.data_to_send()
        if data and self.transport is not None and not self.transport.is_closing():
            self.transport.write(data)

    def connection_lost(self, exc: Exception | None) -> None:
        self.server.closed_connections += 1


class ScriptedServer:
    def __init__(self, certificate: Certificate, max_streams: int, alpn: str) -> None:
        self.certificate, self.max_streams, self.alpn = certificate, max_streams, alpn
        self.connections: list[ServerConnection] = []
        self.closed_connections = 0
        self.closing = False
        self.port = 0
        self._server: asyncio.Server | None = None

    @property
    def latest(self) -> ServerConnection:
        return self.connections[-1]

    def drop_connections(self) -> None:
        for connection in self.connections:
            if connection.transport is not None:
                connection.transport.abort()

    async def __aenter__(self) -> ScriptedServer:
        sock = listening_socket()
        self.port = sock.getsockname()[1]
        context = self.certificate.server_context(self.alpn)
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(lambda: ServerConnection(self), sock=sock, ssl=context)
        return self

    async def __aexit__(self, error_type: type[BaseException] | None, *_: object) -> None:
        assert self._server is not None
        self.closing = True
        self._server.close()
        self.drop_connections()
        await self._server.wait_closed()
        await eventually(lambda: self.closed_connections == len(self.connections), what="connections closed")
        if error_type is None:
            assert [error for connection in self.connections for error in connection.errors] == []


ServerFactory = Callable[..., ScriptedServer]


@pytest.fixture
def scripted(certificate: Certificate) -> ServerFactory:
    """`async with scripted(max_streams=…, alpn=…) as server:` serves until the block ends."""

    def create(max_streams: int = 100, alpn: str = "h2") -> ScriptedServer:
        return ScriptedServer(certificate, max_streams, alpn)

    return create


async def connect(server: ScriptedServer, certificate: Certificate, **options: Any) -> Http2Connection:
    return await open_connection("127.0.0.1", server.port, certificate.client_context(), **options)


def lost(task: asyncio.Task[Response], *, retry_safe: bool) -> bool:
    error = task.exception() if task.done() else None
    return isinstance(error, ConnectionLost) and error.retry_safe == retry_safe


# nghttpd: volume, echo, limits, flow control


@pytest.mark.parametrize("loop", ["asyncio", "uvloop"])
def test_many_concurrent_requests_are_all_answered_each_with_its_own_body(
    nghttpd: Callable[..., int], certificate: Certificate, loop: str
) -> None:
    port = nghttpd()

    async def scenario() -> None:
        pool = Http2Pool("127.0.0.1", port, certificate.client_context(), connections=2)
        sent = 0

        async def sender(worker: int) -> None:
            nonlocal sent
            for round_ in range(3):
                body = b'{"worker":%d,"round":%d}' % (worker, round_)
                headers = [(b"authorization", b"bearer shared"), (b"apns-id", b"%d-%d" % (worker, round_))]
                response = await pool.request(b"POST", b"/3/device/%d" % worker, headers, body, timeout_s=10)
                assert (response.status, response.body) == (200, body)
                assert response.headers["nghttpd-response"] == "echo"
                sent += 1
            hello = await pool.request(b"GET", b"/hello", timeout_s=10)
            assert (hello.status, hello.body) == (200, b"hi")

        await asyncio.gather(*(sender(worker) for worker in range(400)))
        assert sent == 1200
        assert [limit for limit, _ in pool.connection_stats()] == [100, 100]
        await pool.close()

    run(scenario, loop)


def test_server_stream_limit_is_never_exceeded(nghttpd: Callable[..., int], certificate: Certificate) -> None:
    port = nghttpd("--max-concurrent-streams=5")

    async def scenario() -> None:
        connection = await open_connection("127.0.0.1", port, certificate.client_context())
        assert connection.max_streams == 5
        peak, done = 0, False

        async def sample() -> None:
            nonlocal peak
            while not done:
                peak = max(peak, connection.in_flight)
                await asyncio.sleep(0)

        sampler = asyncio.create_task(sample())
        responses = await asyncio.gather(*(connection.request(b"GET", b"/hello") for _ in range(300)))
        done = True
        await sampler
        assert {response.status for response in responses} == {200}
        assert peak == 5
        assert (connection.in_flight, connection.queued) == (0, 0)
        await connection.close()

    run(scenario)


def test_body_larger_than_the_flow_control_window_is_sent_whole(
    nghttpd: Callable[..., int], certificate: Certificate
) -> None:
    port = nghttpd("--window-bits=14")  # the server's stream receive window: 16 KiB

    async def scenario() -> None:
        connection = await open_connection("127.0.0.1", port, certificate.client_context())
        bodies = [bytes([65 + n]) * (300_000 + n) for n in range(3)]
        responses = await asyncio.gather(*(connection.request(b"POST", b"/big", (), body) for body in bodies))
        assert [response.body for response in responses] == bodies
        await connection.close()

    run(scenario)


# scripted server: timeouts, limits at runtime, GOAWAY, resets, loss, PING, pool


def test_unanswered_request_times_out_and_resets_its_stream(
    scripted: ServerFactory, certificate: Certificate
) -> None:
    async def scenario() -> None:
        async with scripted() as server:
            connection = await connect(server, certificate)
            with pytest.raises(RequestTimeout) as timeout:
                await connection.request(b"GET", b"/hold", timeout_s=0.2)
            assert not timeout.value.retry_safe
            await eventually(lambda: server.latest.resets_received == [(1, ErrorCodes.CANCEL)])
            assert (await connection.request(b"GET", b"/ok")).body == b"3"
            assert connection.is_usable and connection.in_flight == 0
            await connection.close()

    run(scenario)


def test_request_queued_past_its_timeout_is_retry_safe(
    scripted: ServerFactory, certificate: Certificate
) -> None:
    async def scenario() -> None:
        async with scripted(max_streams=1) as server:
            connection = await connect(server, certificate)
            held = asyncio.create_task(connection.request(b"GET", b"/hold"))
            await eventually(lambda: server.latest.held == [1])
            with pytest.raises(RequestTimeout) as timeout:
                await connection.request(b"GET", b"/ok", timeout_s=0.2)
            assert timeout.value.retry_safe
            assert connection.queued == 0
            server.latest.answer_held()
            assert (await held).status == 200
            await connection.close()

    run(scenario)


def test_cancelled_request_resets_its_stream_and_frees_it(
    scripted: ServerFactory, certificate: Certificate
) -> None:
    async def scenario() -> None:
        async with scripted(max_streams=1) as server:
            connection = await connect(server, certificate)
            held = asyncio.create_task(connection.request(b"GET", b"/hold"))
            queued = asyncio.create_task(connection.request(b"GET", b"/ok"))
            await eventually(lambda: server.latest.held == [1] and connection.queued == 1)
            held.cancel()
            assert (await queued).body == b"3"
            assert server.latest.resets_received == [(1, ErrorCodes.CANCEL)]
            await connection.close()

    run(scenario)


def test_lowered_stream_limit_queues_requests_in_order_until_streams_close(
    scripted: ServerFactory, certificate: Certificate
) -> None:
    async def scenario() -> None:
        async with scripted(max_streams=10) as server:
            connection = await connect(server, certificate)
            held = [asyncio.create_task(connection.request(b"GET", b"/hold")) for _ in range(4)]
            await eventually(lambda: len(server.latest.held) == 4)
            server.latest.set_max_streams(1)  # what APNs does after a rejected notification
            await eventually(lambda: connection.max_streams == 1)
            finished: list[int] = []

            async def send(number: int) -> None:
                await connection.request(b"GET", b"/ok")
                finished.append(number)

            queued = [asyncio.create_task(send(number)) for number in range(5)]
            await eventually(lambda: connection.queued == 5)
            assert connection.free_streams == 1 - 4 - 5
            server.latest.answer_held()
            server.latest.peak_streams = 0
            await asyncio.gather(*held, *queued)
            assert finished == [0, 1, 2, 3, 4]
            assert server.latest.peak_streams == 1

            server.latest.set_max_streams(1)
            one = asyncio.create_task(connection.request(b"GET", b"/hold"))
            rest = [asyncio.create_task(connection.request(b"GET", b"/hold")) for _ in range(3)]
            await eventually(lambda: len(server.latest.held) == 1 and connection.queued == 3)
            server.latest.set_max_streams(1000)  # restored after the next accepted notification
            await eventually(lambda: len(server.latest.held) == 4 and connection.queued == 0)
            assert connection.max_streams == 1000
            server.latest.answer_held()
            await asyncio.gather(one, *rest)
            await connection.close()

    run(scenario)


@pytest.mark.parametrize("error_code", [ErrorCodes.NO_ERROR, ErrorCodes.ENHANCE_YOUR_CALM])
def test_goaway_fails_newer_streams_as_retry_safe_and_unanswered_older_ones_as_unsafe(
    scripted: ServerFactory, certificate: Certificate, error_code: ErrorCodes
) -> None:
    async def scenario() -> None:
        async with scripted() as server:
            connection = await connect(server, certificate)
            tasks = [asyncio.create_task(connection.request(b"GET", b"/hold")) for _ in range(4)]
            await eventually(lambda: server.latest.held == [1, 3, 5, 7])
            server.latest.send_goaway(last_stream_id=3, error_code=error_code)
            await eventually(lambda: lost(tasks[2], retry_safe=True) and lost(tasks[3], retry_safe=True))
            assert not connection.is_usable
            with pytest.raises(ConnectionLost) as refused:
                await connection.request(b"GET", b"/ok")
            assert refused.value.retry_safe
            if error_code == ErrorCodes.NO_ERROR:  # graceful: streams <= last_stream_id may still be answered
                server.latest.answer(1, body=b"late")
                assert (await tasks[0]).body == b"late"
                assert not tasks[1].done()
                server.drop_connections()
            await eventually(lambda: lost(tasks[1], retry_safe=False))
            await asyncio.gather(*tasks, return_exceptions=True)
            await connection.close()

    run(scenario)


def test_connection_closes_itself_once_drained_after_graceful_goaway(
    scripted: ServerFactory, certificate: Certificate
) -> None:
    async def scenario() -> None:
        async with scripted() as server:
            connection = await connect(server, certificate)
            task = asyncio.create_task(connection.request(b"GET", b"/hold"))
            await eventually(lambda: server.latest.held == [1])
            server.latest.send_goaway(last_stream_id=1)
            await eventually(lambda: not connection.is_usable)
            server.latest.answer_held()
            assert (await task).status == 200
            await asyncio.wait_for(connection.closed, 5)

    run(scenario)


def test_refused_stream_is_retry_safe_and_other_resets_are_not(
    scripted: ServerFactory, certificate: Certificate
) -> None:
    async def scenario() -> None:
        async with scripted() as server:
            connection = await connect(server, certificate)
            with pytest.raises(StreamReset) as refused:
                await connection.request(b"POST", b"/refuse", (), b"{}")
            assert (refused.value.error_code, refused.value.retry_safe) == (ErrorCodes.REFUSED_STREAM, True)
            with pytest.raises(StreamReset) as reset:
                await connection.request(b"GET", b"/reset")
            assert (reset.value.error_code, reset.value.retry_safe) == (ErrorCodes.INTERNAL_ERROR, False)
            assert connection.is_usable and connection.in_flight == 0
            assert (await connection.request(b"GET", b"/ok")).status == 200
            await connection.close()

    run(scenario)


def test_headers_reach_the_server_exactly_while_the_header_table_churns(
    scripted: ServerFactory, certificate: Certificate
) -> None:
    async def scenario() -> None:
        async with scripted() as server:
            connection = await connect(server, certificate)
            for number in range(300):
                jwt = b"bearer " + b"%d" % (number // 100) * 60
                headers = [(b"authorization", jwt), (b"apns-topic", b"com.example.%d" % (number % 7)),
                           (b"apns-id", b"%036d" % number), (b"x-filler-%d" % (number % 90), b"v" * (number % 50))]  # fmt: skip
                await connection.request(b"POST", b"/echo/%d" % number, headers, b"x")
                received = server.latest.requests[number * 2 + 1][1]
                assert received[4:] == headers
                assert dict(received[:4]) == {b":method": b"POST", b":path": b"/echo/%d" % number,
                                              b":scheme": b"https", b":authority": b"127.0.0.1:%d" % server.port}  # fmt: skip
            await connection.close()

    run(scenario)


def test_lost_connection_fails_open_requests_and_the_pool_reconnects(
    scripted: ServerFactory, certificate: Certificate
) -> None:
    async def scenario() -> None:
        async with scripted() as server:
            pool = Http2Pool("127.0.0.1", server.port, certificate.client_context(), connections=1)
            assert (await pool.request(b"GET", b"/ok")).status == 200
            tasks = [asyncio.create_task(pool.request(b"GET", b"/hold")) for _ in range(3)]
            await eventually(lambda: len(server.latest.held) == 3)
            server.drop_connections()
            errors = await asyncio.gather(*tasks, return_exceptions=True)
            assert all(isinstance(error, ConnectionLost) and not error.retry_safe for error in errors)
            assert pool.connection_stats() == [(0, 0)]
            assert (await pool.request(b"GET", b"/ok")).body == b"1"  # stream 1 of a new connection
            assert len(server.connections) == 2
            await pool.close()

    run(scenario)


def test_pool_opens_a_new_connection_while_the_old_one_drains_after_goaway(
    scripted: ServerFactory, certificate: Certificate
) -> None:
    async def scenario() -> None:
        async with scripted() as server:
            pool = Http2Pool("127.0.0.1", server.port, certificate.client_context(), connections=1)
            await pool.request(b"GET", b"/ok")  # one that never answered would be replaced only after a pause
            draining = asyncio.create_task(pool.request(b"GET", b"/hold"))
            await eventually(lambda: server.latest.held == [3])
            server.latest.send_goaway(last_stream_id=3)
            await eventually(lambda: pool.connection_stats() == [(0, 0)])
            assert (await pool.request(b"GET", b"/ok")).body == b"1"
            assert len(server.connections) == 2
            server.connections[0].answer_held()
            assert (await draining).status == 200
            still_draining = asyncio.create_task(pool.request(b"GET", b"/hold"))
            await eventually(lambda: server.latest.held == [3])
            server.latest.send_goaway(last_stream_id=3)
            await eventually(lambda: pool.connection_stats() == [(0, 0)])
            await pool.request(b"GET", b"/ok")  # replaces the connection; the old one still holds stream 3
            await pool.close()
            await asyncio.wait([still_draining])
            assert lost(still_draining, retry_safe=False)

    run(scenario)


def test_pool_routes_requests_away_from_a_throttled_connection(
    scripted: ServerFactory, certificate: Certificate
) -> None:
    async def scenario() -> None:
        async with scripted() as server:
            pool = Http2Pool("127.0.0.1", server.port, certificate.client_context(), connections=2)
            await pool.request(b"GET", b"/ok")
            await eventually(lambda: [limit for limit, _ in pool.connection_stats()] == [100, 100])
            server.connections[0].set_max_streams(1)
            await eventually(lambda: sorted(limit for limit, _ in pool.connection_stats()) == [1, 100])
            tasks = [asyncio.create_task(pool.request(b"GET", b"/hold")) for _ in range(30)]
            await eventually(lambda: sum(len(connection.held) for connection in server.connections) == 30)
            # The throttled connection carries one request at a time (the success that can lift its
            # limit); everything else goes to the healthy one.
            assert sorted(pool.connection_stats()) == [(1, 1), (100, 29)]
            for connection in server.connections:
                connection.answer_held()
            await asyncio.gather(*tasks)
            await pool.close()
            assert all(connection.goaway_received for connection in server.connections)

    run(scenario)


def test_idle_connection_pings_and_closes_when_the_ping_goes_unanswered(
    scripted: ServerFactory, certificate: Certificate
) -> None:
    async def scenario() -> None:
        async with scripted() as server:
            connection = await connect(server, certificate, idle_ping_s=0.05, ping_timeout_s=0.3)
            await eventually(lambda: server.latest.pings >= 3)
            assert connection.is_usable
            task = asyncio.create_task(connection.request(b"GET", b"/hold", timeout_s=30))
            await eventually(lambda: server.latest.held == [1])
            assert server.latest.transport is not None
            server.latest.transport.pause_reading()  # alive, but silent
            with pytest.raises(ConnectionLost, match="no PING answer") as lost:
                await task
            assert not lost.value.retry_safe
            await asyncio.wait_for(connection.closed, 5)

    run(scenario)


def test_server_without_h2_is_refused(scripted: ServerFactory, certificate: Certificate) -> None:
    async def scenario() -> None:
        async with scripted(alpn="http/1.1") as server:
            with pytest.raises(ConnectFailed, match="ALPN"):
                await connect(server, certificate)

    run(scenario)


def test_pool_backs_off_after_a_failed_connect_instead_of_retrying_at_once(certificate: Certificate) -> None:
    async def scenario() -> None:
        attempts = 0

        def refuse(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            nonlocal attempts
            attempts += 1
            writer.transport.abort()

        server = await asyncio.start_server(refuse, sock=listening_socket())
        port = server.sockets[0].getsockname()[1]
        pool = Http2Pool("127.0.0.1", port, certificate.client_context(), reconnect_base_s=60)
        with pytest.raises(ConnectFailed) as first:
            await pool.request(b"GET", b"/ok")
        assert first.value.retry_safe
        for _ in range(20):
            with pytest.raises(ConnectFailed):
                await pool.request(b"GET", b"/ok")
        assert attempts == 1
        await pool.close()
        server.close()
        await server.wait_closed()

    run(scenario)
