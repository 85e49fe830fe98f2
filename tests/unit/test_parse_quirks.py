"""JavaScript-compatible renderings Parse's answers and stored documents depend on."""

from __future__ import annotations

import math

import pytest

from pushgw import parse_quirks as quirks


@pytest.mark.parametrize(
    ("value", "text"),
    [
        (10, "10"), (1.5, "1.5"), (1e300, "1e+300"), (1e-7, "1e-7"), (1.5e-7, "1.5e-7"), (0.000001, "0.000001"),
        (1e21, "1e+21"), (123456789012345680000, "123456789012345680000"), (-3, "-3"), (0.1, "0.1"),
        (1795630607723.0, "1795630607723"), (-0.0, "0"), (2**53 + 1, "9007199254740992"),
    ],
)  # fmt: skip
def test_js_number_string_matches_javascript(value: float, text: str) -> None:
    assert quirks.js_number_string(value) == text


@pytest.mark.parametrize(
    ("value", "text"),
    [("x", "x"), (None, "null"), (True, "true"), ({"a": 1}, "[object Object]"), ([], ""),
     (["a", 1], "a,1"), ([None, "b"], ",b"), ([[1, 2], 3], "1,2,3")],
)  # fmt: skip
def test_js_string_renders_like_string_constructor(value: object, text: str) -> None:
    assert quirks.js_string(value) == text


@pytest.mark.parametrize(
    ("value", "number"),
    [
        (" 5 ", 5.0),
        ("", 0.0),
        ("0x1A", 26.0),
        ([5], 5.0),
        ([], 0.0),
        (True, 1.0),
        (None, 0.0),
        ("Infinity", math.inf),
    ],
)
def test_js_number_converts_like_number_constructor(value: object, number: float) -> None:
    assert quirks.js_number(value) == number


@pytest.mark.parametrize("value", ["abc", "1,2", [1, 2], {"a": 1}, "5px"])
def test_js_number_is_nan_for_non_numeric(value: object) -> None:
    assert math.isnan(quirks.js_number(value))


def test_js_json_is_compact_ordered_unescaped_with_integral_floats_as_ints() -> None:
    value = {"b": 1.0, "a": [1.5, "Zoë", None, True], "c": {"d": 1e21}}
    assert quirks.js_json(value) == '{"b":1,"a":[1.5,"Zoë",null,true],"c":{"d":1e+21}}'


@pytest.mark.parametrize(
    ("badge", "valid"),
    [
        ("Increment", True), ("INCREMENT", True), ({"__op": "increment", "amount": 3}, True),
        ({"__op": "Increment", "amount": "3"}, True), (5, True), (-1, True), ("5", True), (True, True),
        (0, True), ("", True), (None, True), (False, True),
        ("lots", False), ("foo", False), ({"__op": "Increment", "amount": 0}, False), ([], False), ({}, False),
        ({"__op": "Increment", "amount": "abc"}, False),
    ],
)  # fmt: skip
def test_badge_validity_follows_push_controller(badge: object, valid: bool) -> None:
    assert quirks.is_valid_badge(badge) is valid


def test_push_hash_follows_status_handler() -> None:
    assert quirks.push_hash({"alert": "hi"}) == "49f68a5c8493ec2c0bf489821c21fc3b"
    assert quirks.push_hash({}) == quirks.EMPTY_PUSH_HASH
    assert quirks.push_hash({"alert": 5}) == quirks.EMPTY_PUSH_HASH
    assert (
        quirks.push_hash({"alert": {"body": "x"}}) == "a2924db35e9e438d33eb68360283355e"
    )  # md5('{"body":"x"}')


def test_push_time_zone_detection() -> None:
    assert quirks.push_time_is_local("2030-01-01T10:00:00")
    assert quirks.push_time_is_local(1900000000)
    assert not quirks.push_time_is_local("2030-01-01T10:00:00Z")
    assert not quirks.push_time_is_local("2030-01-01T10:00-02:00")


def test_bson_number_follows_node_driver() -> None:
    assert type(quirks.bson_number(3600)) is int
    assert type(quirks.bson_number(1795630607723)) is float
    assert type(quirks.bson_number(1.5)) is float
    assert type(quirks.bson_number(2.0)) is int


def test_form_and_multipart_are_not_json() -> None:
    assert quirks.parses_as_json("text/plain")
    assert quirks.parses_as_json(None)
    assert not quirks.parses_as_json("application/x-www-form-urlencoded; charset=utf-8")
    assert not quirks.parses_as_json("multipart/form-data; boundary=x")


def test_body_credentials_are_stripped() -> None:
    body = {"channels": ["a"], "_ApplicationId": "a", "_MasterKey": "m", "_JavaScriptKey": "j", "_noBody": 1}
    assert quirks.strip_body_credentials(body) == {"channels": ["a"]}
