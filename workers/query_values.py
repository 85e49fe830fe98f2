"""Turn the values in a Parse query (typed atoms, `$relativeTime`, geo operands) into BSON for MongoDB."""

from __future__ import annotations

import base64
import binascii
import math
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any, NoReturn

from bson.binary import Binary
from bson.regex import Regex

from pushgw.errors import INVALID_JSON, PushgwError
from pushgw.parse_quirks import js_json, js_number, js_string

NOT_ATOM = object()
# Parse walks a constraint's keys in reverse alphabetical order, so of several distances the first here wins.
_DISTANCE_UNITS = {
    "$maxDistance": 1,
    "$maxDistanceInKilometers": 6371,
    "$maxDistanceInMiles": 3959,
    "$maxDistanceInRadians": 1,
}
NEAR_SPHERE_KEYS = frozenset({"$nearSphere", *_DISTANCE_UNITS})
_UNIT_SECONDS = {
    **dict.fromkeys(("yr", "yrs", "year", "years"), 31_536_000),
    **dict.fromkeys(("wk", "wks", "week", "weeks"), 604_800),
    **dict.fromkeys(("d", "day", "days"), 86_400),
    **dict.fromkeys(("hr", "hrs", "hour", "hours"), 3_600),
    **dict.fromkeys(("min", "mins", "minute", "minutes"), 60),
    **dict.fromkeys(("sec", "secs", "second", "seconds"), 1),
}


class QueryError(PushgwError):
    """A Parse query error; the push fails with `{"code", "message"}` as its errorMessage (§9.5)."""

    def __init__(self, code: int, message: str) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message


def top_atom(value: Any, target: str | None) -> Any:
    """A top-level value as stored (a Pointer as `Class$id`), or NOT_ATOM for an object or array."""
    if isinstance(value, str):
        return f"{target}${value}" if target else value
    if isinstance(value, dict) and isinstance(value.get("__type"), str) and value["__type"] in _TYPED_ATOMS:
        return _TYPED_ATOMS[value["__type"]](value)
    # Numbers, booleans, null and values a $select read back from MongoDB are atoms; objects and arrays not.
    return NOT_ATOM if isinstance(value, dict | list) else value


def interior(value: Any) -> Any:
    """A value in an array or sub-document, as stored: Pointers stay objects; Dates, Bytes, $regex convert."""
    if isinstance(value, list):
        return [interior(item) for item in value]
    if not isinstance(value, dict):
        return value
    if has_type(value, "Pointer"):
        class_name, object_id = member(value, "className", "Pointer"), member(value, "objectId", "Pointer")
        return {"__type": "Pointer", "className": class_name, "objectId": object_id}
    if has_type(value, "Date") or has_type(value, "Bytes"):
        return _TYPED_ATOMS[value["__type"]](value)
    if "$regex" in value:  # transformInteriorAtom: how `$all` and array fields take regular expressions
        return Regex(regex_source(value["$regex"]))
    return {key: interior(item) for key, item in value.items()}


def regex_source(pattern: Any) -> str:
    """The pattern of a `$regex`, which must be a string."""
    if not isinstance(pattern, str):
        raise QueryError(INVALID_JSON, f"bad regex: {js_string(pattern)}")
    return pattern


def parse_iso(text: str) -> datetime:
    """An ISO 8601 time as BSON stores it (see utc_ms)."""
    try:
        return utc_ms(datetime.fromisoformat(text))
    except (ValueError, OverflowError):
        raise QueryError(INVALID_JSON, f"bad Date value: {render(text)}") from None


