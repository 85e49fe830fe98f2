"""`memory://`: the work queues in one process, with the interface of pushgw/broker.py's RabbitBroker."""

from __future__ import annotations

import asyncio
import contextlib
from collections import defaultdict

from pushgw.broker import Consumer, Handler
from pushgw.topology import SEND


class MemoryBroker:
    """`memory://`: in-process queues with the same interface; messages live as long as the process."""

    def __init__(self) -> None:
        self.queues: defaultdict[str, asyncio.Queue[_MemoryDelivery]] = defaultdict(asyncio.Queue)
        self._timers: set[asyncio.TimerHandle] = set()

    async def start(self) -> None:
        return None

    async def publish(self, route: str, body: bytes, *, message_id: str) -> None:
        self.queues[route].put_nowait(_MemoryDelivery(self, route, body))

    async def publish_delayed(self, delay_s: int, body: bytes, *, message_id: str) -> None:
        self.enqueue_later(delay_s, _MemoryDelivery(self, SEND, body))

    def enqueue_later(self, delay_s: float, delivery: _MemoryDelivery) -> None:
        loop = asyncio.get_running_loop()
        handle = loop.call_later(delay_s, lambda: self.queues[delivery.route].put_nowait(delivery))
        self._timers.add(handle)

    async def consume(self, route: str, handler: Handler, *, prefetch: int) -> Consumer:
        return _MemoryConsumer(self.queues[route], handler, prefetch)

    async def is_ready(self) -> bool:
        return True

    async def close(self) -> None:
        for handle in self._timers:
            handle.cancel()


class _MemoryDelivery:
    def __init__(
        self, broker: MemoryBroker, route: str, body: bytes, redelivered: bool = False, retries: int = 0
    ) -> None:
        self._broker, self.route = broker, route
        self.body, self.redelivered, self.retries = body, redelivered, retries

    async def ack(self) -> None:
        return None

    async def requeue(self) -> None:
        self._broker.queues[self.route].put_nowait(
            _MemoryDelivery(self._broker, self.route, self.body, True, self.retries)
        )

    async def retry_later(self, delay_s: float) -> None:
        again = _MemoryDelivery(self._broker, self.route, self.body, True, self.retries + 1)
        self._broker.enqueue_later(delay_s, again)

    async def dead_letter(self) -> None:
        self._broker.queues["dead"].put_nowait(_MemoryDelivery(self._broker, "dead", self.body))


class _MemoryConsumer:
    def __init__(self, queue: asyncio.Queue[_MemoryDelivery], handler: Handler, prefetch: int) -> None:
        self._slots = asyncio.Semaphore(prefetch)
        self._tasks: set[asyncio.Task[None]] = set()
        self._pump = asyncio.create_task(self._run(queue, handler))

    async def _run(self, queue: asyncio.Queue[_MemoryDelivery], handler: Handler) -> None:
        while True:
            await self._slots.acquire()
            delivery = await queue.get()
            task = asyncio.create_task(handler(delivery))
            self._tasks.add(task)
            task.add_done_callback(self._done)

    def _done(self, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        self._slots.release()

    async def cancel(self) -> None:
        self._pump.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._pump

    async def step_back(self, stepped_back: bool) -> None:
        return None  # one process: nobody to step back for
