"""Liveness of an idle HTTP/2 connection: PING after a quiet spell, give up when the answer does not come."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from h2.connection import H2Connection
from h2.exceptions import ProtocolError

from workers.providers.http2_errors import ConnectionLost, Http2Error


class KeepAlive:
    """PING after `idle_ping_s` without inbound traffic; no answer within `ping_timeout_s` calls `on_timeout`.

    The connection sets `last_received_at` on every read, which is cheaper than rescheduling a timer there.
    """

    def __init__(
        self,
        h2: H2Connection,
        *,
        idle_ping_s: float,
        ping_timeout_s: float,
        schedule_flush: Callable[[], None],
        on_timeout: Callable[[Http2Error], None],
    ) -> None:
        self._loop = asyncio.get_running_loop()
        self._h2, self._schedule_flush, self._on_timeout = h2, schedule_flush, on_timeout
        self._idle_ping_s, self._ping_timeout_s = idle_ping_s, ping_timeout_s
        self.last_received_at = self._loop.time()
        self._idle_timer: asyncio.TimerHandle | None = None
        self._ping_timer: asyncio.TimerHandle | None = None

    def start(self) -> None:
        self._idle_timer = self._loop.call_later(self._idle_ping_s, self._check_idle)

    def stop(self) -> None:
        for timer in (self._idle_timer, self._ping_timer):
            if timer is not None:
                timer.cancel()

    def on_ping_ack(self) -> None:
        if self._ping_timer is not None:
            self._ping_timer.cancel()
            self._ping_timer = None

    def _check_idle(self) -> None:
        idle_s = self._loop.time() - self.last_received_at
        if idle_s < self._idle_ping_s:
            self._idle_timer = self._loop.call_later(self._idle_ping_s - idle_s, self._check_idle)
            return
        if self._ping_timer is None:
            try:
                self._h2.ping(b"pushgw\x00\x00")
            except ProtocolError:  # the connection is closing anyway
                return
            self._schedule_flush()
            self._ping_timer = self._loop.call_later(self._ping_timeout_s, self._on_ping_timeout)
        self._idle_timer = self._loop.call_later(self._idle_ping_s, self._check_idle)

    def _on_ping_timeout(self) -> None:
        self._ping_timer = None
        self._on_timeout(ConnectionLost(f"no PING answer within {self._ping_timeout_s} s", retry_safe=False))
