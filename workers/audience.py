"""Translate a Parse push audience (`channels` or `where`) into a MongoDB filter on `_Installation` (§8)."""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from types import MappingProxyType
from typing import Any, Protocol

from bson.regex import Regex

from pushgw.errors import INVALID_JSON, INVALID_KEY_NAME, INVALID_QUERY
from pushgw.parse_quirks import IGNORED_QUERY_KEYS, js_string, js_truthy
from workers.query_values import (
    NEAR_SPHERE_KEYS,
    NOT_ATOM,
    QueryError,
    geo_constraint,
    has_type,
    interior,
    member,
    near_sphere,
    parse_iso,
    regex_source,
    relative_time,
    render,
    top_atom,
    utc_ms,
)

__all__ = [
    "INVALID_KEY_NAME",
    "ClassSchema",
    "QueryError",
    "SubqueryRunner",
    "audience_filter",
    "badge_filter",
    "channels_where",
    "conjoin",
    "translate_where",
]

_MAX_DEPTH = 32  # nested $or/$and/$nor and subqueries; each subquery level costs a database round trip
_AUTH_DATA_KEY = re.compile(r"authData\.([a-zA-Z0-9_]+)\.id")
_BRANCHES = {"$or": "an array value", "$and": "an array value", "$nor": "an array of at least 1 value"}
_SUBQUERIES = {"$inQuery": "$in", "$notInQuery": "$nin", "$select": "$in", "$dontSelect": "$nin"}
_COMPARISONS = ("$lt", "$lte", "$gt", "$gte")


@dataclass(frozen=True, slots=True)
class ClassSchema:
    """Which fields of a class hold Pointers (field → target class), Arrays and Dates, as `_SCHEMA` says."""

    pointers: Mapping[str, str] = dataclasses.field(default_factory=lambda: MappingProxyType({}))
    arrays: frozenset[str] = frozenset()
    dates: frozenset[str] = frozenset({"createdAt", "updatedAt"})

    @classmethod
    def from_document(cls, doc: Mapping[str, Any] | None) -> ClassSchema:
        """Read a `_SCHEMA` document (`"user": "*_User"`, `"channels": "array"`); other types are plain."""
        kinds = {name: kind for name, kind in (doc or {}).items() if isinstance(kind, str)}
        return cls(
            pointers=MappingProxyType(
                {name: kind[1:] for name, kind in kinds.items() if kind.startswith("*")}
            ),
            arrays=frozenset(name for name, kind in kinds.items() if kind == "array"),
            dates=frozenset(name for name, kind in kinds.items() if kind == "date")
            | {"createdAt", "updatedAt"},
        )


class SubqueryRunner(Protocol):
    """The reads subqueries need, with master-key rights and no limit (§8.3).

    `distinct_values` returns the stored values of `field` (a storage path: `_id`, `_p_user`) over the
    documents of `class_name` matching `mongo_filter`, arrays flattened as MongoDB's distinct does;
    `related_ids` returns the `relatedId`s of `_Join:<key>:<owning_class>` whose `owningId` is `owning_id`.
    """

    async def distinct_values(
        self, class_name: str, mongo_filter: dict[str, Any], field: str
    ) -> list[Any]: ...

    async def schema_for(self, class_name: str) -> ClassSchema: ...

    async def related_ids(self, owning_class: str, key: str, owning_id: str) -> list[str]: ...


def channels_where(channels: Any) -> dict[str, Any]:
    """The `where` Parse builds from `channels`, unchecked: a non-array fails later as `bad $in value`."""
    return {"channels": {"$in": channels}}


async def translate_where(
    where: Any, schema: ClassSchema, runner: SubqueryRunner, *, now: datetime | None = None
) -> dict[str, Any]:
    """The MongoDB filter for a Parse `where`, subqueries resolved; a bad query raises only QueryError."""
    try:
        return await _Translation(runner, utc_ms(now or datetime.now(UTC))).filter_for(where, schema, 0)
    except RecursionError:  # JSON nests deeper than Python recurses: a bad query, not a crash
        raise QueryError(INVALID_JSON, "where nests too deeply") from None


def audience_filter(translated: dict[str, Any], where: Any) -> dict[str, Any]:
    """pushgw's audience: Parse's, plus PPNS-addressable installations, which have no deviceToken (§8.2)."""
    if isinstance(where, dict) and "deviceToken" in where:
        return translated
    reachable = {
        "$or": [{"deviceToken": {"$exists": True}}, {"deviceType": "embedded"}, {"pushType": "ppns"}]
    }
    return conjoin(translated, reachable)


