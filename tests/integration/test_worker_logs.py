"""Every log line a worker writes while it handles a unit carries the push id and the unit (batch) id."""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

import structlog

from pushgw.settings import Settings
from tests.fixtures.fleet import RunningWorker
from tests.fixtures.gateway import RunningGateway, SettingsFactory
from tests.fixtures.parse_data import installation
from tests.integration.test_fleet import FLEET, RECORD_ALL, final_status, send


def test_lines_logged_inside_a_unit_carry_push_and_unit_ids(
    make_settings: SettingsFactory,
    gateway_factory: Callable[[Settings], RunningGateway],
    worker_factory: Callable[..., RunningWorker],
    mongo: Any,
    db_name: str,
) -> None:
    mongo[db_name]["_Installation"].insert_many([installation("ios") for _ in range(5)])
    settings = make_settings(worker=FLEET, recording=RECORD_ALL)  # batch_size 3: two queued send units
    with structlog.testing.capture_logs(processors=[structlog.contextvars.merge_contextvars]) as events:
        gateway, _ = gateway_factory(settings), worker_factory(settings)
        push_id = send(gateway, {"where": {}, "data": {"alert": "x"}})
        assert final_status(mongo, db_name, push_id)["status"] == "succeeded"
    [succeeded] = [event for event in events if event["event"] == "push_succeeded"]
    assert succeeded["push_id"] == push_id
    # Whoever counted last finishes the push: one of the two units, or the plan if both units were counted
    # before it finished.
    assert re.fullmatch(r"all-b[01]|plan", succeeded["unit"]), succeeded
    assert structlog.contextvars.get_contextvars() == {}
