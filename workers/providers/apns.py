"""APNs over our own HTTP/2 client: token (JWT) or certificate auth, a quarantine lane, answers → outcomes.

One `ApnsCredential` per configured credential (bundle ids, environment), each with a main pool and a
quarantine pool of HTTP/2 connections. Tokens that failed recently, and devices on a retry attempt, go
to the quarantine lane, so the stream throttle APNs applies after a rejection (providers.md §1.5) slows
that lane only; the pools themselves route away from connections whose stream limit dropped to 1.
"""

from __future__ import annotations

import asyncio
import functools
import json
import os
import ssl
import tempfile
import time
from collections import OrderedDict
from collections.abc import Callable, Mapping, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import jwt
from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding, NoEncryption, PrivateFormat, pkcs12
from prometheus_client import Histogram

from pushgw import metrics
from pushgw.logs import get_logger
from pushgw.settings import ApnsSettings, AppSettings
from workers.outcomes import Deferred, Failed, Outcome, Reason, Sent
from workers.providers.apns_payload import (
    ApnsRequest,
    is_valid_token,
    request_template,
    size_limit,
    with_apns_id,
)
from workers.providers.credential_gate import CredentialGate
from workers.providers.http2 import Http2Error, Http2Pool
from workers.providers.provider import APNS, Notification, PushContext
from workers.providers.rejections import Rejection, Verdict, classify_apns, parse_retry_after

log = get_logger(__name__)
JWT_REFRESH_S = 50 * 60  # Apple: no more often than every 20 min, no less often than every 60
JWT_MIN_AGE_S = 20 * 60
_SUSPECTS_KEPT = 100_000
_SENT = classify_apns(200, None)
KNOWN_DEAD_S = 3600.0  # a token APNs declared dead is failed locally for this long, without a request
NO_CREDENTIAL = "no-apns-credential"
CONNECTION_ERROR = "connection-error"


class ProviderToken:
    """One JWT per (team, key) per process, shared by every connection, renewed about every 50 minutes."""

    def __init__(
        self, key_pem: bytes, key_id: str, team_id: str, now: Callable[[], float] = time.time
    ) -> None:
        self._key, self.key_id, self.team_id, self._now = key_pem, key_id, team_id, now
        self._token = ""
        self._issued_at = 0.0
        self.minted = 0

    def header(self) -> str:
        if self._now() - self._issued_at >= JWT_REFRESH_S:
            self._mint()
        return self._token

    @property
    def age_s(self) -> float:
        return self._now() - self._issued_at

    def expired_by_apple(self) -> bool:
        """After `ExpiredProviderToken`: mint anew unless that would break Apple's 20-minute rule."""
        if self._now() - self._issued_at < JWT_MIN_AGE_S:
            return False
        self._mint()
        return True

    def _mint(self) -> None:
        now = self._now()
        token = jwt.encode(
            {"iss": self.team_id, "iat": int(now)}, self._key, algorithm="ES256", headers={"kid": self.key_id}
        )
        self._token, self._issued_at = f"bearer {token}", now
        self.minted += 1


class ApnsCredential:
    """One configured credential: its pools, its JWT (token auth), and whether it is paused."""

    def __init__(self, settings: ApnsSettings, token: ProviderToken | None) -> None:
        self.settings = settings
        self.name = settings.bundle_ids[0] + ("" if settings.environment == "production" else " (sandbox)")
        self._token = token
        parts = urlsplit(settings.endpoint)
        host, port = parts.hostname or "", parts.port or 443
        context = _ssl_context(settings)
        self._pools = {
            lane: Http2Pool(host, port, context, connections=count)
            for lane, count in (
                ("main", settings.connections),
                ("quarantine", settings.quarantine_connections),
            )
        }
        self._gate = CredentialGate(APNS, self.name, settings.pause_s)

    async def post(self, token: str, headers: dict[str, str], body: bytes, lane: str) -> Rejection:
        """One notification through the credential's gate; a stale JWT is renewed and sent once more."""
        if self._gate.is_open:  # the hot path: no lambda, no lock
            return self._gate.settle(await self._post_renewing(token, headers, body, lane))
        return await self._gate.run(lambda: self._post_renewing(token, headers, body, lane))

    async def _post_renewing(self, token: str, headers: dict[str, str], body: bytes, lane: str) -> Rejection:
        rejection = await self._post_once(token, headers, body, lane)
        if (
            rejection.verdict is Verdict.REFRESH
            and self._token is not None
            and self._token.expired_by_apple()
        ):
            rejection = await self._post_once(token, headers, body, lane)
        return rejection

    async def _post_once(self, token: str, headers: dict[str, str], body: bytes, lane: str) -> Rejection:
        wire = list(headers.items())
        if self._token is not None:
            wire.append(("authorization", self._token.header()))
        started = time.perf_counter()
        try:
            response = await self._pools[lane].request(
                b"POST", f"/3/device/{token}".encode(), wire, body, self.settings.request_timeout_s
            )
        except Http2Error as error:
            _latency(CONNECTION_ERROR).observe(time.perf_counter() - started)
            return Rejection(Verdict.TRANSIENT, f"{CONNECTION_ERROR}: {type(error).__name__}")
        if response.status == 200:
            _SENT_LATENCY.observe(time.perf_counter() - started)
            return _SENT
        reason, timestamp_ms = _reason(response.body)
        retry_after_s = parse_retry_after(response.headers.get("retry-after"))
        rejection = classify_apns(response.status, reason, retry_after_s, timestamp_ms)
        _latency(rejection.reason or "sent").observe(time.perf_counter() - started)
        return rejection

    def publish_stream_gauges(self) -> None:
        for lane, pool in self._pools.items():
            for index, (limit, in_flight) in enumerate(pool.connection_stats()):
                metrics.CONNECTION_STREAMS.labels(APNS, self.name, lane, str(index), "limit").set(limit)
                metrics.CONNECTION_STREAMS.labels(APNS, self.name, lane, str(index), "in_flight").set(
                    in_flight
                )

    async def close(self) -> None:
        await asyncio.gather(*(pool.close() for pool in self._pools.values()), return_exceptions=True)


