"""`pushgw push status|cancel` and `pushgw dlq list|replay`: operator commands for the terminal."""

from __future__ import annotations

import asyncio
import json
import sys
from typing import Any, TextIO

from pymongo.asynchronous.collection import AsyncCollection

from pushgw.clock import Clock
from pushgw.connections import Connections
from pushgw.mongo import Document, app_database
from pushgw.push_status import COLLECTION, OWN, TERMINAL, fail_push
from pushgw.settings import Settings
from workers.dead_letters import dead_collection, describe, replay

CANCELLED = "cancelled"
_BAR = 30


async def find_push(
    settings: Settings, connections: Connections, push_id: str
) -> tuple[AsyncCollection[Document], Document] | None:
    """The push's `_PushStatus` collection and row, in whichever configured app has it (else a message)."""
    for app in settings.apps:
        collection = app_database(connections.mongo, app).get_collection(app.collection_prefix + COLLECTION)
        document = await collection.find_one({"_id": push_id})
        if document is not None:
            return collection, document
    print(f"push {push_id} not found in any configured app", file=sys.stderr)
    return None


def progress_line(document: Document) -> str:
    """`[#####.....]  512/1000  sent 500  failed 12  running` (audience unknown while planning: `?`)."""
    own = document.get(OWN, {})
    sent, failed = document.get("numSent", 0), document.get("numFailed", 0)
    planned = own.get("plans_done", 0) >= own.get("plans_expected", 1) and "audience" in own
    audience = own.get("audience") if planned else None
    done = sent + failed
    share = 1.0 if document["status"] in TERMINAL else (done / audience if audience else 0.0)
    bar = "#" * int(share * _BAR) + "." * (_BAR - int(share * _BAR))
    total = audience if audience is not None else "?"
    line = f"[{bar}] {done}/{total}  sent {sent}  failed {failed}  {document['status']}"
    if document.get("errorMessage"):
        line += f"  ({document['errorMessage'].get('message', '')})"
    return line


async def push_status(
    settings: Settings, connections: Connections, push_id: str, *, wait: bool, out: TextIO = sys.stdout,
    interval_s: float = 0.5,
) -> int:  # fmt: skip
    """Print live progress until the push is final; exit code 0 succeeded, 1 failed, 2 unknown push."""
    found = await find_push(settings, connections, push_id)
    if found is None:
        return 2
    collection, document = found
    while True:
        out.write("\r" + progress_line(document) + " " * 4)
        out.flush()
        if document["status"] in TERMINAL or not wait:
            break
        await asyncio.sleep(interval_s)  # polling interval of a live progress display
        document = await collection.find_one({"_id": push_id}) or document
    out.write("\n")
    if document.get("failedPerReason"):
        out.write("failed by reason: " + json.dumps(document["failedPerReason"], sort_keys=True) + "\n")
    return 0 if document["status"] == "succeeded" else 1


async def push_cancel(settings: Settings, connections: Connections, push_id: str, clock: Clock) -> int:
    """End a push `failed` with reason `cancelled`; its remaining units are skipped by the senders."""
    found = await find_push(settings, connections, push_id)
    if found is None:
        return 2
    collection, document = found
    if not await fail_push(collection, push_id, 1, CANCELLED):
        print(f"push {push_id} is already {document['status']}; nothing to cancel", file=sys.stderr)
        return 1
    await collection.update_one({"_id": push_id}, {"$set": {f"{OWN}.cancelled_at": clock.now()}})
    print(f"push {push_id} cancelled")
    return 0


async def dlq_list(settings: Settings, connections: Connections, out: TextIO = sys.stdout) -> int:
    entries: list[dict[str, Any]] = []
    for app in settings.apps:
        cursor = dead_collection(app_database(connections.mongo, app)).find().sort("dead_at", 1)
        entries.extend([describe(entry) async for entry in cursor])
    for entry in entries:
        out.write(json.dumps(entry) + "\n")
    if not entries:
        out.write("the dead-letter queue is empty\n")
    return 0


async def dlq_replay(
    settings: Settings, connections: Connections, entry_ids: list[str], replay_all: bool
) -> int:
    """Re-queue kept dead letters (all not yet finalized with --all); exit 1 if any could not be replayed."""
    status = 0
    for app in settings.apps:
        database = app_database(connections.mongo, app)
        ids = entry_ids
        if replay_all:
            ids = [
                entry["_id"]
                async for entry in dead_collection(database).find({"finalized": False}, {"_id": 1})
            ]
        for entry_id in ids:
            result = await replay(connections.broker, database, entry_id)
            if result == "not found" and not replay_all:
                continue
            print(f"{entry_id}: {result}")
            status |= int(result != "replayed")
    return status
