"""Push summaries for `pushgw push list` and the console: audience lines, counts, the table."""

from __future__ import annotations

from datetime import UTC, datetime

from pushgw.push_listing import describe_query, format_table, summarize


def test_channel_pushes_read_as_channels_and_queries_as_where() -> None:
    assert describe_query('{"channels":{"$in":["a","b"]}}') == "channels: a, b"
    assert describe_query('{"channels":{"$in":["a"]},"deviceType":"ios"}') == (
        'where: {"channels":{"$in":["a"]},"deviceType":"ios"}'
    )
    assert describe_query('{"deviceType":"' + "x" * 100 + '"}').endswith("…")
    assert len(describe_query('{"deviceType":"' + "x" * 100 + '"}')) == len("where: ") + 60


def test_summary_knows_the_audience_only_once_planned() -> None:
    document = {
        "_id": "abc", "status": "running", "_created_at": datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC),
        "numSent": 5, "numFailed": 1, "query": "{}", "payload": '{"alert":{"title":"T","body":"B"}}',
        "pushgw": {"plans_done": 0, "plans_expected": 1, "audience": 10},
    }  # fmt: skip
    summary = summarize(document)
    assert (summary["audience"], summary["alert"], summary["final"]) == (None, "B", False)
    assert summary["created"] == "2026-01-02T03:04:05.000Z"
    document["pushgw"]["plans_done"] = 1
    assert summarize(document)["audience"] == 10


def test_table_has_a_header_and_one_row_per_push() -> None:
    push = summarize({"_id": "abc", "status": "failed", "query": '{"channels":{"$in":["x"]}}'})
    table = format_table([push]).splitlines()
    assert table[0].split() == ["ID", "STATUS", "CREATED", "SENT/FAILED", "AUDIENCE"]
    assert table[1].split() == ["abc", "failed", "0/0", "channels:", "x"]