class ApnsProvider:
    """The `apns` transport for every app with `[[apps.apns]]` credentials."""

    transport = APNS

    def __init__(self, apps: Sequence[AppSettings]) -> None:
        tokens: dict[tuple[str, str], ProviderToken] = {}
        self._credentials: dict[str, dict[str, ApnsCredential]] = {}
        self._defaults: dict[str, ApnsCredential] = {}
        self._single_environment: dict[str, bool] = {}
        for app in apps:
            by_topic: dict[str, ApnsCredential] = {}
            for settings in app.apns:
                credential = ApnsCredential(settings, _provider_token(settings, tokens))
                by_topic.update(dict.fromkeys(settings.bundle_ids, credential))
                if settings.default or len(app.apns) == 1:
                    self._defaults[app.app_id] = credential
            self._credentials[app.app_id] = by_topic
            self._single_environment[app.app_id] = len({s.environment for s in app.apns}) == 1
        self.tokens = tokens
        # token → (the reason it is dead, or None if only suspect; when noted), most recent last
        self._suspects: OrderedDict[str, tuple[str | None, float]] = OrderedDict()

    async def send(self, push: PushContext, notifications: Sequence[Notification]) -> list[Outcome]:
        # Devices that get the same `data` (same locale, no per-device badge) share one body and header
        # set: only `apns-id` differs. Keyed by the data object, which `notifications` keeps alive.
        templates: dict[tuple[int, str], ApnsRequest] = {}
        return list(await asyncio.gather(*(self._send_one(push, n, templates) for n in notifications)))

    async def _send_one(
        self, push: PushContext, notification: Notification, templates: dict[tuple[int, str], ApnsRequest]
    ) -> Outcome:
        device, token = notification.device, notification.device.device_token or ""
        if not is_valid_token(token):
            return Failed(device, "BadDeviceToken")  # malformed: never sent, so it cannot throttle a lane
        noted = self._suspects.get(token)
        if noted is not None and noted[0] is not None and time.monotonic() - noted[1] < KNOWN_DEAD_S:
            return Failed(device, noted[0])  # Apple said so within the hour: not asked (and throttled) again
        credential = self._credential(push.app_id, device.app_identifier)
        if credential is None:
            configured = bool(self._credentials.get(push.app_id))
            return Failed(device, NO_CREDENTIAL if configured else Reason.PROVIDER_NOT_CONFIGURED)
        if not notification.data:
            return Failed(device, Reason.EMPTY_PAYLOAD)
        topic = device.app_identifier or credential.settings.bundle_ids[0]
        key = (id(notification.data), topic)
        template = templates.get(key)
        if template is None:
            data, expiry_ms = notification.data, push.expiry_ms
            template = templates[key] = request_template(data, push.options, topic=topic, expiry_ms=expiry_ms)
        if len(template.body) > size_limit(template.push_type):
            return Failed(device, Reason.PAYLOAD_TOO_LARGE)
        request = with_apns_id(template, notification.data, push.push_id, token)
        lane = "quarantine" if push.attempt > 1 or token in self._suspects else "main"
        rejection = await credential.post(token, request.headers, request.body, lane)
        return self._outcome(push.app_id, credential, notification, rejection)

    def _outcome(
        self, app_id: str, credential: ApnsCredential, notification: Notification, rejection: Rejection
    ) -> Outcome:
        device, token = notification.device, notification.device.device_token or ""
        verdict = rejection.verdict
        if verdict is Verdict.SENT:
            self._suspects.pop(token, None)
            return Sent(device)
        if verdict in (Verdict.TRANSIENT, Verdict.REFRESH):
            return Deferred(device, rejection.reason, rejection.retry_after_s)
        # BadDeviceToken is only authoritative when the app cannot have sent it to the wrong environment.
        dead = verdict is Verdict.DEAD_TOKEN or (
            verdict is Verdict.SUSPECT_TOKEN and self._single_environment.get(app_id, False)
        )
        self._suspect(token, rejection.reason if dead else None)
        return Failed(device, rejection.reason, dead_token=dead, dead_since_ms=rejection.dead_since_ms)

    def _credential(self, app_id: str, app_identifier: str | None) -> ApnsCredential | None:
        if app_identifier:
            found = self._credentials.get(app_id, {}).get(app_identifier)
            if found is not None:
                return found
        return self._defaults.get(app_id)

    def _suspect(self, token: str, dead_reason: str | None) -> None:
        self._suspects[token] = (dead_reason, time.monotonic())
        self._suspects.move_to_end(token)
        if len(self._suspects) > _SUSPECTS_KEPT:
            self._suspects.popitem(last=False)

    def publish_gauges(self) -> None:
        for token in self.tokens.values():
            metrics.JWT_AGE_SECONDS.labels(token.team_id, token.key_id).set(token.age_s)
        for credentials in self._credentials.values():
            for credential in set(credentials.values()):
                credential.publish_stream_gauges()

    async def close(self) -> None:
        credentials = {id(c): c for by_topic in self._credentials.values() for c in by_topic.values()}
        await asyncio.gather(*(c.close() for c in credentials.values()), return_exceptions=True)


