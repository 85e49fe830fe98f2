"""The work queues: confirmed publishing and consuming on RabbitMQ (the in-process twin for `memory://` is
pushgw/memory_broker.py; `pushgw.connections.create_broker` picks one)."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable, Coroutine, Sequence
from typing import Any, Protocol

import aio_pika
from aio_pika.abc import (
    AbstractChannel,
    AbstractConnection,
    AbstractExchange,
    AbstractIncomingMessage,
    AbstractQueue,
)
from pamqp.commands import Basic

from pushgw.errors import PushgwError
from pushgw.logs import get_logger
from pushgw.reconnect import Reconnector
from pushgw.settings import QueueSettings
from pushgw.topology import Topology, declare_topology

log = get_logger(__name__)


class PublishError(PushgwError):
    """The broker did not confirm a message; it may or may not have been enqueued."""


class Delivery(Protocol):
    """One received message; exactly one of ack/requeue/retry_later/dead_letter settles it."""

    body: bytes
    redelivered: bool  # handed out before, by the broker or by retry_later
    retries: int  # how often retry_later handed this message back

    async def ack(self) -> None: ...

    async def requeue(self) -> None:
        """Hand back now; counts towards the queue's delivery limit (poison is dead-lettered)."""
        ...

    async def retry_later(self, delay_s: float) -> None:
        """Hand back after `delay_s` as a new message (`redelivered`, `retries` + 1), so that an outage
        does not use up the queue's delivery limit."""
        ...

    async def dead_letter(self) -> None: ...


Handler = Callable[[Delivery], Coroutine[Any, Any, None]]


class Consumer(Protocol):
    async def cancel(self) -> None:
        """Stop receiving; deliveries already handed out stay with their handlers."""
        ...

    async def step_back(self, stepped_back: bool) -> None:
        """While stepped back, leave the queue's messages to its other consumers: stop receiving if the
        queue has another consumer, else receive at a lower priority (the broker hands this one messages
        only while every other one is at its prefetch limit). False: receive as before."""
        ...


class Broker(Protocol):
    async def start(self) -> None: ...

    async def publish(self, route: str, body: bytes, *, message_id: str) -> None:
        """Return only once the broker has confirmed the persistent message; raise PublishError otherwise."""
        ...

    async def publish_delayed(self, delay_s: int, body: bytes, *, message_id: str) -> None:
        """Publish to the send queue after `delay_s` (one of the configured tiers), confirmed."""
        ...

    async def consume(self, route: str, handler: Handler, *, prefetch: int) -> Consumer: ...

    async def is_ready(self) -> bool: ...

    async def close(self) -> None: ...


_CONNECT_ERRORS = (TimeoutError, OSError, aio_pika.exceptions.AMQPError)
RETRIES_HEADER = "x-pushgw-retries"


