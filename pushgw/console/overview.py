"""What the console shows besides pushes: queue depths, connected PPNS devices, credential health."""

from __future__ import annotations

import json
import time
from typing import Any

import httpx2
from prometheus_client.parser import text_string_to_metric_families
from pymongo.asynchronous.database import AsyncDatabase
from pymongo.errors import PyMongoError

from ppns.backlog import COLLECTION as BACKLOG
from pushgw.credential_checks import Check, check_credentials
from pushgw.metrics import CREDENTIAL_PAUSES
from pushgw.mongo import Document
from pushgw.queue_depths import BrokerUnreachable, QueueProbe
from pushgw.settings import AppSettings, PpnsSettings, Settings

_CREDENTIALS_CACHE_S = 60.0  # the checks read files and sign: once a minute is plenty
_PPNS_GAUGE = "pushgw_ppns_connections"
_PAUSES = "pushgw_provider_credential_pauses"  # the counter's family name (samples end in _total)


class Overview:
    """Collects the console's side panels; one per app process, reused across requests."""

    def __init__(self, settings: Settings) -> None:
        self._settings = settings
        self._checks: list[Check] = []
        self._checked_at = float("-inf")

    async def collect(self, app: AppSettings, database: AsyncDatabase[Document]) -> dict[str, Any]:
        return {
            "queues": await self._queues(),
            "ppns": await self._ppns(app, database),
            "credentials": [check.to_json() for check in self._credentials(app)],
            "provider_pauses": await self._provider_pauses(app),
        }

    async def _queues(self) -> dict[str, Any]:
        if self._settings.queue.is_memory:
            return {"available": False, "note": "n/a: memory:// is the in-process queue of `pushgw dev`"}
        # A connection per look (every few seconds): nothing to close when the app stops.
        probe = QueueProbe(self._settings.queue, timeout_s=2.0)
        try:
            depths = await probe.depths()
        except BrokerUnreachable as error:
            return {"available": False, "note": f"broker unreachable: {error}"}
        finally:
            await probe.close()
        return {"available": True, "depths": depths}

    async def _ppns(self, app: AppSettings, database: AsyncDatabase[Document]) -> dict[str, Any]:
        """Live connections from the PPNS node's gauge when its metrics port is configured; always the
        number of installations that have a backlog (ever connected or were pushed to)."""
        ppns = self._settings.ppns
        answer: dict[str, Any] = {"connected": None}
        try:
            collection = database.get_collection(app.collection_prefix + BACKLOG)
            answer["known_installations"] = await collection.estimated_document_count()
        except PyMongoError:
            answer["known_installations"] = None
        if ppns is None:
            answer["note"] = "no [ppns] section: PPNS is not configured"
        elif ppns.metrics_port is None:
            answer["note"] = "set [ppns] metrics_port so the console can read pushgw_ppns_connections"
        else:
            answer.update(await _scrape_node(ppns))
        return answer

    async def _provider_pauses(self, app: AppSettings) -> list[dict[str, Any]]:
        """This app's credentials the providers refused, from `pushgw_provider_credential_pauses`: this
        process's own counter (the in-process worker of `pushgw dev`) and the `[worker] metrics_port`'s."""
        families = list(CREDENTIAL_PAUSES.collect())
        worker = self._settings.worker
        if worker.metrics_port is not None:
            text = await _fetch(f"http://{worker.metrics_host}:{worker.metrics_port}/metrics")
            families += list(text_string_to_metric_families(text or ""))
        names = _credential_names(app)
        pauses: dict[tuple[str, str, str], int] = {}
        samples = [sample for family in families if family.name == _PAUSES for sample in family.samples]
        for sample in samples:
            labels = sample.labels
            key = (labels.get("provider", ""), labels.get("credential", ""), labels.get("reason", ""))
            if sample.name.endswith("_total") and key[:2] in names and sample.value > 0:
                pauses[key] = max(pauses.get(key, 0), int(sample.value))  # one worker seen twice
        return [
            {"provider": provider, "credential": credential, "reason": reason, "pauses": count}
            for (provider, credential, reason), count in sorted(pauses.items())
        ]

    def _credentials(self, app: AppSettings) -> list[Check]:
        now = time.monotonic()
        if now - self._checked_at > _CREDENTIALS_CACHE_S:
            self._checks, self._checked_at = check_credentials(self._settings), now
        own = f"apps[{app.app_id}]."
        return [check for check in self._checks if check.name.startswith(own) or check.name == "ppns"]


def _credential_names(app: AppSettings) -> set[tuple[str, str]]:
    """(provider, credential label) of the app's credentials, named as the providers name them."""
    names = {
        ("apns", credential.bundle_ids[0] + ("" if credential.environment == "production" else " (sandbox)"))
        for credential in app.apns
    }
    if app.fcm is not None:
        project = app.fcm.project_id
        if project is None:
            try:
                project = str(json.loads(app.fcm.service_account_file.read_text())["project_id"])
            except (OSError, ValueError, KeyError, TypeError):
                project = None
        if project is not None:
            names.add(("fcm", project))
    return names


async def _fetch(url: str) -> str | None:
    try:
        async with httpx2.AsyncClient(timeout=2.0, trust_env=False) as client:
            return (await client.get(url)).text
    except httpx2.HTTPError:
        return None


async def _scrape_node(ppns: PpnsSettings) -> dict[str, Any]:
    """The node's gauge; with `processes` > 1, summed over its processes' ports (`metrics_port + k`)."""
    assert ppns.metrics_port is not None
    count = ppns.processes if ppns.metrics_port else 1
    answers = [await _scrape_connections(ppns.metrics_host, ppns.metrics_port + k) for k in range(count)]
    for answer in answers:
        if "note" in answer:
            return answer
    return {"connected": sum(int(answer["connected"]) for answer in answers)}


async def _scrape_connections(host: str, port: int) -> dict[str, Any]:
    url = f"http://{host}:{port}/metrics"
    text = await _fetch(url)
    if text is None:
        return {"note": f"PPNS metrics at {url} unreachable"}
    for line in text.splitlines():
        if line.startswith(_PPNS_GAUGE + " "):
            return {"connected": int(float(line.split()[1]))}
    return {"note": f"{url} exports no {_PPNS_GAUGE}"}
