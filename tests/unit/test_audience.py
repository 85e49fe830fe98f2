"""Parse push audiences become the MongoDB filters of contract §8, or fail with Parse's query errors."""

from __future__ import annotations

import asyncio
import math
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from bson.binary import Binary
from bson.regex import Regex
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from workers.audience import (
    ClassSchema,
    QueryError,
    SubqueryRunner,
    audience_filter,
    badge_filter,
    channels_where,
    translate_where,
)

NOW = datetime(2026, 11, 25, 17, 16, 46, 439000, tzinfo=UTC)
# The observed `_Installation` entry of `_SCHEMA` (contract §7.4), plus the custom fields of §7.3.
INSTALLATION = ClassSchema.from_document(
    {"_id": "_Installation", "objectId": "string", "updatedAt": "date", "createdAt": "date",
     "installationId": "string", "deviceToken": "string", "channels": "array", "deviceType": "string",
     "pushType": "string", "GCMSenderId": "string", "timeZone": "string", "localeIdentifier": "string",
     "badge": "number", "appVersion": "string", "appName": "string", "appIdentifier": "string",
     "parseVersion": "string", "user": "*_User", "customField": "object", "lastSeen": "date"}
)  # fmt: skip
SCHEMAS = {
    "_Installation": INSTALLATION,
    "_User": ClassSchema.from_document(
        {"_id": "_User", "username": "string", "tags": "array", "boss": "*_User"}
    ),
    "_Session": ClassSchema.from_document({"_id": "_Session", "user": "*_User", "expiresAt": "date"}),
}
TOKEN_EXISTS = {"deviceToken": {"$exists": True}}
PPNS_REACHABLE = {
    "$or": [{"deviceToken": {"$exists": True}}, {"deviceType": "embedded"}, {"pushType": "ppns"}]
}
ALICE = {"__type": "Pointer", "className": "_User", "objectId": "DnFY6KcKrH"}

# Documents as MongoDB stores them (contract §7.3), for the stand-in below.
USERS: list[dict[str, Any]] = [
    {"_id": "DnFY6KcKrH", "username": "alice", "tags": ["vip"], "_auth_data_facebook": {"id": "fb-1"}},
    {"_id": "nhVNlGvcdc", "username": "bob", "tags": [], "_p_boss": "_User$DnFY6KcKrH"},
]
SESSIONS: list[dict[str, Any]] = [
    {"_id": "wfhYT6u3AR", "_session_token": "r:0be9", "_p_user": "_User$DnFY6KcKrH"},
    {"_id": "s2", "_session_token": "r:77aa", "_p_user": "_User$nhVNlGvcdc"},
]
INSTALLATIONS: list[dict[str, Any]] = [
    {"_id": "LkZekF55aD", "deviceType": "ios", "deviceToken": "0123", "channels": ["news", "sports"]},
    {"_id": "DIED88CjaD", "deviceType": "android", "deviceToken": "fcm-1", "pushType": "gcm", "channels": ["news"]},
    {"_id": "eYygiNDRhU", "deviceType": "ios", "deviceToken": "fedc", "channels": ["news"], "_p_user": "_User$DnFY6KcKrH"},
    {"_id": "abIg79augO", "deviceType": "android", "channels": ["news"]},
    {"_id": "emb0000001", "deviceType": "embedded", "channels": ["news"]},
]  # fmt: skip


def _lookup(doc: dict[str, Any], path: str) -> Any:
    value: Any = doc
    for part in path.split("."):
        value = value.get(part) if isinstance(value, dict) else None
    return value


def _matches(doc: dict[str, Any], mongo_filter: dict[str, Any]) -> bool:
    """The few MongoDB filter forms these tests hand to the stand-in; anything else is a test bug."""
    for key, condition in mongo_filter.items():
        if key in ("$and", "$or"):
            results = [_matches(doc, branch) for branch in condition]
            if not (all(results) if key == "$and" else any(results)):
                return False
            continue
        value = _lookup(doc, key)
        values = value if isinstance(value, list) else [value]
        if not isinstance(condition, dict):
            ok = condition in values
        elif set(condition) == {"$in"}:
            ok = any(item in values for item in condition["$in"])
        elif set(condition) == {"$all"}:
            ok = all(item in values for item in condition["$all"])
        elif set(condition) == {"$exists"}:
            ok = (key in doc or value is not None) == condition["$exists"]
        else:
            raise AssertionError(f"stand-in cannot evaluate {condition!r}")
        if not ok:
            return False
    return True


@dataclass
class FakeDatabase:
    """Stands in for MongoDB (which we do not own): in-memory classes, `_Join` rows and a call log."""

    classes: dict[str, list[dict[str, Any]]] = field(
        default_factory=lambda: {"_User": USERS, "_Session": SESSIONS, "_Installation": INSTALLATIONS}
    )
    joins: dict[tuple[str, str, str], list[str]] = field(
        default_factory=lambda: {("_Role", "users", "adminsRole"): ["DnFY6KcKrH", "nhVNlGvcdc"]}
    )
    distinct_calls: list[tuple[str, dict[str, Any], str]] = field(default_factory=list)
    join_calls: list[tuple[str, str, str]] = field(default_factory=list)

    async def distinct_values(self, class_name: str, mongo_filter: dict[str, Any], field: str) -> list[Any]:
        self.distinct_calls.append((class_name, mongo_filter, field))
        found = [
            _lookup(doc, field) for doc in self.classes.get(class_name, []) if _matches(doc, mongo_filter)
        ]
        return [value for value in found if value is not None]

    async def schema_for(self, class_name: str) -> ClassSchema:
        return SCHEMAS.get(class_name, ClassSchema())

    async def related_ids(self, owning_class: str, key: str, owning_id: str) -> list[str]:
        self.join_calls.append((owning_class, key, owning_id))
        return self.joins.get((owning_class, key, owning_id), [])