class RabbitBroker:
    """RabbitMQ over one connection that pushgw supervises itself.

    Whenever the connection or one of its channels goes away unexpectedly (broker restart, network cut,
    channel error), the whole link is rebuilt with backoff: connection, topology, publisher channel and
    every consumer that has not been cancelled. aio-pika's robust connection is not used: after a
    `rabbitmqctl stop_app`/`start_app` it kept "reconnecting" without restoring consumers.
    """

    def __init__(self, settings: QueueSettings, delay_tiers_s: Sequence[int] = (5,)) -> None:
        self._settings = settings
        self.topology = Topology(settings.prefix, settings.delivery_limit, tuple(delay_tiers_s))
        self._connection: AbstractConnection | None = None
        self._channel: AbstractChannel | None = None
        self._exchange: AbstractExchange | None = None
        self._delay_exchange: AbstractExchange | None = None
        self._consumers: list[_RabbitConsumer] = []
        self._link = Reconnector(self._connect, _CONNECT_ERRORS, _log_connect_failure)
        self._teardowns: set[asyncio.Task[None]] = set()

    async def start(self) -> None:
        """Connect now if the broker answers; otherwise keep trying in the background (see is_ready)."""
        await self._link.start()

    async def _connect(self) -> None:
        connection = await aio_pika.connect(self._settings.url, timeout=self._settings.publish_timeout_s)
        try:
            channel = await connection.channel(publisher_confirms=True)
            exchange = await declare_topology(channel, self.topology)
            # Publishing works before the first consumer attaches: its handlers start at once and may publish.
            self._exchange = exchange
            self._delay_exchange = await channel.get_exchange(self.topology.delay_exchange)
            for consumer in self._consumers:
                if not consumer.cancelled:
                    await consumer.attach(connection, self._channel_lost)
        except BaseException:
            self._exchange = self._delay_exchange = None
            await connection.close()
            raise
        if self._link.closing:
            self._exchange = self._delay_exchange = None
            await connection.close()
            return
        self._connection, self._channel = connection, channel
        connection.close_callbacks.add(self._connection_lost)
        channel.close_callbacks.add(self._channel_lost)
        log.info("broker_connected", prefix=self.topology.prefix, consumers=len(self._consumers))

    def _connection_lost(self, connection: AbstractConnection | None, error: BaseException | None) -> None:
        if self._link.closing or connection is None or connection is not self._connection:
            return
        log.warning("broker_connection_lost", error=f"{type(error).__name__}: {error}")
        self._connection = self._channel = self._exchange = self._delay_exchange = None
        self._close_soon(connection)  # marks it closed for aio-pika, whose __del__ would otherwise close it
        self._link.soon()

    def _channel_lost(self, channel: object, error: BaseException | None) -> None:
        """A channel closed under us (e.g. a channel error): rebuild the whole link, consumers included."""
        connection = self._connection
        if self._link.closing or connection is None or connection.is_closed:
            return
        live = channel is self._channel or any(
            channel is consumer.channel and not consumer.cancelled for consumer in self._consumers
        )
        if not live:
            return  # a channel of a cancelled consumer or of an earlier link
        log.warning("broker_channel_lost", error=f"{type(error).__name__}: {error}")
        self._close_soon(connection)

    def _close_soon(self, connection: AbstractConnection) -> None:
        teardown = asyncio.get_running_loop().create_task(connection.close())
        self._teardowns.add(teardown)
        teardown.add_done_callback(self._teardowns.discard)

    async def publish(self, route: str, body: bytes, *, message_id: str) -> None:
        await self._publish(self._exchange, route, body, message_id)

    async def publish_delayed(self, delay_s: int, body: bytes, *, message_id: str) -> None:
        await self._publish(self._delay_exchange, str(delay_s), body, message_id)

    async def publish_retry(self, route: str, body: bytes, message_id: str | None, retries: int) -> None:
        """`body` back on the queue of `route` as a new message marked as handed back `retries` times."""
        await self._publish(self._exchange, route, body, message_id, {RETRIES_HEADER: retries})

    async def _publish(
        self,
        exchange: AbstractExchange | None,
        route: str,
        body: bytes,
        message_id: str | None,
        headers: dict[str, Any] | None = None,
    ) -> None:
        if exchange is None:
            raise PublishError("not connected to the broker")
        message = aio_pika.Message(
            body,
            delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
            content_type="application/json",
            message_id=message_id,
            headers=headers,
        )
        try:
            confirmation = await exchange.publish(
                message, routing_key=route, mandatory=True, timeout=self._settings.publish_timeout_s
            )
        except (TimeoutError, aio_pika.exceptions.AMQPError, OSError, RuntimeError) as error:
            raise PublishError(f"{type(error).__name__}: {error}") from error
        if not isinstance(confirmation, Basic.Ack):
            raise PublishError(
                f"broker did not confirm {exchange.name} {route!r}: {type(confirmation).__name__}"
            )

    async def consume(self, route: str, handler: Handler, *, prefetch: int) -> Consumer:
        """Consume on a channel of its own; re-attached to every new connection until cancelled."""
        if self._connection is None:
            raise PublishError("not connected to the broker")
        consumer = _RabbitConsumer(self, route, handler, prefetch)
        await consumer.attach(self._connection, self._channel_lost)
        self._consumers.append(consumer)
        return consumer

    async def is_ready(self) -> bool:
        channel, connection = self._channel, self._connection
        return (
            connection is not None
            and not connection.is_closed
            and channel is not None
            and not channel.is_closed
        )

    async def close(self) -> None:
        await self._link.close()
        if self._connection is not None:
            await self._connection.close()
        await asyncio.gather(*self._teardowns, return_exceptions=True)
        self._connection = self._channel = self._exchange = self._delay_exchange = None


def _log_connect_failure(error: BaseException) -> None:
    if "PRECONDITION_FAILED" in str(error):
        # A queue exists with other arguments (e.g. queue.delivery_limit changed): RabbitMQ cannot alter it.
        log.error(
            "queue_arguments_mismatch",
            error=str(error),
            fix="delete the named queue (after draining it) or restore the previous queue settings",
        )
        return
    log.warning("broker_unreachable", error=str(error))


