"""Stored pushes and newer connections → the live connections of this node.

Live path: the node queue (ppns/live.py) carries each stored push, with its `time` and `prev`, to the node
holding the installation; `LiveDispatcher` hands it to the connection, which writes it if it is the next in
line and otherwise reads its backlog. Resets sent by a node that took an installation over end the older
connection here.

Safety net: `BacklogWatcher` reads, every `poll_interval_s` (5 s by default; `poll_interval_without_broker_s`
when there is no broker), the newest stored `time` and the holder of each installation this node holds,
wakes the connections that are behind (a lost live message, a publish that failed) and resets connections
that are no longer the installation's newest (a lost reset message). The backlog stays the only source of
truth, so neither path can reorder or skip a push.
"""

from __future__ import annotations

import asyncio

from pymongo.errors import PyMongoError

from ppns.backlog import IN_CHUNK, Backlog, Presence
from ppns.live import LivePushes, decode, holder_node
from ppns.registry import LiveConnection, Registry
from pushgw import metrics
from pushgw.logs import get_logger

log = get_logger(__name__)
CHUNK = IN_CHUNK


class LiveDispatcher:
    """Node-queue messages → this node's connections (runs in the consumer, never awaits)."""

    def __init__(self, registry: Registry) -> None:
        self._registry = registry

    def __call__(self, body: bytes) -> None:
        message = decode(body)
        if message is None:
            log.warning("ppns_node_queue_malformed", size=len(body))
            return
        if isinstance(message, LivePushes):
            for installation_id, push in message.pushes:
                connection = self._registry.get((message.app_id, installation_id))
                if connection is None:
                    # Gone or moved: the device's next handshake replays it from the backlog.
                    metrics.PPNS_PUSHES.labels("not_held").inc()
                else:
                    connection.deliver(push)
            return
        for installation_id, holder in message.resets:
            connection = self._registry.get((message.app_id, installation_id))
            if connection is not None and connection.holder == holder:
                metrics.PPNS_RESETS.labels("replaced_elsewhere").inc()
                connection.reset()


class BacklogWatcher:
    def __init__(
        self, registry: Registry, backlogs: dict[str, Backlog], interval_s: float, node_id: str
    ) -> None:
        self._registry = registry
        self._node_id = node_id
        self._backlogs = backlogs
        self._interval_s = interval_s
        self._soon = asyncio.Event()

    def sweep_soon(self) -> None:
        """Sweep now (e.g. after the node queue reconnected: live messages may have been lost)."""
        self._soon.set()

    async def run(self, stop: asyncio.Event) -> None:
        """Sweep until `stop` is set (never cancelled mid-query); a database outage is logged and swept
        through. A sweep spreads its queries over half the interval (at 50,000 connections one sweep is
        1,000 queries: run back to back they would crowd out the stores); one asked for by `sweep_soon`
        runs at once."""
        loop = asyncio.get_running_loop()
        while not stop.is_set():
            started = loop.time()
            urgent = self._soon.is_set()
            self._soon.clear()
            try:
                await self.poll_once(stop, spread_s=0.0 if urgent else self._interval_s / 2)
            except PyMongoError as error:
                log.warning("ppns_backlog_poll_failed", error=str(error))
            await self._pause(stop, self._interval_s - (loop.time() - started))

    async def _pause(self, stop: asyncio.Event, seconds: float) -> bool:
        """Wait up to `seconds`; True if interrupted (stop or sweep_soon)."""
        if stop.is_set() or self._soon.is_set():
            return True
        if seconds <= 0:
            return False
        waits = [asyncio.ensure_future(stop.wait()), asyncio.ensure_future(self._soon.wait())]
        done, _ = await asyncio.wait(waits, timeout=seconds, return_when=asyncio.FIRST_COMPLETED)
        for wait in waits:
            wait.cancel()
        return bool(done)

    async def poll_once(self, stop: asyncio.Event | None = None, spread_s: float = 0.0) -> None:
        chunks = [
            (app_id, connections[start : start + CHUNK])
            for app_id, connections in self._registry.by_app().items()
            for start in range(0, len(connections), CHUNK)
        ]
        pause_s = spread_s / len(chunks) if chunks else 0.0
        for index, (app_id, chunk) in enumerate(chunks):
            if index and pause_s > 0 and stop is not None and await self._pause(stop, pause_s):
                pause_s = 0.0  # stop or an urgent sweep: finish this one without pauses
                if stop.is_set():
                    return
            presence = await self._backlogs[app_id].presence([connection.key[1] for connection in chunk])
            for connection in chunk:
                found = presence.get(connection.key[1])
                if found is not None:
                    _apply(connection, found, self._node_id)


def _apply(connection: LiveConnection, presence: Presence, node_id: str) -> None:
    holder = presence.holder
    if holder is not None and holder != connection.holder and holder_node(holder) != node_id:
        # A newer connection for this installation claimed it on another node: newest wins. (A holder of
        # this node that is not its registered connection is an older one whose claim landed late; the
        # registry already decided, and the late claim hands the installation back.)
        metrics.PPNS_RESETS.labels("replaced_elsewhere").inc()
        connection.reset()
    elif presence.newest_time is not None:
        connection.wake(presence.newest_time)
