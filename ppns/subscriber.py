"""Stored pushes and newer connections → the live connections of this node.

Live path: every node gets every log entry (ppns/live.py). `LiveDispatcher` puts each app's entries back in
`seq` order — a later one waits until the ones before it arrived, and after `GAP_WAIT_S` the missing ones
are read from the log — and hands each entry to the connections it names that this node holds. Since the
log commits entries in `seq` order, an entry delivered this way has nothing missing before it, and a
connection only skips what it has already passed. Resets sent by a node that took an installation over end
the older connection here.

Safety net: `BacklogWatcher`, every `poll_interval_s` (30 s by default; `poll_interval_without_broker_s`
when there is no broker, which makes it the delivery path), reads each app's sequence document and fetches
the entries this node has not seen (a lost message with nothing after it, a publish that failed), and reads
the holder of each installation this node holds to reset connections that are no longer the installation's
newest (a lost reset message). The log stays the only source of truth, so neither path can reorder or skip
a push.
"""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta

from pymongo.errors import PyMongoError

from ppns.backlog import IN_CHUNK, Backlog, Entry, Presence
from ppns.live import LiveEntries, decode, holder_node
from ppns.registry import LiveConnection, Registry
from pushgw import metrics
from pushgw.logs import get_logger

log = get_logger(__name__)
CHUNK = IN_CHUNK
GAP_WAIT_S = 0.2  # an entry arriving out of order waits this long for the ones before it
START_MARGIN_S = 60.0  # a node that could not read the log at start hands out entries stored this long before


class _AppEntries:
    """One app's entries on this node: `watermark` = every entry up to it has been handed out."""

    def __init__(
        self, app_id: str, backlog: Backlog, registry: Registry, tasks: set[asyncio.Task[None]]
    ) -> None:
        self._app_id, self._backlog, self._registry, self._tasks = app_id, backlog, registry, tasks
        self._started_at = datetime.now(UTC)
        self.watermark: int | None = None
        self.handed_out_time: str | None = None  # the `time` of entry `watermark`, when known
        self._waiting: dict[int, Entry] = {}
        self._timer: asyncio.TimerHandle | None = None
        self._reading: asyncio.Task[None] | None = None

    def receive(self, entry: Entry) -> None:
        if self.watermark is not None and entry.seq <= self.watermark:
            return  # handed out already (a gap read and a late message, or a republished entry)
        self._waiting[entry.seq] = entry  # with no watermark yet (the log unread), every entry waits
        self._advance()

    def _advance(self) -> None:
        """Hand out the waiting entries that follow the watermark; wait for a missing one at most
        `GAP_WAIT_S` before reading the log."""
        if self.watermark is not None:
            while self.watermark + 1 in self._waiting:
                self.watermark += 1
                self._hand_out(self._waiting.pop(self.watermark))
        if not self._waiting:
            if self._timer is not None:
                self._timer.cancel()
                self._timer = None
        elif self._timer is None:
            self._timer = asyncio.get_running_loop().call_later(GAP_WAIT_S, self._gap_due)

    def _jump(self, seq: int, time: str | None) -> None:
        """Move the watermark to `seq` without handing out what lies before it (committed before the node
        knew the log, or expired from it), then go on with the entries waiting after it."""
        self.watermark, self.handed_out_time = seq, time
        for stale in [waiting for waiting in self._waiting if waiting <= seq]:
            del self._waiting[stale]
        self._advance()

    def _hand_out(self, entry: Entry) -> None:
        self.handed_out_time = entry.time
        push = entry.push()
        for installation_id in entry.installations:
            connection = self._registry.get((self._app_id, installation_id))
            if connection is not None:
                connection.deliver(push)

    def _gap_due(self) -> None:
        self._timer = None
        if self._waiting and (self._reading is None or self._reading.done()):
            metrics.PPNS_PUSHES.labels("gap").inc()
            self._reading = asyncio.get_running_loop().create_task(self.catch_up(max(self._waiting)))
            self._tasks.add(self._reading)
            self._reading.add_done_callback(self._tasks.discard)

    async def prime(self) -> None:
        """Start after the newest committed entry (a connection's handshake replays everything before;
        the node registers none before this). Entries received meanwhile that are newer are handed out."""
        sequence, newest_time = await self._backlog.newest()
        if self.watermark is None or sequence > self.watermark:
            self._jump(sequence, newest_time)

    async def catch_up(self, upto: int | None = None) -> None:
        """Hand out the entries up to `upto` (default: the newest committed) not handed out yet."""
        try:
            if self.watermark is None or upto is None:
                newest, newest_time = await self._backlog.newest()
                if self.watermark is None:
                    # The log could not be read at start, and connections may have registered since: start
                    # with the entries stored since the node started (a margin for clocks apart), so that
                    # none of theirs is skipped. One a connection has already passed is skipped by it.
                    since = self._started_at - timedelta(seconds=START_MARGIN_S)
                    start = await self._backlog.seq_before(since, newest)
                    self._jump(start, newest_time if start == newest else None)
                upto = newest if upto is None else upto
            if self.watermark is None or upto <= self.watermark:
                return
            for entry in await self._backlog.entries_between(self.watermark, upto):
                self.receive(entry)
            if self.watermark < upto:  # committed but gone: expired from the log (a node long cut off)
                log.warning("ppns_log_entries_expired", app_id=self._app_id, after=self.watermark, upto=upto)
                self._jump(upto, self.handed_out_time)
        except PyMongoError as error:
            log.warning("ppns_log_unavailable", app_id=self._app_id, error=str(error))
        finally:
            # Entries still waiting (arrived during the read, after a gap this read did not cover; or the
            # read failed): read again later. A gap that came due during this read found it running and
            # armed nothing, and `receive` arms nothing for entries handed out already.
            if self._waiting and self._timer is None:
                self._timer = asyncio.get_running_loop().call_later(GAP_WAIT_S, self._gap_due)