def translate(
    where: Any, db: SubqueryRunner | None = None, schema: ClassSchema = INSTALLATION
) -> dict[str, Any]:
    return asyncio.run(translate_where(where, schema, db or FakeDatabase(), now=NOW))


def query_error(where: Any, schema: ClassSchema = INSTALLATION) -> tuple[int, str]:
    with pytest.raises(QueryError) as caught:
        translate(where, schema=schema)
    return caught.value.code, caught.value.message


def date(year: int, month: int, day: int, hour: int = 0, minute: int = 0, second: int = 0) -> datetime:
    return datetime(year, month, day, hour, minute, second, tzinfo=UTC)


# ---- §8.5: every example row, verified end to end on Parse Server 9.10 ----

CONTRACT_EXAMPLES = [
    (channels_where(["Giants", "Mets"]), {"channels": {"$in": ["Giants", "Mets"]}, **TOKEN_EXISTS}),
    ({"channels": "Giants"}, {"channels": {"$all": ["Giants"]}, **TOKEN_EXISTS}),
    ({"deviceType": "ios"}, {"deviceType": "ios", **TOKEN_EXISTS}),
    (
        {"user": {"__type": "Pointer", "className": "_User", "objectId": "n0Ng2QrxUO"}},
        {"_p_user": "_User$n0Ng2QrxUO", **TOKEN_EXISTS},
    ),
    (
        {"user": {"$inQuery": {"where": {"username": "alice"}, "className": "_User"}}},
        {"_p_user": {"$in": ["_User$DnFY6KcKrH"]}, **TOKEN_EXISTS},
    ),
    (
        {
            "updatedAt": {"$gt": {"__type": "Date", "iso": "2026-01-01T00:00:00.000Z"}},
            "deviceType": {"$in": ["ios", "android"]},
        },
        {"_updated_at": {"$gt": date(2026, 1, 1)}, "deviceType": {"$in": ["ios", "android"]}, **TOKEN_EXISTS},
    ),
    (
        {"objectId": "abc", "deviceToken": {"$exists": True}, "channels": {"$all": ["a", "b"]}},
        {"_id": "abc", "deviceToken": {"$exists": True}, "channels": {"$all": ["a", "b"]}},
    ),
    (
        {"$or": [{"channels": "a"}, {"badge": 0}]},
        {"$or": [{"channels": {"$all": ["a"]}}, {"badge": 0}], **TOKEN_EXISTS},
    ),
    ({"deviceToken": {"$regex": "^t-[bc]$"}}, {"deviceToken": {"$regex": "^t-[bc]$"}}),
]


@pytest.mark.parametrize(("where", "parse_filter"), CONTRACT_EXAMPLES)
def test_contract_example_gives_parse_filter_for_badge_updates(
    where: Any, parse_filter: dict[str, Any]
) -> None:
    assert badge_filter(translate(where), where) == parse_filter


@pytest.mark.parametrize(("where", "parse_filter"), CONTRACT_EXAMPLES)
def test_contract_example_audience_also_reaches_ppns_devices(
    where: Any, parse_filter: dict[str, Any]
) -> None:
    audience = audience_filter(translate(where), where)
    if "deviceToken" in where:
        assert audience == parse_filter
    else:
        without_token = {key: value for key, value in parse_filter.items() if key != "deviceToken"}
        # Flat when the keys allow it (SecantusDB plans indexes only on top-level keys), $and otherwise.
        expected = (
            {**without_token, **PPNS_REACHABLE}
            if without_token.keys().isdisjoint(PPNS_REACHABLE)
            else {"$and": [without_token, PPNS_REACHABLE]}
        )
        assert audience == expected


def test_inquery_example_runs_the_user_subquery_with_the_user_schema() -> None:
    db = FakeDatabase()
    translate({"user": {"$inQuery": {"where": {"username": "alice"}, "className": "_User"}}}, db)
    assert db.distinct_calls == [("_User", {"username": "alice"}, "_id")]


# ---- §8.2: implicit deviceToken, Parse's set vs pushgw's audience ----


def test_empty_where_badges_every_installation_with_a_token() -> None:
    translated = translate({})
    assert translated == {}
    assert badge_filter(translated, {}) == TOKEN_EXISTS
    assert audience_filter(translated, {}) == PPNS_REACHABLE