class _RabbitDelivery:
    def __init__(self, broker: RabbitBroker, route: str, message: AbstractIncomingMessage) -> None:
        self._broker, self._route, self._message = broker, route, message
        self.body = message.body
        retries = (message.headers or {}).get(RETRIES_HEADER)
        self.retries = retries if isinstance(retries, int) and retries > 0 else 0
        self.redelivered = bool(message.redelivered) or self.retries > 0

    async def ack(self) -> None:
        await self._settle(self._message.ack())

    async def requeue(self) -> None:
        await self._settle(self._message.nack(requeue=True))

    async def retry_later(self, delay_s: float) -> None:
        """A copy published (confirmed) before the original is acked: a crash in between leaves both, and
        work is idempotent. If the copy cannot be published, the original is requeued instead."""
        await asyncio.sleep(delay_s)
        try:
            await self._broker.publish_retry(
                self._route, self.body, self._message.message_id, self.retries + 1
            )
        except PublishError as error:
            log.warning("delivery_retry_publish_failed", error=str(error))
            await self.requeue()
            return
        await self.ack()

    async def dead_letter(self) -> None:
        await self._settle(self._message.reject(requeue=False))

    async def _settle(self, settle: Awaitable[None]) -> None:
        try:
            await settle
        except (
            aio_pika.exceptions.ChannelInvalidStateError,
            aio_pika.exceptions.AMQPError,
            RuntimeError,
        ) as error:
            # The channel was replaced by a reconnect: the broker redelivers this message; work is idempotent.
            log.warning("delivery_settle_failed", error=str(error))


STEP_BACK_PRIORITY = -1


class _RabbitConsumer:
    """One `consume()` registration; `attach` (re)starts it on a connection."""

    def __init__(self, broker: RabbitBroker, route: str, handler: Handler, prefetch: int) -> None:
        self._broker, self._route = broker, route
        self._queue_name, self._handler, self._prefetch = broker.topology.queue(route), handler, prefetch
        self.channel: AbstractChannel | None = None
        self._queue: AbstractQueue | None = None
        self._tag: str | None = None
        self._priority = 0
        self._stepped_back = False
        self._changing = asyncio.Lock()
        self._on_message: Callable[[AbstractIncomingMessage], Awaitable[None]] | None = None
        self.cancelled = False

    async def attach(
        self, connection: AbstractConnection, on_lost: Callable[[object, BaseException | None], None]
    ) -> None:
        channel = await connection.channel()
        await channel.set_qos(prefetch_count=self._prefetch)
        queue = await channel.get_queue(self._queue_name, ensure=False)
        broker, route, handler = self._broker, self._route, self._handler

        async def on_message(message: AbstractIncomingMessage) -> None:
            await handler(_RabbitDelivery(broker, route, message))

        self._on_message = on_message
        self._tag = await queue.consume(on_message, arguments=self._arguments())
        self.channel, self._queue = channel, queue
        channel.close_callbacks.add(on_lost)

    def _arguments(self) -> dict[str, Any] | None:
        return {"x-priority": self._priority} if self._priority else None

    async def cancel(self) -> None:
        self.cancelled = True
        if self._queue is not None and self._tag is not None:
            with contextlib.suppress(aio_pika.exceptions.AMQPError, RuntimeError):
                await self._queue.cancel(self._tag)

    async def step_back(self, stepped_back: bool) -> None:
        """Cancel the registration, then re-register unless stepping back with another consumer on the queue
        (AMQP fixes a consumer's priority per `basic.consume`). Unacknowledged deliveries stay with the
        channel and their handlers. A broker error leaves the old registration, or none until the
        reconnect, which registers at the current priority: this is an optimisation."""
        async with self._changing:
            if stepped_back == self._stepped_back or self.cancelled:
                return
            self._stepped_back = stepped_back
            self._priority = STEP_BACK_PRIORITY if stepped_back else 0
            if self._queue is None or self.channel is None or self._on_message is None:
                return
            with contextlib.suppress(aio_pika.exceptions.AMQPError, RuntimeError):
                consumers = await _consumer_count(self.channel, self._queue_name) if stepped_back else 0
                if self._tag is not None:
                    await self._queue.cancel(self._tag)
                    self._tag = None
                    consumers -= 1
                if consumers > 0:
                    return  # paused: the others take every message until this one steps forward again
                self._tag = await self._queue.consume(self._on_message, arguments=self._arguments())


async def _consumer_count(channel: AbstractChannel, queue_name: str) -> int:
    declared = await channel.declare_queue(queue_name, passive=True)
    return declared.declaration_result.consumer_count or 0
