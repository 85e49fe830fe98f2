"""Every deliberately reproduced Parse Server oddity, one name each (see docs/compatibility.md)."""

from __future__ import annotations

import hashlib
import json
import math
import re
from collections.abc import Mapping
from typing import Any

# Parse-SDK-JS RESTController.ts splits on ", "; else Parse.Push.send() resolves undefined (observed 9.10).
EXPOSE_HEADERS = "X-Parse-Job-Status-Id, X-Parse-Push-Status-Id"

# middlewares.allowCrossDomain: the exact header set on every response, errors included (observed 9.10).
ALLOW_METHODS = "GET,PUT,POST,DELETE,OPTIONS"
ALLOW_HEADERS = (
    "X-Parse-Master-Key, X-Parse-REST-API-Key, X-Parse-Javascript-Key, X-Parse-Application-Id, "
    "X-Parse-Client-Version, X-Parse-Session-Token, X-Requested-With, X-Parse-Revocable-Session, "
    "X-Parse-Request-Id, Content-Type, Pragma, Cache-Control"
)

# SDKs authenticate inside the JSON body (src/middlewares.js); pushgw strips them all, always.
BODY_CREDENTIAL_KEYS = (
    "_ApplicationId",
    "_MasterKey",
    "_JavaScriptKey",
    "_ClientKey",
    "_ClientVersion",
    "_InstallationId",
    "_SessionToken",
    "_RevocableSession",
    "_context",
    "_ContentType",
    "_method",
    "_noBody",  # Unity SDK marker (middlewares.handleParseHeaders)
)

# `limit`, `skip`, `order`, `keys` do nothing in a push query (Parse semantics; Parse-SDK-JS #1956).
IGNORED_QUERY_KEYS = frozenset({"limit", "skip", "order", "keys"})

# StatusHandler.setInitial: the md5 of "" when the alert is neither a string nor an object.
EMPTY_PUSH_HASH = "d41d8cd98f00b204e9800998ecf8427e"

# PushController.sendPush throws a plain string for a bad badge; Express renders this 500 (observed 9.10).
INVALID_BADGE_STATUS = 500
INVALID_BADGE_BODY = {"code": 1, "message": "Internal server error."}

# Express finalhandler's 404 page for a method without a route, e.g. GET /parse/push (observed 9.10).
NOT_FOUND_HTML = (
    '<!DOCTYPE html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n<title>Error</title>\n'
    "</head>\n<body>\n<pre>{message}</pre>\n</body>\n</html>\n"
)

_INT32_MIN, _INT32_MAX = -(2**31), 2**31 - 1
_JS_SAFE_INTEGER = 2**53
MAX_JSON_DEPTH = 64  # MongoDB refuses documents nested deeper than 100 levels; pushgw keeps a margin
_JS_MAX_DATE_MS = 8.64e15


_HTML_ESCAPES = {"&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;"}


def express_escape(message: str) -> str:
    """finalhandler: escape-html, then newlines → `<br>` and each double space → ` &nbsp;`."""
    escaped = "".join(_HTML_ESCAPES.get(char, char) for char in message)
    return re.sub(r"\r?\n", "<br>", escaped).replace("  ", " &nbsp;")


def parses_as_json(content_type: str | None) -> bool:
    """Parse 9.x reads every body as JSON except url-encoded forms and multipart (observed 9.10)."""
    media = (content_type or "").split(";", 1)[0].strip().lower()
    return media not in ("application/x-www-form-urlencoded", "multipart/form-data")


def strip_body_credentials(body: dict[str, Any]) -> dict[str, Any]:
    """Return the body without any credential or transport key; they must never be stored or queued."""
    return {key: value for key, value in body.items() if key not in BODY_CREDENTIAL_KEYS}


def js_truthy(value: Any) -> bool:
    """JavaScript truthiness of a JSON value: objects and arrays are truthy even when empty."""
    if isinstance(value, dict | list):
        return True
    return bool(value)


