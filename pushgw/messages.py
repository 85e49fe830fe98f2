"""Versioned work items on the queue; a consumer refuses a kind or version it does not know."""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from datetime import datetime
from typing import Annotated, Any, ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, ValidationError

SCHEMA_VERSION: Literal[1] = 1


class WorkItem(BaseModel):
    """Common envelope: every message names its kind and schema version."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    kind: str
    version: Literal[1] = SCHEMA_VERSION
    app_id: str
    push_id: str
    traceparent: str | None = None  # W3C trace context of the span that published it (pushgw/tracing.py)
    _LEFT_OUT_WHEN_NONE: ClassVar[tuple[str, ...]] = ("traceparent",)  # see _absent

    def to_bytes(self) -> bytes:
        # Without tracing the item is byte-for-byte what workers of the previous release read.
        return self.model_dump_json(exclude=self._absent()).encode()

    def _absent(self) -> set[str] | None:
        """The optional fields left out of the JSON when unset (so older workers read the item)."""
        absent = {name for name in self._LEFT_OUT_WHEN_NONE if getattr(self, name) is None}
        return absent or None


class PlanPush(WorkItem):
    """An accepted push, for the planner: resolve the audience and cut it into send batches.

    `where` and `data` are the Parse JSON values as received (credentials stripped); `options` holds the
    other top-level body keys (`notification`, `rawPayload`, `priority`, `push_type`, `collapse_id`, …).
    A local-time push is planned once per UTC offset: `utc_offset_min` and `time_zones` name the group.
    `badge_applied`: Parse Server already incremented or set the badges (a push handed over by its own push
    queue, see workers/parse_queue.py), so senders send each installation's stored badge and write none.
    """

    kind: Literal["plan_push"] = "plan_push"
    where: Any
    data: Any = None
    push_time: str | None = None
    push_time_ms: int | None = None
    push_time_is_local: bool = False
    scheduled: bool = False
    expiry_ms: float | None = None
    expiration_interval_s: float | None = None
    options: dict[str, Any] = {}
    accepted_at: datetime
    utc_offset_min: int | None = None
    time_zones: list[str] | None = None
    badge_applied: bool = False


@dataclass(slots=True)
class Device:
    """One resolved installation, with everything a sender needs (senders never query MongoDB).

    A plain dataclass, not a pydantic model: a planner builds one per audience row and a sender parses 500
    per batch; pydantic validates it inside `SendBatch` all the same (2× faster, same JSON). Not frozen
    (a frozen dataclass sets each field through `object.__setattr__`: 1.4 instead of 0.4 µs per device, on
    the planner's critical path); nothing changes a Device once built.
    """

    __pydantic_config__ = ConfigDict(extra="forbid")

    object_id: str
    device_type: str
    transport: str
    installation_id: str | None = None
    device_token: str | None = None
    push_type: str | None = None
    badge: int | float | None = None
    locale: str | None = None
    app_identifier: str | None = None
    time_zone: str | None = None
    updated_at: datetime | None = None  # no longer filled or read (workers/devices.py); older items parse


class SendBatch(WorkItem):
    """A slice of one push's audience: `unit` names it for idempotent accounting (`b<index>`, `b<i>r<n>`).

    The audience is `devices`, or `rows`: the installations as the database sent them (BSON documents back
    to back), which the sender decodes itself (workers/devices.py). A planner sends `rows` for a fan-out's
    batches and `devices` for everything else (retries, an only batch); a unit's `first_id`..`last_id`
    names its `_id` range either way.

    On the queue, a unit of rows is framed: its JSON (without `rows`, with `rows_length`), a newline, then
    the rows as they are — base64 in the JSON cost ~0.7 ms per 500-row unit to write and read again, more
    than decoding the rows. `parse_work_item` still reads rows base64 in the JSON (what the previous
    release wrote). A unit of devices is one JSON document, byte-for-byte what earlier releases read.
    """

    model_config = ConfigDict(frozen=True, extra="forbid", ser_json_bytes="base64", val_json_bytes="base64")

    kind: Literal["send_batch"] = "send_batch"
    unit: str
    attempt: int = 1
    first_id: str
    last_id: str
    devices: list[Device] = []
    rows: bytes | None = None
    rows_length: int | None = None  # framed (see above): how many bytes of rows follow the JSON line
    data: Any = None
    options: dict[str, Any] = {}
    expiry_ms: float | None = None
    utc_offset_min: int | None = None
    accepted_at: datetime | None = None
    badge_applied: bool = False

    _LEFT_OUT_WHEN_NONE: ClassVar[tuple[str, ...]] = ("traceparent", "rows", "rows_length")

    def to_bytes(self) -> bytes:
        if self.rows is None:
            return super().to_bytes()
        header = self.model_copy(update={"rows": None, "rows_length": len(self.rows)})
        return b"".join((header.to_bytes(), b"\n", self.rows))


AnyWorkItem = Annotated[PlanPush | SendBatch, Field(discriminator="kind")]
_ADAPTER: TypeAdapter[PlanPush | SendBatch] = TypeAdapter(AnyWorkItem)


class UnknownWorkItem(ValueError):
    """A message this worker cannot read (other kind or version, or not JSON): it is dead-lettered."""


def parse_work_item(body: bytes) -> PlanPush | SendBatch:
    """A queue message's item: one JSON document, or a unit of rows framed as `SendBatch` describes."""
    head, newline, rows = body.partition(b"\n")
    if newline:
        with contextlib.suppress(ValidationError):  # not a framed unit: read the body as one document
            item = _ADAPTER.validate_json(head)
            if isinstance(item, SendBatch) and item.rows_length is not None:
                return _with_rows(item, rows)
    try:
        item = _ADAPTER.validate_json(body)
    except ValidationError as error:
        raise UnknownWorkItem(str(error)[:500]) from None
    if isinstance(item, SendBatch) and item.rows_length is not None:
        raise UnknownWorkItem(f"unit {item.unit}: {item.rows_length} bytes of rows announced, none follow")
    return item


def _with_rows(item: SendBatch, rows: bytes) -> SendBatch:
    if item.rows is not None or len(rows) != item.rows_length:
        raise UnknownWorkItem(
            f"unit {item.unit}: {item.rows_length} bytes of rows announced, {len(rows)} follow"
            + (" and rows in the JSON" if item.rows is not None else "")
        )
    return item.model_copy(update={"rows": rows, "rows_length": None})
