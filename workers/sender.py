"""SendBatch → badges, localization, expiry → providers → outcomes → retries, one idempotent record → ack."""

from __future__ import annotations

import random
import re
import time
from collections import Counter, defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

from pymongo.asynchronous.collection import AsyncCollection
from pymongo.asynchronous.database import AsyncDatabase

from pushgw import metrics
from pushgw.broker import Broker
from pushgw.clock import Clock
from pushgw.logs import get_logger
from pushgw.messages import Device, SendBatch
from pushgw.mongo import Document
from pushgw.push_status import OWN, StatusStore, StatusStores
from pushgw.settings import AppSettings, WorkerSettings
from workers.badge import BadgeError, BadgeRule, apply_badges, badge_rule, receives_badge
from workers.devices import count_planned, resolve_rows
from workers.localize import Localizer
from workers.outcomes import Deferred, Failed, Outcome, Reason, Sent, Tally, utc_offset_key
from workers.providers.provider import UNSUPPORTED, Notification, Provider, PushContext
from workers.retries import RetryPolicy
from workers.token_cleanup import TokenCleanup

log = get_logger(__name__)
PROGRESS = "pushgw_progress"
_RETRY_SUFFIX = re.compile(r"r\d+$")
_PROGRESS_TTL = timedelta(days=7)


@dataclass(slots=True)
class _Run:
    """One unit being sent: outcomes so far, and when progress was last saved."""

    item: SendBatch
    database: AsyncDatabase[Document]
    skipped: int = 0  # rows of the unit without a device (no token): counted done, in no outcome
    outcomes: dict[str, Outcome] = field(default_factory=dict)
    unsaved: list[str] = field(default_factory=list)  # object ids whose outcome is not saved yet
    saved_at: float = field(default_factory=time.monotonic)

    def add(self, outcome: Outcome) -> None:
        self.outcomes[outcome.device.object_id] = outcome
        self.unsaved.append(outcome.device.object_id)  # encoded only if progress is saved (a long send)

    def add_all(self, outcomes: Sequence[Outcome]) -> None:
        ids = [outcome.device.object_id for outcome in outcomes]
        self.outcomes.update(zip(ids, outcomes, strict=True))
        self.unsaved.extend(ids)


@dataclass(slots=True)
class SentUnit:
    """A delivered unit not recorded yet: its `_PushStatus` increments and how many devices are terminal."""

    run: _Run
    increments: dict[str, Any]
    counted: int

    @property
    def complete(self) -> bool:
        return self.counted == len(self.run.item.devices)