def js_number_string(number: float) -> str:
    """`String(n)` for a JS number: 10, 1.5, 1e+300, 1e-7, 123456789012345680000."""
    if isinstance(number, bool):
        return "true" if number else "false"
    value = float(number)
    if math.isnan(value):
        return "NaN"
    if math.isinf(value):
        return "Infinity" if value > 0 else "-Infinity"
    if value == 0:
        return "0"
    digits, exponent = _shortest_digits(abs(value))
    sign = "-" if value < 0 else ""
    point = (
        exponent + 1
    )  # position of the decimal point relative to the digit string (ECMA-262 Number::toString)
    if len(digits) <= point <= 21:
        return sign + digits + "0" * (point - len(digits))
    if 0 < point <= 21:
        return sign + digits[:point] + "." + digits[point:]
    if -6 < point <= 0:
        return sign + "0." + "0" * -point + digits
    mantissa = digits[0] + ("." + digits[1:] if len(digits) > 1 else "")
    exp = point - 1
    return f"{sign}{mantissa}e{'+' if exp > 0 else '-'}{abs(exp)}"


def _shortest_digits(value: float) -> tuple[str, int]:
    """Shortest round-trip decimal digits of a positive float and the exponent of the first digit."""
    shortest = repr(value)
    if "e" in shortest:
        mantissa, _, exp = shortest.partition("e")
        digits = mantissa.replace(".", "").rstrip("0") or "0"
        return digits, int(exp)
    whole, _, frac = shortest.partition(".")
    raw = (whole + frac).lstrip("0")
    leading_zeros = len(whole + frac) - len(raw)
    exponent = len(whole) - 1 - leading_zeros
    return raw.rstrip("0") or "0", exponent


def js_string(value: Any) -> str:
    """JavaScript `String(value)` of a JSON value, as in "<value> is not valid time." (PushController)."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return js_number_string(value)
    if isinstance(value, str):
        return value
    if isinstance(value, list):
        return ",".join("" if item is None else js_string(item) for item in value)
    return "[object Object]"


_JS_NUMBER_LITERAL = re.compile(r"^[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?$")


def js_number(value: Any) -> float:
    """JavaScript `Number(value)` of a JSON value (NaN for objects and unparsable strings)."""
    if value is None:
        return 0.0
    if isinstance(value, bool):
        return 1.0 if value else 0.0
    if isinstance(value, int | float):
        return float(value)
    if isinstance(value, list):
        return js_number(js_string(value))
    if isinstance(value, str):
        return _js_string_to_number(value)
    return math.nan


def _js_string_to_number(text: str) -> float:
    stripped = text.strip()
    if not stripped:
        return 0.0
    if stripped in ("Infinity", "+Infinity", "-Infinity"):
        return -math.inf if stripped.startswith("-") else math.inf
    if re.fullmatch(r"0[xX][0-9a-fA-F]+", stripped):
        return float(int(stripped, 16))
    if re.fullmatch(r"0[oO][0-7]+", stripped):
        return float(int(stripped[2:], 8))
    if re.fullmatch(r"0[bB][01]+", stripped):
        return float(int(stripped[2:], 2))
    if _JS_NUMBER_LITERAL.match(stripped):
        return float(stripped)
    return math.nan


def is_increment(badge: Any) -> bool:
    """`"Increment"` in any case (src/Push/utils.js isPushIncrementing lowercases it)."""
    return isinstance(badge, str) and badge.lower() == "increment"


def is_increment_op(badge: Any) -> bool:
    """`{"__op": "<increment, any case>", "amount": <truthy Number()>}` (PushController.sendPush)."""
    if not isinstance(badge, dict):
        return False
    op = badge.get("__op")
    amount = js_number(badge.get("amount"))
    return isinstance(op, str) and op.lower() == "increment" and bool(amount) and not math.isnan(amount)


def is_valid_badge(badge: Any) -> bool:
    """PushController.sendPush accepts a falsy badge, the Increment forms, or a truthy Number(badge)."""
    if not js_truthy(badge) or is_increment(badge) or is_increment_op(badge):
        return True
    number = js_number(badge)
    return bool(number) and not math.isnan(number)


def push_time_is_local(value: Any) -> bool:
    """Numbers stay "local" (isLocalTime defaults to true); only a trailing `Z` or `±HH:MM` is a zone."""
    if not isinstance(value, str):
        return True
    has_zone = value.endswith("Z") or re.search(r".+[+-]\d\d:\d\d$", value) is not None
    return not has_zone


def js_json(value: Any) -> str:
    """`JSON.stringify(value)`: compact, key order kept, non-ASCII unescaped, integral floats as ints."""
    if value is None or isinstance(value, bool | str):
        return json.dumps(value, ensure_ascii=False)
    if isinstance(value, int):
        return str(value) if abs(value) < _JS_SAFE_INTEGER else js_number_string(value)
    if isinstance(value, float):
        return js_number_string(value) if math.isfinite(value) else "null"
    if isinstance(value, list):
        return "[" + ",".join(js_json(item) for item in value) + "]"
    if isinstance(value, Mapping):
        items = (
            json.dumps(str(key), ensure_ascii=False) + ":" + js_json(item) for key, item in value.items()
        )
        return "{" + ",".join(items) + "}"
    raise TypeError(f"not a JSON value: {type(value).__name__}")


def push_hash(data: Any) -> str:
    """md5 of a string alert or of an object alert's JSON, else md5 of "" (src/StatusHandler.js)."""
    alert = data.get("alert") if isinstance(data, dict) else None
    if isinstance(alert, str):
        return hashlib.md5(alert.encode("utf-8"), usedforsecurity=False).hexdigest()
    if isinstance(alert, dict | list) or (isinstance(data, dict) and "alert" in data and alert is None):
        # JS `typeof null === "object"`, so a null alert hashes JSON.stringify(null) = "null".
        return hashlib.md5(js_json(alert).encode("utf-8"), usedforsecurity=False).hexdigest()
    return EMPTY_PUSH_HASH


