"""ApnsEmulator: Apple's HTTP/2 provider API on loopback, with its checks, scripted rejections and faults."""

from __future__ import annotations

import copy
import itertools
import json
import re
import time
import uuid
from collections import Counter, deque
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal
from urllib.parse import parse_qs, urlsplit

from pushgw.emulators import tls
from pushgw.emulators.http2_server import Connection, Http2Server, Request, Response, TokenRule
from pushgw.emulators.served import ServedEmulator
from pushgw.emulators.tls import TokenKey

_REASONS_BY_STATUS = (
    (400, "BadCollapseId BadDeviceToken BadExpirationDate BadMessageId BadPriority BadTopic IdleTimeout"),
    (400, "DeviceTokenNotForTopic DuplicateHeaders InvalidPushType MissingDeviceToken MissingTopic"),
    (400, "PayloadEmpty TopicDisallowed"),
    (403, "BadCertificate BadCertificateEnvironment ExpiredProviderToken Forbidden InvalidProviderToken"),
    (403, "MissingProviderToken"),
    (404, "BadPath"),
    (405, "MethodNotAllowed"),
    (410, "Unregistered ExpiredToken"),
    (413, "PayloadTooLarge"),
    (429, "TooManyProviderTokenUpdates TooManyRequests"),
    (500, "InternalServerError"),
    (503, "ServiceUnavailable Shutdown"),
)
REASON_STATUS = {reason: status for status, reasons in _REASONS_BY_STATUS for reason in reasons.split()}
_PUSH_TYPES = "alert background location voip complication fileprovider mdm liveactivity pushtotalk"
PUSH_TYPES = frozenset(_PUSH_TYPES.split())
PRIORITIES = frozenset({"1", "5", "10"})
PAYLOAD_LIMIT_BYTES = 4096
VOIP_PAYLOAD_LIMIT_BYTES = 5120
COLLAPSE_ID_LIMIT_BYTES = 64
DEVICE_PATH = "/3/device/"
_DEVICE_TOKEN = re.compile(r"(?:[0-9a-fA-F]{2})+")
_CANONICAL_UUID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")
_JSON = ("content-type", "application/json")
_ERROR_BODIES = {reason: json.dumps({"reason": reason}).encode() for reason in REASON_STATUS}
_SHUTDOWN_DEBUG_DATA = b'{"reason":"Shutdown"}'
_APNS_ID_PREFIX = str(uuid.uuid4())[:24]  # canonical ids made from a counter: uuid4() per answer is slow
Auth = Literal["none", "token", "certificate"]


@dataclass(frozen=True, slots=True)
class Notification:
    """An accepted notification; `headers` holds every request header, pseudo-headers included."""

    token: str
    apns_id: str
    headers: Mapping[str, str]
    payload_bytes: bytes
    connection_id: int

    @property
    def payload(self) -> Any:
        return json.loads(self.payload_bytes)

    def to_json(self) -> dict[str, Any]:
        headers = {name: value for name, value in self.headers.items() if not name.startswith(":")}
        return {
            "token": self.token,
            "apns_id": self.apns_id,
            "headers": headers,
            "payload": self.payload,
            "connection_id": self.connection_id,
        }


@dataclass
class ApnsStats:
    """Counters of one emulator run; `provider_tokens` counts distinct valid JWTs (per team in the dict)."""

    accepted: int = 0
    requests: int = 0
    rejected: Counter[str] = field(default_factory=Counter)
    connections_opened: int = 0
    connections_open: int = 0
    requests_by_connection: dict[int, int] = field(default_factory=dict)
    max_concurrent_streams: int = 0
    provider_tokens: int = 0
    provider_tokens_by_team: dict[str, int] = field(default_factory=dict)
    throttles: int = 0
    goaways: int = 0

    def to_json(self) -> dict[str, Any]:
        return {name: dict(value) if isinstance(value, dict) else value for name, value in vars(self).items()}


@dataclass(slots=True)
class _ConnectionState:
    connection: Connection
    requests: int = 0
    throttled: bool = False