class Sender:
    """Drives one unit to a terminal outcome per device; safe to run twice on the same unit."""

    def __init__(
        self, settings: WorkerSettings, broker: Broker, providers: Mapping[str, Provider], clock: Clock,
        *, stores: StatusStores, rng: random.Random | None = None,
    ) -> None:  # fmt: skip
        self._settings = settings
        self._stores = stores
        self._broker = broker
        self._providers = providers
        self._clock = clock
        self._rng = rng or random.Random()
        self._policy = RetryPolicy(settings.delay_tiers_s, settings.max_attempts)
        self._cleanup = TokenCleanup()

    async def send_batch(
        self, item: SendBatch, app: AppSettings, database: AsyncDatabase[Document], redelivered: bool
    ) -> None:
        store = self._stores.store(database, app.collection_prefix)
        status = await store.progress(item.push_id, item.unit)
        if status is None or status.get("status") != "running":
            metrics.BATCHES.labels("skipped").inc()
            return  # cancelled or finished
        if item.unit in status.get("pushgw", {}).get("units", {}):
            metrics.BATCHES.labels("skipped").inc()
            # Recorded, but the run that recorded it may have stopped before finalizing the push.
            await self._finalize(store, item.push_id)
            return
        if item.accepted_at is not None:
            lag = (self._clock.now() - item.accepted_at).total_seconds()
            metrics.QUEUE_LAG_SECONDS.labels("send").observe(max(0.0, lag))
        started = time.perf_counter()
        planned_here = item.rows is not None  # a fan-out's devices are first known here, not by its planner
        item, skipped = resolve_rows(item)
        if planned_here and not redelivered:
            count_planned(item.devices)
        run = _Run(item, database, skipped)
        if redelivered:
            await self._load_progress(run)
        removed = await self._send_unit(run, app)
        await self._record(run, store, removed)
        metrics.BATCH_SECONDS.observe(time.perf_counter() - started)

    async def send_only_batch(
        self,
        item: SendBatch,
        app: AppSettings,
        database: AsyncDatabase[Document],
        store: StatusStore,
        owner: str,
    ) -> bool:
        """A push's only batch, sent by the planner that holds the push's plan lease (no status read: the
        claim just made it `running`). True when the push is finished in the same write as the unit."""
        return await self.record_only_batch(await self.deliver_only_batch(item, app, database), store, owner)

    async def deliver_only_batch(
        self, item: SendBatch, app: AppSettings, database: AsyncDatabase[Document]
    ) -> SentUnit:
        """Send a push's only batch, recording nothing yet: the caller records it claimed or unclaimed."""
        started = time.perf_counter()
        run = _Run(item, database)
        removed = await self._send_unit(run, app)
        metrics.BATCH_SECONDS.observe(time.perf_counter() - started)
        increments, counted = self._tally(run, removed)
        return SentUnit(run, increments, counted)

    async def record_only_batch(self, sent: SentUnit, store: StatusStore, owner: str) -> bool:
        """Record a delivered only batch under the plan lease `owner` holds; True when that finished the
        push (one write), False when it was recorded as a unit and the plan still has to finish."""
        item = sent.run.item
        if sent.complete and await store.finish_only_unit(
            item.push_id, _plan_key(item), owner, sent.increments, sent.counted
        ):
            metrics.BATCHES.labels("recorded").inc()
            return True
        await self._record_tally(sent.run, store, sent.increments, sent.counted)
        return False

    async def finish_unclaimed(self, sent: SentUnit, store: StatusStore, owner: str) -> bool:
        """Record a delivered only batch of a push nobody claimed, and finish it, in one write; False when
        a device is still deferred or the push is no longer `pending` and unclaimed (nothing written)."""
        item = sent.run.item
        if sent.complete and await store.finish_unclaimed(
            item.push_id, _plan_key(item), owner, sent.increments, sent.counted
        ):
            metrics.BATCHES.labels("recorded").inc()
            return True
        return False

    async def _send_unit(self, run: _Run, app: AppSettings) -> int:
        """Every device to an outcome (deferred ones handed to the delay queue); the tokens removed."""
        await self._deliver(run, app)
        removed = await self._cleanup.remove_dead(app, run.database, list(run.outcomes.values()))
        await self._defer_or_fail(run)
        return removed

    async def _deliver(self, run: _Run, app: AppSettings) -> None:
        item = run.item
        todo = [device for device in item.devices if device.object_id not in run.outcomes]
        data = item.data if isinstance(item.data, dict) else {}
        try:
            badges = await self._badges(run, app, todo, badge_rule(data))
        except BadgeError:
            badges = {}  # the planner already failed such pushes; nothing here can make them valid
        payload_for = Localizer(data).payload_for
        expired = item.expiry_ms is not None and self._clock.now().timestamp() * 1000 >= item.expiry_ms
        each_badge = bool(badges) or _badge_to_strip(data)
        providers = self._providers
        by_transport: defaultdict[str, list[Notification]] = defaultdict(list)
        for device in todo:  # one pass per device of every push: kept lean
            transport = device.transport
            if expired or transport not in providers or transport == UNSUPPORTED:
                run.add(self._failed(device, expired))
                continue
            payload = payload_for(device.locale)
            if each_badge:
                payload = _with_badge(payload, device, badges)
            by_transport[transport].append(Notification(device, payload))
        context = PushContext(item.app_id, item.push_id, item.options, item.expiry_ms, item.attempt)
        for transport, notifications in by_transport.items():
            await self._send_chunks(run, self._providers[transport], context, notifications)

    def _failed(self, device: Device, expired: bool) -> Failed:
        """Why a device is not sent to: unsupported, then expired, then no provider for its transport."""
        if device.transport == UNSUPPORTED:
            return Failed(device, Reason.UNSUPPORTED)
        if expired:
            return Failed(device, Reason.EXPIRED)
        return Failed(device, Reason.PROVIDER_NOT_CONFIGURED)

    async def _badges(
        self, run: _Run, app: AppSettings, devices: Sequence[Device], rule: BadgeRule
    ) -> dict[str, int | float]:
        receivers = [
            device for device in devices if receives_badge(device, self._settings.badge_device_types)
        ]
        if not receivers or (rule.increment is None and rule.set_to is None):
            return {}
        if run.item.badge_applied:  # Parse Server wrote the badges before handing the push over
            if rule.set_to is not None:
                return {device.object_id: rule.set_to for device in receivers}
            return {device.object_id: device.badge for device in receivers if device.badge is not None}
        ledger_id = f"{run.item.push_id}:{_RETRY_SUFFIX.sub('', run.item.unit)}"
        installations = app.collection_prefix + "_Installation"
        return await apply_badges(
            run.database, ledger_id, rule, receivers, now=self._clock.now(), installations=installations
        )

    async def _send_chunks(
        self, run: _Run, provider: Provider, context: PushContext, notifications: list[Notification]
    ) -> None:
        chunk = self._settings.progress_chunk
        for start in range(0, len(notifications), chunk):
            run.add_all(await provider.send(context, notifications[start : start + chunk]))
            if time.monotonic() - run.saved_at >= self._settings.progress_interval_s:
                await self._save_progress(run)

    async def _defer_or_fail(self, run: _Run) -> None:
        """Transient failures go to a delay queue as the unit's next attempt, or become failed."""
        deferred = [outcome for outcome in run.outcomes.values() if isinstance(outcome, Deferred)]
        if not deferred:
            return
        item = run.item
        retry_after = max((outcome.retry_after_s or 0.0 for outcome in deferred), default=0.0) or None
        delay_s = self._policy.delay_for(item.attempt, retry_after, self._rng)
        now_ms = self._clock.now().timestamp() * 1000
        if delay_s is None or (item.expiry_ms is not None and now_ms + delay_s * 1000 >= item.expiry_ms):
            reason = Reason.RETRIES_EXHAUSTED if delay_s is None else Reason.EXPIRED
            for outcome in deferred:
                run.outcomes[outcome.device.object_id] = Failed(outcome.device, reason)
            return
        unit = f"{_RETRY_SUFFIX.sub('', item.unit)}r{item.attempt}"
        devices = [outcome.device for outcome in deferred]
        retry = item.model_copy(update={"unit": unit, "attempt": item.attempt + 1, "devices": devices})
        # Outcomes first: if this unit is redelivered before its record lands, it finds its deferred devices
        # handed to the retry unit (and only re-publishes it) instead of sending and counting them itself.
        await self._save_progress(run)
        await self._broker.publish_delayed(delay_s, retry.to_bytes(), message_id=f"{item.push_id}:{unit}")
        log.info(
            "devices_deferred", push_id=item.push_id, unit=item.unit, devices=len(devices), delay_s=delay_s
        )

    def _tally(self, run: _Run, tokens_removed: int) -> tuple[dict[str, Any], int]:
        """The unit's `_PushStatus` increments and how many devices reached a terminal outcome."""
        tally = Tally()
        # One pass over the unit's devices; metrics and counters from the few distinct groups.
        groups = Counter(
            (type(outcome), outcome.device.transport, outcome.device.device_type, _reason(outcome))
            for outcome in run.outcomes.values()
        )
        for (kind, transport, device_type, reason), count in groups.items():
            metrics.DEVICES.labels(_KINDS[kind], transport, reason).inc(count)
            if kind is not Deferred:
                tally.add_many(kind is Sent, device_type, reason, count)
        increments = tally.increments(utc_offset_key(run.item.utc_offset_min))
        if tokens_removed:
            increments[f"{OWN}.tokens_removed"] = tokens_removed
        return increments, tally.sent + tally.failed

    async def _record(self, run: _Run, store: StatusStore, tokens_removed: int) -> None:
        increments, counted = self._tally(run, tokens_removed)
        await self._record_tally(run, store, increments, counted)

    async def _record_tally(
        self, run: _Run, store: StatusStore, increments: dict[str, Any], counted: int
    ) -> None:
        item = run.item
        if await store.record_unit(item.push_id, item.unit, increments, counted + run.skipped):
            metrics.BATCHES.labels("recorded").inc()
            await self._finalize(store, item.push_id)

    async def _finalize(self, store: StatusStore, push_id: str) -> None:
        if await store.try_finalize(push_id):
            metrics.PUSHES_FINISHED.labels("succeeded").inc()
            log.info("push_succeeded", push_id=push_id)

    async def _load_progress(self, run: _Run) -> None:
        document = await _progress(run.database).find_one({"_id": _progress_id(run.item)})
        for object_id, code in (document or {}).get("outcomes", {}).items():
            device = next((device for device in run.item.devices if device.object_id == object_id), None)
            if device is not None:
                run.outcomes[object_id] = _decode(device, code)

    async def _save_progress(self, run: _Run) -> None:
        if not run.unsaved:
            return
        fields: dict[str, Any] = {
            f"outcomes.{object_id}": _encode(run.outcomes[object_id]) for object_id in run.unsaved
        }
        fields["expire_at"] = self._clock.now() + _PROGRESS_TTL
        await _progress(run.database).update_one(
            {"_id": _progress_id(run.item)}, {"$set": fields}, upsert=True
        )
        run.unsaved.clear()
        run.saved_at = time.monotonic()