def test_pushgw_audience_selects_embedded_devices_parse_cannot_reach() -> None:
    where = {"channels": "news"}
    translated = translate(where)
    audience = [doc["_id"] for doc in INSTALLATIONS if _matches(doc, audience_filter(translated, where))]
    badged = [doc["_id"] for doc in INSTALLATIONS if _matches(doc, badge_filter(translated, where))]
    assert audience == ["LkZekF55aD", "DIED88CjaD", "eYygiNDRhU", "emb0000001"]
    assert badged == ["LkZekF55aD", "DIED88CjaD", "eYygiNDRhU"]


def test_deviceToken_only_inside_or_still_gets_the_implicit_rule() -> None:
    where = {"$or": [{"deviceToken": "0123"}, {"deviceType": "embedded"}]}
    translated = translate(where)
    assert badge_filter(translated, where) == {**translated, **TOKEN_EXISTS}
    assert audience_filter(translated, where) == {"$and": [translated, PPNS_REACHABLE]}


def test_filters_do_not_modify_the_translated_filter() -> None:
    translated = {"deviceType": "ios"}
    badge_filter(translated, {"deviceType": "ios"})
    audience_filter(translated, {"deviceType": "ios"})
    assert translated == {"deviceType": "ios"}


# ---- §5.3: invalid audiences fail with a Parse error ----


@pytest.mark.parametrize("where", ["abc", 5, None, ["a"], True])
def test_where_that_is_not_an_object_is_an_invalid_query(where: Any) -> None:
    code, message = query_error(where)
    assert code == 102
    assert message.startswith("where must be a JSON object")


def test_unknown_operator_is_bad_constraint() -> None:
    assert query_error({"deviceType": {"$foo": 1}}) == (107, "bad constraint: $foo")


def test_unknown_top_level_operator_is_bad_constraint() -> None:
    assert query_error({"$where": "sleep(100)"}) == (107, "bad constraint: $where")


def test_channels_that_are_not_an_array_are_a_bad_in_value() -> None:
    assert channels_where("news") == {"channels": {"$in": "news"}}
    assert query_error(channels_where("news")) == (107, "bad $in value")


def test_empty_channels_match_nothing() -> None:
    assert translate(channels_where([])) == {"channels": {"$in": []}}


def test_acl_cannot_be_queried() -> None:
    assert query_error({"ACL": {"*": {"read": True}}}) == (102, "Cannot query on ACL.")
    assert query_error({"$or": [{"ACL": None}]}) == (102, "Cannot query on ACL.")


@pytest.mark.parametrize("name", ["a..b", "a.$b", "customField."])
def test_key_names_mongodb_would_reject_are_invalid(name: str) -> None:
    assert query_error({name: 1}) == (105, f"Invalid key name: {name}")


@pytest.mark.parametrize(
    ("value", "rendered"), [(["a", "b"], "a,b"), ({"nested": 1}, "[object Object]"), ([], "")]
)
def test_objects_and_arrays_are_not_query_values(value: Any, rendered: str) -> None:
    assert query_error({"deviceType": value}) == (107, f"You cannot use {rendered} as a query parameter.")


# ---- equality and arrays ----


def test_scalar_on_array_field_means_contains() -> None:
    assert translate({"channels": "news"}) == {"channels": {"$all": ["news"]}}


def test_array_on_array_field_is_exact_equality() -> None:
    assert translate({"channels": ["news", "sports"]}) == {"channels": ["news", "sports"]}


def test_plain_values_pass_through() -> None:
    where = {"badge": 3, "deviceType": "ios", "appVersion": None, "pushType": True}
    assert translate(where) == where


def test_dotted_keys_pass_through_with_interior_values() -> None:
    assert translate({"customField.nested": 1}) == {"customField.nested": 1}
    assert translate({"customField.owner": ALICE}) == {"customField.owner": ALICE}
    assert translate({"customField.at": {"__type": "Date", "iso": "2026-01-02T03:04:05.678Z"}}) == {
        "customField.at": datetime(2026, 1, 2, 3, 4, 5, 678000, tzinfo=UTC)
    }


def test_ignored_query_keys_are_dropped() -> None:
    where = {"deviceType": "ios", "limit": 1, "skip": 5, "order": "-createdAt", "keys": "badge"}
    assert translate(where) == {"deviceType": "ios"}


# ---- operators ----


@pytest.mark.parametrize("op", ["$gt", "$gte", "$lt", "$lte", "$ne", "$eq"])
def test_comparison_operators_pass_through(op: str) -> None:
    assert translate({"badge": {op: 2}}) == {"badge": {op: 2}}


def test_combined_operators_stay_on_one_key() -> None:
    assert translate({"badge": {"$gte": 1, "$lt": 5, "$ne": 3}}) == {"badge": {"$gte": 1, "$lt": 5, "$ne": 3}}


def test_in_nin_all_exists_pass_through() -> None:
    where = {
        "deviceType": {"$in": ["ios"], "$nin": ["web"]},
        "channels": {"$all": ["a", "b"]},
        "badge": {"$exists": False},
    }
    assert translate(where) == where


def test_in_flattens_one_level_of_nested_arrays_like_parse() -> None:
    assert translate({"deviceType": {"$in": [["ios", "osx"], "tvos"]}}) == {
        "deviceType": {"$in": ["ios", "osx", "tvos"]}
    }


@pytest.mark.parametrize("op", ["$in", "$nin", "$all"])
def test_set_operators_need_an_array(op: str) -> None:
    assert query_error({"deviceType": {op: "ios"}}) == (107, f"bad {op} value")


