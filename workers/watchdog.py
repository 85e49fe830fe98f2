"""Keeps every push moving to a final status: re-plans abandoned plans, fails stuck pushes, ends dead work."""

from __future__ import annotations

import asyncio
from datetime import timedelta

from pymongo.asynchronous.collection import AsyncCollection

from pushgw import metrics
from pushgw.clock import Clock
from pushgw.connections import Connections
from pushgw.logs import get_logger
from pushgw.messages import PlanPush
from pushgw.mongo import Document, app_database
from pushgw.push_status import COLLECTION, OWN, fail_push, plan_from_status
from pushgw.settings import AppSettings, Settings
from pushgw.topology import PLAN
from workers.dead_letters import DeadLetters
from workers.periodic import run_every
from workers.scheduler import parse_push_time, zone_groups

log = get_logger(__name__)


class Watchdog:
    """Runs in every worker; each action is idempotent, so several watchdogs never conflict."""

    def __init__(self, settings: Settings, connections: Connections, clock: Clock, dead: DeadLetters) -> None:
        self._settings = settings
        self._connections = connections
        self._clock = clock
        self._dead = dead

    async def run(self, stop: asyncio.Event) -> None:
        await run_every(self._settings.worker.watchdog_interval_s, self.tick, stop, "watchdog")

    async def tick(self) -> None:
        for app in self._settings.apps:
            collection = app_database(self._connections.mongo, app).get_collection(
                app.collection_prefix + COLLECTION
            )
            await self._replan_abandoned(app, collection)
            await self._fail_stale(collection)
            await self._export_gauges(app, collection)
        await self._dead.finalize_expired()

    async def _export_gauges(self, app: AppSettings, collection: AsyncCollection[Document]) -> None:
        """What the alert rules watch and no counter shows: stuck pushes and dead letters nobody handled."""
        now = self._clock.now()
        oldest = await collection.find_one(
            {"status": "running", f"{OWN}.progress_at": {"$exists": True}},
            {f"{OWN}.progress_at": 1},
            sort=[(f"{OWN}.progress_at", 1)],
        )
        idle_s = (now - oldest[OWN]["progress_at"]).total_seconds() if oldest else 0.0
        metrics.RUNNING_PUSH_IDLE_SECONDS.labels(app.app_id).set(max(idle_s, 0.0))
        past_expiry = {"status": "running", "expiry": {"$lt": now.timestamp() * 1000}}
        past_expiry_count = await collection.count_documents(past_expiry)
        metrics.RUNNING_PUSHES_PAST_EXPIRY.labels(app.app_id).set(past_expiry_count)
        metrics.DEAD_LETTERS_PENDING.labels(app.app_id).set(await self._dead.count_pending(app.app_id))

    async def _replan_abandoned(self, app: AppSettings, collection: AsyncCollection[Document]) -> None:
        """A plan whose worker died keeps its lease only until it expires; then anyone may resume it."""
        quiet_since = self._clock.now() - timedelta(seconds=self._settings.worker.planner_lease_s)
        query = {"status": "running", f"{OWN}.progress_at": {"$lt": quiet_since}}
        async for document in collection.find(query):
            own = document.get(OWN, {})
            if own.get("plans_done", 0) >= own.get("plans_expected", 1):
                continue  # planning finished: the remaining units are in the queues
            for item in _unfinished_plans(document, app.app_id):
                await self._connections.broker.publish(
                    PLAN, item.to_bytes(), message_id=f"{item.push_id}:replan"
                )
                log.warning("plan_requeued", push_id=item.push_id, utc_offset_min=item.utc_offset_min)

    async def _fail_stale(self, collection: AsyncCollection[Document]) -> None:
        now, worker = self._clock.now(), self._settings.worker
        never_started = {
            "status": "pending",
            "_created_at": {"$lt": now - timedelta(seconds=worker.stale_pending_s)},
        }
        async for document in collection.find(never_started, {"_id": 1}):
            message = f"never picked up by a worker within {worker.stale_pending_s:g}s"
            await self._fail(collection, document["_id"], message)
        stalled = {
            "status": "running",
            f"{OWN}.progress_at": {"$lt": now - timedelta(seconds=worker.stalled_running_s)},
        }
        async for document in collection.find(stalled, {"_id": 1, OWN: 1}):
            own = document.get(OWN, {})
            counted = f"{own.get('devices_done', 0)} of {own.get('audience', '?')} devices accounted for"
            await self._fail(
                collection,
                document["_id"],
                f"stalled: no progress for {worker.stalled_running_s:g}s; {counted}",
            )

        # A push Parse Server set running (route C: its own intake and queue) that no planner ever claimed
        # has no `pushgw.progress_at` (its items never reached the fleet, or died before a plan was
        # published); Parse bumps `_updated_at` on every batch it tracks, so this also ends a push stuck
        # in Parse's own pipeline (contract §16, "stuck running").
        never_reached = {
            "status": "running",
            f"{OWN}.progress_at": {"$exists": False},
            "_updated_at": {"$lt": now - timedelta(seconds=worker.stalled_running_s)},
        }
        async for document in collection.find(never_reached, {"_id": 1}):
            message = (
                f"running in Parse Server without progress for {worker.stalled_running_s:g}s: "
                "none of its work items reached pushgw's fleet"
            )
            await self._fail(collection, document["_id"], message)

    async def _fail(self, collection: AsyncCollection[Document], push_id: str, message: str) -> None:
        if await fail_push(collection, push_id, 1, message):
            metrics.PUSHES_FINISHED.labels("failed").inc()
            log.error("push_failed_by_watchdog", push_id=push_id, reason=message)


def _unfinished_plans(document: Document, app_id: str) -> list[PlanPush]:
    own = document.get(OWN, {})
    plans = own.get("plans", {})
    moment, is_local = parse_push_time(document["pushTime"])
    if not is_local or "groups" not in own:
        return [] if plans.get("all", {}).get("done") else [plan_from_status(document, app_id)]
    items: list[PlanPush] = []
    for offset, zones in zone_groups(moment).items():
        key = f"utc{offset:+d}"
        if key in own["groups"] and not plans.get(key, {}).get("done"):
            items.append(plan_from_status(document, app_id, utc_offset_min=offset, time_zones=list(zones)))
    return items