def conjoin(first: dict[str, Any], second: dict[str, Any]) -> dict[str, Any]:
    """Both filters; one flat document when their keys differ, so the server sees indexable top-level keys
    (SecantusDB plans no index inside `$and`)."""
    if not first or not second:
        return first or second
    if first.keys().isdisjoint(second):
        return {**first, **second}
    return {"$and": [first, second]}


def badge_filter(translated: dict[str, Any], where: Any) -> dict[str, Any]:
    """Parse's own audience (applyDeviceTokenExists): the installations whose badge a push updates (§10)."""
    if isinstance(where, dict) and "deviceToken" in where:
        return translated
    return {**translated, "deviceToken": {"$exists": True}}


@dataclass(frozen=True, slots=True)
class _Field:
    name: str
    key: str
    target: str | None = None
    is_array: bool = False
    parses_iso: bool = False  # createdAt/updatedAt also take plain ISO strings, even inside operators (§8.4)
    is_interior: bool = False  # arrays and dotted paths hold sub-values: Pointers stay objects, as stored
    may_be_pointer: bool = False  # an undeclared top-level field is a pointer when queried with one


_SPECIAL_FIELDS = {
    "objectId": _Field("objectId", "_id"),
    "createdAt": _Field("createdAt", "_created_at", parses_iso=True),
    "updatedAt": _Field("updatedAt", "_updated_at", parses_iso=True),
    "sessionToken": _Field("sessionToken", "_session_token"),
}


@dataclass(frozen=True, slots=True)
class _Translation:
    """One translation: subqueries run through `runner`, and $relativeTime counts from `now`."""

    runner: SubqueryRunner
    now: datetime

    async def filter_for(self, where: Any, schema: ClassSchema, depth: int) -> dict[str, Any]:
        if not isinstance(where, dict):
            raise QueryError(INVALID_QUERY, f"where must be a JSON object, not {render(where)}")
        if depth > _MAX_DEPTH:
            raise QueryError(INVALID_QUERY, f"where nests deeper than {_MAX_DEPTH} levels")
        merged: dict[str, Any] = {}
        repeated: list[dict[str, Any]] = []  # a key made twice (`_id` by objectId and $relatedTo) is ANDed
        for name, value in where.items():
            clauses = [] if name in IGNORED_QUERY_KEYS else await self.clauses_for(name, value, schema, depth)
            for key, translated in clauses:
                if key in merged:
                    repeated.append({key: translated})
                else:
                    merged[key] = translated
        return {"$and": [merged, *repeated]} if repeated else merged

    async def clauses_for(
        self, name: str, value: Any, schema: ClassSchema, depth: int
    ) -> list[tuple[str, Any]]:
        if name in _BRANCHES:
            if not isinstance(value, list) or (name == "$nor" and not value):
                raise QueryError(INVALID_QUERY, f"Bad {name} format - use {_BRANCHES[name]}.")
            if not value or not all(isinstance(branch, dict) for branch in value):
                # MongoDB would reject an empty $or/$and and non-object members; fail early, Parse-style.
                raise QueryError(INVALID_QUERY, f"Bad {name} format - use a non-empty array of objects.")
            return [(name, [await self.filter_for(branch, schema, depth + 1) for branch in value])]
        if name == "$relatedTo":
            return [("_id", {"$in": await self.related_ids(value)})]
        field = _field_for(name, schema)
        if _is_constraint(value):
            return self.constraint_clauses(field, await self.resolve_subqueries(value, depth))
        return [(_storage_key(field, value), _equality(field, value))]

    def constraint_clauses(self, field: _Field, constraint: dict[str, Any]) -> list[tuple[str, Any]]:
        near = "$nearSphere" in constraint
        answer: dict[str, Any] = near_sphere(constraint) if near else {}
        for op, operand in constraint.items():
            if near and op in NEAR_SPHERE_KEYS:
                continue
            if op not in _OPERATORS:
                raise QueryError(INVALID_JSON, f"bad constraint: {op}")
            for out_op, out_value in _OPERATORS[op](op, operand, field, self.now).items():
                if out_op in answer:
                    raise QueryError(INVALID_JSON, f"conflicting constraints on {field.name}: {op}")
                answer[out_op] = out_value
        if "$options" in answer and "$regex" not in answer:
            raise QueryError(INVALID_QUERY, "Bad $options value for query: $options needs $regex")
        # As MongoTransform does: $text goes to the top level and $containedBy's $elemMatch into a $nor.
        key = _storage_key(field, constraint)
        clauses = [("$text", answer.pop("$text"))] if "$text" in answer else []
        if "$elemMatch" in answer:
            clauses.append(("$nor", [{key: {"$elemMatch": answer.pop("$elemMatch")}}]))
        return [(key, answer), *clauses] if answer or not clauses else clauses

    async def resolve_subqueries(self, constraint: dict[str, Any], depth: int) -> dict[str, Any]:
        """RestQuery's rewrite: each subquery's results join the constraint's own `$in`/`$nin` (§8.3)."""
        resolved = dict(constraint)
        for op, target in _SUBQUERIES.items():
            if op in resolved:
                spec = resolved.pop(op)
                values = await (self.in_query if op.endswith("Query") else self.select)(op, spec, depth)
                existing = resolved.get(target, [])
                # A non-array `$in` is left in place so that it fails as `bad $in value`.
                resolved[target] = [*existing, *values] if isinstance(existing, list) else existing
        return resolved

    async def in_query(self, op: str, spec: Any, depth: int) -> list[Any]:
        if not isinstance(spec, dict) or "where" not in spec or not _is_name(spec.get("className")):
            raise QueryError(INVALID_QUERY, f"improper usage of {op}")
        ids = await self.subquery_values(spec["className"], spec["where"], "objectId", depth)
        return [{"__type": "Pointer", "className": spec["className"], "objectId": str(id_)} for id_ in ids]

    async def select(self, op: str, spec: Any, depth: int) -> list[Any]:
        query = spec.get("query") if isinstance(spec, dict) else None
        if not isinstance(query, dict) or len(spec) != 2 or not _is_name(query.get("className")):
            raise QueryError(INVALID_QUERY, f"improper usage of {op}")
        if not _is_name(spec.get("key")):
            raise QueryError(INVALID_QUERY, f"improper usage of {op}")
        return await self.subquery_values(query["className"], query.get("where", {}), spec["key"], depth)

    async def subquery_values(self, class_name: str, where: Any, key: str, depth: int) -> list[Any]:
        """`key` of every match of `where` on `class_name` as REST values: stored pointers become objects."""
        schema = await self.runner.schema_for(class_name)
        mongo_filter = await self.filter_for(where, schema, depth + 1)
        field = _field_for(key, schema)
        if not field.target:
            return await self.runner.distinct_values(class_name, mongo_filter, field.key)
        stored = await self.runner.distinct_values(class_name, mongo_filter, "_p_" + field.key)
        return [_pointer_from_storage(value) for value in stored]

    async def related_ids(self, spec: Any) -> list[Any]:
        owner = spec.get("object") if isinstance(spec, dict) else None
        if not has_type(owner, "Pointer") or not _is_name(spec.get("key")):
            raise QueryError(INVALID_QUERY, "improper usage of $relatedTo")
        owner_class, owner_id = member(owner, "className", "Pointer"), member(owner, "objectId", "Pointer")
        return await self.runner.related_ids(owner_class, spec["key"], owner_id)


