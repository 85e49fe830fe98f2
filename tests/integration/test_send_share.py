"""Real RabbitMQ: a worker streaming a fan-out steps back from the send queue, so the other workers send the
batches even when they are at their prefetch limit, and a worker alone still gets every batch."""

from __future__ import annotations

import asyncio
from collections import Counter

import aio_pika

from pushgw.broker import Broker, Consumer, Delivery
from pushgw.connections import create_broker
from pushgw.settings import QueueSettings
from pushgw.topology import SEND
from tests.fixtures.rabbit import RabbitAdmin
from tests.fixtures.waiting import eventually
from workers.send_share import SendShare


def test_a_streaming_worker_leaves_the_sends_to_the_others_and_takes_them_when_alone(
    rabbit: RabbitAdmin,
) -> None:
    async def scenario() -> tuple[list[dict[str, int]], int]:
        handled: Counter[str] = Counter()
        holding: Counter[str] = Counter()  # deliveries a handler has and has not settled yet
        gate = asyncio.Event()  # the other worker's sends finish only once it is open
        gate.set()
        brokers: list[Broker] = []
        consumers: dict[str, Consumer] = {}
        for name in ("planning", "other"):
            broker = create_broker(QueueSettings(url=rabbit.url, prefix=rabbit.prefix))
            await broker.start()
            brokers.append(broker)

            async def handle(delivery: Delivery, name: str = name) -> None:
                holding[name] += 1
                if name == "other":
                    await gate.wait()
                holding[name] -= 1
                handled[name] += 1
                await delivery.ack()

            consumers[name] = await broker.consume(SEND, handle, prefetch=4)
        share = SendShare()
        share.attach(consumers["planning"])
        seen: list[dict[str, int]] = []
        connection = await aio_pika.connect(rabbit.url)
        channel = await connection.channel()

        async def publish(count: int) -> None:
            for n in range(count):
                await brokers[0].publish(SEND, b"{}", message_id=f"m{n}")

        async def handled_all(count: int) -> None:
            await eventually(lambda: sum(handled.values()) >= count, 10, f"{count} handled")
            seen.append(dict(handled))
            handled.clear()

        try:
            async with share.streaming():
                gate.clear()  # the other worker holds its prefetch limit of sends and finishes none
                await publish(40)
                await eventually(lambda: holding["other"] == 4, 10, "the other worker at its prefetch limit")
                queue = await channel.declare_queue(rabbit.queue("send"), passive=True)
                waiting = queue.declaration_result.message_count or 0  # nobody else took the rest
                gate.set()
                await handled_all(40)
            await publish(40)  # back in the rotation
            await handled_all(40)
            await consumers["other"].cancel()
            async with share.streaming():
                await publish(10)  # stepped back, but nobody else consumes: it gets every batch
                await handled_all(10)
        finally:
            await connection.close()
            for broker in brokers:
                await broker.close()
        return seen, waiting

    (stepped_back, afterwards, alone), waiting = asyncio.run(scenario())
    assert waiting == 36
    assert stepped_back == {"other": 40}
    assert afterwards.get("planning", 0) >= 10 and afterwards.get("other", 0) >= 10
    assert alone == {"planning": 10}
