"""PPNS deliveries: store each batch in the app's push log (a device counts as sent once its push is durably
stored: one log entry per batch and payload, ppns/backlog.py), then hand the new entries to every PPNS node
(ppns/live.py), which writes them to the devices it holds. An offline device, or one whose live message is
lost, gets the push from the log."""

from __future__ import annotations

from collections.abc import Sequence

from pymongo import AsyncMongoClient

from ppns.backlog import Entry, Stored, StoreRequest, open_backlogs
from ppns.live import LivePublisher, encode_entries
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
        sizes: dict[int, int] = {}  # line size by payload object, alive for the whole call
        for index, notification in enumerate(notifications):
            device = notification.device
            if not device.installation_id:
                outcomes[index] = Failed(device, MISSING_INSTALLATION_ID)
                continue
            limit = self._settings.push_line_limit(push.app_id, device.installation_id)
            size = sizes.get(id(notification.data))
            if size is None:  # devices share a few payload objects (one per locale): encode each once
                size = sizes[id(notification.data)] = push_line_bytes(notification.data)
            if size > limit:
                metrics.PPNS_PUSHES.labels("too_large").inc()
                outcomes[index] = Failed(device, Reason.PAYLOAD_TOO_LARGE)
                continue
            requests[index] = StoreRequest(device.installation_id, push_id, notification.data, push.expiry_ms)
        entries: dict[int, Entry] = {}
        # One store for the batch (an installation addressed twice, by several rows, is in the entry once).
        stored = await backlog.store_many(list(requests.values()))
        for index, result in zip(requests, stored, strict=True):
            device = notifications[index].device
            if isinstance(result, Stored):
                metrics.PPNS_PUSHES.labels("stored").inc()
                outcomes[index] = Sent(device)
                entries[result.entry.seq] = result.entry
            else:
                outcomes[index] = Deferred(device, BACKLOG_UNAVAILABLE)
        await self._publish(push.app_id, [entries[seq] for seq in sorted(entries)])
        return [outcome for outcome in outcomes if outcome is not None]

    async def _publish(self, app_id: str, entries: list[Entry]) -> None:
        """The entries to every node, in one message; never fails the delivery."""
        if not self._live.enabled or not entries:
            return
        if await self._live.publish_entries(encode_entries(app_id, entries)):
            metrics.PPNS_PUSHES.labels("published").inc(sum(len(entry.installations) for entry in entries))

    async def close(self) -> None:
        await self._live.close()