def test_object_inside_in_is_a_bad_atom() -> None:
    assert query_error({"deviceType": {"$in": [{"a": 1}]}}) == (107, 'bad atom: {"a":1}')


def test_regex_with_options() -> None:
    where = {"appName": {"$regex": "^my", "$options": "im"}}
    assert translate(where) == where


def test_regex_must_be_a_string() -> None:
    assert query_error({"appName": {"$regex": 5}}) == (107, "bad regex: 5")


@pytest.mark.parametrize("options", ["g", "", "i m", 1])
def test_regex_options_outside_imxs_are_rejected(options: Any) -> None:
    code, message = query_error({"appName": {"$regex": "a", "$options": options}})
    assert (code, message.split(":")[0]) == (102, "Bad $options value for query")


def test_options_without_regex_are_rejected() -> None:
    assert query_error({"appName": {"$options": "i"}})[0] == 102


def test_all_with_regexes_becomes_bson_regexes() -> None:
    where = {"channels": {"$all": [{"$regex": "^\\Qne\\E"}, {"$regex": "^\\Qsp\\E"}]}}
    assert translate(where) == {"channels": {"$all": [Regex("^\\Qne\\E"), Regex("^\\Qsp\\E")]}}


def test_regex_objects_in_array_field_operators_become_bson_regexes() -> None:
    assert translate({"channels": {"$in": [{"$regex": "^ne"}]}}) == {"channels": {"$in": [Regex("^ne")]}}


def test_regex_object_inside_in_on_plain_field_is_a_bad_atom() -> None:
    assert query_error({"appName": {"$in": [{"$regex": "^my"}]}}) == (107, 'bad atom: {"$regex":"^my"}')


def test_all_with_a_non_string_regex_is_rejected() -> None:
    assert query_error({"channels": {"$all": [{"$regex": 5}]}}) == (107, "bad regex: 5")


def test_all_mixing_regexes_and_values_is_rejected() -> None:
    code, message = query_error({"channels": {"$all": [{"$regex": "^a"}, "b"]}})
    assert code == 107
    assert message.startswith("All $all values must be of regex type or none")


@pytest.mark.parametrize(("op", "message"), [("$or", "use an array value"), ("$and", "use an array value")])
def test_or_and_need_an_array(op: str, message: str) -> None:
    assert query_error({op: {"badge": 1}}) == (102, f"Bad {op} format - {message}.")


def test_nor_needs_a_non_empty_array() -> None:
    assert query_error({"$nor": []}) == (102, "Bad $nor format - use an array of at least 1 value.")
    assert query_error({"$nor": {"badge": 1}}) == (102, "Bad $nor format - use an array of at least 1 value.")


def test_or_with_a_non_object_member_is_rejected() -> None:
    assert query_error({"$or": ["badge"]})[0] == 102
    assert query_error({"$and": []})[0] == 102


def test_and_nor_recurse_with_translation() -> None:
    where = {"$and": [{"objectId": "a"}], "$nor": [{"user": ALICE}, {"channels": "x"}]}
    assert translate(where) == {
        "$and": [{"_id": "a"}],
        "$nor": [{"_p_user": "_User$DnFY6KcKrH"}, {"channels": {"$all": ["x"]}}],
    }


def test_contained_by_becomes_nor_elem_match_nin() -> None:
    assert translate({"channels": {"$containedBy": ["news", "sports"]}}) == {
        "$nor": [{"channels": {"$elemMatch": {"$nin": ["news", "sports"]}}}]
    }


def test_contained_by_keeps_other_constraints_outside_the_negation() -> None:
    assert translate({"channels": {"$containedBy": ["news"], "$exists": True}}) == {
        "channels": {"$exists": True},
        "$nor": [{"channels": {"$elemMatch": {"$nin": ["news"]}}}],
    }


def test_contained_by_needs_an_array() -> None:
    assert query_error({"channels": {"$containedBy": "news"}}) == (
        107,
        "bad $containedBy: should be an array",
    )


def test_two_contained_by_keys_are_both_kept() -> None:
    translated = translate({"channels": {"$containedBy": ["a"]}, "tags": {"$containedBy": ["b"]}})
    assert translated == {
        "$and": [
            {"$nor": [{"channels": {"$elemMatch": {"$nin": ["a"]}}}]},
            {"$nor": [{"tags": {"$elemMatch": {"$nin": ["b"]}}}]},
        ]
    }


# ---- keys, Dates and Pointers ----


def test_builtin_keys_map_to_storage_names() -> None:
    assert translate({"objectId": "abc", "createdAt": {"$exists": True}, "updatedAt": {"$exists": True}}) == {
        "_id": "abc",
        "_created_at": {"$exists": True},
        "_updated_at": {"$exists": True},
    }


def test_date_objects_become_aware_utc_datetimes_at_millisecond_precision() -> None:
    where = {"lastSeen": {"$lt": {"__type": "Date", "iso": "2026-01-02T05:04:05.678999+02:00"}}}
    moment = translate(where)["lastSeen"]["$lt"]
    assert moment == datetime(2026, 1, 2, 3, 4, 5, 678000, tzinfo=UTC)
    assert moment.tzinfo is UTC


