"""A fan-out's units carry the audience rows as the database sent them (workers/devices.py)."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

import bson
import pytest
from bson.codec_options import CodecOptions

from pushgw.messages import Device, SendBatch, UnknownWorkItem, parse_work_item
from tests.fixtures.parse_data import installation
from workers.dead_letters import describe
from workers.devices import PROJECTION, devices_of, resolve_rows, row_id, split_rows

UPDATED = datetime(2026, 11, 25, 17, 16, 46, 476000, tzinfo=UTC)
ROWS = [
    installation("ios", _id="LkZekF55aD", badge=3, localeIdentifier="fr-FR", _updated_at=UPDATED),
    installation("android", _id="abIg79augO", deviceToken=None),  # no token: reaches nothing
    installation("embedded", _id="EmbDev0001"),
    installation("android", _id="DIED88CjaD", timeZone="America/New_York"),
]


def stored(row: dict[str, Any]) -> bytes:
    """The row as a raw cursor returns it: projected, `_id` first."""
    return bson.encode({key: value for key, value in row.items() if key == "_id" or key in PROJECTION})


def unit(**fields: Any) -> SendBatch:
    return SendBatch(app_id="app", push_id="p", unit="all-b0", first_id="a", last_id="z", **fields)


def test_a_raw_batch_splits_into_its_rows_without_decoding() -> None:
    rows = [stored(row) for row in ROWS]
    assert split_rows(b"".join(rows)) == rows
    assert split_rows(b"") == []
    assert [row_id(row) for row in rows] == ["LkZekF55aD", "abIg79augO", "EmbDev0001", "DIED88CjaD"]


@pytest.mark.parametrize("cut", [1, 7, -1])
def test_a_truncated_batch_is_refused(cut: int) -> None:
    with pytest.raises(bson.InvalidBSON):
        split_rows(b"".join(stored(row) for row in ROWS)[:cut])


def test_rows_resolve_to_the_devices_the_planner_would_have_built() -> None:
    item = unit(rows=b"".join(stored(row) for row in ROWS))
    resolved, skipped = resolve_rows(parse_work_item(item.to_bytes()))  # through the queue's JSON
    assert isinstance(resolved, SendBatch)
    assert skipped == 1  # counted done by the unit, in no outcome
    assert resolved.rows is None
    planner_rows = bson.decode_all(b"".join(stored(row) for row in ROWS), CodecOptions(tz_aware=True))
    assert resolved.devices == devices_of(planner_rows)  # as a planner decodes a one-user audience
    paris = resolved.devices[0]
    assert (paris.object_id, paris.badge, paris.locale, paris.device_token) == (
        "LkZekF55aD", 3, "fr-FR", ROWS[0]["deviceToken"],
    )  # fmt: skip
    assert [device.transport for device in resolved.devices] == ["apns", "ppns", "fcm"]


def test_a_unit_of_devices_is_what_the_previous_release_wrote_and_read() -> None:
    item = unit(devices=[Device(object_id="a", device_type="ios", transport="apns", device_token="t")])
    body = json.loads(item.to_bytes())
    assert "rows" not in body and "traceparent" not in body
    assert resolve_rows(item) == (item, 0)


def test_a_unit_of_rows_travels_as_a_json_line_then_the_rows_as_they_are() -> None:
    rows = b"".join(stored(row) for row in ROWS)
    body = unit(rows=rows).to_bytes()
    head, _, tail = body.partition(b"\n")
    assert tail == rows  # not base64: the sender decodes the database's own bytes
    assert json.loads(head)["rows_length"] == len(rows) and "rows" not in json.loads(head)
    assert parse_work_item(body) == unit(rows=rows)


def test_a_unit_with_rows_in_its_json_as_the_previous_release_wrote_it_is_read() -> None:
    rows = b"".join(stored(row) for row in ROWS)
    body = unit(rows=rows).model_dump_json(exclude={"traceparent", "rows_length"}).encode()  # base64 rows
    assert b"\n" not in body
    assert parse_work_item(body) == unit(rows=rows)


@pytest.mark.parametrize("cut", [1, 100])
def test_a_truncated_unit_of_rows_is_unreadable_not_a_smaller_unit(cut: int) -> None:
    body = unit(rows=b"".join(stored(row) for row in ROWS)).to_bytes()
    with pytest.raises(UnknownWorkItem, match="bytes of rows announced"):
        parse_work_item(body[:-cut])
    with pytest.raises(UnknownWorkItem, match="none follow"):
        parse_work_item(body.partition(b"\n")[0])


def test_an_item_whose_json_spans_lines_is_still_one_item() -> None:
    item = unit(devices=[Device(object_id="a", device_type="ios", transport="apns", device_token="t")])
    pretty = json.dumps(json.loads(item.to_bytes()), indent=2).encode()
    assert parse_work_item(pretty) == item


@pytest.mark.parametrize("as_text", [False, True], ids=["bytes", "text"])
def test_dead_letter_listing_counts_a_raw_units_rows(as_text: bool) -> None:
    body = unit(rows=b"".join(stored(row) for row in ROWS)).to_bytes()
    if as_text:  # the previous release kept bodies as text, with the rows base64 in the JSON
        body = parse_work_item(body).model_dump_json(exclude={"traceparent", "rows_length"}).encode()
    entry = {
        "_id": "p:all-b0", "app_id": "app", "push_id": "p", "kind": "send_batch", "finalized": False,
        "dead_at": UPDATED, "body": body.decode() if as_text else body,
    }  # fmt: skip
    assert describe(entry)["devices"] == 4
