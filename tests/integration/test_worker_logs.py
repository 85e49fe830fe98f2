"""Every log line a worker writes while it handles a unit carries the push id and the unit (batch) id."""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

import structlog

from pushgw.settings import Settings
from tests.fixtures.fleet import RunningWorker
from tests.fixtures.gateway import RunningGateway, SettingsFactory
from tests.fixtures.waiting import until
from tests.integration.test_fleet import two_unit_push


def test_lines_logged_inside_a_unit_carry_push_and_unit_ids(
    make_settings: SettingsFactory,
    gateway_factory: Callable[[Settings], RunningGateway],
    worker_factory: Callable[..., RunningWorker],
    mongo: Any,
    db_name: str,
) -> None:
    with structlog.testing.capture_logs(processors=[structlog.contextvars.merge_contextvars]) as events:
        push_id = two_unit_push(make_settings, gateway_factory, worker_factory, mongo, db_name)
        # logged just after the write that made the push `succeeded`, which two_unit_push waited for
        until(lambda: any(event["event"] == "push_succeeded" for event in events), what="push_succeeded")
    [succeeded] = [event for event in events if event["event"] == "push_succeeded"]
    assert succeeded["push_id"] == push_id
    # Whoever counted last finishes the push: one of the two units, or the plan if both units were counted
    # before it finished.
    assert re.fullmatch(r"all-b[01]|plan", succeeded["unit"]), succeeded
    assert structlog.contextvars.get_contextvars() == {}