def test_zone_less_now_is_taken_as_utc() -> None:
    naive_now = NOW.replace(tzinfo=None)
    where = {"createdAt": {"$lt": {"$relativeTime": "now"}}}
    assert asyncio.run(translate_where(where, INSTALLATION, FakeDatabase(), now=naive_now)) == {
        "_created_at": {"$lt": NOW}
    }


def test_zone_less_date_is_taken_as_utc() -> None:
    assert translate({"lastSeen": {"__type": "Date", "iso": "2026-01-02T03:04:05"}}) == {
        "lastSeen": date(2026, 1, 2, 3, 4, 5)
    }


def test_plain_iso_strings_are_dates_for_created_and_updated_at() -> None:
    where = {
        "createdAt": "2026-11-25T17:16:46.439Z",
        "updatedAt": {"$gte": "2026-01-01T00:00:00Z", "$in": ["2026-02-01T00:00:00.000Z"]},
    }
    assert translate(where) == {
        "_created_at": NOW,
        "_updated_at": {"$gte": date(2026, 1, 1), "$in": [date(2026, 2, 1)]},
    }


def test_plain_iso_string_on_a_custom_date_field_stays_a_string() -> None:
    assert translate({"lastSeen": "2026-01-01T00:00:00Z"}) == {"lastSeen": "2026-01-01T00:00:00Z"}


@pytest.mark.parametrize(
    "where",
    [
        {"createdAt": "yesterday"},
        {"lastSeen": {"__type": "Date", "iso": "not a date"}},
        {"lastSeen": {"__type": "Date", "iso": 5}},
        {"lastSeen": {"__type": "Date"}},
    ],
)
def test_invalid_dates_are_rejected(where: dict[str, Any]) -> None:
    code, message = query_error(where)
    assert code == 107
    assert message.startswith("bad Date")


def test_pointer_on_declared_pointer_field_is_stored_string() -> None:
    assert translate({"user": ALICE}) == {"_p_user": "_User$DnFY6KcKrH"}


def test_pointers_inside_operators_are_stored_strings() -> None:
    other = {"__type": "Pointer", "className": "_User", "objectId": "nhVNlGvcdc"}
    assert translate({"user": {"$in": [ALICE, other], "$ne": other}}) == {
        "_p_user": {"$in": ["_User$DnFY6KcKrH", "_User$nhVNlGvcdc"], "$ne": "_User$nhVNlGvcdc"}
    }
    assert translate({"user": {"$eq": ALICE}}) == {"_p_user": {"$eq": "_User$DnFY6KcKrH"}}


def test_pointer_value_on_field_the_schema_does_not_know_uses_p_prefix() -> None:
    unknown = ClassSchema.from_document(None)
    assert translate({"owner": ALICE}, schema=unknown) == {"_p_owner": "_User$DnFY6KcKrH"}
    assert translate({"owner": {"$nin": [ALICE]}}, schema=unknown) == {
        "_p_owner": {"$nin": ["_User$DnFY6KcKrH"]}
    }


def test_exists_on_pointer_field_applies_to_stored_field() -> None:
    assert translate({"user": {"$exists": True}}) == {"_p_user": {"$exists": True}}


def test_object_id_string_inside_operator_on_pointer_field_gets_the_target_class() -> None:
    assert translate({"user": {"$in": ["DnFY6KcKrH"]}}) == {"_p_user": {"$in": ["_User$DnFY6KcKrH"]}}


def test_pointers_in_array_fields_stay_objects_as_stored() -> None:
    schema = ClassSchema.from_document({"friends": "array"})
    assert translate({"friends": ALICE}, schema=schema) == {"friends": {"$all": [ALICE]}}
    assert translate({"friends": {"$in": [ALICE]}}, schema=schema) == {"friends": {"$in": [ALICE]}}


def test_malformed_pointer_is_rejected() -> None:
    assert query_error({"user": {"__type": "Pointer", "className": "_User"}})[0] == 107


def test_bytes_geopoint_file_and_polygon_atoms() -> None:
    where = {
        "blob": {"__type": "Bytes", "base64": "aGk="},
        "location": {"__type": "GeoPoint", "latitude": 48.85, "longitude": 2.35},
        "photo": {"__type": "File", "name": "abc_photo.png", "url": "https://files/abc_photo.png"},
        "area": {"__type": "Polygon", "coordinates": [[0, 0], [0, 1], [1, 1]]},
    }
    assert translate(where) == {
        "blob": Binary(b"hi"),
        "location": [2.35, 48.85],
        "photo": "abc_photo.png",
        "area": {"type": "Polygon", "coordinates": [[[0, 0], [1, 0], [1, 1], [0, 0]]]},
    }


@pytest.mark.parametrize(
    "value",
    [
        {"__type": "Bytes", "base64": "not base64!"},
        {"__type": "GeoPoint", "latitude": 91, "longitude": 0},
        {"__type": "GeoPoint", "latitude": "1", "longitude": 0},
        {"__type": "File"},
        {"__type": "Polygon", "coordinates": [[0, 0]]},
    ],
)
def test_malformed_typed_atoms_are_rejected(value: dict[str, Any]) -> None:
    assert query_error({"thing": value})[0] == 107


