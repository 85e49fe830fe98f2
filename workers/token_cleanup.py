"""Dead device tokens: opt-in per app, authoritative answers only, behind a circuit breaker (contract §14).

Parse unsets every token a provider called invalid, for any non-empty env value (even "false"), across
device types and apps, and a second APNs environment's `BadDeviceToken` wipes valid tokens. Here: only
`Failed.dead_token` outcomes (the providers decide what is authoritative), an APNs 410 only when its
timestamp is later than the installation's last update, scoped by token, device type and appIdentifier,
and a unit in which a large share of devices come back dead suspends cleanup for the app instead
(a wrong FCM project answers SENDER_ID_MISMATCH for every token).
"""

from __future__ import annotations

import time
from collections import Counter, defaultdict
from collections.abc import Sequence
from datetime import datetime

from pymongo.asynchronous.collection import AsyncCollection
from pymongo.asynchronous.database import AsyncDatabase

from pushgw import metrics
from pushgw.logs import get_logger
from pushgw.mongo import Document
from pushgw.settings import AppSettings
from workers.outcomes import Failed, Outcome

log = get_logger(__name__)


class TokenCleanup:
    """One per worker process; remembers which apps' cleanup the breaker suspended, and until when."""

    def __init__(self) -> None:
        self._suspended_until: dict[str, float] = {}

    async def remove_dead(
        self, app: AppSettings, database: AsyncDatabase[Document], outcomes: Sequence[Outcome]
    ) -> int:
        """Unset the dead tokens among one unit's outcomes; returns how many installations changed."""
        dead = [outcome for outcome in outcomes if isinstance(outcome, Failed) and outcome.dead_token]
        if not dead or not app.cleanup_invalid_tokens:
            return 0
        if time.monotonic() < self._suspended_until.get(app.app_id, 0.0):
            return 0
        if self._trips_breaker(app, dead, len(outcomes)):
            return 0
        installations = database.get_collection(app.collection_prefix + "_Installation")
        reregistered = await _updated_since_death(installations, dead)
        scopes: defaultdict[tuple[str, str, str | None], list[str]] = defaultdict(list)
        for outcome in dead:
            device = outcome.device
            if not device.device_token or device.object_id in reregistered:
                continue
            scopes[(outcome.reason, device.device_type, device.app_identifier)].append(device.device_token)
        removed = 0
        for (reason, device_type, app_identifier), tokens in scopes.items():
            result = await installations.update_many(
                {"deviceToken": {"$in": tokens}, "deviceType": device_type, "appIdentifier": app_identifier},
                {"$unset": {"deviceToken": ""}},
            )
            removed += result.modified_count
            metrics.TOKENS_REMOVED.labels(app.app_id, reason).inc(result.modified_count)
            log.info(
                "tokens_removed", app_id=app.app_id, reason=reason, device_type=device_type,
                installations=result.modified_count,
            )  # fmt: skip
        return removed

    def _trips_breaker(self, app: AppSettings, dead: Sequence[Failed], answered: int) -> bool:
        reason, count = Counter(outcome.reason for outcome in dead).most_common(1)[0]
        if answered < app.cleanup_breaker_min_devices or count / answered <= app.cleanup_breaker_ratio:
            return False
        self._suspended_until[app.app_id] = time.monotonic() + app.cleanup_pause_s
        metrics.CLEANUP_SUSPENSIONS.labels(app.app_id, reason).inc()
        log.error(
            "token_cleanup_suspended", app_id=app.app_id, reason=reason, dead=count, devices=answered,
            pause_s=app.cleanup_pause_s,
            fix="check the app's credentials and environment: this many dead tokens at once is suspicious",
        )  # fmt: skip
        return True


async def _updated_since_death(installations: AsyncCollection[Document], dead: Sequence[Failed]) -> set[str]:
    """APNs 410s: the installations updated at or after their token died (the device re-registered, so the
    stored token may be the new one). Read when the answer comes, one read per unit with a 410: units carry
    no `_updated_at` (decoding it for every device of every push cost more than this read)."""
    died = {dead_one.device.object_id: at for dead_one in dead if (at := dead_one.dead_since_ms) is not None}
    if not died:
        return set()
    rows = installations.find({"_id": {"$in": list(died)}}, {"_updated_at": 1})
    return {
        row["_id"]
        async for row in rows
        if isinstance(updated := row.get("_updated_at"), datetime)
        and updated.timestamp() * 1000 >= died[row["_id"]]
    }
