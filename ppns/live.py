"""Live delivery: every stored log entry reaches every PPNS node, which writes it to the devices it holds.

The log (ppns/backlog.py) stays the record (a push is sent once stored) and the only replay source; live
messages are a shortcut that saves the nodes a database read per push. They are disposable: a message lost
(broker down, queue missing, node restarting) is a gap in the app's `seq` that the node notices from the
next entry, or that its sweep of the sequence document finds, and reads from the log either way.

* A node consumes `<queue.prefix>.ppns.<node id>`: exclusive and auto-delete, so RabbitMQ deletes it as soon
  as the node's connection closes (a crash included: the kernel closes the socket; a vanished host after
  the AMQP heartbeat). The queue is bound to the fanout exchange `<queue.prefix>.ppns.entries`.
* The fleet's provider publishes the entries it stored to that exchange, so every node gets every entry:
  `{"app": …, "entries": [[seq, time, push id, data, [installation id, …]], …]}`. Routing needs no read of
  where each device is; each node looks its installations up in its own registry.
* A node that takes over an installation from another node sends that node, on its queue,
  `{"app": …, "reset": [[installation id, replaced holder], …]}`.
* Publishing is fire-and-forget (no confirms, not persistent): it never fails or delays a delivery.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import socket
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass

import aio_pika
from aio_pika.abc import AbstractChannel, AbstractConnection, AbstractExchange, AbstractIncomingMessage

from ppns.backlog import Entry
from pushgw import metrics
from pushgw.logs import get_logger
from pushgw.reconnect import Reconnector
from pushgw.settings import QueueSettings

log = get_logger(__name__)
_CONNECT_ERRORS = (TimeoutError, OSError, aio_pika.exceptions.AMQPError, RuntimeError)
PUBLISH_RETRY_S = 5.0  # after a failed connect, the publisher skips live messages this long


def default_node_id() -> str:
    """`<hostname>-<pid>-<random>`: unique per process, even for a pid reused after a restart."""
    host = re.sub(r"[^A-Za-z0-9_.-]", "-", socket.gethostname())[:40] or "node"
    return f"{host}-{os.getpid()}-{uuid.uuid4().hex[:6]}"


def node_queue(prefix: str, node_id: str) -> str:
    return f"{prefix}.ppns.{node_id}"


def holder_node(holder: str) -> str:
    """The node of a holder `<node id>/<connection id>`."""
    return holder.rpartition("/")[0]


def entries_exchange(prefix: str) -> str:
    return f"{prefix}.ppns.entries"


@dataclass(frozen=True, slots=True)
class LiveEntries:
    app_id: str
    entries: list[Entry]


@dataclass(frozen=True, slots=True)
class LiveResets:
    app_id: str
    resets: list[tuple[str, str]]  # (installation id, the holder to reset)


def encode_entries(app_id: str, entries: list[Entry]) -> bytes:
    lines = [[entry.seq, entry.time, entry.push_id, entry.data, entry.installations] for entry in entries]
    return json.dumps({"app": app_id, "entries": lines}, separators=(",", ":")).encode()


def encode_resets(app_id: str, resets: list[tuple[str, str]]) -> bytes:
    return json.dumps({"app": app_id, "reset": [list(reset) for reset in resets]}).encode()


def decode(body: bytes) -> LiveEntries | LiveResets | None:
    """A node-queue message; None if it is neither (logged by the caller)."""
    try:
        message = json.loads(body)
        app_id = str(message["app"])
        if "entries" in message:
            entries = [
                Entry(int(seq), str(time), str(push_id), data, [str(i) for i in installations])
                for seq, time, push_id, data, installations in message["entries"]
            ]
            return LiveEntries(app_id, entries)
        return LiveResets(app_id, [(str(i), str(h)) for i, h in message["reset"]])
    except (ValueError, KeyError, TypeError):
        return None


class NodeLink:
    """A node's own RabbitMQ connection: consumes its queue, publishes resets to other nodes.

    Supervised like pushgw/broker.py's RabbitBroker (which declares the work topology and persistent,
    confirmed publishing this link does not want): when the connection or channel goes away, it is rebuilt
    with backoff, and `on_connected` runs after every (re)connect so the node sweeps the backlog for what it
    may have missed meanwhile.
    """

    def __init__(
        self,
        settings: QueueSettings,
        node_id: str,
        on_message: Callable[[bytes], None],
        on_connected: Callable[[], None],
    ) -> None:
        self._settings = settings
        self.queue_name = node_queue(settings.prefix, node_id)
        self._on_message, self._on_connected = on_message, on_connected
        self._connection: AbstractConnection | None = None
        self._channel: AbstractChannel | None = None
        self._link = Reconnector(self._connect, _CONNECT_ERRORS, self._log_unavailable)

    @property
    def connected(self) -> bool:
        return self._channel is not None and not self._channel.is_closed

    async def start(self) -> None:
        """Connect now if the broker answers; otherwise keep trying in the background."""
        await self._link.start()

    def _log_unavailable(self, error: BaseException) -> None:
        log.warning("ppns_node_queue_unavailable", queue=self.queue_name, error=str(error))

    async def _connect(self) -> None:
        connection = await aio_pika.connect(self._settings.url, timeout=self._settings.publish_timeout_s)
        try:
            channel = await connection.channel(publisher_confirms=False)
            queue = await channel.declare_queue(self.queue_name, exclusive=True, auto_delete=True)
            exchange = await _declare_entries(channel, self._settings.prefix)
            await queue.bind(exchange)
            await queue.consume(self._receive, no_ack=True)
        except BaseException:
            await connection.close()
            raise
        if self._link.closing:
            await connection.close()
            return
        self._connection, self._channel = connection, channel
        connection.close_callbacks.add(self._lost)
        channel.close_callbacks.add(self._lost)
        log.info("ppns_node_queue_consuming", queue=self.queue_name)
        self._on_connected()

    def _lost(self, closed: object, error: BaseException | None) -> None:
        connection = self._connection
        if self._link.closing or connection is None or closed not in (connection, self._channel):
            return  # closing, or a callback of an earlier link
        log.warning("ppns_node_queue_lost", queue=self.queue_name, error=f"{type(error).__name__}: {error}")
        self._connection = self._channel = None
        with contextlib.suppress(RuntimeError):
            asyncio.get_running_loop().create_task(connection.close())
        self._link.soon()

    async def _receive(self, message: AbstractIncomingMessage) -> None:
        self._on_message(message.body)

    async def publish(self, queue_name: str, body: bytes) -> bool:
        """Fire and forget; False if not connected or the write failed."""
        channel = self._channel
        if channel is None or channel.is_closed:
            return False
        return await _publish(channel.default_exchange, queue_name, body)

    async def close(self) -> None:
        await self._link.close()
        if self._connection is not None:
            with contextlib.suppress(*_CONNECT_ERRORS):
                await self._connection.close()
        self._connection = self._channel = None


class LivePublisher:
    """The fleet side: publishes stored pushes to node queues over a lazily opened connection of its own
    (the worker's broker publishes persistent, confirmed work messages; these are neither). Never raises:
    the backlog already holds every push."""

    def __init__(self, settings: QueueSettings) -> None:
        self._settings = settings
        self._connection: AbstractConnection | None = None
        self._channel: AbstractChannel | None = None
        self._exchange: AbstractExchange | None = None
        self._lock = asyncio.Lock()
        self._retry_at = 0.0

    @property
    def enabled(self) -> bool:
        return not self._settings.is_memory

    async def publish_entries(self, body: bytes) -> bool:
        """To every node (the fanout exchange)."""
        exchange = await self._ready_exchange()
        if exchange is None:
            return False
        ok = await _publish(exchange, "", body)
        if not ok:
            self._retry_at = time.monotonic() + PUBLISH_RETRY_S
            await self._drop()
        return ok

    def _open_exchange(self) -> AbstractExchange | None:
        channel = self._channel
        return self._exchange if channel is not None and not channel.is_closed else None

    async def _ready_exchange(self) -> AbstractExchange | None:
        """The declared exchange on an open channel; connects once for all callers. Channel and exchange
        become visible together, after the declaration: a publish never sees a channel without one."""
        if not self.enabled:
            return None
        exchange = self._open_exchange()
        if exchange is not None:
            return exchange
        async with self._lock:
            exchange = self._open_exchange()
            if exchange is not None or time.monotonic() < self._retry_at:
                return exchange
            await self._drop()
            connection = None
            try:
                connection = await aio_pika.connect(
                    self._settings.url, timeout=self._settings.publish_timeout_s
                )
                channel = await connection.channel(publisher_confirms=False)
                exchange = await _declare_entries(channel, self._settings.prefix)
            except _CONNECT_ERRORS as error:
                log.warning("ppns_live_publisher_unavailable", error=str(error))
                self._retry_at = time.monotonic() + PUBLISH_RETRY_S
                if connection is not None:
                    with contextlib.suppress(*_CONNECT_ERRORS):
                        await connection.close()
                return None
            self._connection, self._channel, self._exchange = connection, channel, exchange
            return exchange

    async def _drop(self) -> None:
        connection, self._connection, self._channel, self._exchange = self._connection, None, None, None
        if connection is not None:
            with contextlib.suppress(*_CONNECT_ERRORS):
                await connection.close()

    async def close(self) -> None:
        await self._drop()


async def _declare_entries(channel: AbstractChannel, prefix: str) -> AbstractExchange:
    """The fanout exchange every node queue is bound to (declared alike by nodes and publishers)."""
    return await channel.declare_exchange(entries_exchange(prefix), aio_pika.ExchangeType.FANOUT)


async def _publish(exchange: AbstractExchange, routing_key: str, body: bytes) -> bool:
    """Fire and forget; False (logged, counted) if the broker did not take it."""
    message = aio_pika.Message(body, delivery_mode=aio_pika.DeliveryMode.NOT_PERSISTENT)
    try:
        await exchange.publish(message, routing_key=routing_key, timeout=5)
    except (*_CONNECT_ERRORS, aio_pika.exceptions.ChannelInvalidStateError) as error:
        log.warning("ppns_live_publish_failed", target=routing_key or exchange.name, error=str(error))
        metrics.PPNS_PUSHES.labels("publish_failed").inc()
        return False
    return True
