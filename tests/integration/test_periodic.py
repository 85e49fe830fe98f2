"""A background loop outlives a failing tick, whatever the error: the watchdog must never stop for good."""

from __future__ import annotations

import asyncio

from tests.fixtures.waiting import eventually
from workers.periodic import run_every


def test_a_tick_that_raises_an_unexpected_error_is_logged_and_the_loop_ticks_on() -> None:
    async def scenario() -> int:
        ticks = 0
        stop = asyncio.Event()

        async def tick() -> None:
            nonlocal ticks
            ticks += 1
            if ticks == 1:
                raise ValueError("an entry this release cannot read")

        loop = asyncio.create_task(run_every(0.01, tick, stop, "test"))
        try:
            await eventually(lambda: ticks >= 3 or loop.done(), timeout_s=5, what="three ticks")
        finally:
            stop.set()
        await loop  # raises what ended the loop, if anything did
        return ticks

    assert asyncio.run(scenario()) >= 3
