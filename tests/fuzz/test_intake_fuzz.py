"""Property-based fuzz of POST /parse/push against the real intake (uvicorn, SecantusDB, RabbitMQ).

Hostile bodies and headers must never hang the gateway and must always be answered in Parse's shapes:
200 `{"result":true}` with a push-status id, 400/403/413 `{"error"[, "code"]}`, the Express 404 page for a
`_method` override, and a 500 only for Parse's invalid-badge case (contract §5.2 G) on a master-key request.
At the end of each test the gateway still answers /health and `_PushStatus` holds exactly one row per
accepted push (contract §5.4: no record without a 200, no 200 without a record).
"""

from __future__ import annotations

import base64
import contextlib
import json
import logging
import re
import sys
import time
import traceback
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from ipaddress import IPv4Address, IPv6Address, ip_address, ip_network
from typing import Any
from urllib.parse import parse_qs, urlencode

import httpx2
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from pymongo import MongoClient

from pushgw import parse_quirks
from pushgw.settings import Settings
from tests.fixtures.gateway import RunningGateway, SettingsFactory, app_config

GatewayFactory = Callable[[Settings], RunningGateway]

APP_ID, MASTER_KEY, REST_KEY, JS_KEY = "app1", "master1", "rest1", "js1"
PATH = "/parse/push"
LIMIT = 1_048_576  # HttpSettings.max_body_bytes default
CLIENT_TIMEOUT_S = 10.0
STATUSES = {200, 400, 403, 404, 413, 500}
ACCEPTED_BODY = b'{"result":true}'
INTERNAL_ERROR = {"code": 1, "message": "Internal server error."}
PUSH_STATUS_ID = re.compile(r"^[A-Za-z0-9]{10}$")
DEEP_JSON = parse_quirks.MAX_JSON_DEPTH  # pushgw refuses deeper JSON as malformed (docs/compatibility.md)
MASTER = {"X-Parse-Application-Id": APP_ID, "X-Parse-Master-Key": MASTER_KEY}

FUZZ = settings(
    deadline=None,
    database=None,  # nothing written into the working tree
    print_blob=True,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)


# --- strategies: JSON values -------------------------------------------------------------------

HUGE_INTS = st.sampled_from(
    [
        2**31,
        -(2**31) - 1,
        2**53 + 1,
        2**63,
        -(2**63) - 1,
        2**64,
        10**21,
        10**308,
        10**309,
        -(10**309),
        10**400,
    ]
)
ODD_FLOATS = st.sampled_from([0.0, -0.0, 0.1, 1.5, -1.5, 1e-7, 5e-324, 1e21, 1e308, -1e308, 8.64e12, 8.64e15])
NUMBERS = st.one_of(
    st.integers(-5, 5), st.integers(), HUGE_INTS, ODD_FLOATS, st.floats(allow_nan=False, allow_infinity=False)
)
ODD_STRINGS = st.sampled_from(
    ["", " ", "Increment", "increment", "INCREMENT", "inc", "1", "0", "-1", " 5 ", "0x10", "1e400", "NaN",
     "Infinity", "-Infinity", "true", "null", "[object Object]", "2030-01-01T00:00:00.000Z", "2030-01-01",
     "2030-01-01 10:00", "2030-01-01T10:00:00+02:00", "9999-12-31T23:59:59.999Z", "0000-01-01T00:00:00Z",
     "+275760-09-13T00:00:00.000Z", "2030-02-30T00:00:00Z", "not-a-date", "__proto__", "constructor",
     "$in", "$where", "a.b", "<script>alert(1)</script>", "\u0000", "ß", "🎉", "\ufeff", "\u2028",
     "\ud800", "a\udfffb"]
)  # fmt: skip
TEXT = st.one_of(
    ODD_STRINGS,
    st.text(max_size=12),
    st.text(st.characters(min_codepoint=0xD700, max_codepoint=0xE000), max_size=4),  # lone surrogates
)
SCALARS = st.one_of(st.none(), st.booleans(), NUMBERS, TEXT)
KEYS = st.one_of(
    st.sampled_from(
        ["a", "", "$in", "$or", "$foo", "__op", "amount", "__type", "deviceType", "channels", "."]
    ),
    st.text(max_size=8),
)
JSON_VALUES = st.recursive(
    SCALARS,
    lambda inner: st.one_of(st.lists(inner, max_size=3), st.dictionaries(KEYS, inner, max_size=3)),
    max_leaves=6,
)

# --- strategies: push bodies -------------------------------------------------------------------

