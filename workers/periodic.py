"""Runs a background check every N seconds until stopped, riding out database and broker outages."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable

from pymongo.errors import PyMongoError

from pushgw.broker import PublishError
from pushgw.logs import get_logger

log = get_logger(__name__)


async def run_every(
    interval_s: float, tick: Callable[[], Awaitable[None]], stop: asyncio.Event, name: str
) -> None:
    """Call `tick` now and then every `interval_s` until `stop` is set; a failed tick, whatever the error,
    is logged, not fatal."""
    while not stop.is_set():
        try:
            await tick()
        except (PyMongoError, PublishError, OSError) as error:
            log.warning(f"{name}_tick_failed", error=str(error))
        except Exception:
            log.exception(f"{name}_tick_crashed")  # a bug: the next tick may still do the rest of the work
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), interval_s)
