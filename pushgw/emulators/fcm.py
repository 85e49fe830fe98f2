"""FcmEmulator: Google's OAuth token endpoint and FCM v1 `messages:send` on loopback, with scripted errors."""

from __future__ import annotations

import copy
import itertools
import json
import re
import secrets
import time
from collections import Counter, deque
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

from pushgw.emulators import tls
from pushgw.emulators.http2_server import Connection, Http2Server, Request, Response, TokenRule
from pushgw.emulators.served import ServedEmulator
from pushgw.emulators.tls import ServiceAccount, write_service_account

FCM_SCOPE = "https://www.googleapis.com/auth/firebase.messaging"
GOOGLE_TOKEN_URL = "https://oauth2.googleapis.com/token"
JWT_BEARER_GRANT = "urn:ietf:params:oauth:grant-type:jwt-bearer"
MAX_TTL_S = 2_419_200
PAYLOAD_LIMIT_BYTES = 4096
TOPIC_PAYLOAD_LIMIT_BYTES = 2048
ANDROID_PRIORITIES = frozenset({"NORMAL", "HIGH"})
FCM_ERROR_TYPE = "type.googleapis.com/google.firebase.fcm.v1.FcmError"
# errorCode → (HTTP status, google.rpc status, message), as FCM answers them.
FCM_ERRORS: dict[str, tuple[int, str, str]] = {
    "UNREGISTERED": (404, "NOT_FOUND", "Requested entity was not found."),
    "SENDER_ID_MISMATCH": (403, "PERMISSION_DENIED", "SenderId mismatch"),
    "INVALID_ARGUMENT": (
        400,
        "INVALID_ARGUMENT",
        "The registration token is not a valid FCM registration token",
    ),
    "QUOTA_EXCEEDED": (429, "RESOURCE_EXHAUSTED", "Quota exceeded for quota metric 'Send requests'."),
    "UNAVAILABLE": (503, "UNAVAILABLE", "The service is currently unavailable."),
    "INTERNAL": (500, "INTERNAL", "Internal error encountered."),
    "THIRD_PARTY_AUTH_ERROR": (401, "UNAUTHENTICATED", "Auth error from APNS or Web Push Service"),
}
_RETRY_AFTER_CODES = frozenset({"QUOTA_EXCEEDED", "UNAVAILABLE"})
_SEND_PATH = re.compile(r"/v1/projects/([^/]+)/messages:send")
_TTL = re.compile(r"(\d+)(\.\d{1,9})?s")
_RESERVED_DATA_KEYS = frozenset({"from", "message_type"})
_TARGETS = ("token", "topic", "condition")
_JSON = ("content-type", "application/json; charset=UTF-8")
_UNAUTHENTICATED = (
    "Request had invalid authentication credentials. Expected OAuth 2 access token, login cookie or other "
    "valid authentication credential."
)


@dataclass(frozen=True, slots=True)
class Message:
    """An accepted message: its resource `name` and the `message` object as sent."""

    name: str
    message: Mapping[str, Any]
    connection_id: int

    @property
    def token(self) -> str | None:
        token = self.message.get("token")
        return token if isinstance(token, str) else None

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "message": self.message, "connection_id": self.connection_id}


@dataclass
class FcmStats:
    """Counters of one emulator run; `rejected` is keyed by errorCode (or status when there is none)."""

    accepted: int = 0
    requests: int = 0
    rejected: Counter[str] = field(default_factory=Counter)
    oauth_tokens_issued: int = 0
    oauth_rejected: Counter[str] = field(default_factory=Counter)
    connections_opened: int = 0
    connections_open: int = 0
    requests_by_connection: dict[int, int] = field(default_factory=dict)
    max_concurrent_streams: int = 0

    def to_json(self) -> dict[str, Any]:
        return {name: dict(value) if isinstance(value, dict) else value for name, value in vars(self).items()}


@dataclass(frozen=True, slots=True)
class _Violation:
    field: str
    description: str


