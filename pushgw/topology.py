"""The RabbitMQ objects of one `queue.prefix`: names, arguments, and their idempotent declaration."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import aio_pika
from aio_pika.abc import AbstractChannel, AbstractExchange

PLAN = "plan"
SEND = "send"
PARSE = "parse"  # Parse Server's own push work items (deploy/parse-server's queue adapter publishes here)
WORK_QUEUES = (PLAN, SEND, PARSE)


@dataclass(frozen=True, slots=True)
class Topology:
    """Names of every exchange and queue for one `queue.prefix`, so several deployments can share a broker."""

    prefix: str
    delivery_limit: int
    delay_tiers_s: tuple[int, ...] = (5,)

    @property
    def work_exchange(self) -> str:
        return f"{self.prefix}.work"

    @property
    def dead_exchange(self) -> str:
        return f"{self.prefix}.dead"

    @property
    def dead_queue(self) -> str:
        return f"{self.prefix}.dead"

    @property
    def delay_exchange(self) -> str:
        return f"{self.prefix}.delay"

    def delay_queue(self, tier_s: int) -> str:
        return f"{self.prefix}.delay.{tier_s}s"

    def delay_queue_arguments(self, tier_s: int) -> dict[str, Any]:
        """A holding queue: messages expire after the tier and dead-letter back to the send queue."""
        return {
            "x-queue-type": "quorum",
            "x-message-ttl": tier_s * 1000,
            "x-dead-letter-exchange": self.work_exchange,
            "x-dead-letter-routing-key": SEND,
            "x-dead-letter-strategy": "at-least-once",
            "x-overflow": "reject-publish",
        }

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
    delay = await channel.declare_exchange(
        topology.delay_exchange, aio_pika.ExchangeType.DIRECT, durable=True
    )
    for tier_s in topology.delay_tiers_s:
        held = await channel.declare_queue(
            topology.delay_queue(tier_s), durable=True, arguments=topology.delay_queue_arguments(tier_s)
        )
        await held.bind(delay, routing_key=str(tier_s))
    return work
