"""Node-queue messages, holders and the node-wide timers (pure parts of ppns/live.py and ppns/timers.py)."""

from __future__ import annotations

import asyncio
import re

from ppns.backlog import Stored, StoredPush
from ppns.live import (
    LivePushes,
    LiveResets,
    decode,
    default_node_id,
    encode_pushes,
    encode_resets,
    group_by_node,
    holder_node,
)
from ppns.timers import KeepaliveWheel
from pushgw.settings import PpnsSettings


def stored(installation_id: str, holder: str | None, time: str, prev: str | None) -> Stored:
    return Stored(installation_id, StoredPush(time, "AbCdEfGhIj", {"alert": "é\n"}, prev), holder)


def test_pushes_round_trip_with_time_and_prev() -> None:
    items = [stored("i1", "n1/c", "2026-11-26T02:00:00.001Z", None),
             stored("i2", "n1/d", "2026-11-26T02:00:00.002Z", "2026-11-26T01:00:00.000Z")]  # fmt: skip
    message = decode(encode_pushes("app1", items))
    assert message == LivePushes("app1", [(item.installation_id, item.push) for item in items])


def test_resets_round_trip_and_garbage_is_none() -> None:
    assert decode(encode_resets("app1", [("i1", "n2/x")])) == LiveResets("app1", [("i1", "n2/x")])
    for body in (b"", b"{", b"[]", b'{"app":"a"}', b'{"app":"a","push":[[1]]}'):
        assert decode(body) is None


def test_stored_pushes_are_grouped_by_the_holder_node_and_unheld_ones_dropped() -> None:
    items = [stored("i1", "node-a/1", "t1", None), stored("i2", "node-b/2", "t1", None),
             stored("i3", "node-a/3", "t1", None), stored("i4", None, "t1", None)]  # fmt: skip
    grouped = group_by_node(items)
    assert {node: [i.installation_id for i in group] for node, group in grouped.items()} == {
        "node-a": ["i1", "i3"],
        "node-b": ["i2"],
    }
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