class FcmEmulator(ServedEmulator):
    """`POST /token` (OAuth JWT-bearer grant) and `POST /v1/projects/<id>/messages:send`, as Google answers.

    One TLS port speaks HTTP/2 and, for OAuth clients such as google-auth's `requests` transport, HTTP/1.1.
    Options: `directory` for certificates and the service-account file (a temp dir when None); `host`;
    `port` (0 = a free one); `project_id`; `token_rules`: device-token prefix → `TokenRule` or its spec (an
    errorCode of `FCM_ERRORS`, or `delay:<ms>`); `retry_after_s` sent with QUOTA_EXCEEDED and UNAVAILABLE;
    `access_token_ttl_s`; `max_concurrent_streams`; `response_delay_ms`; `keep_messages` (the latest N).
    `service_account_file` is (re)written by `start()`, when the port is known.
    """

    def __init__(
        self,
        *,
        directory: Path | None = None,
        host: str = "127.0.0.1",
        port: int = 0,
        project_id: str = "pushgw-emulator",
        token_rules: Mapping[str, str | TokenRule] | None = None,
        retry_after_s: int = 60,
        access_token_ttl_s: int = 3600,
        max_concurrent_streams: int = 1000,
        response_delay_ms: int = 0,
        keep_messages: int = 100_000,
    ) -> None:
        self.directory = tls.prepare_directory(directory, self)
        self.certificates = tls.write_server_certificates(self.directory)
        self.ca_file = self.certificates.ca_file
        self.project_id = project_id
        self.service_account_file = self.directory / "service-account.json"
        self.token_rules = {
            prefix: TokenRule.parse(spec, FCM_ERRORS) for prefix, spec in (token_rules or {}).items()
        }
        self.retry_after_s = retry_after_s
        self.access_token_ttl_s = access_token_ttl_s
        self.accounts: dict[str, ServiceAccount] = {}
        self._access_tokens: dict[str, float] = {}
        self._messages: deque[Message] = deque(maxlen=keep_messages)
        self._stats = FcmStats()
        self._message_ids = itertools.count(1)
        self._server = Http2Server(
            handler=self._handle,
            ssl_context=tls.server_ssl_context(self.certificates, ["h2", "http/1.1"]),
            host=host,
            port=port,
            http1=True,
            max_concurrent_streams=max_concurrent_streams,
            response_delay_s=response_delay_ms / 1000,
            on_connect=self._open_connection,
        )

    @property
    def token_url(self) -> str:
        return f"{self.url}/token"

    def trust_service_account(self, account: ServiceAccount) -> None:
        """Accept OAuth assertions signed by this account's key, besides the emulator's own account."""
        self.accounts[account.client_email] = account

    async def start(self) -> None:
        await super().start()
        own = write_service_account(
            self.service_account_file, token_uri=self.token_url, project_id=self.project_id
        )
        self.trust_service_account(own)

    def stats(self) -> FcmStats:
        """A snapshot of the counters (safe to call from another thread)."""
        snapshot = copy.copy(self._stats)
        snapshot.rejected = Counter(dict(self._stats.rejected))
        snapshot.oauth_rejected = Counter(dict(self._stats.oauth_rejected))
        snapshot.requests_by_connection = dict(self._stats.requests_by_connection)
        snapshot.connections_open = len(self._server.connections)
        snapshot.max_concurrent_streams = self._server.max_open_streams
        return snapshot

    def messages(self, token: str | None = None) -> list[Message]:
        """Accepted messages, oldest first, optionally to one token (safe to call from another thread)."""
        kept = list(self._messages)
        return kept if token is None else [message for message in kept if message.token == token]

    def _handle(self, request: Request) -> Response:
        url = urlsplit(request.path)
        if request.method == "GET" and url.path.startswith("/emulator/"):
            return self._serve_control(url.path, url.query)
        if url.path == "/token" and request.method == "POST":
            return self._issue_access_token(request)
        match = _SEND_PATH.fullmatch(url.path)
        if match is None or request.method != "POST":
            return _rpc_error(404, "NOT_FOUND", "Requested entity was not found.")
        stats = self._stats
        stats.requests += 1
        connection_id = request.connection.id
        stats.requests_by_connection[connection_id] = stats.requests_by_connection.get(connection_id, 0) + 1
        response = self._send_message(request, match.group(1))
        if response.status != 200:
            stats.rejected[_error_code(response.body)] += 1
        return response

    def _send_message(self, request: Request, project_id: str) -> Response:
        if not self._is_authorized(request.headers.get("authorization", "")):
            return _rpc_error(401, "UNAUTHENTICATED", _UNAUTHENTICATED)
        if project_id != self.project_id:
            message = (
                f"Permission 'cloudmessaging.messages.create' denied on resource 'projects/{project_id}'."
            )
            return _rpc_error(403, "PERMISSION_DENIED", message)
        try:
            body = json.loads(request.body)
        except ValueError:
            return _invalid_argument(_Violation("", "Invalid JSON payload received."))
        violation = find_violation(body)
        if violation is not None:
            return _invalid_argument(violation)
        message = body["message"]
        token = message.get("token")
        rule = (
            TokenRule.find(self.token_rules, token) if self.token_rules and isinstance(token, str) else None
        )
        if rule is not None and rule.reason is not None:
            return self._scripted_error(rule.reason)
        if body.get("validate_only"):
            return _json_response(200, {"name": f"projects/{self.project_id}/messages/fake_message_id"})
        name = (
            f"projects/{self.project_id}/messages/0:{time.time_ns() // 1000}%{next(self._message_ids):016x}"
        )
        self._messages.append(Message(name, message, request.connection.id))
        self._stats.accepted += 1
        return _json_response(200, {"name": name}, delay_s=rule.delay_ms / 1000 if rule else 0.0)

    def _is_authorized(self, authorization: str) -> bool:
        if authorization[:7].lower() != "bearer ":
            return False
        expires_at = self._access_tokens.get(authorization[7:].strip())
        return expires_at is not None and expires_at > time.time()

    def _scripted_error(self, error_code: str) -> Response:
        status, rpc_status, message = FCM_ERRORS[error_code]
        headers = (("retry-after", str(self.retry_after_s)),) if error_code in _RETRY_AFTER_CODES else ()
        details = [{"@type": FCM_ERROR_TYPE, "errorCode": error_code}]
        return _rpc_error(status, rpc_status, message, details, headers)

    def _issue_access_token(self, request: Request) -> Response:
        form = parse_qs(request.body.decode("utf-8", "replace"))
        grant_type = form.get("grant_type", [""])[0]
        if grant_type != JWT_BEARER_GRANT:
            return self._oauth_error("unsupported_grant_type", f"Invalid grant_type: {grant_type}")
        authority = request.headers.get(":authority") or request.headers.get("host", "")
        # google-auth signs for Google's own token URL whatever the key file's token_uri says.
        audiences = [self.token_url, f"https://{authority}/token", GOOGLE_TOKEN_URL]
        problem = tls.check_oauth_assertion(
            form.get("assertion", [""])[0], self.accounts, audiences, FCM_SCOPE
        )
        if problem is not None:
            return self._oauth_error(*problem)
        access_token = f"ya29.emulator-{secrets.token_urlsafe(32)}"
        if len(self._access_tokens) > 10_000:
            self._access_tokens = {token: at for token, at in self._access_tokens.items() if at > time.time()}
        self._access_tokens[access_token] = time.time() + self.access_token_ttl_s
        self._stats.oauth_tokens_issued += 1
        body = {"access_token": access_token, "expires_in": self.access_token_ttl_s, "token_type": "Bearer"}
        return _json_response(200, body)

    def _oauth_error(self, error: str, description: str) -> Response:
        self._stats.oauth_rejected[error] += 1
        return _json_response(400, {"error": error, "error_description": description})

    def _open_connection(self, connection: Connection) -> None:
        self._stats.connections_opened += 1

    def _serve_control(self, path: str, query: str) -> Response:
        if path == "/emulator/stats":
            return _json_response(200, self.stats().to_json())
        if path == "/emulator/messages":
            parameters = parse_qs(query)
            token, limit = parameters.get("token", [None])[0], int(parameters.get("limit", ["1000"])[0])
            return _json_response(200, [message.to_json() for message in self.messages(token)[-limit:]])
        return _rpc_error(404, "NOT_FOUND", "Requested entity was not found.")