# ---- $relativeTime ----


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("in 2 days", NOW + timedelta(days=2)),
        ("3 days ago", NOW - timedelta(days=3)),
        ("now", NOW),
        ("In 1 Year 2 wks", NOW + timedelta(days=365 + 14)),
        ("1 hr 30 mins ago", NOW - timedelta(minutes=90)),
    ],
)
def test_relative_time_counts_from_now(text: str, expected: datetime) -> None:
    assert translate({"createdAt": {"$gt": {"$relativeTime": text}}}) == {"_created_at": {"$gt": expected}}


def test_relative_time_on_custom_date_field() -> None:
    where = {"lastSeen": {"$gte": {"$relativeTime": "2 weeks ago"}, "$lt": {"$relativeTime": "now"}}}
    assert translate(where) == {"lastSeen": {"$gte": NOW - timedelta(weeks=2), "$lt": NOW}}


def test_now_defaults_to_current_utc_time_at_millisecond_precision() -> None:
    before = datetime.now(UTC) - timedelta(milliseconds=1)
    where = {"createdAt": {"$lt": {"$relativeTime": "now"}}}
    moment = asyncio.run(translate_where(where, INSTALLATION, FakeDatabase()))["_created_at"]["$lt"]
    assert before <= moment <= datetime.now(UTC)
    assert moment.microsecond % 1000 == 0


@pytest.mark.parametrize(
    ("text", "info"),
    [
        ("2 days", "Time should either start with 'in' or end with 'ago'"),
        ("in 2 days ago", "Time cannot have both 'in' and 'ago'"),
        ("in 2", "Invalid time string. Dangling unit or number."),
        ("in 1.5 days", "'1.5' is not an integer."),
        ("in 2 fortnights", "Invalid interval: 'fortnights'"),
        ("in 99999999999 years", "The date is out of range."),
        (5, "$relativeTime should be a string"),
    ],
)
def test_bad_relative_time_is_rejected(text: Any, info: str) -> None:
    where = {"createdAt": {"$lt": {"$relativeTime": text}}}
    assert query_error(where) == (107, f"bad $relativeTime ($lt) value. {info}")


@pytest.mark.parametrize("op", ["$eq", "$ne", "$exists"])
def test_relative_time_only_with_ordering_operators(op: str) -> None:
    assert query_error({"createdAt": {op: {"$relativeTime": "now"}}}) == (
        107,
        "$relativeTime can only be used with the $lt, $lte, $gt, and $gte operators",
    )


def test_relative_time_not_on_pointer_or_array_fields() -> None:
    message = "$relativeTime can only be used with Date field"
    assert query_error({"user": {"$lt": {"$relativeTime": "now"}}}) == (107, message)
    assert query_error({"channels": {"$lt": {"$relativeTime": "now"}}}) == (107, message)


# ---- subqueries (§8.3) ----


def test_not_in_query_excludes_the_matching_pointers() -> None:
    db = FakeDatabase()
    where = {"user": {"$notInQuery": {"className": "_User", "where": {"tags": "vip"}}}}
    assert translate(where, db) == {"_p_user": {"$nin": ["_User$DnFY6KcKrH"]}}
    assert db.distinct_calls == [("_User", {"tags": {"$all": ["vip"]}}, "_id")]


def test_in_query_results_join_an_existing_in() -> None:
    other = {"__type": "Pointer", "className": "_User", "objectId": "zzzzzzzzzz"}
    where = {"user": {"$in": [other], "$inQuery": {"className": "_User", "where": {"username": "bob"}}}}
    assert translate(where) == {"_p_user": {"$in": ["_User$zzzzzzzzzz", "_User$nhVNlGvcdc"]}}


def test_in_query_on_a_field_the_schema_does_not_know_uses_p_prefix() -> None:
    where = {"owner": {"$inQuery": {"className": "_User", "where": {"username": "bob"}}}}
    assert translate(where, schema=ClassSchema()) == {"_p_owner": {"$in": ["_User$nhVNlGvcdc"]}}


def test_in_query_translates_user_auth_data_keys() -> None:
    db = FakeDatabase()
    where = {"user": {"$inQuery": {"className": "_User", "where": {"authData.facebook.id": "fb-1"}}}}
    assert translate(where, db) == {"_p_user": {"$in": ["_User$DnFY6KcKrH"]}}
    assert db.distinct_calls[0][1] == {"_auth_data_facebook.id": "fb-1"}


def test_nested_in_queries_resolve_innermost_first() -> None:
    db = FakeDatabase()
    inner = {"className": "_User", "where": {"username": "alice"}}
    where = {"user": {"$inQuery": {"className": "_User", "where": {"boss": {"$inQuery": inner}}}}}
    assert translate(where, db) == {"_p_user": {"$in": ["_User$nhVNlGvcdc"]}}
    assert db.distinct_calls == [
        ("_User", {"username": "alice"}, "_id"),
        ("_User", {"_p_boss": {"$in": ["_User$DnFY6KcKrH"]}}, "_id"),
    ]


def test_select_takes_a_pointer_key_from_another_class() -> None:
    db = FakeDatabase()
    where = {"user": {"$select": {"query": {"className": "_Session", "where": {}}, "key": "user"}}}
    assert translate(where, db) == {"_p_user": {"$in": ["_User$DnFY6KcKrH", "_User$nhVNlGvcdc"]}}
    assert db.distinct_calls == [("_Session", {}, "_p_user")]