class ApnsEmulator(ServedEmulator):
    """`POST /3/device/<token>` as APNs answers it, plus `GET /emulator/stats` and `/emulator/notifications`.

    Options: `directory` for certificates and keys (a temp dir when None); `host`; `port` (0 = a free one);
    `auth`: "none", "token" (ES256 JWTs; a key is generated unless `token_keys` are given) or "certificate"
    (TLS client certificates signed by `client_ca_file`, default the emulator CA, which signs one for you);
    `topics` allowed (empty = any); `token_rules`: device-token prefix → `TokenRule` or its spec string;
    `unregistered_timestamp_ms` (None = now); `apple_throttle`: one stream after a rejection until the next
    200, and with token auth from the start until the first 200; `max_concurrent_streams`;
    `goaway_after_requests`: GOAWAY Shutdown once, after the N-th request of the run;
    `close_after_requests`: every connection is closed after its N-th request; `response_delay_ms`;
    `keep_notifications`: how many accepted notifications are kept (the latest).
    """

    def __init__(
        self, *, directory: Path | None = None, host: str = "127.0.0.1", port: int = 0,
        auth: Auth = "none", token_keys: Sequence[TokenKey] = (), client_ca_file: Path | None = None,
        topics: Collection[str] = (), token_rules: Mapping[str, str | TokenRule] | None = None,
        unregistered_timestamp_ms: int | None = None, apple_throttle: bool = False,
        max_concurrent_streams: int = 1000, goaway_after_requests: int | None = None,
        close_after_requests: int | None = None, response_delay_ms: int = 0,
        keep_notifications: int = 100_000,
    ) -> None:  # fmt: skip
        self.directory = tls.prepare_directory(directory, self)
        self.certificates = tls.write_server_certificates(self.directory)
        self.ca_file = self.certificates.ca_file
        self.auth: Auth = "token" if token_keys else auth
        self.key_id, self.team_id = "EMULATOR01", "TEAM000001"
        self.token_key_file: Path | None = None
        self.client_certificate: tls.ClientCertificate | None = None
        self.verifier = self._set_up_tokens(list(token_keys)) if self.auth == "token" else None
        if self.auth == "certificate" and client_ca_file is None:
            self.client_certificate = tls.write_client_certificate(self.certificates, self.directory)
        self.topics = frozenset(topics)
        self.token_rules = {
            prefix: TokenRule.parse(spec, REASON_STATUS) for prefix, spec in (token_rules or {}).items()
        }
        self.unregistered_timestamp_ms = unregistered_timestamp_ms
        self.apple_throttle = apple_throttle
        self.max_concurrent_streams = max_concurrent_streams
        self.goaway_after_requests = goaway_after_requests
        self.close_after_requests = close_after_requests
        self._notifications: deque[Notification] = deque(maxlen=keep_notifications)
        self._stats = ApnsStats()
        self._apns_ids = itertools.count()
        self._connections: dict[int, _ConnectionState] = {}
        client_ca = (client_ca_file or self.ca_file) if self.auth == "certificate" else None
        ssl_context = tls.server_ssl_context(self.certificates, ["h2"], client_ca)
        self._server = Http2Server(
            handler=self._handle, ssl_context=ssl_context, host=host, port=port,
            max_concurrent_streams=max_concurrent_streams, response_delay_s=response_delay_ms / 1000,
            on_connect=self._open_connection, on_close=self._close_connection,
        )  # fmt: skip

    def _set_up_tokens(self, keys: list[TokenKey]) -> tls.ProviderTokenVerifier:
        if not keys:
            self.token_key_file = tls.write_apns_key(self.directory / f"AuthKey_{self.key_id}.p8")
            keys.append(TokenKey.from_file(self.token_key_file, self.key_id, self.team_id))
        return tls.ProviderTokenVerifier(keys)

    def stats(self) -> ApnsStats:
        """A snapshot of the counters (safe to call from another thread)."""
        snapshot = copy.copy(self._stats)
        snapshot.rejected = Counter(dict(self._stats.rejected))
        snapshot.requests_by_connection = dict(self._stats.requests_by_connection)
        snapshot.connections_open = len(self._connections)
        snapshot.max_concurrent_streams = self._server.max_open_streams
        teams = Counter(dict(self.verifier.teams_by_token).values()) if self.verifier else Counter[str]()
        snapshot.provider_tokens = sum(teams.values())
        snapshot.provider_tokens_by_team = dict(teams)
        return snapshot

    def notifications(self, token: str | None = None) -> list[Notification]:
        """Accepted notifications, oldest first, optionally of one device token (safe from another thread)."""
        kept = list(self._notifications)
        return (
            kept if token is None else [notification for notification in kept if notification.token == token]
        )

    def _handle(self, request: Request) -> Response:
        path = request.path
        if path.startswith("/emulator/") and request.method == "GET":
            return self._serve_control(path)
        state = self._connections[request.connection.id]
        state.requests += 1
        stats = self._stats
        stats.requests += 1
        stats.requests_by_connection[request.connection.id] = state.requests
        if request.method != "POST":
            response = self._reject("MethodNotAllowed", request, state)
        elif not path.startswith(DEVICE_PATH) or "/" in path[len(DEVICE_PATH) :]:
            response = self._reject("BadPath", request, state)
        else:
            response = self._answer_notification(request, state, path[len(DEVICE_PATH) :])
        self._inject_faults(response, request, state)
        return response

    def _answer_notification(self, request: Request, state: _ConnectionState, token: str) -> Response:
        rule = TokenRule.find(self.token_rules, token) if self.token_rules else None
        reason = self._reject_reason(request, token, rule) or (rule.reason if rule else None)
        if reason is not None:
            return self._reject(reason, request, state)
        headers = request.headers
        apns_id = headers.get("apns-id") or f"{_APNS_ID_PREFIX}{next(self._apns_ids):012x}"
        self._notifications.append(Notification(token, apns_id, headers, request.body, state.connection.id))
        self._stats.accepted += 1
        if state.throttled:
            state.throttled = False
            state.connection.update_max_concurrent_streams(self.max_concurrent_streams)
        return Response(200, (("apns-id", apns_id),), delay_s=rule.delay_ms / 1000 if rule else 0.0)

    def _reject_reason(self, request: Request, token: str, rule: TokenRule | None) -> str | None:
        headers = request.headers
        if self.verifier is not None:
            reason = self.verifier.reject_reason(headers.get("authorization"))
            if reason is not None:
                return reason
        topic = headers.get("apns-topic")
        if not topic:
            return "MissingTopic"
        if self.topics and topic not in self.topics:
            return "TopicDisallowed"
        if not token:
            return "MissingDeviceToken"
        # Tokens matching a rule skip the format check, so readable prefixes such as "busy" work.
        if rule is None and not _DEVICE_TOKEN.fullmatch(token):
            return "BadDeviceToken"
        return _payload_reason(headers, request.body) or _header_reason(headers)

    def _reject(self, reason: str, request: Request, state: _ConnectionState) -> Response:
        self._stats.rejected[reason] += 1
        body = _ERROR_BODIES[reason]
        if reason == "Unregistered":
            timestamp_ms = self.unregistered_timestamp_ms or int(time.time() * 1000)
            body = json.dumps({"reason": reason, "timestamp": timestamp_ms}).encode()
        if self.apple_throttle and not state.throttled:
            state.throttled = True
            self._stats.throttles += 1
            state.connection.update_max_concurrent_streams(1)
        apns_id = request.headers.get("apns-id") or f"{_APNS_ID_PREFIX}{next(self._apns_ids):012x}"
        return Response(REASON_STATUS[reason], (("apns-id", apns_id), _JSON), body)

    def _inject_faults(self, response: Response, request: Request, state: _ConnectionState) -> None:
        connection, stream_id = state.connection, request.stream_id
        if self.goaway_after_requests is not None and self._stats.requests >= self.goaway_after_requests:
            self.goaway_after_requests = None
            self._stats.goaways += 1
            response.after = lambda: connection.send_goaway(_SHUTDOWN_DEBUG_DATA, stream_id)
        elif state.requests == self.close_after_requests:
            response.after = connection.close

    def _open_connection(self, connection: Connection) -> None:
        state = self._connections[connection.id] = _ConnectionState(connection)
        self._stats.connections_opened += 1
        if self.apple_throttle and self.auth == "token":
            # Apple: with token auth, one stream until a request with a valid token has been accepted.
            state.throttled = True
            connection.update_max_concurrent_streams(1)

    def _close_connection(self, connection: Connection) -> None:
        self._connections.pop(connection.id, None)

    def _serve_control(self, path: str) -> Response:
        url = urlsplit(path)
        if url.path == "/emulator/stats":
            return _json_response(self.stats().to_json())
        if url.path == "/emulator/notifications":
            query = parse_qs(url.query)
            token, limit = query.get("token", [None])[0], int(query.get("limit", ["1000"])[0])
            return _json_response([kept.to_json() for kept in self.notifications(token)[-limit:]])
        return Response(404, (_JSON,), _ERROR_BODIES["BadPath"])


def _payload_reason(headers: Mapping[str, str], body: bytes) -> str | None:
    if not body:
        return "PayloadEmpty"
    push_type = headers.get("apns-push-type")
    if len(body) > (VOIP_PAYLOAD_LIMIT_BYTES if push_type == "voip" else PAYLOAD_LIMIT_BYTES):
        return "PayloadTooLarge"
    if push_type is not None and push_type not in PUSH_TYPES:
        return "InvalidPushType"
    return None


def _header_reason(headers: Mapping[str, str]) -> str | None:
    priority = headers.get("apns-priority")
    if priority is not None and priority not in PRIORITIES:
        return "BadPriority"
    apns_id = headers.get("apns-id")
    if apns_id is not None and not _CANONICAL_UUID.fullmatch(apns_id):
        return "BadMessageId"
    collapse_id = headers.get("apns-collapse-id")
    if collapse_id is not None and len(collapse_id.encode()) > COLLAPSE_ID_LIMIT_BYTES:
        return "BadCollapseId"
    expiration = headers.get("apns-expiration")
    if expiration is not None and not expiration.isdigit():
        return "BadExpirationDate"
    return None


def _json_response(value: Any) -> Response:
    return Response(200, (_JSON,), json.dumps(value).encode())
