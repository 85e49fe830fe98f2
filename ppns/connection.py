"""One device connection: handshake → replay → live pushes and keep-alives, closed only with RST."""

from __future__ import annotations

import asyncio
import contextlib
import random
import socket
import ssl
import struct
import sys
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from pymongo.errors import PyMongoError

from ppns.backlog import Backlog, BacklogContentionError, Document, StoredPush
from ppns.live import holder_node
from ppns.protocol import PONG, LineFramer, LineTooLongError, encode_push, is_ping, parse_handshake
from ppns.registry import InstallationKey, Registry
from ppns.timers import Admissions, KeepaliveWheel, WrittenTimes
from pushgw import metrics
from pushgw.logs import get_logger
from pushgw.settings import PpnsSettings

log = get_logger(__name__)
_PEER_GONE = (OSError, ssl.SSLError, LineTooLongError)
PENDING_LIMIT = 100  # live pushes held during a backlog read; beyond that the backlog is read again
RETRY_FIRST_S, RETRY_MAX_S = 0.5, 4.0  # backlog reads while the database fails (< SHUTDOWN_WAIT_S)


@dataclass(frozen=True, slots=True)
class NodeContext:
    """What every connection of a node shares."""

    settings: PpnsSettings
    backlogs: dict[str, Backlog]
    registry: Registry
    now_ms: Callable[[], int]
    node_id: str
    keepalive: KeepaliveWheel
    written: WrittenTimes
    # (app id, installation id, replaced holder) after a handshake took the installation from another node
    replaced_elsewhere: Callable[[str, str, str], None]
    tasks: set[asyncio.Task[None]]  # the node's reads of missing log entries (awaited at shutdown)
    admissions: Admissions  # handshakes waiting for their claim and replay
    # app id → the `time` of the newest log entry the node has handed to its connections (None: unknown)
    handed_out_time: Callable[[str], str | None]


class SlowReaderError(ConnectionError):
    """The device reads so slowly that its unsent bytes exceed `max_write_buffer_bytes`."""


KEEPALIVE_JITTER = 0.25  # each connection's keep-alive idle time is the setting ± 25 %


def keepalive_idle_s(settings: PpnsSettings) -> int:
    """`tcp_keepalive_idle_s` ± `KEEPALIVE_JITTER`, drawn per connection: devices that (re)connected in the
    same second would otherwise be probed in the same burst forever (docs/ppns.md, "Not yet")."""
    spread = settings.tcp_keepalive_idle_s * KEEPALIVE_JITTER
    return max(1, round(settings.tcp_keepalive_idle_s + random.uniform(-spread, spread)))


def configure_socket(sock: socket.socket, settings: PpnsSettings) -> None:
    """RST on every close (SO_LINGER 0), TCP keepalive, and a bound on unacknowledged data in flight."""
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
    options = {
        "TCP_KEEPIDLE": keepalive_idle_s(settings),
        "TCP_KEEPINTVL": settings.tcp_keepalive_interval_s,
        "TCP_KEEPCNT": settings.tcp_keepalive_count,
        "TCP_USER_TIMEOUT": settings.write_timeout_s * 1000,
    }
    for name, value in options.items():
        if hasattr(socket, name):  # Linux has all four; others keep their defaults
            sock.setsockopt(socket.IPPROTO_TCP, getattr(socket, name), value)