def _pointer_from_storage(value: Any) -> Any:
    """`"_User$abc"` as the Pointer object a REST read gives, so the outer query treats it as Parse does."""
    if not isinstance(value, str) or "$" not in value:
        return value
    class_name, _, object_id = value.partition("$")
    return {"__type": "Pointer", "className": class_name, "objectId": object_id}


def _field_for(name: str, schema: ClassSchema) -> _Field:
    if name.startswith("$"):
        raise QueryError(INVALID_JSON, f"bad constraint: {name}")
    if name == "ACL":
        raise QueryError(INVALID_QUERY, "Cannot query on ACL.")
    if "\0" in name or any(not part or part.startswith("$") for part in name.split(".")):
        raise QueryError(INVALID_KEY_NAME, f"Invalid key name: {name}")
    auth_data = _AUTH_DATA_KEY.fullmatch(name)
    if name in _SPECIAL_FIELDS or auth_data or "." in name:
        key = f"_auth_data_{auth_data[1]}.id" if auth_data else name
        return _SPECIAL_FIELDS.get(name) or _Field(name, key, is_interior=True)
    is_array = name in schema.arrays
    return _Field(
        name, name, schema.pointers.get(name), is_array, is_interior=is_array, may_be_pointer=not is_array
    )


def _storage_key(field: _Field, value: Any) -> str:
    operands = [value.get(op) for op in ("$in", "$nin", "$ne", "$eq")] if _is_constraint(value) else [value]
    items = [item for operand in operands for item in (operand if isinstance(operand, list) else [operand])]
    has_pointer = field.may_be_pointer and any(has_type(item, "Pointer") for item in items)
    return "_p_" + field.key if field.target or has_pointer else field.key


