"""The brokers on real RabbitMQ (and the memory twin): retries that keep the delivery limit, a rebuilt link
that can publish as soon as its consumers receive again."""

from __future__ import annotations

import asyncio

import aio_pika
import pytest

from pushgw.broker import Delivery, PublishError
from pushgw.connections import create_broker
from pushgw.settings import QueueSettings
from pushgw.topology import PARSE, PLAN, SEND
from tests.fixtures.rabbit import RabbitAdmin
from tests.fixtures.tcp_proxy import TcpProxy
from tests.fixtures.waiting import eventually


@pytest.mark.parametrize("memory", [False, True], ids=["rabbitmq", "memory"])
def test_a_message_retried_later_comes_back_redelivered_without_using_up_the_delivery_limit(
    rabbit: RabbitAdmin, memory: bool
) -> None:
    settings = QueueSettings(
        url="memory://" if memory else rabbit.url, prefix=rabbit.prefix, delivery_limit=1
    )

    async def scenario() -> list[tuple[bytes, bool, int]]:
        broker = create_broker(settings)
        await broker.start()
        seen: list[tuple[bytes, bool, int]] = []

        async def handle(delivery: Delivery) -> None:
            seen.append((delivery.body, delivery.redelivered, delivery.retries))
            if delivery.retries < 3:
                await delivery.retry_later(0.01)
            else:
                await delivery.ack()

        try:
            await broker.consume(PLAN, handle, prefetch=1)
            await broker.publish(PLAN, b"plan-1", message_id="m1")
            await eventually(lambda: len(seen) >= 4, timeout_s=10, what="four deliveries")
        finally:
            await broker.close()
        return seen

    assert asyncio.run(scenario()) == [
        (b"plan-1", False, 0), (b"plan-1", True, 1), (b"plan-1", True, 2), (b"plan-1", True, 3)
    ]  # fmt: skip
    if not memory:  # four deliveries, but each a new message: none dead-lettered, none left
        assert (rabbit.count(PLAN), rabbit.count("dead")) == (0, 0)


def test_handlers_that_start_as_the_link_is_rebuilt_can_publish(
    rabbit: RabbitAdmin, tcp_proxy: type[TcpProxy]
) -> None:
    """Messages queued while the broker was unreachable reach the first consumer the moment it re-attaches,
    while the link still attaches the others; a handler that publishes then must not get "not connected"."""
    proxy = tcp_proxy(5672)
    url = f"amqp://guest:guest@127.0.0.1:{proxy.port}/"

    async def scenario() -> list[str]:
        broker = create_broker(QueueSettings(url=url, prefix=rabbit.prefix, publish_timeout_s=3))
        await broker.start()
        outcomes: list[str] = []

        async def forward(delivery: Delivery) -> None:  # e.g. a planner publishing its units
            try:
                await broker.publish(PARSE, delivery.body, message_id="forwarded")
                outcomes.append("published")
            except PublishError as error:
                outcomes.append(str(error))
            await delivery.ack()

        async def take(delivery: Delivery) -> None:
            await delivery.ack()

        try:
            await broker.consume(PLAN, forward, prefetch=10)
            await broker.consume(SEND, take, prefetch=10)
            await asyncio.to_thread(proxy.cut)

            async def disconnected() -> bool:
                return not await broker.is_ready()

            await eventually(disconnected, timeout_s=10, what="the broker to notice the cut")
            connection = await aio_pika.connect(rabbit.url)  # directly, not through the cut proxy
            async with connection:
                channel = await connection.channel()
                exchange = await channel.get_exchange(f"{rabbit.prefix}.work")
                for n in range(5):
                    await exchange.publish(aio_pika.Message(f"m{n}".encode()), routing_key=PLAN)
            await asyncio.to_thread(proxy.restore)
            await eventually(lambda: len(outcomes) == 5, timeout_s=30, what="five messages handled")
        finally:
            await broker.close()
        return outcomes

    assert asyncio.run(scenario()) == ["published"] * 5
    assert rabbit.count(PARSE) == 5
