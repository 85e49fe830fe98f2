"""Node-queue messages, holders and the node-wide timers (pure parts of ppns/live.py and ppns/timers.py)."""

from __future__ import annotations

import asyncio
import re

from ppns.backlog import Entry
from ppns.live import (
    LiveEntries,
    LiveResets,
    decode,
    default_node_id,
    encode_entries,
    encode_resets,
    holder_node,
)
from ppns.timers import KeepaliveWheel
from pushgw.settings import PpnsSettings


def test_entries_round_trip_with_seq_time_and_installations() -> None:
    entries = [Entry(7, "2026-11-26T02:00:00.001Z", "AbCdEfGhIj", {"alert": "é\n"}, ["i1", "i2"]),
               Entry(8, "2026-11-26T02:00:00.002Z", "AbCdEfGhIk", {"alert": "b"}, ["i3"])]  # fmt: skip
    assert decode(encode_entries("app1", entries)) == LiveEntries("app1", entries)


def test_resets_round_trip_and_garbage_is_none() -> None:
    assert decode(encode_resets("app1", [("i1", "n2/x")])) == LiveResets("app1", [("i1", "n2/x")])
    for body in (b"", b"{", b"[]", b'{"app":"a"}', b'{"app":"a","entries":[[1]]}'):
        assert decode(body) is None
    assert holder_node("host.example-12-ab12cd/0123456789ab") == "host.example-12-ab12cd"


def test_the_default_node_id_is_a_valid_setting_and_unique() -> None:
    pattern = PpnsSettings.model_fields["node_id"].metadata[0].pattern
    first, second = default_node_id(), default_node_id()
    assert re.fullmatch(pattern, first) and first != second and "/" not in first


def test_keepalive_wheel_reaches_every_target_each_turn_and_forgets_removed_ones() -> None:
    class Target:
        def __init__(self, turns: asyncio.Event | None = None) -> None:
            self.count, self._turns = 0, turns

        def keepalive(self) -> None:
            self.count += 1
            if self._turns is not None and self.count == 3:
                self._turns.set()

    async def run() -> tuple[int, int]:
        wheel = KeepaliveWheel(0.05)
        three = asyncio.Event()
        kept, removed = Target(three), Target()
        wheel.add(kept)
        wheel.add(removed)
        wheel.remove(removed)
        stop = asyncio.Event()
        task = asyncio.create_task(wheel.run(stop))
        async with asyncio.timeout(5):
            await three.wait()
        stop.set()
        await task
        return kept.count, removed.count

    kept, removed = asyncio.run(run())
    assert kept >= 3 and removed == 0
