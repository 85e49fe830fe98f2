"""Versioned work items on the queue; a consumer refuses a kind or version it does not know."""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict

SCHEMA_VERSION: Literal[1] = 1


class WorkItem(BaseModel):
    """Common envelope: every message names its kind and schema version."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    kind: str
    version: Literal[1] = SCHEMA_VERSION
    app_id: str
    push_id: str

    def to_bytes(self) -> bytes:
        return self.model_dump_json().encode()


class PlanPush(WorkItem):
    """An accepted push, for the planner: resolve the audience and cut it into send batches.

    `where` and `data` are the Parse JSON values as received (credentials stripped); `options` holds the
    other top-level body keys (`notification`, `rawPayload`, `priority`, `push_type`, `collapse_id`, …).
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
