"""Which audiences are read by group-committed equality lookups, and what each of them matches."""

from __future__ import annotations

from typing import Any

import pytest

from workers.lookups import matches, pinned_value

INDEXED = ["_p_user", "installationId", "channels"]


@pytest.mark.parametrize(
    ("mongo_filter", "pinned"),
    [
        ({"_p_user": "_User$abc"}, ("_p_user", "_User$abc")),
        ({"_p_user": {"$eq": "_User$abc"}}, ("_p_user", "_User$abc")),
        ({"installationId": "i-1"}, ("installationId", "i-1")),
        ({"_id": "LkZekF55aD"}, ("_id", "LkZekF55aD")),  # always indexed
        ({"deviceToken": "abc"}, None),  # an identity, but not indexed here: the cursor reads it
        ({"channels": "news"}, None),  # indexed, but a broadcast: streamed, never held in memory
        ({"_p_user": "_User$abc", "deviceType": "ios"}, None),
        ({"_p_user": {"$in": ["_User$a", "_User$b"]}}, None),
        ({"_p_user": {"$eq": "_User$a", "$exists": True}}, None),
        ({"installationId": 5}, None),
        ({}, None),
    ],
)
def test_only_a_single_identity_equality_is_looked_up(mongo_filter: dict[str, Any], pinned: Any) -> None:
    assert pinned_value(mongo_filter, INDEXED) == pinned


def test_a_value_matches_the_field_or_an_element_of_it() -> None:
    assert matches({"f": "a"}, "f", "a")
    assert matches({"f": ["b", "a"]}, "f", "a")
    assert not matches({"f": "ab"}, "f", "a")
    assert not matches({"f": ["b"]}, "f", "a")
    assert not matches({}, "f", "a")