@functools.cache
def _latency(answer: str) -> Histogram:
    """The request-latency child for one answer, looked up once (labels() takes a lock and a dict lookup)."""
    return metrics.PROVIDER_SECONDS.labels(APNS, answer)


_SENT_LATENCY = _latency("sent")


def _reason(body: bytes) -> tuple[str | None, float | None]:
    try:
        answer: Any = json.loads(body)
    except ValueError:
        return None, None
    if not isinstance(answer, Mapping):
        return None, None
    reason, timestamp = answer.get("reason"), answer.get("timestamp")
    return (
        reason if isinstance(reason, str) else None,
        float(timestamp) if isinstance(timestamp, int | float) else None,
    )


def _provider_token(
    settings: ApnsSettings, tokens: dict[tuple[str, str], ProviderToken]
) -> ProviderToken | None:
    if settings.key_file is None or settings.key_id is None or settings.team_id is None:
        return None
    key = (settings.team_id, settings.key_id)
    if key not in tokens:
        tokens[key] = ProviderToken(settings.key_file.read_bytes(), settings.key_id, settings.team_id)
    return tokens[key]


def _ssl_context(settings: ApnsSettings) -> ssl.SSLContext:
    context = ssl.create_default_context(cafile=str(settings.ca_file) if settings.ca_file else None)
    if settings.certificate_file is not None:
        password = settings.certificate_password.get_secret_value() if settings.certificate_password else None
        _load_certificate(
            context,
            settings.certificate_file,
            settings.certificate_key_file,
            password,
            settings.bundle_ids[0],
        )
    return context


def _load_certificate(
    context: ssl.SSLContext, path: Path, key_path: Path | None, password: str | None, name: str
) -> None:
    """A `.pem` (certificate + key, or a separate key file) loads directly; a `.p12` goes through a private
    temporary PEM file."""
    if path.suffix.lower() not in (".p12", ".pfx"):
        context.load_cert_chain(path, key_path, password=password)
        _note_expiry(x509.load_pem_x509_certificate(path.read_bytes()), name)
        return
    key, certificate, extra = pkcs12.load_key_and_certificates(
        path.read_bytes(), password.encode() if password else None
    )
    if key is None or certificate is None:
        raise ValueError(f"{path}: no key and certificate inside")
    pem = key.private_bytes(Encoding.PEM, PrivateFormat.PKCS8, NoEncryption()) + certificate.public_bytes(
        Encoding.PEM
    )
    pem += b"".join(chain.public_bytes(Encoding.PEM) for chain in extra)
    descriptor, temporary = tempfile.mkstemp(suffix=".pem")
    try:
        os.write(descriptor, pem)
        os.close(descriptor)
        context.load_cert_chain(temporary)
    finally:
        os.unlink(temporary)
    _note_expiry(certificate, name)


def _note_expiry(certificate: x509.Certificate, name: str) -> None:
    days = (certificate.not_valid_after_utc - datetime.now(UTC)).total_seconds() / 86_400
    metrics.CERTIFICATE_DAYS_LEFT.labels(name).set(round(days, 1))
    if days < 30:
        log.warning("apns_certificate_expires_soon", credential=name, days_left=round(days, 1))