def _equality(field: _Field, value: Any) -> Any:
    if field.is_array and not isinstance(value, list):
        return {"$all": [interior(value)]}
    if field.is_interior:
        return interior(value)  # an array compared with an array field: exact equality, as in MongoDB
    if field.parses_iso and isinstance(value, str):
        return parse_iso(value)
    atom = top_atom(value, None)
    if atom is NOT_ATOM:
        raise QueryError(INVALID_JSON, f"You cannot use {js_string(value)} as a query parameter.")
    return atom


def _compare(op: str, operand: Any, field: _Field, now: datetime) -> dict[str, Any]:
    if not isinstance(operand, dict) or not js_truthy(operand.get("$relativeTime")):
        return {op: _atom(operand, field)}
    if field.target or field.is_array:
        raise QueryError(INVALID_JSON, "$relativeTime can only be used with Date field")
    if op not in _COMPARISONS:
        raise QueryError(
            INVALID_JSON, "$relativeTime can only be used with the $lt, $lte, $gt, and $gte operators"
        )
    return {op: relative_time(op, operand["$relativeTime"], now)}


def _membership(op: str, operand: Any, field: _Field, now: datetime) -> dict[str, Any]:
    if not isinstance(operand, list):
        raise QueryError(INVALID_JSON, f"bad {op} value")
    # Parse flattens one level of nested arrays (lodash flatMap in transformConstraint).
    return {
        op: [
            _atom(item, field)
            for entry in operand
            for item in (entry if isinstance(entry, list) else [entry])
        ]
    }


def _contains_all(op: str, operand: Any, field: _Field, now: datetime) -> dict[str, Any]:
    if not isinstance(operand, list):
        raise QueryError(INVALID_JSON, f"bad {op} value")
    values = interior(operand)
    if 0 < sum(isinstance(value, Regex) for value in values) < len(values):
        raise QueryError(INVALID_JSON, f"All $all values must be of regex type or none: {render(operand)}")
    return {op: values}


def _pattern(op: str, operand: Any, field: _Field, now: datetime) -> dict[str, Any]:
    if op == "$regex":
        return {op: regex_source(operand)}
    if op == "$options" and not (isinstance(operand, str) and re.fullmatch(r"[imxs]+", operand)):
        raise QueryError(INVALID_QUERY, f"Bad $options value for query: {js_string(operand)}")
    return {op: operand}


def _contained_by(op: str, operand: Any, field: _Field, now: datetime) -> dict[str, Any]:
    if not isinstance(operand, list):
        raise QueryError(INVALID_JSON, "bad $containedBy: should be an array")
    return {"$elemMatch": {"$nin": [_atom(item, field) for item in operand]}}


def _text(op: str, operand: Any, field: _Field, now: datetime) -> dict[str, Any]:
    search = operand.get("$search") if isinstance(operand, dict) else None
    if not isinstance(search, dict) or not _is_name(search.get("$term")):
        raise QueryError(INVALID_JSON, "bad $text: $search should be an object with a string $term")
    options = {"$language": str, "$caseSensitive": bool, "$diacriticSensitive": bool}
    given = {name: search[name] for name in options if js_truthy(search.get(name))}
    for name, value in given.items():
        if not isinstance(value, options[name]):
            raise QueryError(INVALID_JSON, f"bad $text: {name}, should be {options[name].__name__}")
    return {op: {"$search": search["$term"], **given}}


def _geo(op: str, operand: Any, field: _Field, now: datetime) -> dict[str, Any]:
    return geo_constraint(op, operand)


_OPERATORS: dict[str, Callable[[str, Any, _Field, datetime], dict[str, Any]]] = {
    **dict.fromkeys((*_COMPARISONS, "$ne", "$eq", "$exists"), _compare),
    **dict.fromkeys(("$in", "$nin"), _membership),
    **dict.fromkeys(("$regex", "$options"), _pattern),
    **dict.fromkeys(("$within", "$geoWithin", "$geoIntersects"), _geo),
    "$all": _contains_all,
    "$containedBy": _contained_by,
    "$text": _text,
}


def _atom(value: Any, field: _Field) -> Any:
    """An operand inside an operator; there a string on a pointer field is an objectId (MongoTransform)."""
    if field.parses_iso and isinstance(value, str):
        return parse_iso(value)
    atom = interior(value) if field.is_interior else top_atom(value, field.target)
    if atom is NOT_ATOM:
        raise QueryError(INVALID_JSON, f"bad atom: {render(value)}")
    return atom


def _is_constraint(value: Any) -> bool:
    return isinstance(value, dict) and all(key.startswith("$") for key in value)


def _is_name(value: Any) -> bool:
    return isinstance(value, str) and value != ""
