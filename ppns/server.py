"""The PPNS listener: TLS without h2 (or plain TCP behind a terminator), accept loop, RST on shutdown."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import ssl
import time
from collections.abc import Callable

from prometheus_client import start_http_server
from pymongo import AsyncMongoClient

from ppns.backlog import open_backlogs
from ppns.connection import DeviceConnection, NodeContext, configure_socket
from ppns.live import NodeLink, default_node_id, encode_resets, holder_node, node_queue
from ppns.registry import Registry
from ppns.subscriber import BacklogWatcher, LiveDispatcher
from ppns.timers import Admissions, KeepaliveWheel, WrittenTimes
from ppns.tls import TlsEndpoint, prefer_chacha20
from pushgw import metrics
from pushgw.errors import PushgwError
from pushgw.logs import get_logger
from pushgw.mongo import Document, EmbeddedMongo, create_client
from pushgw.settings import PpnsSettings, Settings

log = get_logger(__name__)
# Broadly compatible TLS 1.2 suites for old device stacks (CC3200, Yún, ESP8266); TLS 1.3 is negotiated
# by modern clients with OpenSSL's defaults.
TLS12_CIPHERS = "ECDHE+AESGCM:ECDHE+CHACHA20:ECDHE+AES:RSA+AESGCM:RSA+AES:!aNULL:!eNULL:!MD5:!DSS:!RC4"


SHUTDOWN_WAIT_S = 5.0
ADMISSION_WORKERS = 64  # handshake claims + replays in flight against the database


class PpnsConfigError(PushgwError):
    """`[ppns]` cannot serve: missing certificate or key for the TLS listener."""


def tls_context(settings: PpnsSettings) -> ssl.SSLContext:
    """TLS 1.2+; ALPN answers only `http/1.1` (a client offering only h2 gets no ALPN): the Linux client
    sends an HTTP/2 preface instead of its handshake once h2 is selected (observed)."""
    if settings.cert_file is None or settings.key_file is None:
        raise PpnsConfigError("ppns.cert_file and ppns.key_file are required unless ppns.plain_tcp = true")
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.set_ciphers(TLS12_CIPHERS)
    context.load_cert_chain(settings.cert_file, settings.key_file)
    context.set_alpn_protocols(["http/1.1"])
    prefer_chacha20(context)  # TLS 1.3: the suite with the smallest per-connection state first
    return context


class PpnsServer:
    """One node: the listener, its live connections, its node queue (live pushes) and the safety-net
    sweep of the backlog."""

    def __init__(
        self, settings: Settings, client: AsyncMongoClient[Document], *, reuse_port: bool = False
    ) -> None:
        self._settings = settings.ppns or PpnsSettings()
        self._reuse_port = reuse_port  # one of `processes` nodes sharing the port (ppns/processes.py)
        self.node_id = self._settings.node_id or default_node_id()
        backlogs = open_backlogs(client, settings)
        registry = Registry()
        self._written = WrittenTimes(backlogs, self._settings.written_interval_s)
        self._keepalive = KeepaliveWheel(self._settings.keepalive_interval_s)
        tasks: set[asyncio.Task[None]] = set()
        self._dispatcher = LiveDispatcher(registry, backlogs, tasks)
        self._node = NodeContext(
            settings=self._settings,
            backlogs=backlogs,
            registry=registry,
            now_ms=lambda: int(time.time() * 1000),
            node_id=self.node_id,
            keepalive=self._keepalive,
            written=self._written,
            replaced_elsewhere=self._replaced_elsewhere,
            tasks=tasks,
            admissions=Admissions(ADMISSION_WORKERS),
            handed_out_time=self._dispatcher.handed_out_time,
        )
        live = not settings.queue.is_memory
        interval_s = self._settings.poll_interval_s if live else self._settings.poll_interval_without_broker_s
        self._watcher = BacklogWatcher(registry, backlogs, self._dispatcher, interval_s, self.node_id)
        self._link = (
            NodeLink(settings.queue, self.node_id, self._dispatcher, self._watcher.sweep_soon)
            if live
            else None
        )
        self._prefix = settings.queue.prefix
        self._server: asyncio.Server | None = None
        self._tls: TlsEndpoint | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self._written_task: asyncio.Task[None] | None = None
        self._notices: set[asyncio.Task[bool]] = set()
        self._stopping = asyncio.Event()
        self._written_stop = asyncio.Event()
        self._connections: set[DeviceConnection] = set()
        self._all_gone = asyncio.Event()
        # Bound once: a bound method per connection would cost 2 × 64 bytes per idle device.
        self._on_made, self._on_lost = self._made, self._lost

    @property
    def port(self) -> int:
        assert self._server is not None, "start() first"
        port: int = self._server.sockets[0].getsockname()[1]
        return port

    @property
    def queue_name(self) -> str | None:
        """This node's queue (None without a broker)."""
        return None if self._link is None else self._link.queue_name

    @property
    def live(self) -> bool:
        """Consuming its node queue now."""
        return self._link is not None and self._link.connected

    async def start(self) -> None:
        context = None if self._settings.plain_tcp else tls_context(self._settings)
        if self._link is not None:
            await self._link.start()  # before listening: a device's first live push finds the queue
        await self._dispatcher.prime()  # entries from here on are live; a handshake replays the rest
        listener = socket.create_server(
            (self._settings.host, self._settings.port), backlog=1024, reuse_port=self._reuse_port
        )
        # Accepted sockets inherit SO_LINGER/SO_KEEPALIVE, so even a failed TLS handshake ends in RST.
        configure_socket(listener, self._settings)
        # TLS is terminated by the node's own layer (ppns/tls.py), not the loop's SSL transport: a third of
        # the memory per idle connection (docs/benchmarks.md).
        factory: Callable[[], asyncio.BaseProtocol] = self._connection
        if context is not None:
            self._tls = TlsEndpoint(context, self._connection, self._settings.handshake_timeout_s)
            factory = self._tls.protocol
        self._server = await asyncio.get_running_loop().create_server(factory, sock=listener)
        self._tasks = [
            asyncio.create_task(self._watcher.run(self._stopping), name="ppns-sweep"),
            asyncio.create_task(self._keepalive.run(self._stopping), name="ppns-keepalive"),
            asyncio.create_task(self._node.admissions.run(self._stopping), name="ppns-admissions"),
        ]
        self._written_task = asyncio.create_task(self._written.run(self._written_stop), name="ppns-written")
        log.info(
            "ppns_listening",
            host=self._settings.host,
            port=self.port,
            tls=context is not None,
            node_id=self.node_id,
            queue=self.queue_name,
        )

    def _replaced_elsewhere(self, app_id: str, installation_id: str, previous: str) -> None:
        """Tell the node holding `previous` to reset it (its sweep would, later, if this is lost)."""
        if self._link is None:
            return
        body = encode_resets(app_id, [(installation_id, previous)])
        notice = asyncio.create_task(
            self._link.publish(node_queue(self._prefix, holder_node(previous)), body)
        )
        self._notices.add(notice)
        notice.add_done_callback(self._notices.discard)

    def _connection(self) -> DeviceConnection:
        return DeviceConnection(self._node, self._on_made, self._on_lost)

    def _made(self, connection: DeviceConnection) -> bool:
        if self._stopping.is_set():
            metrics.PPNS_RESETS.labels("shutdown").inc()
            return False
        self._connections.add(connection)
        self._all_gone.clear()
        return True

    def _lost(self, connection: DeviceConnection) -> None:
        self._connections.discard(connection)
        if not self._connections:
            self._all_gone.set()

    async def stop(self) -> None:
        """Stop accepting, reset every connection (RST: devices report ECONNRESET and can reconnect)."""
        if self._server is not None:
            self._server.close()
        self._stopping.set()
        for connection in list(self._connections):
            metrics.PPNS_RESETS.labels("shutdown").inc()
            connection.reset()
        if self._connections:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._all_gone.wait(), SHUTDOWN_WAIT_S)
        for task in self._tasks:  # the sweep, keep-alives and admissions end after their current query
            await task
        if self._node.tasks:  # backlog reads: never cancelled mid-query (PYTHON-5867)
            await asyncio.wait(set(self._node.tasks), timeout=SHUTDOWN_WAIT_S)
        self._written_stop.set()
        if self._written_task is not None:
            await self._written_task  # the last `written_time`s of the devices just reset
        if self._notices:
            await asyncio.wait(self._notices, timeout=SHUTDOWN_WAIT_S)
        if self._link is not None:
            await self._link.close()
        if self._server is not None:
            await self._server.wait_closed()

    @property
    def connection_count(self) -> int:
        """Devices past their handshake (one per installation)."""
        return len(self._node.registry)

    @property
    def socket_count(self) -> int:
        """Every open socket, handshaking ones included (TLS handshakes too)."""
        return len(self._connections) + (0 if self._tls is None else self._tls.handshaking)


async def run_node_until(settings: Settings, stop: asyncio.Event, *, reuse_port: bool = False) -> None:
    """Run one PPNS node until `stop` is set (SIGTERM), then reset its connections and exit.
    `reuse_port`: bind with SO_REUSEPORT, one of several node processes on the port."""
    embedded = None
    uri = settings.mongo.uri
    if uri is None:
        embedded = EmbeddedMongo(settings.mongo)
        await embedded.start()
        uri = embedded.uri
    client = create_client(uri, settings.mongo.timeout_ms)
    server = PpnsServer(settings, client, reuse_port=reuse_port)
    ppns = settings.ppns or PpnsSettings()
    metrics_server = None
    try:
        await server.start()
        if ppns.metrics_port is not None:
            metrics_server, _ = start_http_server(ppns.metrics_port, ppns.metrics_host)
        await stop.wait()
    finally:
        await server.stop()
        if metrics_server is not None:
            metrics_server.shutdown()
            metrics_server.server_close()
        await client.close()
        if embedded is not None:
            await embedded.stop()
