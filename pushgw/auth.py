"""Parse credentials (headers, HTTP Basic, body) → the app whose master key the caller holds, or an error."""

from __future__ import annotations

import base64
import hmac
import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from ipaddress import IPv4Address, IPv6Address, ip_address
from typing import Any

from pydantic import SecretStr

from pushgw.errors import INVALID_JSON, OPERATION_FORBIDDEN, ParseError, PermissionDenied, Unauthorized
from pushgw.settings import AppSettings, IpNetwork, Settings

_HEADER_KEYS = {
    "master_key": "x-parse-master-key",
    "rest_api_key": "x-parse-rest-api-key",
    "javascript_key": "x-parse-javascript-key",
    "client_key": "x-parse-client-key",
    "dotnet_key": "x-parse-windows-key",
}


@dataclass(slots=True)
class Credentials:
    """What the caller presented; empty strings count as absent."""

    app_id: str = ""
    master_key: str = ""
    rest_api_key: str = ""
    javascript_key: str = ""
    client_key: str = ""
    dotnet_key: str = ""

    def presented(self, name: str) -> str:
        value: str = getattr(self, name)
        return value


def authenticate(
    headers: Mapping[str, str], body: Mapping[str, Any], peer: str | None, settings: Settings
) -> AppSettings:
    """Follow Parse's decision table (contract §3.2); return the app only for its master key."""
    credentials = _from_headers(headers, settings)
    app = settings.app(credentials.app_id) if credentials.app_id else None
    if app is None:
        app = _from_body(body, credentials, settings)
    _check_context(headers.get("x-parse-cloud-context"), body.get("_context"))
    allowed_ip = _is_allowed(
        client_ip(peer, headers.get("x-forwarded-for"), settings.http.trusted_proxies), app
    )
    if _matches(credentials.master_key, app.master_key) or _is_rest_push(credentials, app):
        if not allowed_ip:
            raise Unauthorized("master key used from an address outside master_key_ips")
        return app
    if app.read_only_master_key and _matches(credentials.master_key, app.read_only_master_key):
        if not allowed_ip:
            raise Unauthorized("read-only master key used from an address outside master_key_ips")
        raise ParseError(OPERATION_FORBIDDEN, "Permission denied")
    configured = app.client_keys
    if configured and not any(_matches(credentials.presented(name), key) for name, key in configured.items()):
        raise Unauthorized("no valid key for this app")
    raise PermissionDenied("master key is required")


def _from_headers(headers: Mapping[str, str], settings: Settings) -> Credentials:
    credentials = Credentials(app_id=headers.get("x-parse-application-id", ""))
    for name, header in _HEADER_KEYS.items():
        setattr(credentials, name, headers.get(header, ""))
    basic = _basic_auth(headers.get("authorization", ""))
    if basic is not None and settings.app(basic[0]) is not None:
        credentials.app_id = basic[0]
        credentials.master_key = basic[1] or credentials.master_key
        credentials.javascript_key = basic[2] or credentials.javascript_key
    return credentials


def _basic_auth(header: str) -> tuple[str, str, str] | None:
    """`Basic base64(appId:masterKey)` or `Basic base64(appId:javascript-key=KEY)` (middlewares.httpAuth)."""
    if not header.lower().startswith("basic "):
        return None
    try:
        decoded = base64.b64decode(header[6:].strip(), validate=True).decode("utf-8")
    except ValueError:  # binascii.Error, UnicodeDecodeError and non-ASCII input are all ValueErrors
        return None
    parts = decoded.split(":")
    if len(parts) != 2 or not parts[0]:
        return None
    app_id, key = parts
    if key.startswith("javascript-key="):
        return app_id, "", key.removeprefix("javascript-key=")
    return app_id, key, ""


def _from_body(body: Mapping[str, Any], credentials: Credentials, settings: Settings) -> AppSettings:
    """SDK requests carry their keys in the body; used only when the header app id is missing or unknown."""
    body_app_id = body.get("_ApplicationId")
    app = settings.app(body_app_id) if isinstance(body_app_id, str) else None
    if app is None:
        raise Unauthorized("unknown or missing application id")
    if credentials.master_key and not _matches(credentials.master_key, app.master_key):
        raise Unauthorized("header master key does not match the body's app")
    credentials.app_id = app.app_id
    credentials.javascript_key = _text(body.get("_JavaScriptKey"))
    credentials.client_key = _text(body.get("_ClientKey")) or credentials.client_key
    credentials.master_key = _text(body.get("_MasterKey")) or credentials.master_key
    return app


def _check_context(header: str | None, body_context: Any) -> None:
    """`X-Parse-Cloud-Context` and body `_context` must be JSON objects (middlewares.handleParseHeaders)."""
    for raw in (header, body_context):
        if raw is None:
            continue
        value = raw
        if isinstance(raw, str):
            try:
                value = json.loads(raw)
            except (ValueError, RecursionError):
                value = None
        if not isinstance(value, dict):
            raise ParseError(INVALID_JSON, "Invalid object for context.")


def client_ip(peer: str | None, forwarded_for: str | None, trusted: Iterable[IpNetwork]) -> str | None:
    """The caller's address: the peer, or the last X-Forwarded-For hop not in `trusted` when the peer is."""
    networks = list(trusted)
    hops = [hop.strip() for hop in (forwarded_for or "").split(",") if hop.strip()]
    current = peer
    while current is not None and _in_networks(current, networks) and hops:
        current = hops.pop()
    return current


def _is_allowed(address: str | None, app: AppSettings) -> bool:
    return app.allows_any_address or (address is not None and _in_networks(address, app.master_key_ips))


def _in_networks(address: str, networks: Iterable[IpNetwork]) -> bool:
    try:
        parsed: IPv4Address | IPv6Address = ip_address(address)
    except ValueError:
        return False
    if isinstance(parsed, IPv6Address) and parsed.ipv4_mapped is not None:
        parsed = parsed.ipv4_mapped
    return any(parsed.version == network.version and parsed in network for network in networks)


def _is_rest_push(credentials: Credentials, app: AppSettings) -> bool:
    """Hosted Parse accepted the REST API key for /push; pushgw does so only when the app opts in."""
    return (
        app.allow_rest_key_push
        and app.rest_api_key is not None
        and _matches(credentials.rest_api_key, app.rest_api_key)
    )


def _matches(presented: str, expected: SecretStr) -> bool:
    secret = expected.get_secret_value()
    return bool(presented) and bool(secret) and hmac.compare_digest(presented.encode(), secret.encode())


def _text(value: Any) -> str:
    return value if isinstance(value, str) else ""
