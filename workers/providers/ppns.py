"""PPNS deliveries: store each push in the installation's backlog, where the PPNS node holding the device
(or the device's next handshake) picks it up. A device counts as sent once its push is durably stored."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence

from pymongo import AsyncMongoClient
from pymongo.errors import PyMongoError

from ppns.backlog import Backlog, BacklogContentionError, open_backlogs
from ppns.protocol import ppns_push_id, push_line_bytes
from pushgw import metrics
from pushgw.mongo import Document
from pushgw.settings import PpnsSettings, Settings
from workers.outcomes import Deferred, Failed, Outcome, Reason, Sent
from workers.providers.provider import PPNS, Notification, PushContext

MISSING_INSTALLATION_ID = "MissingInstallationId"
BACKLOG_UNAVAILABLE = "backlog-unavailable"


class PpnsProvider:
    transport = PPNS

    def __init__(self, settings: Settings, mongo: AsyncMongoClient[Document]) -> None:
        self._backlogs = open_backlogs(mongo, settings)  # the worker's client: it owns and closes it
        self._settings = settings.ppns or PpnsSettings()

    async def send(self, push: PushContext, notifications: Sequence[Notification]) -> list[Outcome]:
        """Sent once stored; PayloadTooLarge beyond the device's line limit; Deferred if Mongo fails."""
        backlog = self._backlogs.get(push.app_id)
        if backlog is None:
            return [Failed(n.device, Reason.PROVIDER_NOT_CONFIGURED) for n in notifications]
        return list(await asyncio.gather(*(self._store(backlog, push, n) for n in notifications)))

    async def _store(self, backlog: Backlog, push: PushContext, notification: Notification) -> Outcome:
        device = notification.device
        if not device.installation_id:
            return Failed(device, MISSING_INSTALLATION_ID)
        limit = self._settings.push_line_limit(push.app_id, device.installation_id)
        if push_line_bytes(notification.data) > limit:
            metrics.PPNS_PUSHES.labels("too_large").inc()
            return Failed(device, Reason.PAYLOAD_TOO_LARGE)
        try:
            await backlog.store(
                device.installation_id,
                ppns_push_id(push.push_id),
                notification.data,
                push.expiry_ms,
                int(time.time() * 1000),
            )
        except (PyMongoError, BacklogContentionError):
            return Deferred(device, BACKLOG_UNAVAILABLE)
        metrics.PPNS_PUSHES.labels("stored").inc()
        return Sent(device)

    async def close(self) -> None:
        return None
