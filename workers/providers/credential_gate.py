"""A credential's gate: a broken credential pauses and alerts instead of failing every device at speed."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable

from pushgw import metrics
from pushgw.logs import get_logger
from workers.providers.rejections import Rejection, Verdict

log = get_logger(__name__)
CREDENTIAL_PAUSED = "credential-paused"


class CredentialGate:
    """Until a credential has been accepted once, and again after the provider refused it, requests test
    it one at a time; after a refusal it rests `pause_s`, during which requests are deferred unsent."""

    def __init__(self, provider: str, name: str, pause_s: float) -> None:
        self._provider, self._name, self._pause_s = provider, name, pause_s
        self._paused_until = 0.0
        self._proven = False
        self._lock = asyncio.Lock()

    @property
    def is_open(self) -> bool:
        """Proven and not paused: send without the gate, then `settle` the answer."""
        return self._proven and self._paused_until <= time.monotonic()

    async def run(self, attempt: Callable[[], Awaitable[Rejection]]) -> Rejection:
        if not self._proven or self._pause_left() > 0:
            async with self._lock:
                left = self._pause_left()
                if left > 0:
                    return Rejection(Verdict.TRANSIENT, CREDENTIAL_PAUSED, left)
                if not self._proven:  # this request tests the credential; the others wait for it
                    rejection = await attempt()
                    self._proven = rejection.verdict is not Verdict.CREDENTIAL
                    return self.settle(rejection)
        return self.settle(await attempt())

    def settle(self, rejection: Rejection) -> Rejection:
        if rejection.verdict is Verdict.CREDENTIAL:
            self._pause(rejection.reason)
            return Rejection(Verdict.TRANSIENT, rejection.reason, self._pause_s)
        return rejection

    def _pause_left(self) -> float:
        return self._paused_until - time.monotonic()

    def _pause(self, reason: str) -> None:
        self._proven = False
        if self._pause_left() <= 0:
            log.error(f"{self._provider}_credential_paused", credential=self._name, reason=reason,
                      pause_s=self._pause_s)  # fmt: skip
            metrics.CREDENTIAL_PAUSES.labels(self._provider, self._name, reason).inc()
        self._paused_until = time.monotonic() + self._pause_s