def find_violation(body: Any) -> _Violation | None:
    """The first FCM v1 rule a `messages:send` body breaks, or None."""
    if not isinstance(body, dict) or not isinstance(body.get("message"), dict):
        return _Violation("message", "Request contains an invalid argument.")
    unknown = sorted(set(body) - {"message", "validate_only"})
    if unknown:
        return _Violation(
            unknown[0], f'Invalid JSON payload received. Unknown name "{unknown[0]}": Cannot find field.'
        )
    message = body["message"]
    if sum(1 for target in _TARGETS if message.get(target)) != 1:
        return _Violation("message", "Exactly one of token, topic or condition must be specified.")
    android = message.get("android")
    if android is not None and not isinstance(android, dict):
        return _Violation("message.android", "Invalid value at 'message.android'.")
    android = android or {}
    return (
        _data_violation("message.data", message.get("data"))
        or _data_violation("message.android.data", android.get("data"))
        or _android_violation(android)
        or _size_violation(message)
    )


def _data_violation(name: str, data: Any) -> _Violation | None:
    if data is None:
        return None
    if not isinstance(data, dict):
        return _Violation(name, f"Invalid value at '{name}' (map<string, string>).")
    for key, value in data.items():
        if not isinstance(value, str):
            return _Violation(
                f"{name}[{key}]", f"Invalid value at '{name}[{key}].value' (TYPE_STRING), {value!r}"
            )
        if key.lower() in _RESERVED_DATA_KEYS or key.lower().startswith(("google", "gcm")):
            return _Violation(f"{name}[{key}]", f"Invalid data payload key: {key} is a reserved word.")
    return None


