"""Real RabbitMQ: a worker streaming a fan-out steps back from the send queue, so the other workers send the
batches even when they are at their prefetch limit, and a worker alone still gets every batch."""

from __future__ import annotations

import asyncio
from collections import Counter

from pushgw.broker import Broker, Consumer, Delivery, create_broker
from pushgw.settings import QueueSettings
from pushgw.topology import SEND
from tests.fixtures.rabbit import RabbitAdmin
from tests.fixtures.waiting import eventually
from workers.send_share import SendShare


def test_a_streaming_worker_leaves_the_sends_to_the_others_and_takes_them_when_alone(
    rabbit: RabbitAdmin,
) -> None:
    async def scenario() -> list[dict[str, int]]:
        handled: Counter[str] = Counter()
        slow = {"other": 0.0}  # seconds the other worker spends on each send
        brokers: list[Broker] = []
        consumers: dict[str, Consumer] = {}
        for name in ("planning", "other"):
            broker = create_broker(QueueSettings(url=rabbit.url, prefix=rabbit.prefix))
            await broker.start()
            brokers.append(broker)

            async def handle(delivery: Delivery, name: str = name) -> None:
                await asyncio.sleep(slow.get(name, 0.0))  # simulated work, not synchronisation
                handled[name] += 1
                await delivery.ack()

            consumers[name] = await broker.consume(SEND, handle, prefetch=4)
        share = SendShare()
        share.attach(consumers["planning"])
        seen: list[dict[str, int]] = []

        async def publish(count: int) -> None:
            handled.clear()
            for n in range(count):
                await brokers[0].publish(SEND, b"{}", message_id=f"m{n}")
            await eventually(lambda: sum(handled.values()) >= count, 10, f"{count} handled")
            seen.append(dict(handled))

        try:
            async with share.streaming():
                slow["other"] = 0.01  # at its prefetch limit most of the time: still it gets every batch
                await publish(40)
                slow["other"] = 0.0
            await publish(40)  # back in the rotation
            await consumers["other"].cancel()
            async with share.streaming():
                await publish(10)  # stepped back, but nobody else consumes: it gets every batch
        finally:
            for broker in brokers:
                await broker.close()
        return seen

    stepped_back, afterwards, alone = asyncio.run(scenario())
    assert stepped_back == {"other": 40}
    assert afterwards.get("planning", 0) >= 10 and afterwards.get("other", 0) >= 10
    assert alone == {"planning": 10}
