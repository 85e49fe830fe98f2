"""The PPNS listener: TLS without h2 (or plain TCP behind a terminator), accept loop, RST on shutdown."""

from __future__ import annotations

import asyncio
import os
import socket
import ssl
import time
from typing import Any

from prometheus_client import start_http_server
from pymongo import AsyncMongoClient

from ppns.backlog import open_backlogs
from ppns.connection import DeviceConnection, NodeContext, configure_socket
from ppns.registry import Registry
from ppns.subscriber import BacklogWatcher
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
    return context


class PpnsServer:
    """One node: the listener, its live connections and the watcher that wakes them."""

    def __init__(self, settings: Settings, client: AsyncMongoClient[Document]) -> None:
        self._settings = settings.ppns or PpnsSettings()
        self._node = NodeContext(
            settings=self._settings,
            backlogs=open_backlogs(client, settings),
            registry=Registry(),
            now_ms=lambda: int(time.time() * 1000),
            node_id=f"{socket.gethostname()}:{os.getpid()}",
        )
        self._server: asyncio.Server | None = None
        self._watcher: asyncio.Task[None] | None = None
        self._stopping = asyncio.Event()
        self._connections: dict[DeviceConnection, asyncio.Task[Any] | None] = {}

    @property
    def port(self) -> int:
        assert self._server is not None, "start() first"
        port: int = self._server.sockets[0].getsockname()[1]
        return port

    async def start(self) -> None:
        context = None if self._settings.plain_tcp else tls_context(self._settings)
        listener = socket.create_server(
            (self._settings.host, self._settings.port), backlog=1024, reuse_port=False
        )
        # Accepted sockets inherit SO_LINGER/SO_KEEPALIVE, so even a failed TLS handshake ends in RST.
        configure_socket(listener, self._settings)
        timeout = None if context is None else self._settings.handshake_timeout_s
        self._server = await asyncio.start_server(
            self._accept, sock=listener, ssl=context, ssl_handshake_timeout=timeout
        )
        watcher = BacklogWatcher(self._node.registry, self._node.backlogs, self._settings.poll_interval_s)
        self._watcher = asyncio.create_task(watcher.run(self._stopping))
        log.info("ppns_listening", host=self._settings.host, port=self.port, tls=context is not None)

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        sock = writer.get_extra_info("socket")
        if sock is not None:
            configure_socket(sock, self._settings)
        connection = DeviceConnection(reader, writer, self._node)
        self._connections[connection] = asyncio.current_task()
        try:
            await connection.serve()
        finally:
            self._connections.pop(connection, None)

    async def stop(self) -> None:
        """Stop accepting, reset every connection (RST: devices report ECONNRESET and can reconnect)."""
        if self._server is not None:
            self._server.close()
        self._stopping.set()
        if self._watcher is not None:
            await self._watcher
        for connection in list(self._connections):
            metrics.PPNS_RESETS.labels("shutdown").inc()
            connection.reset()
        serving = [task for task in self._connections.values() if task is not None]
        if serving:
            await asyncio.wait(serving, timeout=SHUTDOWN_WAIT_S)
        if self._server is not None:
            await self._server.wait_closed()

    @property
    def connection_count(self) -> int:
        """Devices past their handshake (one per installation)."""
        return len(self._node.registry)

    @property
    def socket_count(self) -> int:
        """Every open socket, handshaking ones included."""
        return len(self._connections)


async def run_node_until(settings: Settings, stop: asyncio.Event) -> None:
    """Run one PPNS node until `stop` is set (SIGTERM), then reset its connections and exit."""
    embedded = None
    uri = settings.mongo.uri
    if uri is None:
        embedded = EmbeddedMongo(settings.mongo)
        await embedded.start()
        uri = embedded.uri
    client = create_client(uri, settings.mongo.timeout_ms)
    server = PpnsServer(settings, client)
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
