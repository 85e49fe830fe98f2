"""The work queues: RabbitMQ topology and confirmed publishing, with an in-process twin for `memory://`."""

from __future__ import annotations

import asyncio
import contextlib
from collections import defaultdict
from dataclasses import dataclass
from typing import Any, Protocol

import aio_pika
from aio_pika.abc import AbstractChannel, AbstractExchange, AbstractRobustConnection
from pamqp.commands import Basic

from pushgw.errors import PushgwError
from pushgw.logs import get_logger
from pushgw.settings import QueueSettings

log = get_logger(__name__)

PLAN = "plan"
WORK_QUEUES = (PLAN,)


class PublishError(PushgwError):
    """The broker did not confirm a message; it may or may not have been enqueued."""


@dataclass(frozen=True, slots=True)
class Topology:
    """Names of every exchange and queue for one `queue.prefix`, so several deployments can share a broker."""

    prefix: str
    delivery_limit: int

    @property
    def work_exchange(self) -> str:
        return f"{self.prefix}.work"

    @property
    def dead_exchange(self) -> str:
        return f"{self.prefix}.dead"

    @property
    def dead_queue(self) -> str:
        return f"{self.prefix}.dead"

    def queue(self, route: str) -> str:
        return f"{self.prefix}.{route}"

    def work_queue_arguments(self) -> dict[str, Any]:
        """Quorum queue, bounded redeliveries, poison messages dead-lettered at least once."""
        return {
            "x-queue-type": "quorum",
            "x-delivery-limit": self.delivery_limit,
            "x-dead-letter-exchange": self.dead_exchange,
            "x-dead-letter-strategy": "at-least-once",
            "x-overflow": "reject-publish",
        }


class Broker(Protocol):
    async def start(self) -> None: ...

    async def publish(self, route: str, body: bytes, *, message_id: str) -> None:
        """Return only once the broker has confirmed the persistent message; raise PublishError otherwise."""
        ...

    async def is_ready(self) -> bool: ...

    async def close(self) -> None: ...


def create_broker(settings: QueueSettings) -> Broker:
    if settings.is_memory:
        return MemoryBroker()
    return RabbitBroker(settings)


class RabbitBroker:
    """RabbitMQ over one robust connection; topology declared idempotently on every (re)connect."""

    def __init__(self, settings: QueueSettings) -> None:
        self._settings = settings
        self.topology = Topology(settings.prefix, settings.delivery_limit)
        self._connection: AbstractRobustConnection | None = None
        self._channel: AbstractChannel | None = None
        self._exchange: AbstractExchange | None = None
        self._connector: asyncio.Task[None] | None = None

    async def start(self) -> None:
        """Connect now if the broker answers; otherwise keep trying in the background (see is_ready)."""
        try:
            await self._connect()
        except (TimeoutError, OSError, aio_pika.exceptions.AMQPError) as error:
            log.warning("broker_unreachable", error=str(error))
            self._connector = asyncio.create_task(self._connect_with_backoff())

    async def _connect_with_backoff(self) -> None:
        delay_s = 0.5
        while self._exchange is None:
            await asyncio.sleep(delay_s)  # startup reconnect backoff, never per message
            try:
                await self._connect()
            except (TimeoutError, OSError, aio_pika.exceptions.AMQPError) as error:
                log.warning("broker_unreachable", error=str(error))
                delay_s = min(delay_s * 2, 10.0)

    async def _connect(self) -> None:
        connection = await aio_pika.connect_robust(
            self._settings.url, timeout=self._settings.publish_timeout_s
        )
        try:
            channel = await connection.channel(publisher_confirms=True)
            exchange = await declare_topology(channel, self.topology)
        except BaseException:
            await connection.close()
            raise
        self._connection, self._channel, self._exchange = connection, channel, exchange
        log.info("broker_connected", prefix=self.topology.prefix)

    async def publish(self, route: str, body: bytes, *, message_id: str) -> None:
        exchange = self._exchange
        if exchange is None:
            raise PublishError("not connected to the broker")
        message = aio_pika.Message(
            body,
            delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
            content_type="application/json",
            message_id=message_id,
        )
        try:
            confirmation = await exchange.publish(
                message, routing_key=route, mandatory=True, timeout=self._settings.publish_timeout_s
            )
        except (TimeoutError, aio_pika.exceptions.AMQPError, OSError, RuntimeError) as error:
            raise PublishError(f"{type(error).__name__}: {error}") from error
        if not isinstance(confirmation, Basic.Ack):
            raise PublishError(f"broker did not confirm: {type(confirmation).__name__}")

    async def is_ready(self) -> bool:
        channel, connection = self._channel, self._connection
        return (
            connection is not None
            and not connection.is_closed
            and channel is not None
            and not channel.is_closed
        )

    async def close(self) -> None:
        if self._connector is not None:
            self._connector.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._connector
        if self._connection is not None:
            await self._connection.close()
        self._connection = self._channel = self._exchange = None


async def declare_topology(channel: AbstractChannel, topology: Topology) -> AbstractExchange:
    """Declare exchanges, quorum work queues and the dead-letter queue; safe to repeat."""
    work = await channel.declare_exchange(topology.work_exchange, aio_pika.ExchangeType.DIRECT, durable=True)
    dead = await channel.declare_exchange(topology.dead_exchange, aio_pika.ExchangeType.FANOUT, durable=True)
    dead_queue = await channel.declare_queue(
        topology.dead_queue, durable=True, arguments={"x-queue-type": "quorum"}
    )
    await dead_queue.bind(dead)
    for route in WORK_QUEUES:
        queue = await channel.declare_queue(
            topology.queue(route), durable=True, arguments=topology.work_queue_arguments()
        )
        await queue.bind(work, routing_key=route)
    return work


class MemoryBroker:
    """`memory://`: in-process queues with the same interface; messages live as long as the process."""

    def __init__(self) -> None:
        self.queues: defaultdict[str, asyncio.Queue[tuple[str, bytes]]] = defaultdict(asyncio.Queue)

    async def start(self) -> None:
        return None

    async def publish(self, route: str, body: bytes, *, message_id: str) -> None:
        self.queues[route].put_nowait((message_id, body))

    async def is_ready(self) -> bool:
        return True

    async def close(self) -> None:
        return None