DATES = st.sampled_from(
    ["2030-01-01T00:00:00.000Z", "2030-01-01T00:00:00", "2030-06-01", "2031-01-01T10:00:00+05:30",
     "1970-01-01T00:00:00Z", "2029-12-31 23:59"]
)  # fmt: skip
TIMES = st.one_of(DATES, st.integers(0, 2_000_000_000), NUMBERS, TEXT, JSON_VALUES)
BADGES = st.one_of(
    st.sampled_from(
        ["Increment", "increment", "inc", "lots", "", "5", "0", "-1", " ", "1e400", True, False, None, 0, 1, -1,
         0.5, [], {}, [1], [1, 2], [[]], [0], {"__op": "Increment", "amount": 1},
         {"__op": "Increment", "amount": 0}, {"__op": "increment", "amount": "2"}, {"__op": "Add", "amount": 1},
         {"__op": "Increment"}, {"amount": 1}]
    ),
    NUMBERS,
    JSON_VALUES,
)  # fmt: skip
LOCALE_KEYS = st.sampled_from(
    ["alert-fr", "alert-en-US", "title-de", "alert-", "title-zh-Hant-TW", "alert-FR"]
)
DATA_KEYS: dict[str, st.SearchStrategy[Any]] = {
    "title": st.one_of(TEXT, JSON_VALUES), "sound": TEXT, "content-available": st.one_of(st.just(1), SCALARS),
    "uri": TEXT, "push_type": TEXT, "priority": SCALARS, "expiration_time": SCALARS, "alert-fr": TEXT,
    "alert-en-US": JSON_VALUES, "title-de": TEXT, "alert-": TEXT, "title-zh-Hant-TW": TEXT, "alert-FR": TEXT,
}  # fmt: skip
DATA_DICTS = st.builds(
    lambda fixed, known, extra: {**extra, **known, **fixed},
    st.fixed_dictionaries({}, optional={"alert": st.one_of(TEXT, JSON_VALUES), "badge": BADGES}),
    st.lists(
        st.sampled_from(sorted(DATA_KEYS)).flatmap(lambda key: st.tuples(st.just(key), DATA_KEYS[key])),
        max_size=2,
        unique_by=lambda pair: pair[0],
    ).map(dict),
    st.dictionaries(KEYS, SCALARS, max_size=2),
)
DATA = st.one_of(DATA_DICTS, DATA_DICTS, JSON_VALUES)
WHERE = st.one_of(
    st.sampled_from(
        [{}, {"deviceType": "ios"}, {"channels": "a"}, {"deviceType": {"$foo": 1}}, {"$or": 1}, {"ACL": 1},
         {"channels": {"$in": ["a", "b"]}}, "abc", 5, None, ["a"], {"limit": 1, "order": "x"}]
    ),
    JSON_VALUES,
)  # fmt: skip
CHANNELS = st.one_of(st.sampled_from([["a"], [], [""], ["a", "b"]]), st.lists(TEXT, max_size=3), JSON_VALUES)
AUDIENCE = st.one_of(
    CHANNELS.map(lambda channels: {"channels": channels}),
    WHERE.map(lambda where: {"where": where}),
    st.tuples(WHERE, CHANNELS).map(lambda pair: {"where": pair[0], "channels": pair[1]}),
    st.just({}),
)
METHODS = st.one_of(
    st.sampled_from(
        ["GET", "get", "PUT", "DELETE", "POST", "post", "PoSt", "", "OPTIONS", "<b>x</b>", "a&b"]
    ),
    TEXT,
    SCALARS,
)
CONTEXTS = st.one_of(
    st.sampled_from([{}, {"a": 1}, "{}", '{"a":1}', "[1]", "null", "{", [], 1, None]), JSON_VALUES
)
APP_IDS = st.one_of(st.sampled_from([APP_ID, "APP1", "app2", ""]), TEXT, SCALARS)
KEY_VALUES = st.one_of(st.sampled_from([MASTER_KEY, "Master1", "master", "", REST_KEY]), TEXT, SCALARS)
SCHEDULE = st.fixed_dictionaries(
    {},
    optional={
        "data": DATA, "push_time": TIMES, "expiration_time": TIMES,
        "expiration_interval": st.one_of(st.integers(1, 86400), NUMBERS, JSON_VALUES),
    },
)  # fmt: skip
OTHER_KEYS: dict[str, st.SearchStrategy[Any]] = {
    "_ApplicationId": APP_IDS, "_MasterKey": KEY_VALUES, "_method": METHODS, "_context": CONTEXTS,
    "audience_id": TEXT, "_ClientVersion": TEXT, "_InstallationId": TEXT, "_SessionToken": TEXT,
    "_JavaScriptKey": KEY_VALUES, "_ContentType": TEXT, "_noBody": SCALARS, "notification": JSON_VALUES,
    "rawPayload": JSON_VALUES, "priority": SCALARS, "push_type": TEXT, "collapse_id": TEXT, "limit": SCALARS,
}  # fmt: skip
OTHERS = st.lists(
    st.sampled_from(sorted(OTHER_KEYS)).flatmap(lambda key: st.tuples(st.just(key), OTHER_KEYS[key])),
    max_size=3,
    unique_by=lambda pair: pair[0],
).map(dict)
BODIES = st.builds(
    lambda junk, audience, schedule, others: {**junk, **audience, **schedule, **others},
    st.dictionaries(KEYS, JSON_VALUES, max_size=2),
    AUDIENCE,
    SCHEDULE,
    OTHERS,
)
CONTENT_TYPES = st.one_of(
    st.sampled_from(
        [None, "application/json", "application/json; charset=utf-8", "text/plain", "text/plain;charset=UTF-8",
         "APPLICATION/JSON", "application/x-www-form-urlencoded", "application/x-www-form-urlencoded; charset=x",
         "multipart/form-data; boundary=xyz", "application/octet-stream", "", "garbage", ";;;", "*/*"]
    ),
    st.text(st.characters(min_codepoint=0x20, max_codepoint=0x7E), max_size=30).map(str.strip),
)  # fmt: skip


