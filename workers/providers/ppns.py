"""PPNS deliveries: store each push in the installation's backlog (a device counts as sent once its push is
durably stored), then hand the stored pushes to the PPNS nodes holding the devices, one message per node
per batch on the node's queue (ppns/live.py). An offline device, or one whose live message is lost, gets
the push from the backlog."""

from __future__ import annotations

import time
from collections.abc import Sequence

from pymongo import AsyncMongoClient
from pymongo.errors import PyMongoError

from ppns.backlog import Backlog, BacklogContentionError, Stored, StoreRequest, open_backlogs
from ppns.live import LivePublisher, encode_pushes, group_by_node
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
        # Its own small connection (not the worker's broker): live messages are neither persistent nor
        # confirmed, and a broker outage only costs latency (the node's sweep finds the stored pushes).
        self._live = LivePublisher(settings.queue)

    async def send(self, push: PushContext, notifications: Sequence[Notification]) -> list[Outcome]:
        """Sent once stored; PayloadTooLarge beyond the device's line limit; Deferred if Mongo fails."""
        backlog = self._backlogs.get(push.app_id)
        if backlog is None:
            return [Failed(n.device, Reason.PROVIDER_NOT_CONFIGURED) for n in notifications]
        outcomes: list[Outcome | None] = [None] * len(notifications)
        requests: dict[int, StoreRequest] = {}
        push_id = ppns_push_id(push.push_id)
        for index, notification in enumerate(notifications):
            device = notification.device
            if not device.installation_id:
                outcomes[index] = Failed(device, MISSING_INSTALLATION_ID)
                continue
            limit = self._settings.push_line_limit(push.app_id, device.installation_id)
            if push_line_bytes(notification.data) > limit:
                metrics.PPNS_PUSHES.labels("too_large").inc()
                outcomes[index] = Failed(device, Reason.PAYLOAD_TOO_LARGE)
                continue
            requests[index] = StoreRequest(device.installation_id, push_id, notification.data, push.expiry_ms)
        stored: dict[str, Stored] = {}  # one live line per installation, even if addressed twice
        for index, result in zip(requests, await self._store(backlog, list(requests.values())), strict=True):
            device = notifications[index].device
            if isinstance(result, Stored):
                metrics.PPNS_PUSHES.labels("stored").inc()
                outcomes[index] = Sent(device)
                stored.setdefault(result.installation_id, result)
            else:
                outcomes[index] = Deferred(device, BACKLOG_UNAVAILABLE)
        await self._publish(push.app_id, list(stored.values()))
        return [outcome for outcome in outcomes if outcome is not None]

    async def _store(self, backlog: Backlog, requests: list[StoreRequest]) -> list[Stored | Exception]:
        """One bulk store for distinct installations; an installation addressed twice in one batch
        (several `_Installation` rows) is stored again after it, once per extra row (idempotent)."""
        now_ms = int(time.time() * 1000)
        seen: set[str] = set()
        first: list[StoreRequest] = []
        for request in requests:
            if request.installation_id not in seen:
                seen.add(request.installation_id)
                first.append(request)
        try:
            results = dict(zip(map(id, first), await backlog.store_many(first, now_ms), strict=True))
        except (PyMongoError, BacklogContentionError) as error:
            return [error] * len(requests)
        ordered: list[Stored | Exception] = []
        for request in requests:
            result = results.get(id(request))
            if result is None:
                try:
                    result = await backlog.store_one(request, now_ms)
                except (PyMongoError, BacklogContentionError) as error:
                    result = error
            ordered.append(result)
        return ordered

    async def _publish(self, app_id: str, stored: list[Stored]) -> None:
        """One message per node holding some of these installations; never fails the delivery."""
        if not self._live.enabled:
            return
        for node_id, items in group_by_node(stored).items():
            if await self._live.publish(node_id, encode_pushes(app_id, items)):
                metrics.PPNS_PUSHES.labels("published").inc(len(items))

    async def close(self) -> None:
        await self._live.close()
