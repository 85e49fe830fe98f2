"""Parse Server's own push work items (route C) → the fleet's planner, so Parse's skip pages never run.

With `queueOptions.disablePushWorker: true` and deploy/parse-server's queue adapter, Parse Server validates
the request, writes `_PushStatus` (pending, then running with `count`), applies the badge update, and
publishes one item per `skip` page of the audience to `<queue.prefix>.parse`. Every item names the whole
push, so each becomes the same PlanPush: the first plans the whole audience with our `_id`-ordered cursor,
the others find the plan claimed or done and change nothing. The status row is marked `badge_applied`
first, so neither the senders nor a watchdog re-plan increment a badge Parse already incremented.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError
from pymongo import AsyncMongoClient
from pymongo.errors import PyMongoError

from pushgw import metrics
from pushgw.broker import Broker, Delivery, PublishError
from pushgw.clock import Clock
from pushgw.errors import ParseError
from pushgw.logs import get_logger
from pushgw.messages import PlanPush
from pushgw.mongo import Document, app_database
from pushgw.push import audience_where, body_options
from pushgw.push_status import COLLECTION, OWN
from pushgw.settings import Settings
from pushgw.topology import PLAN
from workers.retries import is_transient, retry_later

log = get_logger(__name__)


class ParseStatusRef(BaseModel):
    model_config = ConfigDict(frozen=True, extra="ignore")

    object_id: str = Field(alias="objectId", min_length=1)


class ParseWorkItem(BaseModel):
    """One message of Parse Server's PushQueue, as published (observed format, parse-server 9.10)."""

    model_config = ConfigDict(frozen=True, extra="ignore")

    body: dict[str, Any]
    query: dict[str, Any] = {}  # Parse's skip page: ignored, the planner reads the audience by `_id`
    push_status: ParseStatusRef = Field(alias="pushStatus")
    application_id: str = Field(alias="applicationId", min_length=1)


class UnreadableParseItem(ValueError):
    """Not a Parse push work item, or one without an audience: dead-lettered."""


def read_parse_item(raw: bytes) -> ParseWorkItem:
    try:
        item = ParseWorkItem.model_validate_json(raw)
    except ValidationError as error:
        raise UnreadableParseItem(str(error)[:300]) from None
    try:
        audience_where(item.body)
    except ParseError as error:
        raise UnreadableParseItem(error.message) from None
    return item


def plan_from_parse_item(item: ParseWorkItem, *, now: datetime) -> PlanPush:
    """The PlanPush our own intake would have made of the same request.

    Parse has normalized the body: `expiration_time` is epoch milliseconds, `push_time` a date string.
    The audience is the request's (`where` or `channels`), not Parse's page query, so PPNS installations
    (no `deviceToken`) are reached as with our own intake. Parse only enqueues pushes it sends now (a
    scheduled push stays `scheduled` in Parse), so the plan is never scheduled.
    """
    body = item.body
    interval = _number(body.get("expiration_interval"))
    return PlanPush(
        app_id=item.application_id,
        push_id=item.push_status.object_id,
        where=audience_where(body),
        data=body.get("data"),
        expiry_ms=_number(body.get("expiration_time")),
        expiration_interval_s=interval if interval and interval > 0 else None,
        options=body_options(body),
        accepted_at=now,
        badge_applied=True,
    )


def _number(value: Any) -> float | None:
    return value if isinstance(value, int | float) and not isinstance(value, bool) else None


class ParseQueue:
    """Consumer of `<prefix>.parse`: marks the push `badge_applied`, then hands it to the planner queue."""

    def __init__(
        self, settings: Settings, mongo: AsyncMongoClient[Document], broker: Broker, clock: Clock
    ) -> None:
        self._settings = settings
        self._mongo = mongo
        self._broker = broker
        self._clock = clock

    async def handle(self, delivery: Delivery) -> None:
        try:
            item = read_parse_item(delivery.body)
        except UnreadableParseItem as error:
            body = delivery.body[:200].decode(errors="replace")
            log.error("parse_item_unreadable", error=str(error), body=body)
            await delivery.dead_letter()
            return
        app = self._settings.app(item.application_id)
        if app is None:
            push_id = item.push_status.object_id
            log.error("parse_item_unknown_app", app_id=item.application_id, push_id=push_id)
            await delivery.dead_letter()
            return
        plan = plan_from_parse_item(item, now=self._clock.now())
        statuses = app_database(self._mongo, app).get_collection(app.collection_prefix + COLLECTION)
        try:
            marked = await statuses.update_one(
                {"_id": plan.push_id, "status": {"$in": ["pending", "running"]}},
                {"$set": {f"{OWN}.badge_applied": True}},
            )
            if marked.matched_count == 1:
                await self._broker.publish(PLAN, plan.to_bytes(), message_id=f"{plan.push_id}:parse")
        except (PyMongoError, PublishError) as error:
            if is_transient(error):
                first_delay_s = self._settings.worker.requeue_delay_s
                await retry_later(delivery, first_delay_s, error, "parse_item_retry", push_id=plan.push_id)
            else:
                log.warning(
                    "parse_item_failed", push_id=plan.push_id, error=f"{type(error).__name__}: {error}"
                )
                await delivery.requeue()  # the queue's delivery limit dead-letters a poison message
            return
        metrics.PARSE_ITEMS.labels("planned" if marked.matched_count == 1 else "ignored").inc()
        if marked.matched_count != 1:
            log.info("parse_item_ignored", push_id=plan.push_id, reason="no pending or running _PushStatus")
        await delivery.ack()