def test_select_object_ids_match_a_pointer_field() -> None:
    where = {
        "user": {
            "$select": {"query": {"className": "_User", "where": {"username": "bob"}}, "key": "objectId"}
        }
    }
    assert translate(where) == {"_p_user": {"$in": ["_User$nhVNlGvcdc"]}}


def test_select_subquery_maps_session_token_to_its_storage_name() -> None:
    db = FakeDatabase()
    query = {"className": "_Session", "where": {"sessionToken": "r:77aa"}}
    assert translate({"user": {"$select": {"query": query, "key": "user"}}}, db) == {
        "_p_user": {"$in": ["_User$nhVNlGvcdc"]}
    }
    assert db.distinct_calls == [("_Session", {"_session_token": "r:77aa"}, "_p_user")]


def test_subquery_inside_or_branch_is_resolved() -> None:
    where = {"$or": [{"deviceType": "embedded"}, {"user": {"$inQuery": {"className": "_User", "where": {}}}}]}
    assert translate(where) == {
        "$or": [{"deviceType": "embedded"}, {"_p_user": {"$in": ["_User$DnFY6KcKrH", "_User$nhVNlGvcdc"]}}]
    }


def test_dont_select_excludes_plain_values() -> None:
    db = FakeDatabase()
    where = {"appName": {"$dontSelect": {"query": {"className": "_User"}, "key": "username"}}}
    assert translate(where, db) == {"appName": {"$nin": ["alice", "bob"]}}
    assert db.distinct_calls == [("_User", {}, "username")]


@pytest.mark.parametrize(
    ("op", "spec"),
    [
        ("$inQuery", {"where": {}}),
        ("$inQuery", {"className": "_User"}),
        ("$notInQuery", "x"),
        ("$select", {"query": {"className": "_User"}, "key": "username", "extra": 1}),
        ("$select", {"query": {"where": {}}, "key": "username"}),
        ("$dontSelect", {"query": {"className": "_User"}, "key": 5}),
        ("$dontSelect", ["x"]),
    ],
)
def test_improper_subqueries_are_invalid_queries(op: str, spec: Any) -> None:
    assert query_error({"user": {op: spec}}) == (102, f"improper usage of {op}")


def test_subquery_errors_surface_as_query_errors() -> None:
    where = {"user": {"$inQuery": {"className": "_User", "where": {"username": {"$bad": 1}}}}}
    assert query_error(where) == (107, "bad constraint: $bad")


def test_related_to_reads_the_join_collection() -> None:
    db = FakeDatabase()
    role = {"__type": "Pointer", "className": "_Role", "objectId": "adminsRole"}
    where = {"$relatedTo": {"object": role, "key": "users"}}
    assert translate(where, db, schema=SCHEMAS["_User"]) == {"_id": {"$in": ["DnFY6KcKrH", "nhVNlGvcdc"]}}
    assert db.join_calls == [("_Role", "users", "adminsRole")]


def test_related_to_and_object_id_must_both_hold() -> None:
    role = {"__type": "Pointer", "className": "_Role", "objectId": "adminsRole"}
    where = {"objectId": "DnFY6KcKrH", "$relatedTo": {"object": role, "key": "users"}}
    assert translate(where) == {
        "$and": [{"_id": "DnFY6KcKrH"}, {"_id": {"$in": ["DnFY6KcKrH", "nhVNlGvcdc"]}}]
    }


@pytest.mark.parametrize(
    "spec", [None, {"object": {"className": "_Role"}, "key": "users"}, {"object": ALICE}]
)
def test_improper_related_to_is_invalid_query(spec: Any) -> None:
    assert query_error({"$relatedTo": spec}) == (102, "improper usage of $relatedTo")


# ---- $text and geo ----


def test_text_search_moves_to_the_top_level() -> None:
    search = {"$term": "hello", "$language": "en", "$caseSensitive": True, "$diacriticSensitive": False}
    assert translate({"appName": {"$text": {"$search": search}}}) == {
        "$text": {"$search": "hello", "$language": "en", "$caseSensitive": True}
    }


@pytest.mark.parametrize(
    "text",
    [{"$search": "hello"}, {"$search": {"$term": 5}}, {"$search": {"$term": "a", "$caseSensitive": "yes"}}],
)
def test_malformed_text_search_is_rejected(text: Any) -> None:
    assert query_error({"appName": {"$text": text}})[0] == 107


def test_near_sphere_becomes_a_center_sphere_that_needs_no_index() -> None:
    point = {"__type": "GeoPoint", "latitude": 48.85, "longitude": 2.35}
    assert translate({"location": {"$nearSphere": point, "$maxDistanceInKilometers": 6371}}) == {
        "location": {"$geoWithin": {"$centerSphere": [[2.35, 48.85], 1.0]}}
    }
    assert translate({"location": {"$nearSphere": point, "$maxDistanceInMiles": 3959 * 2}}) == {
        "location": {"$geoWithin": {"$centerSphere": [[2.35, 48.85], 2.0]}}
    }
    assert translate({"location": {"$nearSphere": point}}) == {
        "location": {"$geoWithin": {"$centerSphere": [[2.35, 48.85], math.pi]}}
    }


