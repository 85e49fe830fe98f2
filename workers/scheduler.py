"""Starts scheduled pushes when due: absolute times once, local times once per UTC offset group."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from functools import lru_cache
from zoneinfo import ZoneInfo, available_timezones

from pymongo.asynchronous.collection import AsyncCollection

from pushgw.clock import Clock
from pushgw.connections import Connections
from pushgw.logs import get_logger
from pushgw.mongo import Document, app_database
from pushgw.push_status import COLLECTION, OWN, plan_from_status
from pushgw.settings import AppSettings, Settings
from pushgw.topology import PLAN
from workers.periodic import run_every
from workers.planner import plan_key

log = get_logger(__name__)
_PUSH_TIME_FORMAT = "%Y-%m-%dT%H:%M:%S.%f"


@lru_cache(maxsize=64)
def zone_groups(wall_time: datetime) -> dict[int, tuple[str, ...]]:
    """IANA zones grouped by their UTC offset (minutes) at `wall_time` local time, DST included."""
    groups: dict[int, list[str]] = {}
    for name in sorted(available_timezones()):
        offset = ZoneInfo(name).utcoffset(wall_time)
        if offset is not None:
            groups.setdefault(int(offset.total_seconds() // 60), []).append(name)
    return {offset: tuple(zones) for offset, zones in sorted(groups.items())}


def parse_push_time(text: str) -> tuple[datetime, bool]:
    """`_PushStatus.pushTime` → (the wall-clock or absolute time, is_local); `Z` marks an absolute time."""
    is_local = not text.endswith("Z")
    moment = datetime.strptime(text.removesuffix("Z"), _PUSH_TIME_FORMAT)
    return (moment, True) if is_local else (moment.replace(tzinfo=UTC), False)


class Scheduler:
    """Safe in every worker: each start is an atomic claim on the `_PushStatus` row; nothing starts twice."""

    def __init__(self, settings: Settings, connections: Connections, clock: Clock) -> None:
        self._settings = settings
        self._connections = connections
        self._clock = clock

    async def run(self, stop: asyncio.Event) -> None:
        await run_every(self._settings.worker.scheduler_interval_s, self.tick, stop, "scheduler")

    async def tick(self) -> None:
        for app in self._settings.apps:
            collection = app_database(self._connections.mongo, app).get_collection(
                app.collection_prefix + COLLECTION
            )
            query = {"$or": [{"status": "scheduled"}, {"status": "running", f"{OWN}.local_pending": True}]}
            async for document in collection.find(query):
                moment, is_local = parse_push_time(document["pushTime"])
                if is_local:
                    await self._start_local(app, collection, document, moment)
                elif self._clock.now() >= moment:
                    await self._start_absolute(app, collection, document)

    async def _start_absolute(
        self, app: AppSettings, collection: AsyncCollection[Document], document: Document
    ) -> None:
        now = self._clock.now()
        claimed = await collection.update_one(
            {"_id": document["_id"], "status": "scheduled"},
            {"$set": {"status": "running", f"{OWN}.plans_expected": 1, f"{OWN}.progress_at": now}},
        )
        if claimed.modified_count:
            item = plan_from_status(document, app.app_id)
            await self._connections.broker.publish(PLAN, item.to_bytes(), message_id=item.push_id)
            log.info("scheduled_push_started", push_id=item.push_id)

    async def _start_local(
        self, app: AppSettings, collection: AsyncCollection[Document], document: Document, wall_time: datetime
    ) -> None:
        """One plan per UTC offset, each when its zones reach the wall-clock time (Parse's local push)."""
        groups = zone_groups(wall_time)
        started = document.get(OWN, {}).get("groups", {})
        now = self._clock.now()
        for offset, zones in groups.items():
            item = plan_from_status(document, app.app_id, utc_offset_min=offset, time_zones=list(zones))
            key = plan_key(item)
            due = wall_time.replace(tzinfo=UTC) - timedelta(minutes=offset)
            if key in started or now < due:
                continue
            claimed = await collection.update_one(
                {
                    "_id": document["_id"],
                    "status": {"$in": ["scheduled", "running"]},
                    f"{OWN}.groups.{key}": {"$exists": False},
                },
                {"$set": {
                    "status": "running", f"{OWN}.groups.{key}": now, f"{OWN}.plans_expected": len(groups),
                    f"{OWN}.local_pending": True, f"{OWN}.progress_at": now,
                }},
            )  # fmt: skip
            if claimed.modified_count:
                await self._connections.broker.publish(
                    PLAN, item.to_bytes(), message_id=f"{item.push_id}:{key}"
                )
                started[key] = now
                log.info(
                    "local_push_group_started", push_id=item.push_id, utc_offset_min=offset, zones=len(zones)
                )
        if len(started) == len(groups):
            await collection.update_one({"_id": document["_id"]}, {"$set": {f"{OWN}.local_pending": False}})