# --- strategies: raw bodies --------------------------------------------------------------------


def _nested(depth: int, kind: str, core: str = "1") -> str:
    opener, closer = {"list": ("[", "]"), "dict": ('{"a":', "}")}[kind]
    return opener * depth + core + closer * depth


def _deep_body(depth: int, kind: str, place: str) -> bytes:
    deep = _nested(depth, kind)
    bodies = {
        "top": deep,
        "where": f'{{"where":{deep}}}',
        "channels": f'{{"channels":{deep}}}',
        "data": f'{{"channels":["a"],"data":{deep}}}',
        "alert": f'{{"channels":["a"],"data":{{"alert":{deep}}}}}',
        "badge": f'{{"channels":["a"],"data":{{"badge":{deep}}}}}',
        "extra": f'{{"channels":["a"],"x":{deep}}}',
        "context": f'{{"channels":["a"],"_context":{json.dumps(deep)}}}',
        "push_time": f'{{"channels":["a"],"push_time":{deep}}}',
    }
    return bodies[place].encode()


DEPTHS = st.sampled_from([1, 50, 200, 330, 450, 500, 600, 800, 900, 950, 990, 1000, 1100, 2000, 5000])
DEEP_BODIES = st.builds(
    _deep_body,
    DEPTHS,
    st.sampled_from(["list", "dict"]),
    st.sampled_from(["top", "where", "channels", "data", "alert", "badge", "extra", "context", "push_time"]),
)
JSON_TEXT = BODIES.map(lambda body: json.dumps(body).encode())
TRUNCATED = st.builds(lambda text, cut: text[: len(text) * cut // 100], JSON_TEXT, st.integers(0, 99))
TOP_LEVEL = st.one_of(
    st.sampled_from(
        [b"1", b'"x"', b"true", b"null", b"-0", b"1e400", b"  5", b"[]", b"[1,2]", b'[{"channels":["a"]}]', b"{}",
         b"", b"   ", b"\n\t", b"\xef\xbb\xbf", b'\xef\xbb\xbf{"channels":["a"]}', b"{,}", b'{"a":1,}', b"[1,]",
         b"{'channels':['a']}", b'{"channels":["a"]}garbage', b'{"channels":["a"]}{}', b"\x00", b"\x0b{}",
         b'{"channels":["a"]}\x00', b"\xe3\x80\x80{}"]
    ),
    SCALARS.map(lambda value: json.dumps(value).encode()),
)  # fmt: skip
BAD_UTF8 = st.builds(
    lambda prefix, junk, suffix: prefix + junk + suffix,
    st.sampled_from([b'{"channels":["', b'{"channels":["a"],"data":{"alert":"', b'{"', b""]),
    st.sampled_from(
        [b"\xff", b"\xc3", b"\xc3\x28", b"\xed\xa0\x80", b"\xf4\x90\x80\x80", b"\x80", b"\xfe\xff"]
    ),
    st.sampled_from([b'"]}', b'"}}', b'":1}', b""]),
)
CONSTANTS = st.builds(
    lambda template, constant: template.replace(b"@", constant),
    st.sampled_from(
        [b'{"channels":["a"],"data":{"badge":@}}', b'{"where":@}', b'{"channels":["a"],"push_time":@}',
         b'{"channels":["a"],"expiration_interval":@}', b'{"channels":["a"],"expiration_time":@}', b"@",
         b'{"channels":[@]}', b'{"channels":["a"],"data":{"badge":{"__op":"Increment","amount":@}}}']
    ),
    st.sampled_from([b"NaN", b"Infinity", b"-Infinity", b"1e400", b"-1e400", b"1" * 400, b"1" * 5000, b"-0"]),
)  # fmt: skip
DUPLICATE_KEYS = st.lists(
    st.tuples(
        st.sampled_from(
            ["channels", "where", "data", "_method", "_ApplicationId", "_MasterKey", "push_time"]
        ),
        JSON_VALUES,
    ),
    min_size=2,
    max_size=6,
).map(lambda pairs: ("{" + ",".join(f"{json.dumps(k)}:{json.dumps(v)}" for k, v in pairs) + "}").encode())
RAW_BODIES = st.one_of(
    st.binary(max_size=64), TRUNCATED, TOP_LEVEL, BAD_UTF8, CONSTANTS, DUPLICATE_KEYS, DEEP_BODIES, JSON_TEXT
)


# --- strategies: headers -----------------------------------------------------------------------

HEADER_TEXT = st.one_of(
    st.text(st.characters(min_codepoint=0x21, max_codepoint=0x7E), max_size=24),
    st.binary(max_size=16).map(
        lambda raw: bytes(b if b >= 0x80 else 0x41 + b % 26 for b in raw).decode("latin-1")
    ),
    st.text(st.characters(min_codepoint=0x20, max_codepoint=0x7E), max_size=24).map(str.strip),
)
DEEP_CONTEXT_HEADERS = st.sampled_from(
    ["[" * 3000, '{"a":' * 3000 + "1" + "}" * 3000, "[" * 5000 + "]" * 5000]
)


def _basic(user: str, password: str) -> str:
    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()


AUTHORIZATIONS = st.one_of(
    st.builds(
        _basic,
        st.sampled_from([APP_ID, "app2", "", "a:b"]) | HEADER_TEXT,
        st.sampled_from([MASTER_KEY, f"javascript-key={JS_KEY}", "", "wrong", f"{MASTER_KEY}:x"]) | HEADER_TEXT,
    ),
    st.binary(max_size=24).map(lambda raw: "Basic " + base64.b64encode(raw).decode()),
    st.sampled_from(["Basic", "Basic ", "basic YXBwMTptYXN0ZXIx", "BASIC YXBwMTptYXN0ZXIx", "Basic YXBwMTptYXN0ZXIx=",
                     "Basic !!!!", "Bearer x", "Basic YXBwMTptYXN0ZXIx YQ=="]),
    HEADER_TEXT.map(lambda text: "Basic " + text),
)  # fmt: skip
HOPS = st.sampled_from(
    ["10.1.2.3", "10.9.0.1", "127.0.0.1", "192.0.2.9", "::1", "::ffff:10.1.2.3", "fe80::1%eth0", "999.1.1.1",
     "unknown", "", " 10.1.2.4 "]
)  # fmt: skip
FORWARDED_FOR = st.one_of(
    st.lists(HOPS, max_size=4).map(", ".join), st.lists(HOPS, max_size=4).map(",".join), HEADER_TEXT
)
REQUEST_IDS = st.one_of(st.sampled_from(["r1", "r2", "r3", "same-id"]), HEADER_TEXT)
HEADERS = st.fixed_dictionaries(
    {},
    optional={
        "X-Parse-Application-Id": st.sampled_from([APP_ID, APP_ID, "APP1", "app2", ""]) | HEADER_TEXT,
        "X-Parse-Master-Key": st.sampled_from([MASTER_KEY, MASTER_KEY, "wrong", "", REST_KEY]) | HEADER_TEXT,
        "X-Parse-REST-API-Key": st.sampled_from([REST_KEY, "wrong", ""]) | HEADER_TEXT,
        "X-Parse-Javascript-Key": st.sampled_from([JS_KEY, "wrong"]) | HEADER_TEXT,
        "X-Parse-Cloud-Context": st.sampled_from(["{}", '{"a":1}', "[1]", "null", "1", '"x"', "{", "", "NaN"])
        | HEADER_TEXT
        | DEEP_CONTEXT_HEADERS,
        "Authorization": AUTHORIZATIONS,
        "X-Parse-Request-Id": REQUEST_IDS,
        "X-Forwarded-For": FORWARDED_FOR,
    },
)
SDK_BODIES = st.builds(
    lambda base, creds: {**base, **creds},
    st.sampled_from([{"channels": ["a"]}, {"where": {}}, {"channels": ["a"], "data": {"alert": "hi"}}, {}]),
    st.fixed_dictionaries(
        {},
        optional={
            "_ApplicationId": st.sampled_from([APP_ID, APP_ID, "app2"]) | APP_IDS,
            "_MasterKey": st.sampled_from([MASTER_KEY, MASTER_KEY, "wrong"]) | KEY_VALUES,
            "_JavaScriptKey": st.sampled_from([JS_KEY, "wrong"]),
            "_context": CONTEXTS,
            "_ClientVersion": st.just("js8.6.2"),
        },
    ),
)


# --- the request, the oracle and the checks ----------------------------------------------------


@dataclass
class Sent:
    """One request as sent; `headers` values are the exact header bytes decoded as latin-1."""

    content: bytes
    headers: dict[str, str] = field(default_factory=dict)
    chunked: bool = False

    def header(self, name: str) -> str | None:
        """The value the server reads: HTTP strips optional whitespace around a field value."""
        return next((value.strip(" \t") for key, value in self.headers.items() if key.lower() == name), None)

    def show(self) -> str:
        body = self.content if len(self.content) <= 600 else self.content[:300] + b"..." + self.content[-100:]
        return f"POST {PATH} headers={self.headers!r} chunked={self.chunked} len={len(self.content)} body={body!r}"


@contextlib.contextmanager
def _deep_recursion() -> Iterator[None]:
    """The oracle reads values as a JavaScript server would: no nesting limit that matters here."""
    previous = sys.getrecursionlimit()
    sys.setrecursionlimit(max(previous, 60_000))
    try:
        yield
    finally:
        sys.setrecursionlimit(previous)


def _reject_constant(name: str) -> Any:
    raise ValueError(name)


def _js_integer(text: str) -> int | float:
    """JavaScript reads every JSON number as a double: long integers lose digits, huge ones are Infinity."""
    return int(text) if len(text) <= 15 else float(text)


def _parse_json_body(raw: bytes) -> dict[str, Any] | None:
    """Contract §2.4: objects only at the top; an array reads as `{}`; anything unparsable is None."""
    try:
        text = raw.decode("utf-8").removeprefix("\ufeff")
    except UnicodeDecodeError:
        return None
    if not text.strip():
        return {}
    try:
        value = json.loads(text, parse_constant=_reject_constant, parse_int=_js_integer)
    except ValueError:
        return None
    if isinstance(value, list):
        return {}
    return value if isinstance(value, dict) else None


def _form_body(raw: bytes) -> dict[str, Any]:
    fields = parse_qs(raw.decode("utf-8", errors="replace"), keep_blank_values=True)
    return {key: values[0] if len(values) == 1 else values for key, values in fields.items()}


def ideal_body(sent: Sent) -> dict[str, Any] | None:
    """The body Parse 9.x reads: a form, nothing (multipart), or JSON for every other content type."""
    media = (sent.header("content-type") or "").split(";", 1)[0].strip().lower()
    if media == "application/x-www-form-urlencoded":
        return _form_body(sent.content)
    if media == "multipart/form-data":
        return {}
    with _deep_recursion():
        return _parse_json_body(sent.content)


_JSON_STRING = re.compile(rb'"(?:[^"\\]|\\.)*"')
_NOT_BRACKETS = bytes(byte for byte in range(256) if byte not in b"[]{}")


def nesting_depth(raw: bytes) -> int:
    """How deep the JSON text nests (strings ignored), even where the parsed body is collapsed to `{}`."""
    deepest = level = 0
    for bracket in _JSON_STRING.sub(b"", raw).translate(None, _NOT_BRACKETS):
        level += 1 if bracket in b"[{" else -1
        deepest = max(deepest, level)
    return deepest


def candidate_bodies(sent: Sent) -> list[dict[str, Any] | None]:
    """What the gateway may have read: the ideal body, or (very deep JSON only) a refusal as malformed."""
    body = ideal_body(sent)
    if body is not None and nesting_depth(sent.content) > DEEP_JSON:
        return [body, None]
    return [body]


def _basic_credentials(header: str) -> tuple[str, str] | None:
    if not header.lower().startswith("basic "):
        return None
    try:
        decoded = base64.b64decode(header[6:].strip(), validate=True).decode("utf-8")
    except ValueError:
        return None
    parts = decoded.split(":")
    if len(parts) != 2 or not parts[0]:
        return None
    return parts[0], "" if parts[1].startswith("javascript-key=") else parts[1]


def _is_object_text(value: Any) -> bool:
    if isinstance(value, str):
        try:
            with _deep_recursion():
                value = json.loads(value)
        except ValueError:
            return False
    return isinstance(value, dict)


@dataclass(frozen=True)
class IpRules:
    """Who may use the master key: the app's `master_key_ips` after trusted X-Forwarded-For hops."""

    allowed: tuple[str, ...] = ("0.0.0.0/0", "::/0")
    trusted: tuple[str, ...] = ()

    def _within(self, address: str, networks: tuple[str, ...]) -> bool:
        try:
            parsed: IPv4Address | IPv6Address = ip_address(address)
        except ValueError:
            return False
        if isinstance(parsed, IPv6Address) and parsed.ipv4_mapped is not None:
            parsed = parsed.ipv4_mapped
        return any(
            parsed.version == ip_network(net).version and parsed in ip_network(net) for net in networks
        )

    def allows(self, forwarded_for: str | None) -> bool:
        hops = [hop.strip() for hop in (forwarded_for or "").split(",") if hop.strip()]
        current = "127.0.0.1"
        while self._within(current, self.trusted) and hops:
            current = hops.pop()
        return self._within(current, self.allowed)


def master_authenticated(sent: Sent, body: dict[str, Any] | None, rules: IpRules) -> bool:
    """Contract §3: did this request present app1's master key, from an allowed address, valid context?"""
    if body is None:
        return False
    app_id = sent.header("x-parse-application-id") or ""
    master = sent.header("x-parse-master-key") or ""
    basic = _basic_credentials(sent.header("authorization") or "")
    if basic is not None and basic[0] == APP_ID:
        app_id, master = APP_ID, basic[1] or master
    if app_id != APP_ID:
        if body.get("_ApplicationId") != APP_ID or (master and master != MASTER_KEY):
            return False
        body_master = body.get("_MasterKey")
        master = body_master if isinstance(body_master, str) and body_master else master
    contexts = [sent.header("x-parse-cloud-context"), body.get("_context")]
    if not all(_is_object_text(context) for context in contexts if context is not None):
        return False
    return master == MASTER_KEY and rules.allows(sent.header("x-forwarded-for"))


def method_override(body: dict[str, Any] | None) -> str | None:
    """`allowMethodOverride`: a truthy `_method` other than POST turns the request into that method."""
    method = body.get("_method") if body is not None else None
    if isinstance(method, str) and method and method.upper() != "POST":
        return method
    return None


def badge_may_be_invalid(body: dict[str, Any] | None) -> bool:
    """Contract §5.2 G: `data` is an object whose badge fails is_valid_badge (unknowable → allowed)."""
    data = body.get("data") if body is not None else None
    if not isinstance(data, dict):
        return False
    try:
        with _deep_recursion():
            return not parse_quirks.is_valid_badge(data.get("badge"))
    except OverflowError:  # an integer beyond float range: JavaScript reads it as ±Infinity
        return True


EXPRESS_404_PAGE = (
    '<!DOCTYPE html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n<title>Error</title>\n'
    "</head>\n<body>\n<pre>MESSAGE</pre>\n</body>\n</html>\n"
)


def express_404(method: str) -> str:
    """finalhandler's page: `Cannot <method> <path>` through escapeHtml, newlines as <br>."""
    message = f"Cannot {method} {PATH}"
    for char, entity in (("&", "&amp;"), ("<", "&lt;"), (">", "&gt;"), ('"', "&quot;"), ("'", "&#39;")):
        message = message.replace(char, entity)
    message = message.replace("\n", "<br>").replace("  ", " &nbsp;")
    # Node writes a lone surrogate as U+FFFD when it encodes the page to UTF-8.
    message = message.encode("utf-16", "surrogatepass").decode("utf-16", "replace")
    return EXPRESS_404_PAGE.replace("MESSAGE", message)


class ServerErrors(logging.Handler):
    """Collects the gateway's ERROR records; a traceback is condensed to its pushgw frames."""

    def __init__(self) -> None:
        super().__init__(logging.ERROR)
        self.records: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        text = f"{record.name}: {record.getMessage()}"
        if record.exc_info and record.exc_info[1] is not None:
            error = record.exc_info[1]
            frames = [
                f'  File "{frame.filename.split("/work/main/")[-1]}", line {frame.lineno}, in {frame.name}\n'
                f"    {frame.line}"
                for frame in traceback.extract_tb(error.__traceback__)
                if "/pushgw/" in frame.filename
            ]
            text += (
                "\n" + "\n".join(frames) + f"\n{type(error).__module__}.{type(error).__qualname__}: {error}"
            )
        self.records.append(text)


@dataclass
class Fuzzer:
    """One running gateway shared by every example of a test, plus what the checks need to remember."""

    client: httpx2.Client
    errors: ServerErrors
    rules: IpRules = field(default_factory=IpRules)
    requests: int = 0
    answers_200: int = 0
    replays: int = 0
    statuses: dict[int, int] = field(default_factory=dict)
    accepted: set[str] = field(default_factory=set)
    request_ids: dict[str, str] = field(default_factory=dict)

    def post(self, sent: Sent) -> None:
        mark = len(self.errors.records)
        content: Any = sent.content
        if sent.chunked:
            content = iter([sent.content[i : i + 65536] for i in range(0, len(sent.content), 65536)] or [b""])
        self.requests += 1
        started = time.monotonic()
        try:
            response = self.client.post(PATH, content=content, headers=_encode(sent.headers))
        except httpx2.TimeoutException:
            raise AssertionError(
                f"no answer within {CLIENT_TIMEOUT_S}s (hang)\n{sent.show()}{self._log(mark)}"
            ) from None
        except httpx2.TransportError as error:
            raise AssertionError(f"connection failed: {error!r}\n{sent.show()}{self._log(mark)}") from None
        elapsed = time.monotonic() - started
        self.statuses[response.status_code] = self.statuses.get(response.status_code, 0) + 1
        try:
            self.check(sent, response)
        except AssertionError as error:
            raise AssertionError(
                f"{error}\n--- request\n{sent.show()}\n--- response ({elapsed:.3f}s)\n{response.status_code} "
                f"{dict(response.headers)!r}\n{response.content[:800]!r}{self._log(mark)}"
            ) from None

    def _log(self, mark: int) -> str:
        records = self.errors.records[mark:]
        return "\n--- server log\n" + "\n".join(records[-2:]) if records else ""

    def check(self, sent: Sent, response: httpx2.Response) -> None:
        status = response.status_code
        assert status in STATUSES, f"unexpected status {status}"
        expose = response.headers.get("access-control-expose-headers")
        assert expose == parse_quirks.EXPOSE_HEADERS, f"Access-Control-Expose-Headers is {expose!r}"
        if len(sent.content) > LIMIT:
            assert status == 413, "a body over max_body_bytes must get 413"
            _check_error(sent, response, [])
            return
        assert status != 413, "413 for a body within max_body_bytes"
        bodies = candidate_bodies(sent)
        checks = {200: self._check_accepted, 404: _check_not_found, 500: self._check_internal}
        checks.get(status, _check_error)(sent, response, bodies)
        _check_parse_order(status, response, bodies)

    def _check_accepted(self, sent: Sent, response: httpx2.Response, bodies: list[Any]) -> None:
        self.answers_200 += 1
        assert response.content == ACCEPTED_BODY, '200 body must be exactly {"result":true}'
        push_id = response.headers.get("x-parse-push-status-id", "")
        assert PUSH_STATUS_ID.match(push_id), f"X-Parse-Push-Status-Id {push_id!r} is not 10 alphanumerics"
        assert any(master_authenticated(sent, body, self.rules) for body in bodies), (
            "accepted without master key"
        )
        request_id = sent.header("x-parse-request-id")
        if request_id and request_id in self.request_ids:
            self.replays += 1
            assert push_id == self.request_ids[request_id], "a repeated X-Parse-Request-Id got a new push id"
            return
        assert push_id not in self.accepted, f"push id {push_id} handed out twice"
        self.accepted.add(push_id)
        if request_id:
            self.request_ids[request_id] = push_id

    def _check_internal(self, sent: Sent, response: httpx2.Response, bodies: list[Any]) -> None:
        assert _json(response) == INTERNAL_ERROR, "a 500 must be Parse's {code:1, message} body"
        assert any(
            master_authenticated(sent, body, self.rules) and badge_may_be_invalid(body) for body in bodies
        ), "500 outside the invalid-badge case (contract §5.2 G)"


def _check_not_found(sent: Sent, response: httpx2.Response, bodies: list[Any]) -> None:
    methods = [method for body in bodies if (method := method_override(body)) is not None]
    assert methods, "404 without a _method override"
    pages = {express_404(variant) for method in methods for variant in (method, method.upper())}
    assert response.text in pages, "404 body is not Express's page (method HTML-escaped)"


def _check_error(sent: Sent, response: httpx2.Response, bodies: list[Any]) -> None:
    body = _json(response)
    assert isinstance(body, dict), "error body must be a JSON object"
    assert set(body) <= {"code", "error"}, f"unexpected keys {sorted(body)}"
    assert isinstance(body.get("error"), str), "error body needs a string `error`"
    if "code" in body:
        assert type(body["code"]) is int, "`code` must be an integer"
    if response.status_code == 403:
        assert body in ({"error": "unauthorized"}, {"error": "Permission denied"}), "unknown 403 body"


def _check_parse_order(status: int, response: httpx2.Response, bodies: list[Any]) -> None:
    """Malformed JSON is answered 400 without code before anything else; an override always 404s."""
    malformed = status == 400 and "code" not in (_json(response) or {})
    assert not malformed or None in bodies, "400 parser error for a body Parse reads fine"
    if bodies == [None]:
        assert malformed, "unparsable JSON must get 400 {error} without code"
    if len(bodies) == 1 and method_override(bodies[0]) is not None:
        assert status == 404, "a _method override must get Express's 404"


def _json(response: httpx2.Response) -> Any:
    try:
        return json.loads(response.content)
    except ValueError:
        return None


def _encode(headers: dict[str, str]) -> dict[str, bytes]:
    return {name: value.encode("latin-1") for name, value in headers.items()}


def _headers(content_type: str | None, extra: dict[str, str]) -> dict[str, str]:
    headers = {name: value.strip(" ") for name, value in extra.items()}  # HTTP strips them anyway
    if content_type is not None:
        headers["Content-Type"] = content_type
    return headers


def _serialize(body: dict[str, Any], content_type: str | None, as_form: bool, ascii_only: bool) -> bytes:
    media = (content_type or "").split(";", 1)[0].strip().lower()
    if as_form and media == "application/x-www-form-urlencoded":
        fields = {key: value if isinstance(value, str) else json.dumps(value) for key, value in body.items()}
        return urlencode(fields, encoding="utf-8", errors="surrogatepass").encode()
    return json.dumps(body, ensure_ascii=ascii_only).encode("utf-8", "surrogatepass")


# --- harness -----------------------------------------------------------------------------------


@contextlib.contextmanager
def fuzzing(gateway: RunningGateway, rules: IpRules | None = None) -> Iterator[Fuzzer]:
    """A client on `gateway`; uvicorn's tracebacks go into the failure message instead of the log."""
    errors = ServerErrors()
    uvicorn_errors = logging.getLogger("uvicorn.error")
    propagate = uvicorn_errors.propagate
    uvicorn_errors.addHandler(errors)
    uvicorn_errors.propagate = False
    logging.getLogger("asyncio").addHandler(errors)
    try:
        client = gateway.client()
        client.timeout = httpx2.Timeout(CLIENT_TIMEOUT_S)
        yield Fuzzer(client, errors, rules or IpRules())
    finally:
        logging.getLogger("asyncio").removeHandler(errors)
        uvicorn_errors.removeHandler(errors)
        uvicorn_errors.propagate = propagate


def finish(fuzzer: Fuzzer, mongo: MongoClient[dict[str, Any]], db_name: str) -> None:
    """After the storm: the gateway is alive and `_PushStatus` has exactly one row per accepted push."""
    health = fuzzer.client.get("/health")
    assert health.status_code == 200, health.text
    assert health.json() == {"status": "ok"}
    background = [record for record in fuzzer.errors.records if record.startswith("asyncio")]
    assert not background, "unhandled errors in background tasks:\n" + "\n".join(background[:3])
    rows = {row["_id"] for row in mongo[db_name]["_PushStatus"].find({}, {"_id": 1})}
    assert fuzzer.answers_200 == len(fuzzer.accepted) + fuzzer.replays
    assert len(rows) == len(fuzzer.accepted), (
        f"{len(rows)} _PushStatus rows for {len(fuzzer.accepted)} accepted pushes "
        f"({fuzzer.answers_200} answers 200, {fuzzer.replays} replays); "
        f"rows without 200: {sorted(rows - fuzzer.accepted)[:10]}, 200 without row: "
        f"{sorted(fuzzer.accepted - rows)[:10]}"
    )
    assert rows == fuzzer.accepted
    print(f"\n{fuzzer.requests} requests, statuses {dict(sorted(fuzzer.statuses.items()))}, {len(rows)} rows")


def test_structured_bodies_get_parse_answers(
    gateway: RunningGateway, mongo: MongoClient[dict[str, Any]], db_name: str
) -> None:
    with fuzzing(gateway) as fuzzer:

        @settings(FUZZ, max_examples=1500)
        @given(
            body=BODIES,
            content_type=CONTENT_TYPES,
            auth=st.sampled_from(["headers", "headers", "body", "none"]),
            as_form=st.booleans(),
            ascii_only=st.booleans(),
        )
        @example(
            body={"channels": ["a"], "data": {"badge": "lots"}}, content_type="application/json",
            auth="headers", as_form=False, ascii_only=True,
        )  # fmt: skip
        @example(
            body={"channels": ["a"], "_method": "GET"}, content_type="text/plain",
            auth="headers", as_form=False, ascii_only=True,
        )  # fmt: skip
        def run(
            body: dict[str, Any], content_type: str | None, auth: str, as_form: bool, ascii_only: bool
        ) -> None:
            headers: dict[str, str] = {}
            if auth == "headers":
                headers = dict(MASTER)
            elif auth == "body":
                body = {**body, "_ApplicationId": APP_ID, "_MasterKey": MASTER_KEY}
            content = _serialize(body, content_type, as_form, ascii_only)
            fuzzer.post(Sent(content, _headers(content_type, headers)))

        run()
        finish(fuzzer, mongo, db_name)


def test_raw_bodies_get_parse_answers(
    gateway: RunningGateway, mongo: MongoClient[dict[str, Any]], db_name: str
) -> None:
    with fuzzing(gateway) as fuzzer:

        @settings(FUZZ, max_examples=1000)
        @given(
            content=RAW_BODIES,
            content_type=st.sampled_from([None, "application/json", "text/plain"]) | CONTENT_TYPES,
            chunked=st.booleans(),
        )
        @example(content=b"[" * 5000 + b"]" * 5000, content_type="application/json", chunked=False)
        @example(content=_deep_body(5000, "list", "where"), content_type="text/plain", chunked=False)
        @example(
            content=b'{"channels":["a"],"p":"' + b"x" * (LIMIT - 30) + b'"}', content_type=None, chunked=False
        )
        @example(
            content=b'{"channels":["a"],"p":"' + b"x" * (LIMIT - 24) + b'"}', content_type=None, chunked=True
        )
        @example(
            content=b'{"channels":["a"],"p":"' + b"x" * (LIMIT - 23) + b'"}', content_type=None, chunked=False
        )
        @example(content=b"{" * (2 * LIMIT), content_type="application/json", chunked=True)
        def run(content: bytes, content_type: str | None, chunked: bool) -> None:
            fuzzer.post(Sent(content, _headers(content_type, MASTER), chunked))

        run()
        finish(fuzzer, mongo, db_name)


def test_hostile_headers_get_parse_answers(
    make_settings: SettingsFactory,
    gateway_factory: GatewayFactory,
    mongo: MongoClient[dict[str, Any]],
    db_name: str,
) -> None:
    rules = IpRules(
        allowed=("127.0.0.1/32", "10.1.2.0/24", "::1/128"), trusted=("127.0.0.1/32", "10.9.0.0/16")
    )
    app = app_config(rest_api_key=REST_KEY, javascript_key=JS_KEY, master_key_ips=list(rules.allowed))
    gateway = gateway_factory(make_settings([app], http={"trusted_proxies": list(rules.trusted)}))
    with fuzzing(gateway, rules) as fuzzer:

        @settings(FUZZ, max_examples=1000)
        @given(
            headers=HEADERS,
            body=st.one_of(SDK_BODIES, SDK_BODIES, BODIES),
            content_type=st.sampled_from([None, "application/json", "text/plain"]) | CONTENT_TYPES,
        )
        @example(
            headers={**MASTER, "X-Parse-Cloud-Context": "[" * 3000},
            body={"channels": ["a"]},
            content_type=None,
        )
        def run(headers: dict[str, str], body: dict[str, Any], content_type: str | None) -> None:
            content = _serialize(body, content_type, as_form=True, ascii_only=True)
            fuzzer.post(Sent(content, _headers(content_type, headers)))

        run()
        finish(fuzzer, mongo, db_name)


def test_oracle_reads_credentials_like_the_contract() -> None:
    """Guard the oracle itself, so a fuzz failure points at the gateway and not at the test."""
    rules = IpRules(allowed=("10.1.2.0/24",), trusted=("127.0.0.1/32",))
    sdk = Sent(b"", {"Content-Type": "text/plain"})
    assert master_authenticated(sdk, {"_ApplicationId": APP_ID, "_MasterKey": MASTER_KEY}, IpRules())
    assert not master_authenticated(sdk, {"_ApplicationId": APP_ID, "_MasterKey": MASTER_KEY}, rules)
    proxied = Sent(b"", {**MASTER, "X-Forwarded-For": "192.0.2.1, 10.1.2.3"})
    assert master_authenticated(proxied, {}, rules)
    basic = Sent(b"", {"Authorization": _basic(APP_ID, MASTER_KEY)})
    assert master_authenticated(basic, {}, IpRules())
    assert not master_authenticated(Sent(b"", {**MASTER, "X-Parse-Cloud-Context": "[1]"}), {}, IpRules())
    assert method_override({"_method": "get"}) == "get"
    assert method_override({"_method": ""}) is None
    assert method_override({"_method": "post"}) is None
    assert badge_may_be_invalid({"data": {"badge": "lots"}})
    assert not badge_may_be_invalid({"data": {"badge": "Increment"}})
    assert ideal_body(Sent(b"[1]")) == {}
    assert ideal_body(Sent(b"1")) is None
    assert ideal_body(Sent(b"\xef\xbb\xbf{}")) == {}
    assert nesting_depth(_deep_body(5000, "list", "where")) == 5001
    assert nesting_depth(b'{"a":"[[[\\"[["}') == 1
    assert express_404("GET") == parse_quirks.NOT_FOUND_HTML.format(message=f"Cannot GET {PATH}")
    assert express_404("<a>").count("&lt;a&gt;") == 1
