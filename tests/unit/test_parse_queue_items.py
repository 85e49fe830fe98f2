"""Parse Server's push work items → the PlanPush our own intake would have made of the same request."""

from __future__ import annotations

import json
from datetime import UTC, datetime

import pytest

from pushgw.push_status import plan_from_status
from workers.parse_queue import UnreadableParseItem, plan_from_parse_item, read_parse_item

NOW = datetime(2026, 11, 26, 12, 0, tzinfo=UTC)
# Observed on parse-server 9.10.0 with batchSize 2 (parse-server-integration.md §2.3).
OBSERVED = (
    '{"body":{"channels":["news"],"data":{"alert":"queued","badge":"Increment"}},"query":{"where":'
    '{"channels":{"$in":["news"]},"deviceToken":{"$exists":true}},"limit":2,"skip":2,"order":"objectId"},'
    '"pushStatus":{"objectId":"ooB9aQA3TX"},"applicationId":"e2eAppId"}'
)


def test_observed_item_plans_the_request_audience_with_parse_badges() -> None:
    plan = plan_from_parse_item(read_parse_item(OBSERVED.encode()), now=NOW)
    assert (plan.app_id, plan.push_id) == ("e2eAppId", "ooB9aQA3TX")
    # The request's audience, not Parse's page: no skip, and no deviceToken conjunct that would hide PPNS.
    assert plan.where == {"channels": {"$in": ["news"]}}
    assert plan.data == {"alert": "queued", "badge": "Increment"}
    assert plan.badge_applied and not plan.scheduled
    assert plan.accepted_at == NOW


def test_expiry_is_already_milliseconds_and_other_keys_pass_through() -> None:
    body = {
        "where": {"deviceType": "ios"}, "data": {"alert": "x"}, "expiration_time": 1764158400000,
        "push_time": "2026-11-26T12:00:00.000Z", "notification": {"title": "t"}, "audience_id": "A1",
    }  # fmt: skip
    item = {"body": body, "pushStatus": {"objectId": "P1"}, "applicationId": "app"}
    plan = plan_from_parse_item(read_parse_item(json.dumps(item).encode()), now=NOW)
    assert plan.expiry_ms == 1764158400000 and plan.expiration_interval_s is None
    assert plan.options == {"notification": {"title": "t"}, "audience_id": "A1"}
    interval = {**item, "body": {"channels": ["a"], "expiration_interval": 60}}
    assert (
        plan_from_parse_item(read_parse_item(json.dumps(interval).encode()), now=NOW).expiration_interval_s
        == 60
    )


@pytest.mark.parametrize(
    "raw",
    [
        b"not json",
        b'{"body": {"channels": ["a"]}, "applicationId": "app"}',  # no pushStatus
        b'{"body": {"data": {}}, "pushStatus": {"objectId": "P"}, "applicationId": "app"}',  # no audience
        b'{"body": {"where": {}, "channels": []}, "pushStatus": {"objectId": "P"}, "applicationId": "app"}',
        b'{"body": {"where": {}}, "pushStatus": {"objectId": ""}, "applicationId": "app"}',
    ],
)
def test_unreadable_items_are_refused(raw: bytes) -> None:
    with pytest.raises(UnreadableParseItem):
        read_parse_item(raw)


def test_a_replanned_parse_push_keeps_its_badges_applied() -> None:
    row = {
        "_id": "P1", "query": '{"where":{}}', "payload": '{"badge":"Increment"}', "pushTime": "x",
        "_created_at": NOW, "pushgw": {"badge_applied": True},
    }  # fmt: skip
    assert plan_from_status(row, "app").badge_applied
    assert not plan_from_status({**row, "pushgw": {}}, "app").badge_applied