def bson_number(value: float) -> int | float:
    """The Node driver stores integral numbers that fit in int32 as int32, everything else as double."""
    if isinstance(value, int) and not isinstance(value, bool) and _INT32_MIN <= value <= _INT32_MAX:
        return value
    if isinstance(value, float) and value.is_integer() and _INT32_MIN <= value <= _INT32_MAX:
        return int(value)
    return float(value)


def is_valid_js_date_ms(epoch_ms: float) -> bool:
    """`isFinite(new Date(ms))`: JavaScript dates span ±8.64e15 ms around the epoch."""
    return math.isfinite(epoch_ms) and abs(epoch_ms) <= _JS_MAX_DATE_MS


def js_int(text: str) -> int | float:
    """A JSON integer as JavaScript reads it: exact up to 2**53, a double beyond (Infinity past 1e308)."""
    if len(text) <= 15:
        return int(text)
    value = float(text)
    return int(text) if abs(value) < _JS_SAFE_INTEGER else value


def has_escaped_surrogate(text: str) -> bool:
    return "\\ud" in text or "\\uD" in text


def well_formed(value: Any) -> Any:
    """Replace lone UTF-16 surrogates (legal in JSON escapes) with U+FFFD, as Node's UTF-8 encoder does."""
    if isinstance(value, str):
        return value.encode("utf-16", "surrogatepass").decode("utf-16", "replace")
    if isinstance(value, list):
        return [well_formed(item) for item in value]
    if isinstance(value, dict):
        return {well_formed(key): well_formed(item) for key, item in value.items()}
    return value


def json_depth_exceeds(value: Any, limit: int = MAX_JSON_DEPTH) -> bool:
    """True when objects/arrays nest deeper than `limit` (checked without recursion)."""
    stack: list[tuple[Any, int]] = [(value, 1)]
    while stack:
        current, depth = stack.pop()
        children = (
            current.values() if isinstance(current, dict) else current if isinstance(current, list) else ()
        )
        for child in children:
            if isinstance(child, dict | list):
                if depth + 1 > limit:
                    return True
                stack.append((child, depth + 1))
    return False