class LiveDispatcher:
    """Node-queue messages → this node's connections (runs in the consumer, never awaits)."""

    def __init__(
        self, registry: Registry, backlogs: dict[str, Backlog], tasks: set[asyncio.Task[None]]
    ) -> None:
        self._registry = registry
        self.apps = {
            app_id: _AppEntries(app_id, backlog, registry, tasks) for app_id, backlog in backlogs.items()
        }

    async def prime(self) -> None:
        """Each app's newest committed entry (an app whose log cannot be read: from its first message)."""
        for app_id, entries in self.apps.items():
            try:
                await entries.prime()
            except PyMongoError as error:
                log.warning("ppns_log_unavailable", app_id=app_id, error=str(error))

    def handed_out_time(self, app_id: str) -> str | None:
        """The `time` of the newest entry of the app this node has handed to its connections (None: not
        known yet). A connection registered now gets every entry after it, live or from its replay."""
        entries = self.apps.get(app_id)
        return None if entries is None else entries.handed_out_time

    def __call__(self, body: bytes) -> None:
        message = decode(body)
        if message is None:
            log.warning("ppns_node_queue_malformed", size=len(body))
            return
        if isinstance(message, LiveEntries):
            entries = self.apps.get(message.app_id)
            if entries is not None:
                for entry in message.entries:
                    entries.receive(entry)
            return
        for installation_id, holder in message.resets:
            connection = self._registry.get((message.app_id, installation_id))
            if connection is not None and connection.holder == holder:
                metrics.PPNS_RESETS.labels("replaced_elsewhere").inc()
                connection.reset()


class BacklogWatcher:
    def __init__(
        self,
        registry: Registry,
        backlogs: dict[str, Backlog],
        dispatcher: LiveDispatcher,
        interval_s: float,
        node_id: str,
    ) -> None:
        self._registry = registry
        self._node_id = node_id
        self._backlogs = backlogs
        self._dispatcher = dispatcher
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
        for entries in self._dispatcher.apps.values():
            await entries.catch_up()
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
