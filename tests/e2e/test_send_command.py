"""`pushgw send` and `pushgw push list` against a real `pushgw dev`: exit codes by outcome, final counts."""

from __future__ import annotations

import json
import re

from tests.fixtures.dev_gateway import DEV_MASTER_KEY, DevGateway


def test_send_waits_until_the_push_succeeded_and_prints_the_counts(pushgw_dev: DevGateway) -> None:
    pushgw_dev.seed(40, "sports")
    result = pushgw_dev.run("send", "--channels", "sports,none", "--alert", "Goal!")
    assert result.returncode == 0, result.stdout + result.stderr
    push_id = re.search(r"push (\w+) accepted", result.stdout)
    assert push_id is not None, result.stdout
    final = result.stdout.rstrip("\n").rsplit("\r", 1)[-1]
    assert "40/40  sent 40  failed 0  succeeded" in final, result.stdout
    row = pushgw_dev.database["_PushStatus"].find_one({"_id": push_id.group(1)})
    assert row["status"] == "succeeded" and row["numSent"] == 40
    assert json.loads(row["payload"]) == {"alert": "Goal!"}
    assert json.loads(row["query"]) == {"channels": {"$in": ["sports", "none"]}}
    assert DEV_MASTER_KEY not in result.stdout + result.stderr


def test_send_with_data_and_where(pushgw_dev: DevGateway) -> None:
    pushgw_dev.seed(6, "x", device_types=("android",))
    pushgw_dev.seed(4, "x", device_types=("ios",))
    data = json.dumps({"alert": "only android", "badge": 3})
    result = pushgw_dev.run("send", "--where", '{"deviceType": "android"}', "--data", data)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "6/6  sent 6  failed 0  succeeded" in result.stdout


def test_send_rejected_by_the_intake_exits_3_with_the_parse_error(pushgw_dev: DevGateway) -> None:
    result = pushgw_dev.run("send", "--channels", "a", "--where", "{}", "--alert", "both")
    assert result.returncode == 3, result.stdout + result.stderr
    assert (
        "rejected by the intake (HTTP 400): code 115: Channels and query can not be set at the same time."
        in (result.stderr)
    )
    assert pushgw_dev.database["_PushStatus"].count_documents({}) == 0


def test_send_of_a_push_that_fails_exits_1(pushgw_dev: DevGateway) -> None:
    pushgw_dev.seed(3, "news")
    result = pushgw_dev.run("send", "--where", '{"deviceType": {"$bogus": 1}}', "--alert", "never")
    assert result.returncode == 1, result.stdout + result.stderr
    assert "failed" in result.stdout.rsplit("\r", 1)[-1]
    row = pushgw_dev.database["_PushStatus"].find_one({})
    assert row["status"] == "failed" and row["errorMessage"]["message"]


def test_send_usage_errors_exit_2(pushgw_dev: DevGateway) -> None:
    no_audience = pushgw_dev.run("send", "--alert", "hi")
    assert no_audience.returncode == 2 and "give --channels or --where" in no_audience.stderr
    bad_json = pushgw_dev.run("send", "--where", "{nope", "--alert", "hi")
    assert bad_json.returncode == 2 and "--where is not JSON" in bad_json.stderr
    unknown_app = pushgw_dev.run("send", "--channels", "a", "--alert", "hi", "--app", "other")
    assert unknown_app.returncode == 2 and "--app other: no such app" in unknown_app.stderr
    closed = pushgw_dev.run("send", "--channels", "a", "--alert", "hi", "--url", "http://127.0.0.1:9/parse")
    assert (
        closed.returncode == 2 and "cannot reach the intake at http://127.0.0.1:9/parse/push" in closed.stderr
    )


def test_push_list_shows_the_pushes_just_sent(pushgw_dev: DevGateway) -> None:
    pushgw_dev.seed(5, "list")
    ids = []
    for alert in ("first", "second"):
        result = pushgw_dev.run("send", "--channels", "list", "--alert", alert)
        assert result.returncode == 0, result.stderr
        ids.append(re.search(r"push (\w+) accepted", result.stdout).group(1))  # type: ignore[union-attr]
    failed = pushgw_dev.run("send", "--where", '{"a": {"$bogus": 1}}', "--alert", "third")
    assert failed.returncode == 1

    table = pushgw_dev.run("push", "list")
    assert table.returncode == 0, table.stderr
    lines = table.stdout.splitlines()
    assert lines[0].split() == ["ID", "STATUS", "CREATED", "SENT/FAILED", "AUDIENCE"]
    assert lines[2].split()[:2] == [ids[1], "succeeded"] and lines[3].split()[:2] == [ids[0], "succeeded"]
    assert re.search(r" 5/0 +channels: list \(5 devices\)$", lines[2]), lines[2]
    assert lines[1].split()[1] == "failed" and 'where: {"a":{"$bogus":1}}' in lines[1]

    as_json = json.loads(
        pushgw_dev.run("push", "list", "--status", "succeeded", "--limit", "1", "--json").stdout
    )
    assert [(push["id"], push["sent"], push["sent_per_type"]) for push in as_json] == [
        (ids[1], 5, {"ios": 3, "android": 2})
    ]
