"""POST {mount}/push against the real app, real SecantusDB and real RabbitMQ: Parse's answers, row by row."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from pymongo import MongoClient

from pushgw.settings import Settings
from tests.fixtures.gateway import RunningGateway, SettingsFactory, app_config
from tests.fixtures.rabbit import RabbitAdmin
from tests.fixtures.waiting import until

MASTER = {"X-Parse-Application-Id": "app1", "X-Parse-Master-Key": "master1"}
GatewayFactory = Callable[[Settings], RunningGateway]


def post(
    gateway: RunningGateway, body: Any, headers: dict[str, str] | None = None, path: str = "/parse/push"
) -> Any:
    content = body if isinstance(body, bytes | str) else json.dumps(body)
    merged = {"Content-Type": "application/json", **(headers if headers is not None else MASTER)}
    return gateway.client().post(path, content=content, headers=merged)


def status_rows(mongo: MongoClient[dict[str, Any]], db_name: str) -> list[dict[str, Any]]:
    return list(mongo[db_name]["_PushStatus"].find())


def assert_parse_error(response: Any, status: int, body: dict[str, Any]) -> None:
    assert response.status_code == status, response.text
    assert response.json() == body
    assert (
        response.headers["access-control-expose-headers"] == "X-Parse-Job-Status-Id, X-Parse-Push-Status-Id"
    )


# --- authentication: contract §3.2, one test per row -------------------------------------------


def test_missing_app_id_gets_403_unauthorized_without_content_type(gateway: RunningGateway) -> None:
    response = post(gateway, {"channels": ["a"]}, headers={"X-Parse-Master-Key": "master1"})
    assert_parse_error(response, 403, {"error": "unauthorized"})
    assert "content-type" not in response.headers


def test_unknown_app_id_gets_403_unauthorized(gateway: RunningGateway) -> None:
    response = post(
        gateway, {"channels": ["a"]}, headers={"X-Parse-Application-Id": "nope", "X-Parse-Master-Key": "x"}
    )
    assert_parse_error(response, 403, {"error": "unauthorized"})


def test_body_app_id_with_mismatching_header_master_key_gets_403(gateway: RunningGateway) -> None:
    body = {"channels": ["a"], "_ApplicationId": "app1", "_MasterKey": "master1"}
    response = post(gateway, body, headers={"X-Parse-Master-Key": "wrong"})
    assert_parse_error(response, 403, {"error": "unauthorized"})


def test_cloud_context_that_is_not_an_object_gets_107(gateway: RunningGateway) -> None:
    response = post(gateway, {"channels": ["a"]}, headers={**MASTER, "X-Parse-Cloud-Context": "[1]"})
    assert_parse_error(response, 400, {"code": 107, "error": "Invalid object for context."})


def test_master_key_from_address_outside_allow_list_gets_403(
    make_settings: SettingsFactory, gateway_factory: GatewayFactory
) -> None:
    gateway = gateway_factory(make_settings([app_config(master_key_ips=["10.0.0.0/8"])]))
    assert_parse_error(post(gateway, {"channels": ["a"]}), 403, {"error": "unauthorized"})


def test_master_key_allowed_through_trusted_proxy_forwarded_address(
    make_settings: SettingsFactory, gateway_factory: GatewayFactory
) -> None:
    settings = make_settings(
        [app_config(master_key_ips=["10.1.2.0/24"])], http={"trusted_proxies": ["127.0.0.1/32"]}
    )
    gateway = gateway_factory(settings)
    allowed = post(gateway, {"channels": ["a"]}, headers={**MASTER, "X-Forwarded-For": "10.1.2.3"})
    assert allowed.status_code == 200
    spoofed = post(gateway, {"channels": ["a"]}, headers={**MASTER, "X-Forwarded-For": "10.1.2.3, 192.0.2.9"})
    assert spoofed.status_code == 403


def test_no_key_when_client_keys_are_configured_gets_403_unauthorized(
    make_settings: SettingsFactory, gateway_factory: GatewayFactory
) -> None:
    gateway = gateway_factory(make_settings([app_config(rest_api_key="rest1")]))
    response = post(gateway, {"channels": ["a"]}, headers={"X-Parse-Application-Id": "app1"})
    assert_parse_error(response, 403, {"error": "unauthorized"})
    wrong_master = post(gateway, {"channels": ["a"]}, headers={**MASTER, "X-Parse-Master-Key": "wrong"})
    assert_parse_error(wrong_master, 403, {"error": "unauthorized"})


def test_valid_rest_key_gets_403_permission_denied(
    make_settings: SettingsFactory, gateway_factory: GatewayFactory
) -> None:
    gateway = gateway_factory(make_settings([app_config(rest_api_key="rest1", javascript_key="js1")]))
    for header, key in (("X-Parse-REST-API-Key", "rest1"), ("X-Parse-Javascript-Key", "js1")):
        response = post(gateway, {"channels": ["a"]}, headers={"X-Parse-Application-Id": "app1", header: key})
        assert_parse_error(response, 403, {"error": "Permission denied"})


def test_wrong_master_key_without_client_keys_gets_permission_denied(gateway: RunningGateway) -> None:
    response = post(gateway, {"channels": ["a"]}, headers={**MASTER, "X-Parse-Master-Key": "wrong"})
    assert_parse_error(response, 403, {"error": "Permission denied"})


def test_rest_key_push_opt_in_accepts_rest_key(
    make_settings: SettingsFactory, gateway_factory: GatewayFactory
) -> None:
    gateway = gateway_factory(make_settings([app_config(rest_api_key="rest1", allow_rest_key_push=True)]))
    headers = {"X-Parse-Application-Id": "app1", "X-Parse-REST-API-Key": "rest1"}
    assert post(gateway, {"channels": ["a"]}, headers=headers).status_code == 200


def test_read_only_master_key_gets_119(
    make_settings: SettingsFactory, gateway_factory: GatewayFactory
) -> None:
    gateway = gateway_factory(make_settings([app_config(read_only_master_key="ro1")]))
    response = post(gateway, {"channels": ["a"]}, headers={**MASTER, "X-Parse-Master-Key": "ro1"})
    assert_parse_error(response, 400, {"code": 119, "error": "Permission denied"})


def test_basic_auth_with_master_key_is_accepted(gateway: RunningGateway, mongo: Any, db_name: str) -> None:
    response = post(gateway, {"channels": ["a"]}, headers={"Authorization": "Basic YXBwMTptYXN0ZXIx"})
    assert response.status_code == 200
    assert len(status_rows(mongo, db_name)) == 1


# --- validation: contract §5.2, one test per row ----------------------------------------------


@pytest.mark.parametrize(
    ("body", "status", "expected"),
    [
        ({"channels": ["a"], "where": {}}, 400, {"code": 115, "error": "Channels and query can not be set at the same time."}),
        ({"data": {"alert": "x"}}, 400, {"code": 115, "error": 'Sending a push requires either "channels" or a "where" query.'}),
        ({"channels": ["a"], "push_time": "not-a-date"}, 400, {"code": 115, "error": "not-a-date is not valid time."}),
        ({"channels": ["a"], "push_time": {"a": 1}}, 400, {"code": 115, "error": "[object Object] is not valid time."}),
        ({"channels": ["a"], "push_time": None}, 400, {"code": 115, "error": "null is not valid time."}),
        ({"channels": ["a"], "push_time": 1e300}, 400, {"code": 115, "error": "1e+300 is not valid time."}),
        ({"channels": ["a"], "expiration_time": "garbage"}, 400, {"code": 115, "error": "garbage is not valid time."}),
        ({"channels": ["a"], "expiration_time": ["a", 1]}, 400, {"code": 115, "error": "a,1 is not valid time."}),
        ({"channels": ["a"], "expiration_interval": "60"}, 400, {"code": 115, "error": "expiration_interval must be a number greater than 0"}),
        ({"channels": ["a"], "expiration_interval": -5}, 400, {"code": 115, "error": "expiration_interval must be a number greater than 0"}),
        ({"channels": ["a"], "expiration_time": 2000000000, "expiration_interval": 60}, 400, {"code": 115, "error": "Both expiration_time and expiration_interval cannot be set"}),
        ({"channels": ["a"], "data": {"badge": "lots"}}, 500, {"code": 1, "message": "Internal server error."}),
        ({"channels": ["a"], "data": {"badge": "foo"}}, 500, {"code": 1, "message": "Internal server error."}),
        ({"channels": ["a"], "data": {"badge": {"__op": "Increment", "amount": 0}}}, 500, {"code": 1, "message": "Internal server error."}),
    ],
    ids=["A-both", "B-neither", "D-push-time-string", "D-push-time-object", "D-null", "D-huge-number",
         "D-expiration-garbage", "D-array", "E-string", "E-negative", "F-both-expiries", "G-lots", "G-foo", "G-amount-0"],
)  # fmt: skip
def test_invalid_body_gets_parse_error_and_stores_nothing(
    gateway: RunningGateway,
    mongo: Any,
    db_name: str,
    rabbit: RabbitAdmin,
    body: Any,
    status: int,
    expected: Any,
) -> None:
    assert_parse_error(post(gateway, body), status, expected)
    assert status_rows(mongo, db_name) == []
    assert rabbit.count("plan") == 0


def test_empty_body_gets_audience_error(gateway: RunningGateway) -> None:
    expected = {"code": 115, "error": 'Sending a push requires either "channels" or a "where" query.'}
    assert_parse_error(post(gateway, b""), 400, expected)


def test_form_encoded_json_is_read_as_a_form_like_parse(gateway: RunningGateway) -> None:
    response = post(
        gateway, '{"channels":["a"]}', headers={**MASTER, "Content-Type": "application/x-www-form-urlencoded"}
    )
    assert response.json()["code"] == 115


def test_malformed_json_gets_400_with_parser_message_and_no_code(gateway: RunningGateway) -> None:
    response = post(gateway, b'{"channels": ["a"],', headers={})
    assert response.status_code == 400
    assert set(response.json()) == {"error"}
    assert "JSON" in response.json()["error"]


def test_body_over_the_limit_gets_413(
    make_settings: SettingsFactory, gateway_factory: GatewayFactory
) -> None:
    gateway = gateway_factory(make_settings(http={"max_body_bytes": 2048}))
    response = post(gateway, {"channels": ["a"], "data": {"alert": "x" * 5000}})
    assert_parse_error(response, 413, {"error": "request entity too large"})


def test_other_methods_get_express_404_page(gateway: RunningGateway) -> None:
    response = gateway.client().get("/parse/push", headers=MASTER)
    assert response.status_code == 404
    assert "<pre>Cannot GET /parse/push</pre>" in response.text
    override = post(gateway, {"channels": ["a"], "_method": "GET"})
    assert override.status_code == 404
    assert "Cannot GET /parse/push" in override.text


def test_cors_preflight_answers_200_with_parse_headers(gateway: RunningGateway) -> None:
    response = gateway.client().options(
        "/parse/push", headers={"Origin": "https://dash.example", "Access-Control-Request-Method": "POST"}
    )
    assert response.status_code == 200
    assert response.text == "OK"
    assert response.headers["access-control-allow-origin"] == "*"
    assert response.headers["access-control-allow-methods"] == "GET,PUT,POST,DELETE,OPTIONS"
    assert "X-Parse-Request-Id" in response.headers["access-control-allow-headers"]
    assert (
        response.headers["access-control-expose-headers"] == "X-Parse-Job-Status-Id, X-Parse-Push-Status-Id"
    )


# --- success and the stored _PushStatus --------------------------------------------------------


def accepted_id(response: Any) -> str:
    assert response.status_code == 200, response.text
    assert response.content == b'{"result":true}'
    assert response.headers["content-type"] == "application/json; charset=utf-8"
    assert (
        response.headers["access-control-expose-headers"] == "X-Parse-Job-Status-Id, X-Parse-Push-Status-Id"
    )
    push_id: str = response.headers["x-parse-push-status-id"]
    assert len(push_id) == 10 and push_id.isalnum()
    return push_id


def bson_type_of(mongo: Any, db_name: str, push_id: str, field: str) -> str:
    for bson_type in ("string", "int", "long", "double", "date", "object", "array", "bool"):
        query = {"_id": push_id, field: {"$type": bson_type}}
        if mongo[db_name]["_PushStatus"].count_documents(query):
            return bson_type
    return "missing"


def test_channels_push_stores_parse_document_with_parse_types(
    gateway: RunningGateway, mongo: Any, db_name: str, rabbit: RabbitAdmin
) -> None:
    before = datetime.now(UTC) - timedelta(seconds=1)
    body = {"channels": ["news"], "data": {"alert": "hi", "badge": "Increment"}}
    push_id = accepted_id(post(gateway, body))
    [row] = status_rows(mongo, db_name)
    assert list(row) == ["_id", "pushTime", "query", "payload", "source", "status", "numSent", "pushHash",
                         "_wperm", "_rperm", "_acl", "_created_at", "_updated_at"]  # fmt: skip
    assert row["_id"] == push_id
    assert row["query"] == '{"channels":{"$in":["news"]}}'
    assert row["payload"] == '{"alert":"hi","badge":"Increment"}'
    assert row["pushHash"] == "49f68a5c8493ec2c0bf489821c21fc3b"
    assert (row["source"], row["status"], row["numSent"]) == ("rest", "pending", 0)
    assert (row["_wperm"], row["_rperm"], row["_acl"]) == ([], [], {})
    assert before < row["_created_at"] == row["_updated_at"] < datetime.now(UTC)
    assert (
        row["pushTime"]
        == row["_created_at"].strftime("%Y-%m-%dT%H:%M:%S.")
        + f"{row['_created_at'].microsecond // 1000:03d}Z"
    )
    types = {
        field: bson_type_of(mongo, db_name, push_id, field)
        for field in ("_id", "pushTime", "numSent", "_created_at", "_acl", "_rperm")
    }
    assert types == {
        "_id": "string",
        "pushTime": "string",
        "numSent": "int",
        "_created_at": "date",
        "_acl": "object",
        "_rperm": "array",
    }
    [message] = rabbit.take_all("plan")
    item = json.loads(message.body)
    assert message.delivery_mode == 2 and message.message_id == push_id
    assert (item["kind"], item["version"], item["push_id"], item["app_id"]) == (
        "plan_push",
        1,
        push_id,
        "app1",
    )
    assert item["where"] == {"channels": {"$in": ["news"]}}
    assert item["data"] == {"alert": "hi", "badge": "Increment"}


def test_where_push_keeps_query_text_byte_for_byte(gateway: RunningGateway, mongo: Any, db_name: str) -> None:
    raw = '{"where": {"deviceType": {"$in": ["ios", "android"]}, "name": "Zoë", "n": 1.0}, "data": {"alert": {"title": "t", "body": "b"}}}'
    accepted_id(post(gateway, raw))
    [row] = status_rows(mongo, db_name)
    assert row["query"] == '{"deviceType":{"$in":["ios","android"]},"name":"Zoë","n":1}'
    assert row["payload"] == '{"alert":{"title":"t","body":"b"}}'
    assert row["pushHash"] == hashlib.md5(b'{"title":"t","body":"b"}').hexdigest()


def test_push_without_data_stores_empty_payload(gateway: RunningGateway, mongo: Any, db_name: str) -> None:
    accepted_id(post(gateway, {"where": {}}))
    [row] = status_rows(mongo, db_name)
    assert (row["query"], row["payload"], row["pushHash"]) == ("{}", "{}", "d41d8cd98f00b204e9800998ecf8427e")


def test_invalid_audience_values_are_accepted_like_parse(
    gateway: RunningGateway, mongo: Any, db_name: str
) -> None:
    for body in (
        {"where": "abc"},
        {"where": None},
        {"channels": "news"},
        {"where": {"deviceType": {"$foo": 1}}},
    ):
        accepted_id(post(gateway, body))
    assert sorted(row["query"] for row in status_rows(mongo, db_name)) == sorted(
        ['"abc"', "null", '{"channels":{"$in":"news"}}', '{"deviceType":{"$foo":1}}']
    )


def test_expiration_time_epoch_and_iso_become_double_ms(
    gateway: RunningGateway, mongo: Any, db_name: str
) -> None:
    epoch_id = accepted_id(post(gateway, {"channels": ["a"], "expiration_time": 1795630607.723}))
    iso_id = accepted_id(post(gateway, {"channels": ["a"], "expiration_time": "2026-11-25T17:16:47.723Z"}))
    rows = {row["_id"]: row for row in status_rows(mongo, db_name)}
    assert rows[epoch_id]["expiry"] == 1795630607723.0
    assert rows[iso_id]["expiry"] == datetime(2026, 11, 25, 17, 16, 47, 723000, tzinfo=UTC).timestamp() * 1000
    assert bson_type_of(mongo, db_name, epoch_id, "expiry") == "double"
    assert "expiration_interval" not in rows[epoch_id]


def test_expiration_interval_sets_expiry_from_request_time(
    gateway: RunningGateway, mongo: Any, db_name: str
) -> None:
    push_id = accepted_id(post(gateway, {"channels": ["a"], "expiration_interval": 3600}))
    [row] = status_rows(mongo, db_name)
    created_ms = row["_created_at"].timestamp() * 1000
    assert abs(row["expiry"] - (created_ms + 3_600_000)) < 2000
    assert row["expiration_interval"] == 3600
    assert bson_type_of(mongo, db_name, push_id, "expiration_interval") == "int"
    assert bson_type_of(mongo, db_name, push_id, "expiry") == "double"


@pytest.mark.parametrize(
    ("push_time", "stored"),
    [
        ("2030-01-01T10:00:00Z", "2030-01-01T10:00:00.000Z"),
        ("2007-04-05T12:30-02:00", "2007-04-05T14:30:00.000Z"),
        ("2030-01-01T10:00:00", "2030-01-01T10:00:00.000"),
        ("2017-09-06", "2017-09-06T00:00:00.000"),
        (1900000000, "2030-03-17T17:46:40.000"),
    ],
)
def test_scheduled_push_time_with_and_without_zone(
    make_settings: SettingsFactory,
    gateway_factory: GatewayFactory,
    mongo: Any,
    db_name: str,
    push_time: Any,
    stored: str,
) -> None:
    gateway = gateway_factory(make_settings([app_config(scheduled_push=True)]))
    accepted_id(post(gateway, {"channels": ["a"], "push_time": push_time, "expiration_interval": 60}))
    [row] = status_rows(mongo, db_name)
    assert (row["status"], row["pushTime"]) == ("scheduled", stored)
    assert "expiry" not in row  # the interval counts from the actual send time
    assert row["expiration_interval"] == 60


def test_push_time_is_ignored_when_scheduling_is_off(
    gateway: RunningGateway, mongo: Any, db_name: str, rabbit: RabbitAdmin
) -> None:
    accepted_id(post(gateway, {"channels": ["a"], "push_time": "2030-01-01T10:00:00Z"}))
    [row] = status_rows(mongo, db_name)
    assert row["status"] == "pending"
    assert row["pushTime"].endswith("Z") and row["pushTime"] != "2030-01-01T10:00:00.000Z"
    [message] = rabbit.take_all("plan")
    assert json.loads(message.body)["scheduled"] is False


def test_sdk_text_plain_body_credentials_work_and_are_never_stored(
    gateway: RunningGateway, mongo: Any, db_name: str, rabbit: RabbitAdmin
) -> None:
    body = ('{"channels":["news"],"data":{"alert":"hi"},"_ApplicationId":"app1","_ClientVersion":"js8.6.2",'
            '"_MasterKey":"master1","_InstallationId":"1a9b9c36-0000-4000-8000-000000000000"}')  # fmt: skip
    response = gateway.client().post("/parse/push", content=body, headers={"Content-Type": "text/plain"})
    accepted_id(response)
    [row] = status_rows(mongo, db_name)
    [message] = rabbit.take_all("plan")
    for stored in (json.dumps(row, default=str), message.body.decode()):
        assert "master1" not in stored and "_ApplicationId" not in stored and "_InstallationId" not in stored


def test_audience_id_bumps_times_used(gateway: RunningGateway, mongo: Any, db_name: str) -> None:
    mongo[db_name]["_Audience"].insert_one({"_id": "aud1", "name": "all", "timesUsed": 2})
    accepted_id(post(gateway, {"where": {}, "audience_id": "aud1"}))

    def bumped() -> bool:
        audience = mongo[db_name]["_Audience"].find_one({"_id": "aud1"})
        return audience is not None and audience["timesUsed"] == 3 and "lastUsed" in audience

    until(bumped, what="_Audience.timesUsed bump")


# --- nothing lost, nothing doubled ------------------------------------------------------------


def test_repeated_request_id_returns_first_answer_and_creates_one_push(
    gateway: RunningGateway, mongo: Any, db_name: str, rabbit: RabbitAdmin
) -> None:
    headers = {**MASTER, "X-Parse-Request-Id": "req-42"}
    first = accepted_id(post(gateway, {"channels": ["a"]}, headers=headers))
    second = accepted_id(post(gateway, {"channels": ["a"]}, headers=headers))
    other = accepted_id(
        post(gateway, {"channels": ["a"]}, headers={**MASTER, "X-Parse-Request-Id": "req-43"})
    )
    assert first == second != other
    assert len(status_rows(mongo, db_name)) == 2
    assert len(rabbit.take_all("plan")) == 2


def test_two_apps_on_one_gateway_are_isolated(
    make_settings: SettingsFactory, gateway_factory: GatewayFactory, mongo: Any, db_name: str
) -> None:
    settings = make_settings([app_config("app1", "master1"), app_config("app2", "master2")])
    gateway = gateway_factory(settings)
    cross = post(
        gateway,
        {"channels": ["a"]},
        headers={"X-Parse-Application-Id": "app2", "X-Parse-Master-Key": "master1"},
    )
    assert cross.status_code == 403
    body_cross = {"channels": ["a"], "_ApplicationId": "app2", "_MasterKey": "master1"}
    assert post(gateway, body_cross, headers={}).status_code == 403
    accepted_id(
        post(
            gateway,
            {"channels": ["a"]},
            headers={"X-Parse-Application-Id": "app2", "X-Parse-Master-Key": "master2"},
        )
    )
    assert mongo[db_name]["_PushStatus"].count_documents({}) == 0
    assert mongo[f"{db_name}_1"]["_PushStatus"].count_documents({}) == 1
    mongo.drop_database(f"{db_name}_1")


def test_operations_endpoints(gateway: RunningGateway) -> None:
    client = gateway.client()
    assert client.get("/health").json() == {"status": "ok"}
    assert client.get("/ready").json() == {"mongo": "ok", "queue": "ok"}
    accepted_id(post(gateway, {"channels": ["a"]}))
    metrics = client.get("/metrics").text
    assert 'pushgw_intake_requests_total{outcome="accepted"}' in metrics
    assert "pushgw_intake_request_seconds_bucket" in metrics
