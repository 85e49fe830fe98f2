"""POST {mount}/push: read → authenticate → validate → record → enqueue → answer, exactly as Parse answers."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qs

from pymongo.errors import PyMongoError

from pushgw import parse_quirks
from pushgw.auth import authenticate
from pushgw.broker import Broker, PublishError
from pushgw.clock import Clock
from pushgw.connections import Connections
from pushgw.errors import INTERNAL_SERVER_ERROR, InternalError, MalformedJson, RouteNotFound
from pushgw.idempotency import Claim, RequestInFlight, RequestLedger
from pushgw.logs import get_logger
from pushgw.messages import PlanPush
from pushgw.metrics import ORPHANS_FAILED
from pushgw.mongo import app_database
from pushgw.push import Push, parse_push
from pushgw.push_status import COLLECTION, InsertBatcher, fail_unstarted, new_object_id, new_status_document
from pushgw.settings import AppSettings, Settings
from pushgw.topology import PLAN
from pushgw.tracing import current_traceparent, push_span

log = get_logger(__name__)


@dataclass(frozen=True, slots=True)
class PushRequest:
    """One `POST {mount}/push` as received: lower-cased headers, the raw body, the TCP peer."""

    path: str
    headers: Mapping[str, str]
    body: bytes
    peer: str | None


class Intake:
    """Accepts pushes: a 200 means the `_PushStatus` is stored and the broker confirmed the work item."""

    def __init__(self, settings: Settings, connections: Connections, clock: Clock) -> None:
        self._settings = settings
        self._connections = connections
        self._clock = clock
        self._batchers: dict[str, InsertBatcher] = {}
        self._ledgers: dict[str, RequestLedger] = {}
        self._background: set[asyncio.Task[None]] = set()

    @property
    def broker(self) -> Broker:
        return self._connections.broker

    async def prepare(self) -> None:
        """Create the request-id TTL index per app; a database that is down now is retried on first use."""
        for app in self._settings.apps:
            try:
                await self._ledger(app).ensure_indexes()
            except PyMongoError as error:
                log.warning("request_ledger_index_deferred", app_id=app.app_id, error=str(error))

    async def accept(self, request: PushRequest) -> str:
        """Return the new (or, for a repeated X-Parse-Request-Id, the first) push id; raise RequestError."""
        body = decode_body(request.body, request.headers.get("content-type"))
        _apply_method_override(body, request.path)
        app = authenticate(request.headers, body, request.peer, self._settings)
        push = parse_push(parse_quirks.strip_body_credentials(body), now=self._clock.now())
        push_id = new_object_id()
        request_id = request.headers.get("x-parse-request-id")
        claim = await self._claim(app, request_id, push_id) if request_id else None
        if claim is not None and claim.is_replay:
            log.info("push_replayed", app_id=app.app_id, push_id=claim.push_id)
            return claim.push_id
        # Shielded: a client that hangs up must not leave a stored status without its work item.
        work = asyncio.ensure_future(self._record_and_enqueue(app, push, push_id))
        try:
            await asyncio.shield(work)
        except BaseException:
            if claim is not None:
                await self._ledger(app).release(claim)
            raise
        if claim is not None:
            await self._remember(app, claim)
        self._bump_audience(app, push)
        return push_id

    async def _claim(self, app: AppSettings, request_id: str, push_id: str) -> Claim:
        try:
            return await self._ledger(app).claim(app.app_id, request_id, push_id)
        except (PyMongoError, RequestInFlight) as error:
            raise InternalError(f"request ledger: {error}") from error

    async def _remember(self, app: AppSettings, claim: Claim) -> None:
        try:
            await self._ledger(app).accept(claim)
        except PyMongoError as error:  # the push is queued: answer 200 regardless
            log.warning(
                "request_ledger_accept_failed", app_id=app.app_id, push_id=claim.push_id, error=str(error)
            )

    async def _record_and_enqueue(self, app: AppSettings, push: Push, push_id: str) -> None:
        with push_span("pushgw.intake", None, app_id=app.app_id, push_id=push_id):
            await self._store_and_publish(app, push, push_id)

    async def _store_and_publish(self, app: AppSettings, push: Push, push_id: str) -> None:
        now = self._clock.now()
        scheduled = push.push_time is not None and app.scheduled_push
        document = new_status_document(push_id, push, now=now, scheduled=scheduled)
        # Encode the work item first: nothing may be stored that cannot also be queued.
        work_item = _plan_item(
            app, push, push_id, now=document["_created_at"], scheduled=scheduled
        ).to_bytes()
        try:
            await self._batcher(app).insert(document)
        except PyMongoError as error:
            log.error("push_status_insert_failed", app_id=app.app_id, push_id=push_id, error=str(error))
            raise InternalError("could not store _PushStatus") from error
        try:
            await self.broker.publish(PLAN, work_item, message_id=push_id)
        except PublishError as error:
            await self._fail_unqueued(app, push_id, str(error))
            raise InternalError("could not queue the push") from error

    async def _fail_unqueued(self, app: AppSettings, push_id: str, reason: str) -> None:
        """No orphan: a record whose work item never made it is marked failed, with the reason."""
        ORPHANS_FAILED.inc()
        log.error("push_not_queued", app_id=app.app_id, push_id=push_id, error=reason)
        collection = app_database(self._connections.mongo, app).get_collection(COLLECTION)
        try:
            await fail_unstarted(
                collection, push_id, INTERNAL_SERVER_ERROR, f"push could not be queued: {reason}"
            )
        except PyMongoError as error:
            log.error("push_not_queued_not_marked", app_id=app.app_id, push_id=push_id, error=str(error))

    def _bump_audience(self, app: AppSettings, push: Push) -> None:
        """Parse bumps `_Audience.timesUsed`/`lastUsed` for the Dashboard, fire-and-forget."""
        audience_id = push.options.get("audience_id")
        if not isinstance(audience_id, str):
            return
        collection = app_database(self._connections.mongo, app).get_collection(
            app.collection_prefix + "_Audience"
        )
        update = {"$inc": {"timesUsed": 1}, "$set": {"lastUsed": self._clock.now()}}
        task = asyncio.create_task(_update_quietly(collection.update_one({"_id": audience_id}, update)))
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    def _batcher(self, app: AppSettings) -> InsertBatcher:
        if app.app_id not in self._batchers:
            database = app_database(self._connections.mongo, app)
            self._batchers[app.app_id] = InsertBatcher(
                database.get_collection(app.collection_prefix + COLLECTION)
            )
        return self._batchers[app.app_id]

    def _ledger(self, app: AppSettings) -> RequestLedger:
        if app.app_id not in self._ledgers:
            database = app_database(self._connections.mongo, app)
            ttl_s = self._settings.http.request_id_ttl_s
            stale_after_s = (
                self._settings.queue.publish_timeout_s + self._settings.mongo.timeout_ms / 1000 * 2
            )
            self._ledgers[app.app_id] = RequestLedger(
                database, self._clock, ttl_s=ttl_s, stale_after_s=stale_after_s
            )
        return self._ledgers[app.app_id]


async def _update_quietly(update: Any) -> None:
    try:
        await update
    except PyMongoError as error:
        log.warning("audience_update_failed", error=str(error))


def _plan_item(app: AppSettings, push: Push, push_id: str, *, now: Any, scheduled: bool) -> PlanPush:
    push_time = push.push_time
    return PlanPush(
        app_id=app.app_id,
        push_id=push_id,
        where=push.where,
        data=push.data,
        push_time=push_time.text if push_time else None,
        push_time_ms=push_time.epoch_ms if push_time else None,
        push_time_is_local=bool(push_time and push_time.is_local),
        scheduled=scheduled,
        expiry_ms=push.expiry_ms,
        expiration_interval_s=push.expiration_interval_s,
        options=push.options,
        accepted_at=now,
        traceparent=current_traceparent(),
    )


def decode_body(raw: bytes, content_type: str | None) -> dict[str, Any]:
    """JSON for every content type but forms (parsed as forms) and multipart (ignored), like Parse 9.x."""
    if not parse_quirks.parses_as_json(content_type):
        if "urlencoded" in (content_type or "").lower():
            return _decode_form(raw)
        return {}
    try:
        text = raw.decode("utf-8").removeprefix("\ufeff")
    except UnicodeDecodeError as error:
        raise MalformedJson(f"Invalid UTF-8 in request body at position {error.start}") from None
    if not text.strip():
        return {}
    return _decode_json(text)


def _decode_json(text: str) -> dict[str, Any]:
    stripped = text.lstrip(" \t\r\n")
    if stripped[:1] not in ("{", "["):  # body-parser's strict mode: only objects and arrays
        raise MalformedJson(f"Unexpected token '{stripped[:1]}', \"{stripped[:10]}\" is not valid JSON")
    try:
        value = json.loads(text, parse_constant=_reject_constant, parse_int=parse_quirks.js_int)
    except json.JSONDecodeError as error:
        raise MalformedJson(f"{error.msg} in JSON at position {error.pos}") from None
    except (ValueError, RecursionError) as error:
        raise MalformedJson(f"Invalid JSON: {error}") from None
    if parse_quirks.json_depth_exceeds(value):
        raise MalformedJson(f"JSON nests deeper than {parse_quirks.MAX_JSON_DEPTH} levels")
    if parse_quirks.has_escaped_surrogate(text):
        value = parse_quirks.well_formed(value)
    return value if isinstance(value, dict) else {}


def _reject_constant(name: str) -> Any:
    raise ValueError(f"Unexpected token '{name[0]}' in JSON")


def _decode_form(raw: bytes) -> dict[str, Any]:
    fields = parse_qs(raw.decode("utf-8", errors="replace"), keep_blank_values=True)
    return {key: values[0] if len(values) == 1 else values for key, values in fields.items()}


def _apply_method_override(body: dict[str, Any], path: str) -> None:
    """`"_method": "GET"` turns the POST into a GET, which has no route (middlewares.allowMethodOverride)."""
    override = body.get("_method")
    if isinstance(override, str) and override and override.upper() != "POST":
        raise RouteNotFound(override, path)
