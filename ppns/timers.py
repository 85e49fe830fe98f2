"""Node-wide work instead of tasks per connection: keep-alives, `written_time` updates, handshake claims."""

from __future__ import annotations

import asyncio
import contextlib
from collections import deque
from typing import Protocol

from pymongo.errors import PyMongoError

from ppns.backlog import Backlog, StoredPush
from pushgw.logs import get_logger

log = get_logger(__name__)
KEEPALIVE_TICK_S = 1.0  # the wheel turns at most this often (fewer slots for short intervals)


class KeepaliveTarget(Protocol):
    def keepalive(self) -> None:
        """Send the server's `{}`."""
        ...


class KeepaliveWheel:
    """Every connection gets a `{}` every `interval_s` (± one tick) from one task: a timing wheel whose
    slot count is the interval in ticks; a connection joins the slot just served, so its first keep-alive
    comes one full turn after its handshake, like the per-connection timer it replaces."""

    def __init__(self, interval_s: float) -> None:
        self._slots_n = max(1, min(3600, round(interval_s / KEEPALIVE_TICK_S)))
        self._tick_s = interval_s / self._slots_n
        self._slots: list[set[KeepaliveTarget]] = [set() for _ in range(self._slots_n)]
        self._where: dict[KeepaliveTarget, int] = {}
        self._position = 0

    def add(self, target: KeepaliveTarget) -> None:
        slot = (self._position - 1) % self._slots_n
        self._slots[slot].add(target)
        self._where[target] = slot

    def remove(self, target: KeepaliveTarget) -> None:
        slot = self._where.pop(target, None)
        if slot is not None:
            self._slots[slot].discard(target)

    async def run(self, stop: asyncio.Event) -> None:
        loop = asyncio.get_running_loop()
        due = loop.time()
        while not stop.is_set():
            due += self._tick_s
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), max(0.0, due - loop.time()))
            if stop.is_set():
                return
            for target in list(self._slots[self._position]):
                target.keepalive()
            self._position = (self._position + 1) % self._slots_n


class WrittenTimes:
    """What the node wrote to devices, recorded every `interval_s`: one document per push of the log naming
    the installations it was written to, however many devices, instead of one update per device."""

    def __init__(self, backlogs: dict[str, Backlog], interval_s: float) -> None:
        self._backlogs = backlogs
        self._interval_s = interval_s
        self._entries: dict[str, dict[str, list[str]]] = {}  # app → push `time` → installations
        self._legacy: dict[str, dict[str, str]] = {}
        self._soon = asyncio.Event()

    def note(self, app_id: str, installation_id: str, push: StoredPush) -> None:
        if push.seq is not None:
            self._entries.setdefault(app_id, {}).setdefault(push.time, []).append(installation_id)
            return
        self._note_legacy(app_id, installation_id, push.time)

    def _note_legacy(self, app_id: str, installation_id: str, time: str) -> None:
        """A push an earlier version kept in the presence document: only the newest `time` matters."""
        written = self._legacy.setdefault(app_id, {})
        known = written.get(installation_id)
        if known is None or time > known:
            written[installation_id] = time

    def flush_soon(self) -> None:
        """Flush now rather than at the end of the interval (a connection closed: the device may
        reconnect without `last` at once)."""
        self._soon.set()

    async def run(self, stop: asyncio.Event) -> None:
        """Flush every `interval_s` (or when asked) until `stop` is set, then once more."""
        while not stop.is_set():
            if not self._soon.is_set():
                waits = [asyncio.ensure_future(stop.wait()), asyncio.ensure_future(self._soon.wait())]
                await asyncio.wait(waits, timeout=self._interval_s, return_when=asyncio.FIRST_COMPLETED)
                for wait in waits:
                    wait.cancel()
            self._soon.clear()
            await self.flush()
        await self.flush()

    async def flush(self) -> None:
        entries, self._entries = self._entries, {}
        legacy, self._legacy = self._legacy, {}
        for app_id in entries.keys() | legacy.keys():
            marks, kept = entries.get(app_id, {}), legacy.get(app_id, {})
            try:
                await self._backlogs[app_id].mark_written(marks, kept)
            except PyMongoError as error:
                log.warning("ppns_written_time_unavailable", entries=len(marks), error=str(error))
                for time, installations in marks.items():  # keep them for the next round
                    self._entries.setdefault(app_id, {}).setdefault(time, []).extend(installations)
                for installation_id, time in kept.items():
                    self._note_legacy(app_id, installation_id, time)


class Admittable(Protocol):
    async def admit(self) -> None:
        """The handshake's claim and replay."""
        ...


class Admissions:
    """Handshakes waiting for their claim and replay, worked off by `workers` tasks: the database sees at
    most `workers` of them at once, and a burst of handshakes (every device reconnecting after a restart)
    costs a queue entry each, not an in-flight task and database operation each (measured: the memory of
    10,000 concurrent claims stayed in the node's RSS after they finished)."""

    def __init__(self, workers: int) -> None:
        self._workers = workers
        self._queue: deque[Admittable] = deque()
        self._ready = asyncio.Event()

    def submit(self, item: Admittable) -> None:
        self._queue.append(item)
        self._ready.set()

    def __len__(self) -> int:
        return len(self._queue)

    async def run(self, stop: asyncio.Event) -> None:
        """Until `stop` is set and the queue is empty."""
        await asyncio.gather(*(self._work(stop) for _ in range(self._workers)))

    async def _work(self, stop: asyncio.Event) -> None:
        while True:
            if not self._queue:
                if stop.is_set():
                    return
                self._ready.clear()
                waits = [asyncio.ensure_future(stop.wait()), asyncio.ensure_future(self._ready.wait())]
                await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
                for wait in waits:
                    wait.cancel()
                continue
            item = self._queue.popleft()
            try:
                await item.admit()
            except Exception:  # an admission's failure must not stop the worker
                log.exception("ppns_admission_failed")