class DeviceConnection(asyncio.Protocol):
    """One device socket as an asyncio Protocol: handshake → replay → live pushes and keep-alives, closed
    only with RST.

    No task and no stream objects while a device idles (memory per connection is the point): input is
    framed in `data_received`, keep-alives come from the node's wheel, live pushes from the node queue
    (`deliver`, called by the node's consumer). The handshake's claim and replay run in one of the node's
    admission workers (`admit`), and reads the log again if more live pushes arrived meanwhile than it
    keeps. It is never cancelled: a pymongo operation cancelled mid-flight leaks its socket (PYTHON-5867);
    `_closed` ends it once its query returns.
    """

    __slots__ = (
        "_again",
        "_closed",
        "_cursor",
        "_drained",
        "_framer",
        "_greeted",
        "_node",
        "_on_lost",
        "_on_made",
        "_pending",
        "_reading",
        "_registered",
        "_registered_after",
        "_replayed",
        "_timer",
        "_transport",
        "claimed",
        "holder",
        "key",
    )

    def __init__(
        self,
        node: NodeContext,
        on_made: Callable[[DeviceConnection], bool],
        on_lost: Callable[[DeviceConnection], None],
    ) -> None:
        """`on_made` (False: refuse, the node is stopping) once the socket is ready, TLS included (a failed
        TLS handshake never reaches the connection); `on_lost` once it is gone."""
        self._node, self._on_made, self._on_lost = node, on_made, on_lost
        self._framer = LineFramer(node.settings.max_input_line_bytes)
        self._transport: asyncio.Transport | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._greeted = False  # the PPNS handshake line was accepted (the Handshake itself is not kept)
        self._cursor: str | None = None
        self._closed = False
        self._registered = False
        # The newest entry the node had handed out when the connection registered (None: unknown)
        self._registered_after: str | None = None
        self._reading: asyncio.Task[Any] | None = None  # the admission or a backlog read, while running
        self._again = False  # another backlog read is due once the running one ends
        self._replayed = False  # the handshake's replay is done
        self._pending: list[StoredPush] | None = None  # live pushes that arrived during a backlog read
        self._drained: asyncio.Future[None] | None = None  # set while the transport is paused for writing
        self.claimed = False  # recorded as the installation's holder in the backlog
        self.key: InstallationKey = ("", "")
        self.holder = ""

    # --- transport events --------------------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = transport  # type: ignore[assignment]  # uvloop's transports are not subclasses
        if not self._on_made(self):  # the node is stopping (this one finished its TLS handshake late)
            self._closed = True
            transport.abort()  # type: ignore[attr-defined]
            return
        sock = transport.get_extra_info("socket")
        if sock is not None:
            with contextlib.suppress(OSError):
                configure_socket(sock, self._node.settings)
        self._timer = asyncio.get_running_loop().call_later(
            self._node.settings.handshake_timeout_s, self._handshake_timed_out
        )

    def data_received(self, data: bytes) -> None:
        if self._closed:
            return
        try:
            lines = self._framer.feed(data)
            if not self._greeted:
                lines = self._take_handshake(lines)
            for line in lines:
                self._answer(line)
        except LineTooLongError:
            if not self._greeted:
                metrics.PPNS_HANDSHAKES.labels("too_long").inc()
            self.reset()
        except SlowReaderError:
            metrics.PPNS_RESETS.labels("slow_reader").inc()
            self.reset()
        except _PEER_GONE:
            self.reset()
        except Exception:  # the connection's boundary: one device's failure must not reach the server
            log.exception("ppns_connection_failed", installation_id=self.key[1])
            self.reset()

    def eof_received(self) -> bool:
        if not self._greeted and self._timer is not None:
            metrics.PPNS_HANDSHAKES.labels("closed").inc()
        self.reset()  # RST, never FIN
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        self._closed = True
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self._drained is not None and not self._drained.done():
            self._drained.set_result(None)
        self._node.keepalive.remove(self)
        if self._registered:
            self._registered = False
            if self._node.registry.holds(self):
                self._node.registry.release(self)
            metrics.PPNS_CONNECTIONS.dec()
            self._node.written.flush_soon()
        if self._transport is not None:
            self._on_lost(self)

    def pause_writing(self) -> None:
        if self._drained is None or self._drained.done():
            self._drained = asyncio.get_running_loop().create_future()

    def resume_writing(self) -> None:
        if self._drained is not None and not self._drained.done():
            self._drained.set_result(None)

    # --- handshake ---------------------------------------------------------------------------------------

    def _take_handshake(self, lines: list[bytes]) -> list[bytes]:
        """The first non-empty line as a handshake of a configured app; the lines after it (to answer)."""
        lines = [line for line in lines if line.strip()]
        if not lines:
            return []
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        handshake = parse_handshake(lines[0])
        outcome = "malformed" if handshake is None else "ok"
        if handshake is not None and handshake.app_id not in self._node.backlogs:
            outcome = "unknown_app"
        metrics.PPNS_HANDSHAKES.labels(outcome).inc()
        if handshake is None or outcome != "ok":
            # A short pause before the RST keeps a misconfigured device from reconnecting in a tight loop.
            self._closed = True  # ignore anything else it sends
            asyncio.get_running_loop().call_later(self._node.settings.reject_delay_s, self.reset)
            return []
        self._greeted = True
        # One string per configured app id, not one per device (checked above: a configured one).
        self.key = (sys.intern(handshake.app_id), handshake.installation_id)
        self.holder = f"{self._node.node_id}/{uuid.uuid4().hex[:12]}"
        self._cursor = handshake.last
        # Everything after this reaches the connection live (it is registered below, in the same step): the
        # replay neither starts after it nor caps what came after it (Backlog.replay).
        self._registered_after = self._node.handed_out_time(handshake.app_id)
        # Locally first, so a live push arriving while the claim is written finds this connection (it
        # waits in `_pending` until the replay is done).
        self._node.registry.claim(self)
        self._registered = True
        metrics.PPNS_CONNECTIONS.inc()
        self._node.admissions.submit(self)  # → admit(), from one of the node's admission workers
        return lines[1:]

    def _handshake_timed_out(self) -> None:
        self._timer = None
        if not self._greeted and not self._closed:
            metrics.PPNS_HANDSHAKES.labels("timeout").inc()
            self.reset()

    async def admit(self) -> None:
        """Record this connection as the installation's newest in the backlog (the presence registry the
        fleet routes by); tell the node that held it before, if another one, to reset its connection; then
        the replay, from the document the claim read. Runs in an admission worker, which counts as this
        connection's backlog read (`_reading`) meanwhile."""
        if self._closed:
            return
        self._reading = asyncio.current_task()
        app_id, installation_id = self.key
        backlog = self._node.backlogs[app_id]
        document: Document | None = None
        try:
            previous, document = await backlog.claim(installation_id, self.holder)
        except (PyMongoError, BacklogContentionError) as error:
            log.warning("ppns_presence_unavailable", installation_id=installation_id, error=str(error))
            previous = None
        self.claimed = True
        if previous is not None and holder_node(previous) != self._node.node_id:
            self._node.replaced_elsewhere(app_id, installation_id, previous)
        if not self._node.registry.holds(self):
            # Replaced on this node while claiming: the newer connection's claim may have committed before
            # this one; hand the installation back to the connection this node holds now.
            current = self._node.registry.get(self.key)
            if current is not None:
                with contextlib.suppress(PyMongoError, BacklogContentionError):
                    await backlog.claim(installation_id, current.holder)
            self._reading = None
            return
        self._node.keepalive.add(self)
        await self._read_backlog(document)

    # --- writes ------------------------------------------------------------------------------------------

    def _answer(self, line: bytes) -> None:
        """Pong each ping at once, as its own write; anything else from a device carries no meaning."""
        if is_ping(line):
            self._write(PONG)

    def _write(self, line: bytes) -> None:
        # One write per message: with the SSL transport each write() is its own TLS record (MUST 4).
        transport = self._transport
        assert transport is not None
        if transport.get_write_buffer_size() > self._node.settings.max_write_buffer_bytes:
            raise SlowReaderError(self.key[1])
        transport.write(line)
        metrics.PPNS_BYTES_OUT.inc(len(line))

    def _write_or_reset(self, line: bytes) -> bool:
        """`_write` outside the input path (keep-alives, live pushes): a failure resets the connection."""
        if self._closed or self._transport is None or self._transport.is_closing():
            return False
        try:
            self._write(line)
        except SlowReaderError:
            metrics.PPNS_RESETS.labels("slow_reader").inc()
            self.reset()
            return False
        except _PEER_GONE:
            self.reset()
            return False
        return True

    def keepalive(self) -> None:
        self._write_or_reset(PONG)

    async def _drain(self) -> None:
        drained = self._drained
        if drained is not None and not drained.done():
            await drained

    # --- pushes ------------------------------------------------------------------------------------------

    def deliver(self, push: StoredPush) -> None:
        """A push from the node's entries, which arrive in commit order with nothing missing before them
        (ppns/subscriber.py): written now, or skipped if the cursor has passed it (a replay wrote it). While
        a replay runs it waits, and is checked once the replay is written."""
        if self._closed:
            return
        if self._reading is not None or not self._replayed:
            if self._pending is None:
                self._pending = [push]
            elif len(self._pending) < PENDING_LIMIT:
                self._pending.append(push)
            else:  # the backlog holds them all: read it again once the running read ends
                self._again = True
            return
        self._deliver_now(push)

    def _deliver_now(self, push: StoredPush) -> None:
        cursor = self._cursor
        if cursor is not None and push.time <= cursor:
            metrics.PPNS_PUSHES.labels("duplicate").inc()
            return
        self._cursor = push.time
        line = self._line_within_limit(push)
        if line is not None and self._write_or_reset(line):
            metrics.PPNS_PUSHES.labels("written").inc()
            self._node.written.note(self.key[0], self.key[1], push)

    async def _read_backlog(self, document: Document | None = None) -> None:
        """Write what the backlog holds after the cursor (from `document` if the claim just read it), then
        the live pushes that arrived meanwhile; again if more arrived than `_pending` keeps. A database
        error is retried with backoff: until a read succeeds, live pushes wait in `_pending`."""
        backlog = self._node.backlogs[self.key[0]]
        retry_s = RETRY_FIRST_S
        try:
            while not self._closed:
                self._again = False
                started = time.monotonic()
                try:
                    await self._flush(backlog, document)
                except PyMongoError as error:
                    log.warning("ppns_backlog_unavailable", installation_id=self.key[1], error=str(error))
                    await asyncio.sleep(retry_s)  # backoff between reads of a failing database
                    retry_s = min(retry_s * 2, RETRY_MAX_S)
                    self._again = True
                    continue
                finally:
                    document = None
                retry_s = RETRY_FIRST_S
                metrics.PPNS_WRITE_SECONDS.observe(time.monotonic() - started)
                pending, self._pending = self._pending or [], None
                for push in pending:
                    if self._closed:
                        return
                    self._deliver_now(push)
                if not self._again:
                    return
        except SlowReaderError:
            metrics.PPNS_RESETS.labels("slow_reader").inc()
            self.reset()
        except _PEER_GONE:
            self.reset()
        except Exception as error:  # the connection's boundary (reported, then RST)
            log.warning("ppns_connection_task_failed", installation_id=self.key[1], error=repr(error))
            self.reset()
        finally:
            self._reading = None

    async def _flush(self, backlog: Backlog, document: Document | None) -> None:
        """Write every stored push after the cursor, oldest first, one write each."""
        first = not self._replayed
        policy = self._node.settings.replay_without_last if first else "retained"
        pushes, cursor = await backlog.replay(
            self.key[1],
            self._cursor,
            policy,
            self._node.now_ms(),
            presence=document,
            registered_after=self._registered_after,
        )
        for push in pushes:
            if self._closed:
                return
            if self._cursor is not None and push.time <= self._cursor:
                continue
            line = self._line_within_limit(push)
            if line is not None:
                self._write(line)
                self._node.written.note(self.key[0], self.key[1], push)
                metrics.PPNS_PUSHES.labels("replayed" if first else "caught_up").inc()
            self._cursor = push.time
            await self._drain()
        if self._closed:
            return
        if cursor is not None and (self._cursor is None or cursor > self._cursor):
            self._cursor = cursor
        self._replayed = True

    def _line_within_limit(self, push: StoredPush) -> bytes | None:
        """The push's line; None (counted) beyond the installation's line limit."""
        line = encode_push(push.time, push.push_id, push.data)
        if len(line) > self._node.settings.push_line_limit(*self.key):
            # The provider refuses these; a limit lowered after storing must still never reach the device.
            metrics.PPNS_PUSHES.labels("too_large").inc()
            return None
        return line

    def cursor(self) -> str | None:
        return self._cursor

    def reset(self) -> None:
        """Abortive close: SO_LINGER 0 was set at accept, so the kernel sends RST, never FIN."""
        if self._transport is not None:
            self._transport.abort()
