"""Live delivery: one RabbitMQ queue per PPNS node carries stored pushes (and resets) to the node holding
the device.

The backlog stays the record (a push is sent once stored) and the only replay source; the node queue is a
shortcut that saves the node a database read per push. Its messages are disposable: a message lost (broker
down, queue missing, node restarting) is a *gap* the node notices from the next push's `prev`, or that its
safety-net sweep of the backlog finds, and the device reads it from the backlog either way.

* A node consumes `<queue.prefix>.ppns.<node id>`: exclusive and auto-delete, so RabbitMQ deletes it as soon
  as the node's connection closes (a crash included: the kernel closes the socket; a vanished host after
  the AMQP heartbeat). A message to a node that is gone is dropped by the default exchange (no route).
* The fleet's provider publishes one message per node per batch: `{"app": …, "push": [[installation id,
  time, prev, push id, data], …]}`. A node that takes over an installation from another node sends the
  other node `{"app": …, "reset": [[installation id, replaced holder], …]}`.
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
from aio_pika.abc import AbstractChannel, AbstractConnection, AbstractIncomingMessage

from ppns.backlog import Stored, StoredPush
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


@dataclass(frozen=True, slots=True)
class LivePushes:
    app_id: str
    pushes: list[tuple[str, StoredPush]]  # (installation id, push)


@dataclass(frozen=True, slots=True)
class LiveResets:
    app_id: str
    resets: list[tuple[str, str]]  # (installation id, the holder to reset)


def encode_pushes(app_id: str, stored: list[Stored]) -> bytes:
    lines = [
        [item.installation_id, item.push.time, item.push.prev, item.push.push_id, item.push.data]
        for item in stored
    ]
    return json.dumps({"app": app_id, "push": lines}, separators=(",", ":")).encode()


def encode_resets(app_id: str, resets: list[tuple[str, str]]) -> bytes:
    return json.dumps({"app": app_id, "reset": [list(reset) for reset in resets]}).encode()


def decode(body: bytes) -> LivePushes | LiveResets | None:
    """A node-queue message; None if it is neither (logged by the caller)."""
    try:
        message = json.loads(body)
        app_id = str(message["app"])
        if "push" in message:
            pushes = [
                (str(i), StoredPush(time=t, push_id=p, data=d, prev=prev))
                for i, t, prev, p, d in message["push"]
            ]
            return LivePushes(app_id, pushes)
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
        return await _publish(channel, queue_name, body)

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
        self._lock = asyncio.Lock()
        self._retry_at = 0.0

    @property
    def enabled(self) -> bool:
        return not self._settings.is_memory

    async def publish(self, node_id: str, body: bytes) -> bool:
        channel = await self._ready_channel()
        if channel is None:
            return False
        ok = await _publish(channel, node_queue(self._settings.prefix, node_id), body)
        if not ok:
            self._retry_at = time.monotonic() + PUBLISH_RETRY_S
            await self._drop()
        return ok

    async def _ready_channel(self) -> AbstractChannel | None:
        if not self.enabled:
            return None
        channel = self._channel
        if channel is not None and not channel.is_closed:
            return channel
        async with self._lock:
            if self._channel is not None and not self._channel.is_closed:
                return self._channel
            if time.monotonic() < self._retry_at:
                return None
            await self._drop()
            try:
                connection = await aio_pika.connect(
                    self._settings.url, timeout=self._settings.publish_timeout_s
                )
                self._channel = await connection.channel(publisher_confirms=False)
                self._connection = connection
            except _CONNECT_ERRORS as error:
                log.warning("ppns_live_publisher_unavailable", error=str(error))
                self._retry_at = time.monotonic() + PUBLISH_RETRY_S
                return None
            return self._channel

    async def _drop(self) -> None:
        connection, self._connection, self._channel = self._connection, None, None
        if connection is not None:
            with contextlib.suppress(*_CONNECT_ERRORS):
                await connection.close()

    async def close(self) -> None:
        await self._drop()


async def _publish(channel: AbstractChannel, queue_name: str, body: bytes) -> bool:
    message = aio_pika.Message(body, delivery_mode=aio_pika.DeliveryMode.NOT_PERSISTENT)
    try:
        await channel.default_exchange.publish(message, routing_key=queue_name, timeout=5)
    except (*_CONNECT_ERRORS, aio_pika.exceptions.ChannelInvalidStateError) as error:
        log.warning("ppns_live_publish_failed", queue=queue_name, error=str(error))
        metrics.PPNS_PUSHES.labels("publish_failed").inc()
        return False
    return True


def group_by_node(stored: list[Stored]) -> dict[str, list[Stored]]:
    """Stored pushes by the node holding their installation (never-held installations are left out)."""
    grouped: dict[str, list[Stored]] = {}
    for item in stored:
        if item.holder:
            grouped.setdefault(holder_node(item.holder), []).append(item)
    return grouped
