"""The `pushgw worker` process: consumers for plan/send/dead queues, background loops, SIGTERM drain."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import os
import socket
from collections.abc import Awaitable, Callable
from typing import Any

from prometheus_client import start_http_server
from pymongo.errors import PyMongoError

from pushgw.broker import Consumer, Delivery, Handler
from pushgw.clock import Clock
from pushgw.connections import Connections
from pushgw.logs import get_logger, log_context
from pushgw.messages import PlanPush, SendBatch, UnknownWorkItem, parse_work_item
from pushgw.mongo import app_database
from pushgw.push_status import StatusStores
from pushgw.settings import Settings
from pushgw.topology import PARSE, PLAN, SEND
from pushgw.tracing import push_span
from workers.dead_letters import DEAD_ROUTE, DeadLetters
from workers.parse_queue import ParseQueue
from workers.periodic import run_every
from workers.planner import Planner, ensure_installation_indexes
from workers.providers.provider import Provider
from workers.retries import is_transient, retry_later
from workers.scheduler import Scheduler
from workers.send_share import SendShare
from workers.sender import Sender
from workers.watchdog import Watchdog

log = get_logger(__name__)
GAUGE_INTERVAL_S = 5.0


class Worker:
    """One fleet member. Start as many as you like: all state is in MongoDB and RabbitMQ."""

    def __init__(
        self, settings: Settings, connections: Connections, providers: dict[str, Provider], clock: Clock
    ) -> None:
        self._settings = settings
        self._connections = connections
        self._providers = providers
        self.owner = f"{socket.gethostname()}:{os.getpid()}:{id(self):x}"
        broker = connections.broker
        stores = StatusStores(clock)  # the group commits the planner and the sender share
        self.sender = Sender(settings.worker, broker, providers, clock, stores=stores)
        self._sends = SendShare()
        self.planner = Planner(
            settings.worker, broker, clock, self.owner, self.sender, stores=stores, sends=self._sends
        )
        databases = {app.app_id: app_database(connections.mongo, app) for app in settings.apps}
        self.dead_letters = DeadLetters(settings, databases, clock)
        self.scheduler = Scheduler(settings, connections, clock)
        self.watchdog = Watchdog(settings, connections, clock, self.dead_letters)
        self.parse_queue = ParseQueue(settings, connections.mongo, broker, clock)
        self._in_flight: set[asyncio.Task[Any]] = set()
        self._consumers: list[Consumer] = []

    async def start(self) -> None:
        await self._ensure_indexes()
        broker, prefetch = self._connections.broker, self._settings.worker.prefetch
        work = self._tracked(self._process)
        self._consumers = [
            await broker.consume(PLAN, work, prefetch=prefetch),
            await broker.consume(SEND, work, prefetch=self._settings.worker.send_prefetch),
            await broker.consume(DEAD_ROUTE, self.dead_letters.keep, prefetch=prefetch),
            await broker.consume(PARSE, self._tracked(self.parse_queue.handle), prefetch=prefetch),
        ]
        self._sends.attach(self._consumers[1])
        log.info("worker_started", owner=self.owner, transports=sorted(self._providers))

    async def publish_gauges(self) -> None:
        """Per-connection stream limits and in-flight streams, for providers that keep connections."""
        for provider in {id(p): p for p in self._providers.values()}.values():
            publish = getattr(provider, "publish_gauges", None)
            if publish is not None:
                publish()

    async def _ensure_indexes(self) -> None:
        fields = self._settings.worker.installation_indexes
        for app in self._settings.apps:
            database = app_database(self._connections.mongo, app)
            try:
                await ensure_installation_indexes(database, app.collection_prefix, fields)
            except PyMongoError as error:  # an index is an optimisation: work on without it
                log.warning("installation_index_failed", app_id=app.app_id, error=str(error))

    async def drain(self) -> None:
        """Stop consuming, give in-flight units `shutdown_timeout_s` to finish, then abandon the rest.

        Abandoned deliveries are never acked, so the broker hands them to another worker when this
        connection closes; the units are idempotent.
        """
        for consumer in self._consumers:
            await consumer.cancel()
        pending = set(self._in_flight)
        if pending:
            log.info("worker_draining", in_flight=len(pending))
            _, still_running = await asyncio.wait(pending, timeout=self._settings.worker.shutdown_timeout_s)
            for task in still_running:
                task.cancel()
            await asyncio.gather(*still_running, return_exceptions=True)
        log.info("worker_drained", abandoned=0 if not pending else len([t for t in pending if t.cancelled()]))

    def _tracked(self, handler: Handler) -> Handler:
        """The handler, its task counted as in flight so that drain() waits for it."""

        async def tracked(delivery: Delivery) -> None:
            task = asyncio.current_task()
            if task is not None:
                self._in_flight.add(task)
            try:
                await handler(delivery)
            finally:
                if task is not None:
                    self._in_flight.discard(task)

        return tracked

    async def _process(self, delivery: Delivery) -> None:
        try:
            item = parse_work_item(delivery.body)
        except UnknownWorkItem as error:
            log.error("work_item_unreadable", error=str(error)[:300])
            await delivery.dead_letter()
            return
        app = self._settings.app(item.app_id)
        if app is None:
            log.error("work_item_unknown_app", app_id=item.app_id, push_id=item.push_id)
            await delivery.dead_letter()
            return
        database = app_database(self._connections.mongo, app)
        run: Callable[[], Awaitable[None]]
        if isinstance(item, PlanPush):
            run = functools.partial(self.planner.plan_push, item, app, database, delivery.redelivered)
        else:
            run = functools.partial(self.sender.send_batch, item, app, database, delivery.redelivered)
        await self._settle(delivery, item, run)

    async def _settle(
        self, delivery: Delivery, item: PlanPush | SendBatch, run: Callable[[], Awaitable[None]]
    ) -> None:
        unit = item.unit if isinstance(item, SendBatch) else "plan"
        try:
            with (
                log_context(push_id=item.push_id, unit=unit),
                push_span(
                    f"pushgw.{item.kind}",
                    item.traceparent,
                    app_id=item.app_id,
                    push_id=item.push_id,
                    unit=unit,
                ),
            ):
                await run()
        except asyncio.CancelledError:
            raise  # draining: leave the delivery unacked for another worker
        except Exception as error:
            if is_transient(error):
                first_delay_s = self._settings.worker.requeue_delay_s
                await retry_later(
                    delivery, first_delay_s, error, "unit_retry", push_id=item.push_id, unit=unit
                )
                return
            log.exception("unit_failed", push_id=item.push_id, unit=unit)
            await delivery.requeue()  # the queue's delivery limit dead-letters a poison message
            return
        await delivery.ack()


async def run_worker_until(
    settings: Settings,
    connections: Connections,
    providers: dict[str, Provider],
    clock: Clock,
    stop: asyncio.Event,
) -> None:
    """Run one worker until `stop` is set, then drain."""
    worker = Worker(settings, connections, providers, clock)
    metrics_server = None
    if settings.worker.metrics_port is not None:
        metrics_server, _ = start_http_server(settings.worker.metrics_port, settings.worker.metrics_host)
        log.info("metrics_listening", host=settings.worker.metrics_host, port=settings.worker.metrics_port)
    await worker.start()
    loops = [
        asyncio.create_task(worker.scheduler.run(stop)),
        asyncio.create_task(worker.watchdog.run(stop)),
        asyncio.create_task(run_every(GAUGE_INTERVAL_S, worker.publish_gauges, stop, "gauges")),
    ]
    await stop.wait()
    await worker.drain()
    if metrics_server is not None:
        metrics_server.shutdown()
        metrics_server.server_close()
    await asyncio.gather(*loops)
    for provider in {id(p): p for p in providers.values()}.values():
        with contextlib.suppress(Exception):
            await provider.close()