def _badge_to_strip(data: dict[str, Any]) -> bool:
    """`data` names a badge that is no value ("Increment"): each device gets its own or none."""
    return "badge" in data and not isinstance(data["badge"], int | float)


def _with_badge(payload: dict[str, Any], device: Device, badges: Mapping[str, int | float]) -> dict[str, Any]:
    """Each device gets its own badge; devices outside the badge set get none ("Increment" is not a value)."""
    value = badges.get(device.object_id)
    if value is not None:
        return {**payload, "badge": value}
    if "badge" in payload and not isinstance(payload["badge"], int | float):
        return {key: item for key, item in payload.items() if key != "badge"}
    return payload


def _plan_key(item: SendBatch) -> str:
    """The plan a unit came from: its name up to `-b<index>` (`all-b0` → `all`, `utc+60-b0` → `utc+60`)."""
    return item.unit.rpartition("-b")[0]


def _progress(database: AsyncDatabase[Document]) -> AsyncCollection[Document]:
    return database.get_collection(PROGRESS)


def _progress_id(item: SendBatch) -> str:
    return f"{item.push_id}:{item.unit}"


def _encode(outcome: Outcome) -> str:
    if isinstance(outcome, Sent):
        return "s"
    if isinstance(outcome, Failed):
        return f"f:{outcome.reason}"
    return f"d:{outcome.reason}:{outcome.retry_after_s or ''}"


def _decode(device: Device, code: str) -> Outcome:
    kind, _, rest = code.partition(":")
    if kind == "s":
        return Sent(device)
    reason, _, after = rest.partition(":")
    if kind == "f":
        return Failed(device, reason)
    return Deferred(device, reason, float(after) if after else None)


_KINDS: dict[type, str] = {Sent: "sent", Failed: "failed", Deferred: "deferred"}


def _reason(outcome: Outcome) -> str:
    return "" if isinstance(outcome, Sent) else str(outcome.reason)
