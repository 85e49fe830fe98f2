"""Recent `_PushStatus` rows, newest first, summarized for people (`pushgw push list` and the console)."""

from __future__ import annotations

import json
from datetime import datetime
from typing import Any

from pymongo.asynchronous.collection import AsyncCollection

from pushgw.clock import iso_millis
from pushgw.mongo import Document
from pushgw.push_status import OWN, TERMINAL

_SUMMARY_CHARS = 60
_FIELDS = {
    "_id": 1, "status": 1, "_created_at": 1, "numSent": 1, "numFailed": 1, "sentPerType": 1,
    "failedPerType": 1, "failedPerReason": 1, "query": 1, "payload": 1, "errorMessage": 1, "pushTime": 1,
    f"{OWN}.audience": 1, f"{OWN}.plans_done": 1, f"{OWN}.plans_expected": 1,
}  # fmt: skip


async def recent_pushes(
    collection: AsyncCollection[Document], *, limit: int, status: str | None = None
) -> list[dict[str, Any]]:
    """The newest `limit` pushes (optionally only those with `status`), each as `summarize()` makes it."""
    where = {"status": status} if status else {}
    cursor = collection.find(where, _FIELDS).sort("_created_at", -1).limit(limit)
    return [summarize(document) async for document in cursor]


def summarize(document: Document) -> dict[str, Any]:
    """JSON-ready: counts per type and reason, the audience once planned, and a one-line audience summary."""
    own = document.get(OWN, {})
    planned = own.get("plans_done", 0) >= own.get("plans_expected", 1) and "audience" in own
    created = document.get("_created_at")
    error = document.get("errorMessage")
    return {
        "id": document["_id"],
        "status": document.get("status", "?"),
        "final": document.get("status") in TERMINAL,
        "created": iso_millis(created) if isinstance(created, datetime) else None,
        "push_time": document.get("pushTime"),
        "sent": document.get("numSent", 0),
        "failed": document.get("numFailed", 0),
        "audience": own.get("audience") if planned else None,
        "sent_per_type": document.get("sentPerType", {}),
        "failed_per_type": document.get("failedPerType", {}),
        "failed_per_reason": document.get("failedPerReason", {}),
        "target": describe_query(document.get("query", "{}")),
        "alert": _alert(document.get("payload", "{}")),
        "error": error.get("message", "") if isinstance(error, dict) else None,
    }


def describe_query(query: str) -> str:
    """`channels: a, b` for a channel push, else the `where` JSON, shortened to one line."""
    try:
        where = json.loads(query)
    except ValueError:
        return _shorten(query)
    channels = where.get("channels") if isinstance(where, dict) else None
    if isinstance(channels, dict) and list(where) == ["channels"] and isinstance(channels.get("$in"), list):
        return "channels: " + ", ".join(str(channel) for channel in channels["$in"])
    return "where: " + _shorten(json.dumps(where, separators=(",", ":")))


def _alert(payload: str) -> str:
    try:
        data = json.loads(payload)
    except ValueError:
        return ""
    alert = data.get("alert") if isinstance(data, dict) else None
    if isinstance(alert, dict):
        alert = alert.get("body") or alert.get("title")
    return _shorten(str(alert)) if alert is not None else ""


def _shorten(text: str) -> str:
    return text if len(text) <= _SUMMARY_CHARS else text[: _SUMMARY_CHARS - 1] + "…"


def format_table(pushes: list[dict[str, Any]]) -> str:
    """A fixed-width table: id, status, created, sent/failed, audience."""
    rows = [("ID", "STATUS", "CREATED", "SENT/FAILED", "AUDIENCE")]
    for push in pushes:
        counts = f"{push['sent']}/{push['failed']}"
        audience = push["target"] + (f" ({push['audience']} devices)" if push["audience"] is not None else "")
        created = (push["created"] or "")[:19].replace("T", " ")
        rows.append((push["id"], push["status"], created, counts, audience))
    widths = [max(len(row[column]) for row in rows) for column in range(4)]
    return "\n".join(
        "  ".join(cell.ljust(width) for cell, width in zip(row[:4], widths, strict=True)) + "  " + row[4]
        for row in rows
    )