def utc_ms(moment: datetime) -> datetime:
    """Aware UTC at millisecond precision, as BSON stores it; a zone-less time is taken as UTC."""
    moment = moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)
    return moment.replace(microsecond=moment.microsecond // 1000 * 1000)


def relative_time(op: str, text: Any, now: datetime) -> datetime:
    """`now` moved by a `$relativeTime` operand of `op`; a bad one fails as Parse words it."""
    try:
        return now + timedelta(seconds=_relative_seconds(text))
    except (QueryError, OverflowError) as error:
        reason = error.message if isinstance(error, QueryError) else "The date is out of range."
        raise QueryError(INVALID_JSON, f"bad $relativeTime ({op}) value. {reason}") from None


def _relative_seconds(text: Any) -> int:
    """Utils.relativeTimeToDate: "in 2 days", "3 hrs 4 mins ago" or "now", as signed seconds from now."""
    text = text.lower() if isinstance(text, str) else _fail("$relativeTime should be a string")
    parts = [part for part in text.split(" ") if part]
    future, past = parts[:1] == ["in"], parts[-1:] == ["ago"]
    if not future and not past and text != "now":
        _fail("Time should either start with 'in' or end with 'ago'")
    if future and past:
        _fail("Time cannot have both 'in' and 'ago'")
    parts = parts[1:] if future else parts[:-1]
    if len(parts) % 2:
        _fail("Invalid time string. Dangling unit or number.")
    seconds = 0
    for number, unit in zip(parts[::2], parts[1::2], strict=True):
        value = js_number(number)
        if not (math.isfinite(value) and value.is_integer()):
            _fail(f"'{number}' is not an integer.")
        seconds += int(value) * (_UNIT_SECONDS.get(unit) or _fail(f"Invalid interval: '{unit}'"))
    return seconds if future else -seconds


def near_sphere(constraint: dict[str, Any]) -> dict[str, Any]:
    """$nearSphere as Parse counts it: a $centerSphere needs no geo index (§7.5) and works in a count."""
    name = next((name for name in _DISTANCE_UNITS if name in constraint), None)
    # Without a distance $nearSphere only orders by distance; a radius of pi radians covers the whole sphere.
    radius = _distance(name, constraint[name]) / _DISTANCE_UNITS[name] if name else math.pi
    return {"$geoWithin": {"$centerSphere": [_geo_pair(constraint["$nearSphere"]), radius]}}


def geo_constraint(op: str, operand: Any) -> dict[str, Any]:
    """$geoIntersects {$point}; $within {$box} and $geoWithin {$polygon | $centerSphere} as $geoWithin."""
    spec = operand if isinstance(operand, dict) else {}
    if op == "$geoIntersects":
        return {op: {"$geometry": {"type": "Point", "coordinates": _geo_pair(spec.get("$point"))}}}
    if isinstance(spec.get("$box"), list) and len(spec["$box"]) == 2:
        return {"$geoWithin": {"$box": [_geo_pair(corner) for corner in spec["$box"]]}}
    polygon: Any = spec.get("$polygon")
    # Parse hands a Polygon's coordinates over unswapped, so MongoDB reads them as [longitude, latitude].
    is_object = isinstance(polygon, dict) and polygon.get("__type") == "Polygon"
    points = polygon.get("coordinates") if is_object else polygon
    if isinstance(points, list) and len(points) >= 3:
        return {"$geoWithin": {"$polygon": [_geo_pair(point) for point in points]}}
    sphere = spec.get("$centerSphere")
    if polygon is not None or not isinstance(sphere, list) or len(sphere) != 2:
        raise QueryError(INVALID_JSON, f"bad {op} value; use $box, $polygon (3+ GeoPoints) or $centerSphere")
    return {"$geoWithin": {"$centerSphere": [_geo_pair(sphere[0]), _distance("$centerSphere", sphere[1])]}}


def _bytes(value: dict[str, Any]) -> Binary:
    try:
        return Binary(base64.b64decode(member(value, "base64", "Bytes"), validate=True))
    except (binascii.Error, ValueError):
        raise QueryError(INVALID_JSON, f"bad Bytes: {render(value)}") from None


def _polygon(value: dict[str, Any]) -> dict[str, Any]:
    """PolygonCoder: [latitude, longitude] pairs become a closed GeoJSON ring of [longitude, latitude]."""
    pairs = value.get("coordinates")
    if not isinstance(pairs, list) or len(pairs) < 3 or not all(isinstance(pair, list) for pair in pairs):
        raise QueryError(INVALID_JSON, "bad Polygon: coordinates should hold 3+ [latitude, longitude] pairs")
    ring = [_geo_pair(pair[::-1]) for pair in pairs]
    return {"type": "Polygon", "coordinates": [ring if ring[0] == ring[-1] else [*ring, ring[0]]]}


def _geo_pair(point: Any) -> list[float]:
    """[longitude, latitude] of a GeoPoint object or of a [longitude, latitude] pair, range-checked."""
    if isinstance(point, list) and len(point) == 2:
        longitude, latitude = point
    elif has_type(point, "GeoPoint"):
        longitude, latitude = point.get("longitude"), point.get("latitude")
    else:
        raise QueryError(INVALID_JSON, f"bad GeoPoint: {render(point)}")
    if not (
        _is_number(latitude) and _is_number(longitude) and -90 <= latitude <= 90 and -180 <= longitude <= 180
    ):
        raise QueryError(
            INVALID_JSON, f"bad GeoPoint: {render(point)}; latitude -90..90, longitude -180..180"
        )
    return [longitude, latitude]


_TYPED_ATOMS: dict[str, Callable[[dict[str, Any]], Any]] = {
    "Pointer": lambda value: (
        f"{member(value, 'className', 'Pointer')}${member(value, 'objectId', 'Pointer')}"
    ),
    "Date": lambda value: parse_iso(member(value, "iso", "Date")),
    "Bytes": _bytes,
    "GeoPoint": _geo_pair,
    "Polygon": _polygon,
    "File": lambda value: member(value, "name", "File"),
}


def _distance(name: str, value: Any) -> float:
    if not _is_number(value) or value < 0:
        raise QueryError(INVALID_JSON, f"bad {name} distance: {render(value)}")
    return float(value)


def member(value: Any, key: str, kind: str) -> str:
    """The string `key` of a typed object such as a Pointer; anything else fails as a bad `kind`."""
    found = value.get(key)
    if not isinstance(found, str):
        raise QueryError(INVALID_JSON, f"bad {kind}: {render(value)}")
    return found


def has_type(value: Any, kind: str) -> bool:
    """Whether `value` is a Parse typed object (`{"__type": kind}`)."""
    return isinstance(value, dict) and value.get("__type") == kind


def render(value: Any) -> str:
    """JSON.stringify of a value for an error message; values read back from MongoDB fall back to repr."""
    try:
        return js_json(value)
    except TypeError:
        return repr(value)


def _fail(info: str) -> NoReturn:
    raise QueryError(INVALID_JSON, info)


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)
