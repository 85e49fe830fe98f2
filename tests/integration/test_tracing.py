"""With `[tracing]` on, one push is one trace: the intake's span, its plan's span, one span per unit."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from typing import Any

import pytest
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from pushgw.messages import PlanPush, parse_work_item
from pushgw.settings import Settings, TracingSettings
from pushgw.tracing import configure_tracing, current_traceparent, push_span, shutdown_tracing
from tests.fixtures.fleet import RunningWorker
from tests.fixtures.gateway import RunningGateway, SettingsFactory
from tests.fixtures.waiting import until
from tests.integration.test_fleet import two_unit_push


@pytest.fixture
def spans() -> Iterator[InMemorySpanExporter]:
    exporter = InMemorySpanExporter()
    configure_tracing(TracingSettings(enabled=True), exporter)
    yield exporter
    shutdown_tracing()


def test_tracing_off_costs_nothing_and_propagates_nothing() -> None:
    with push_span("pushgw.intake", None, push_id="p1"):
        assert current_traceparent() is None
    item = PlanPush(app_id="a", push_id="p1", where={}, data={}, accepted_at=datetime.now(UTC))
    assert b"traceparent" not in item.to_bytes()  # what workers of the previous release read
    traced = item.model_copy(update={"traceparent": "00-" + "1" * 32 + "-" + "2" * 16 + "-01"})
    assert parse_work_item(traced.to_bytes()) == traced


def test_one_push_is_one_trace_from_intake_through_its_units(
    spans: InMemorySpanExporter,
    make_settings: SettingsFactory,
    gateway_factory: Callable[[Settings], RunningGateway],
    worker_factory: Callable[..., RunningWorker],
    mongo: Any,
    db_name: str,
) -> None:
    push_id = two_unit_push(make_settings, gateway_factory, worker_factory, mongo, db_name)

    def all_ended() -> list[Any]:
        # the push turns `succeeded` inside its last unit's span, so that span may end a moment later
        ended = [span for span in spans.get_finished_spans() if span.attributes["pushgw.push_id"] == push_id]
        return ended if sum(span.name == "pushgw.send_batch" for span in ended) == 2 else []

    finished = until(all_ended, what="both units' spans to end")
    by_name: dict[str, list[Any]] = {}
    for span in finished:
        by_name.setdefault(span.name, []).append(span)
    [intake], [plan] = by_name["pushgw.intake"], by_name["pushgw.plan_push"]
    units = by_name["pushgw.send_batch"]
    assert sorted(span.attributes["pushgw.unit"] for span in units) == ["all-b0", "all-b1"]
    assert intake.parent is None
    assert plan.parent.span_id == intake.context.span_id
    assert {span.parent.span_id for span in units} == {plan.context.span_id}
    assert {span.context.trace_id for span in finished} == {intake.context.trace_id}