def test_max_distance_without_near_sphere_is_a_bad_constraint() -> None:
    assert query_error({"location": {"$maxDistance": 1}}) == (107, "bad constraint: $maxDistance")


def test_geo_within_forms() -> None:
    corner = {"__type": "GeoPoint", "latitude": 0, "longitude": 0}
    far = {"__type": "GeoPoint", "latitude": 10, "longitude": 20}
    assert translate({"location": {"$within": {"$box": [corner, far]}}}) == {
        "location": {"$geoWithin": {"$box": [[0, 0], [20, 10]]}}
    }
    assert translate({"location": {"$geoWithin": {"$polygon": [corner, far, [5, 5]]}}}) == {
        "location": {"$geoWithin": {"$polygon": [[0, 0], [20, 10], [5, 5]]}}
    }
    assert translate({"location": {"$geoWithin": {"$centerSphere": [[1, 2], 0.5]}}}) == {
        "location": {"$geoWithin": {"$centerSphere": [[1, 2], 0.5]}}
    }
    assert translate({"location": {"$geoIntersects": {"$point": far}}}) == {
        "location": {"$geoIntersects": {"$geometry": {"type": "Point", "coordinates": [20, 10]}}}
    }


@pytest.mark.parametrize(
    "constraint",
    [
        {"$within": {"$box": [[0, 0]]}},
        {"$geoWithin": {"$polygon": [[0, 0], [1, 1]]}},
        {"$geoWithin": {"$centerSphere": [[0, 0], -1]}},
        {"$geoWithin": {}},
        {"$geoIntersects": {"$point": [0, 200]}},
        {"$nearSphere": {"__type": "GeoPoint", "latitude": 0, "longitude": 0}, "$maxDistance": "far"},
        {"$nearSphere": [0, 0], "$geoWithin": {"$centerSphere": [[0, 0], 1]}},
    ],
)
def test_malformed_geo_constraints_are_rejected(constraint: dict[str, Any]) -> None:
    assert query_error({"location": constraint})[0] == 107


# ---- schema ----


def test_schema_from_installation_document() -> None:
    assert dict(INSTALLATION.pointers) == {"user": "_User"}
    assert INSTALLATION.arrays == {"channels"}
    assert INSTALLATION.dates == {"createdAt", "updatedAt", "lastSeen"}


def test_schema_without_document_knows_only_builtin_dates() -> None:
    schema = ClassSchema.from_document(None)
    assert dict(schema.pointers) == {}
    assert schema.arrays == frozenset()
    assert schema.dates == {"createdAt", "updatedAt"}


def test_schema_ignores_relations_metadata_and_non_strings() -> None:
    schema = ClassSchema.from_document(
        {"_id": "_Role", "_metadata": {"indexes": {}}, "users": "relation<_User>", "odd": 5, "boss": "*_User"}
    )
    assert dict(schema.pointers) == {"boss": "_User"}
    assert schema.arrays == frozenset()
    assert schema.dates == {"createdAt", "updatedAt"}


# ---- robustness ----


def test_deeply_nested_where_is_a_query_error() -> None:
    where: dict[str, Any] = {"badge": 1}
    for _ in range(40):
        where = {"$or": [where]}
    assert query_error(where)[0] == 102


def test_deeply_nested_value_is_a_query_error_not_a_crash() -> None:
    value: Any = 1
    for _ in range(5000):
        value = [value]
    assert query_error({"customField.deep": value})[0] == 107


JSON_SCALARS = st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=8)
KEYS = st.sampled_from(
    ["$in", "$nin", "$all", "$or", "$and", "$nor", "$regex", "$options", "$exists", "$lt", "$relativeTime",
     "$inQuery", "$select", "$dontSelect", "$relatedTo", "$nearSphere", "$maxDistance", "$geoWithin", "$box",
     "$polygon", "$centerSphere", "$text", "$search", "$term", "$containedBy", "__type", "iso", "className",
     "objectId", "where", "query", "key", "object", "base64", "latitude", "longitude", "coordinates", "name",
     "channels", "user", "createdAt", "a.b", "ACL", "Pointer", "Date", "GeoPoint"]
)  # fmt: skip
JSON_VALUES = st.recursive(
    JSON_SCALARS | KEYS, lambda inner: st.lists(inner, max_size=4) | st.dictionaries(KEYS, inner, max_size=4)
)


class EmptyDatabase:
    """Stands in for a MongoDB with no rows at all, whatever the filter."""

    async def distinct_values(self, class_name: str, mongo_filter: dict[str, Any], field: str) -> list[Any]:
        return []

    async def schema_for(self, class_name: str) -> ClassSchema:
        return ClassSchema()

    async def related_ids(self, owning_class: str, key: str, owning_id: str) -> list[str]:
        return []


@settings(max_examples=400, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow])
@given(where=JSON_VALUES)
def test_any_json_where_translates_or_raises_query_error(where: Any) -> None:
    try:
        translated = translate(where, EmptyDatabase())
    except QueryError as error:
        assert error.code in (102, 105, 107)
        assert error.message
    else:
        assert isinstance(translated, dict)