def _android_violation(android: Mapping[str, Any]) -> _Violation | None:
    priority = android.get("priority")
    if priority is not None and priority not in ANDROID_PRIORITIES:
        where = (
            "'message.android.priority' (type.googleapis.com/google.firebase.fcm.v1.AndroidMessagePriority)"
        )
        return _Violation("message.android.priority", f"Invalid value at {where}, {json.dumps(priority)}")
    ttl = android.get("ttl")
    if ttl is None:
        return None
    match = _TTL.fullmatch(ttl) if isinstance(ttl, str) else None
    if match is None:
        where = "'message.android.ttl' (type.googleapis.com/google.protobuf.Duration)"
        return _Violation("message.android.ttl", f"Invalid value at {where}, {json.dumps(ttl)}")
    if float(ttl[:-1]) > MAX_TTL_S:
        return _Violation("message.android.ttl", f"TTL exceeds the maximum of {MAX_TTL_S}s (4 weeks).")
    return None


def _size_violation(message: Mapping[str, Any]) -> _Violation | None:
    payload = {key: value for key, value in message.items() if key not in _TARGETS}
    limit = TOPIC_PAYLOAD_LIMIT_BYTES if message.get("topic") else PAYLOAD_LIMIT_BYTES
    if len(json.dumps(payload, separators=(",", ":")).encode()) > limit:
        return _Violation("message", f"Message is too big: the payload is limited to {limit} bytes.")
    return None


def _invalid_argument(violation: _Violation) -> Response:
    details: list[dict[str, Any]] = [
        {"@type": FCM_ERROR_TYPE, "errorCode": "INVALID_ARGUMENT"},
        {
            "@type": "type.googleapis.com/google.rpc.BadRequest",
            "fieldViolations": [{"field": violation.field, "description": violation.description}],
        },
    ]
    return _rpc_error(400, "INVALID_ARGUMENT", violation.description, details)


def _rpc_error(
    status: int,
    rpc_status: str,
    message: str,
    details: list[dict[str, Any]] | None = None,
    headers: tuple[tuple[str, str], ...] = (),
) -> Response:
    error: dict[str, Any] = {"code": status, "message": message, "status": rpc_status}
    if details:
        error["details"] = details
    return Response(status, (_JSON, *headers), json.dumps({"error": error}).encode())


def _error_code(body: bytes) -> str:
    error = json.loads(body)["error"]
    codes = [detail["errorCode"] for detail in error.get("details", []) if "errorCode" in detail]
    return codes[0] if codes else str(error["status"])


def _json_response(status: int, value: Any, delay_s: float = 0.0) -> Response:
    return Response(status, (_JSON,), json.dumps(value).encode(), delay_s=delay_s)
