"""One device connection: handshake → replay → live pushes and keep-alives, closed only with RST."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import ssl
import struct
import time
import uuid
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from typing import Any

from pymongo.errors import PyMongoError

from ppns.backlog import Backlog, StoredPush
from ppns.protocol import PONG, Handshake, LineFramer, LineTooLongError, encode_push, is_ping, parse_handshake
from ppns.registry import InstallationKey, Registry
from pushgw import metrics
from pushgw.logs import get_logger
from pushgw.settings import PpnsSettings

log = get_logger(__name__)
READ_BYTES = 4096
_PEER_GONE = (OSError, ssl.SSLError, LineTooLongError)
PUSH_TASK, KEEPALIVE_TASK = "ppns-push", "ppns-keepalive"


@dataclass(frozen=True, slots=True)
class NodeContext:
    """What every connection of a node shares."""

    settings: PpnsSettings
    backlogs: dict[str, Backlog]
    registry: Registry
    now_ms: Callable[[], int]
    node_id: str


class SlowReaderError(ConnectionError):
    """The device reads so slowly that its unsent bytes exceed `max_write_buffer_bytes`."""


def configure_socket(sock: socket.socket, settings: PpnsSettings) -> None:
    """RST on every close (SO_LINGER 0), TCP keepalive, and a bound on unacknowledged data in flight."""
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
    options = {
        "TCP_KEEPIDLE": settings.tcp_keepalive_idle_s,
        "TCP_KEEPINTVL": settings.tcp_keepalive_interval_s,
        "TCP_KEEPCNT": settings.tcp_keepalive_count,
        "TCP_USER_TIMEOUT": settings.write_timeout_s * 1000,
    }
    for name, value in options.items():
        if hasattr(socket, name):  # Linux has all four; others keep their defaults
            sock.setsockopt(socket.IPPROTO_TCP, getattr(socket, name), value)


class DeviceConnection:
    """Serves one socket; `serve()` returns once the connection is gone, always closed with RST."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, node: NodeContext) -> None:
        self._reader, self._writer, self._node = reader, writer, node
        self._framer = LineFramer(node.settings.max_input_line_bytes)
        self._wakeup = asyncio.Event()
        self._cursor: str | None = None
        self._closed = False
        self.key: InstallationKey = ("", "")
        self.holder = f"{node.node_id}/{uuid.uuid4().hex[:12]}"

    async def serve(self) -> None:
        tasks: list[asyncio.Task[None]] = []
        try:
            handshake = await self._handshake()
            if handshake is None:
                return
            self.key = (handshake.app_id, handshake.installation_id)
            await self._claim()
            metrics.PPNS_CONNECTIONS.inc()
            tasks = [
                self._supervised(self._push_loop(handshake), PUSH_TASK),
                self._supervised(self._keepalive_loop(), KEEPALIVE_TASK),
            ]
            await self._read_loop()
        except _PEER_GONE:
            pass
        except Exception:  # the connection's boundary: one device's failure must not reach the server
            log.exception("ppns_connection_failed", installation_id=self.key[1])
        finally:
            await self._finish(tasks)

    async def _claim(self) -> None:
        """Record this connection as the installation's newest (other nodes then reset theirs), before
        this node's watcher can see it, then replace any older connection on this node."""
        try:
            await self._node.backlogs[self.key[0]].claim(self.key[1], self.holder)
        except PyMongoError as error:
            log.warning("ppns_presence_unavailable", installation_id=self.key[1], error=str(error))
        self._node.registry.claim(self)

    async def _finish(self, tasks: list[asyncio.Task[None]]) -> None:
        self._closed = True
        self.reset()
        if self._node.registry.holds(self):
            self._node.registry.release(self)
        # The push loop is never cancelled: a pymongo operation cancelled mid-flight leaks its socket
        # (PYTHON-5867). The flag and the wake-up end it once its query returns (bounded by timeoutMS).
        self._wakeup.set()
        for task in tasks:
            if task.get_name() == KEEPALIVE_TASK:
                task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        if tasks:
            metrics.PPNS_CONNECTIONS.dec()

    async def _handshake(self) -> Handshake | None:
        """The first non-empty line as a handshake of a configured app; lines after it are answered."""
        settings = self._node.settings
        try:
            async with asyncio.timeout(settings.handshake_timeout_s):
                lines = await self._read_lines()
        except TimeoutError:
            metrics.PPNS_HANDSHAKES.labels("timeout").inc()
            return None
        except LineTooLongError:
            metrics.PPNS_HANDSHAKES.labels("too_long").inc()
            return None
        if not lines:
            metrics.PPNS_HANDSHAKES.labels("closed").inc()
            return None
        handshake = parse_handshake(lines[0])
        outcome = "malformed" if handshake is None else "ok"
        if handshake is not None and handshake.app_id not in self._node.backlogs:
            outcome = "unknown_app"
        metrics.PPNS_HANDSHAKES.labels(outcome).inc()
        if handshake is None or outcome != "ok":
            # A short pause before the RST keeps a misconfigured device from reconnecting in a tight loop.
            await asyncio.sleep(settings.reject_delay_s)
            return None
        for line in lines[1:]:
            self._answer(line)
        return handshake

    async def _read_lines(self) -> list[bytes]:
        """Read until at least one non-empty line arrived; [] at end of stream."""
        while True:
            chunk = await self._reader.read(READ_BYTES)
            if not chunk:
                return []
            lines = [line for line in self._framer.feed(chunk) if line.strip()]
            if lines:
                return lines

    async def _read_loop(self) -> None:
        while chunk := await self._reader.read(READ_BYTES):
            for line in self._framer.feed(chunk):
                self._answer(line)

    def _answer(self, line: bytes) -> None:
        """Pong each ping at once, as its own write; anything else from a device carries no meaning."""
        if is_ping(line):
            self._write(PONG)

    def _write(self, line: bytes) -> None:
        # One write per message: with the SSL transport each write() is its own TLS record (MUST 4).
        if self._writer.transport.get_write_buffer_size() > self._node.settings.max_write_buffer_bytes:
            raise SlowReaderError(self.key[1])
        self._writer.write(line)
        metrics.PPNS_BYTES_OUT.inc(len(line))

    def _supervised(self, work: Coroutine[Any, Any, None], name: str) -> asyncio.Task[None]:
        task = asyncio.create_task(work, name=name)
        task.add_done_callback(self._stop_on_failure)
        return task

    def _stop_on_failure(self, task: asyncio.Task[None]) -> None:
        if not task.cancelled() and task.exception() is not None:
            error = task.exception()
            if not isinstance(error, _PEER_GONE):
                log.warning("ppns_connection_task_failed", installation_id=self.key[1], error=repr(error))
            self.reset()

    async def _keepalive_loop(self) -> None:
        while not self._closed:
            await asyncio.sleep(self._node.settings.keepalive_interval_s)
            self._write(PONG)

    async def _push_loop(self, handshake: Handshake) -> None:
        backlog = self._node.backlogs[handshake.app_id]
        first = True
        self._cursor = handshake.last
        while not self._closed:
            started = time.monotonic()
            try:
                await self._flush(backlog, first)
                first = False
            except PyMongoError as error:
                log.warning("ppns_backlog_unavailable", installation_id=self.key[1], error=str(error))
            metrics.PPNS_WRITE_SECONDS.observe(time.monotonic() - started)
            await self._wakeup.wait()
            self._wakeup.clear()

    async def _flush(self, backlog: Backlog, first: bool) -> None:
        """Write every stored push after the cursor, oldest first, one write each."""
        settings, installation_id = self._node.settings, self.key[1]
        policy = settings.replay_without_last if first else "retained"
        pushes, after = await backlog.replay(installation_id, self._cursor, policy, self._node.now_ms())
        self._cursor = after
        written = None
        for push in pushes:
            if self._closed:
                return
            if self._write_push(push):
                written = push.time
                metrics.PPNS_PUSHES.labels("replayed" if first else "written").inc()
            self._cursor = push.time
            await self._writer.drain()
        if written is not None:
            await backlog.mark_written(installation_id, written)

    def _write_push(self, push: StoredPush) -> bool:
        line = encode_push(push.time, push.push_id, push.data)
        if len(line) > self._node.settings.push_line_limit(*self.key):
            # The provider refuses these; a limit lowered after storing must still never reach the device.
            metrics.PPNS_PUSHES.labels("too_large").inc()
            return False
        self._write(line)
        return True

    def wake(self, newest_time: str) -> None:
        if self._cursor is None or newest_time > self._cursor:
            self._wakeup.set()

    def cursor(self) -> str | None:
        return self._cursor

    def reset(self) -> None:
        """Abortive close: SO_LINGER 0 was set at accept, so the kernel sends RST, never FIN."""
        self._writer.transport.abort()
