"""Stored pushes and newer connections → the live connections of this node (by polling the backlog).

The fleet's PPNS provider only writes the backlog. This node reads, every `poll_interval_s`, the newest
stored `time` of each installation it holds and wakes the connections that are behind; each connection
then reads its own backlog after its cursor. The backlog stays the only source of push lines, so a live
write, a replay and a restart can neither reorder nor skip a push, on whichever node the device is. The
same read returns the installation's newest connection (`holder`): a connection that is no longer the
newest, because the device reconnected to another node, is reset.
"""

from __future__ import annotations

import asyncio
import contextlib

from pymongo.errors import PyMongoError

from ppns.backlog import Backlog, Presence
from ppns.registry import LiveConnection, Registry
from pushgw import metrics
from pushgw.logs import get_logger

log = get_logger(__name__)
CHUNK = 500


class BacklogWatcher:
    def __init__(self, registry: Registry, backlogs: dict[str, Backlog], interval_s: float) -> None:
        self._registry = registry
        self._backlogs = backlogs
        self._interval_s = interval_s

    async def run(self, stop: asyncio.Event) -> None:
        """Poll until `stop` is set (never cancelled mid-query); a database outage is logged and polled
        through."""
        while not stop.is_set():
            try:
                await self.poll_once()
            except PyMongoError as error:
                log.warning("ppns_backlog_poll_failed", error=str(error))
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), self._interval_s)

    async def poll_once(self) -> None:
        for app_id, connections in self._registry.by_app().items():
            backlog = self._backlogs[app_id]
            for start in range(0, len(connections), CHUNK):
                chunk = connections[start : start + CHUNK]
                presence = await backlog.presence([connection.key[1] for connection in chunk])
                for connection in chunk:
                    found = presence.get(connection.key[1])
                    if found is not None:
                        _apply(connection, found)


def _apply(connection: LiveConnection, presence: Presence) -> None:
    if presence.holder is not None and presence.holder != connection.holder:
        # A newer connection for this installation claimed it, on this node or another: newest wins.
        metrics.PPNS_RESETS.labels("replaced_elsewhere").inc()
        connection.reset()
    elif presence.newest_time is not None:
        connection.wake(presence.newest_time)
