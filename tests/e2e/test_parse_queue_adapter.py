"""deploy/parse-server's queue adapter on its own against RabbitMQ: outages, a missing queue, restarts.

Parse Server calls `publish()` without awaiting it (route C); the adapter must keep every work item until
RabbitMQ confirmed it in `<prefix>.parse`, and deliver Parse's exact bytes with the agreed properties.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
from pathlib import Path
from typing import Any

import aio_pika

from pushgw.topology import Topology, declare_topology
from tests.fixtures.ports import free_port
from tests.fixtures.rabbit import RABBIT_URL, RabbitAdmin

PARSE_HOST = Path(__file__).resolve().parent / "parse_host"


def declare_fleet_queues(prefix: str) -> None:
    """Declare `<prefix>.parse` and its neighbours exactly as a pushgw worker does, without consuming."""

    async def declare() -> None:
        connection = await aio_pika.connect(RABBIT_URL)
        async with connection:
            await declare_topology(await connection.channel(), Topology(prefix, delivery_limit=5))

    asyncio.run(declare())


def publish_with_adapter(settings: dict[str, Any], messages: list[str], flush_ms: int) -> tuple[int, str]:
    """Run deploy/parse-server's queue adapter in node: messages still unconfirmed at the end, and its log."""
    driver = json.dumps({**settings, "messages": messages, "flushMs": flush_ms})
    result = subprocess.run(
        ["node", str(PARSE_HOST / "queue-publish.js"), driver], cwd=PARSE_HOST, capture_output=True,
        text=True, timeout=60, check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    pending: int = json.loads(result.stdout)["pending"]
    return pending, result.stderr


def test_queue_adapter_keeps_items_through_outages_and_restarts_until_the_fleet_queue_confirms(
    parse_host_modules: Path, rabbit: RabbitAdmin, tmp_path: Path
) -> None:
    items = [
        json.dumps({"body": {"channels": ["a"], "data": {"alert": "x"}}, "query": {"where": {}, "limit": 2,
                    "skip": skip, "order": "objectId"}, "pushStatus": {"objectId": "SpoolTest1"},
                    "applicationId": "e2eAppId"}, separators=(",", ":"))
        for skip in (0, 2, 4)
    ]  # fmt: skip
    spool = {"prefix": rabbit.prefix, "spoolDir": str(tmp_path / "spool")}
    unreachable = f"amqp://guest:guest@127.0.0.1:{free_port()}/"
    # RabbitMQ unreachable: kept (and spooled), the process neither throws nor hangs.
    pending, log = publish_with_adapter({**spool, "url": unreachable}, items[:1], flush_ms=500)
    assert (pending, "cannot connect" in log) == (1, True), log
    # Broker up, but no `<prefix>.parse` yet: mandatory publishes come back, kept; the first one replayed.
    pending, log = publish_with_adapter({**spool, "url": RABBIT_URL}, items[1:2], flush_ms=1000)
    assert (pending, "replaying 1 work items" in log, "returned: no queue" in log) == (2, True, True), log
    declare_fleet_queues(rabbit.prefix)
    assert publish_with_adapter({**spool, "url": RABBIT_URL}, items[2:], flush_ms=15_000)[0] == 0

    messages = rabbit.take_all("parse")
    assert [message.body.decode() for message in messages] == items  # exact bytes, in order, once each
    assert [message.message_id for message in messages] == ["SpoolTest1:0", "SpoolTest1:2", "SpoolTest1:4"]
    for message in messages:
        assert (message.content_type, message.delivery_mode) == ("application/json", 2)
        assert message.headers["x-parse-channel"] == "e2e"
    assert (tmp_path / "spool" / f"{rabbit.prefix}.parse.spool").read_text() == ""  # compacted
