"""FCM HTTP v1 over HTTP/2 (httpx2): a service account per app, one access token each, answers → outcomes.

The OAuth access token is minted with the JWT-bearer grant (assertion signed by google-auth's signer,
posted with our own async client: no blocking refresh on the event loop), cached, renewed five minutes
before it expires, and refreshed by one caller at a time. A 401 refreshes it and sends once more.
"""

from __future__ import annotations

import asyncio
import json
import ssl
import time
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from typing import Any

import httpx2
from google.auth import crypt
from google.auth import jwt as google_jwt

from pushgw import metrics
from pushgw.logs import get_logger
from pushgw.settings import AppSettings, FcmSettings
from workers.outcomes import Deferred, Failed, Outcome, Reason, Sent
from workers.providers.credential_gate import CredentialGate
from workers.providers.fcm_payload import build_message
from workers.providers.provider import FCM, Notification, PushContext
from workers.providers.rejections import Rejection, Verdict, classify_fcm, parse_retry_after

log = get_logger(__name__)
SCOPE = "https://www.googleapis.com/auth/firebase.messaging"
REFRESH_AHEAD_S = 300.0
CONNECTION_ERROR = "connection-error"


class FcmAuthError(Exception):
    """The token endpoint refused the service account (a broken credential, not a device problem)."""


class AccessToken:
    """One OAuth2 access token per service account, cached until five minutes before it expires."""

    def __init__(self, account: Mapping[str, Any], client: httpx2.AsyncClient) -> None:
        self._account = account
        self._signer = crypt.RSASigner.from_service_account_info(account)  # type: ignore[no-untyped-call]
        self._client = client
        self._token = ""
        self._expires_at = 0.0
        self._lock = asyncio.Lock()
        self.minted = 0

    async def header(self, *, stale: str = "") -> str:
        """`Bearer …`; `stale` names a token the server just refused, so it is replaced exactly once."""
        if self._token and time.time() < self._expires_at - REFRESH_AHEAD_S and self._token != stale:
            return self._token
        async with self._lock:
            if not self._token or time.time() >= self._expires_at - REFRESH_AHEAD_S or self._token == stale:
                await self._refresh()
        return self._token

    async def _refresh(self) -> None:
        now = int(time.time())
        token_uri = str(self._account["token_uri"])
        claims = {"iss": self._account["client_email"], "scope": SCOPE, "aud": token_uri, "iat": now,
                  "exp": now + 3600}  # fmt: skip
        key_id = self._account.get("private_key_id")
        signed: bytes = google_jwt.encode(self._signer, claims, key_id=key_id)  # type: ignore[no-untyped-call]
        assertion = signed.decode()
        try:
            response = await self._client.post(
                token_uri,
                data={"grant_type": "urn:ietf:params:oauth:grant-type:jwt-bearer", "assertion": assertion},
            )
        except httpx2.HTTPError as error:
            raise ConnectionError(f"token endpoint unreachable: {error}") from error
        if response.status_code != 200:
            raise FcmAuthError(f"token endpoint answered {response.status_code}: {response.text[:200]}")
        answer = response.json()
        self._token = f"Bearer {answer['access_token']}"
        self._expires_at = time.time() + float(answer.get("expires_in", 3600))
        self.minted += 1


class FcmProject:
    """One app's FCM project: a client, its access token, and whether the credential is paused."""

    def __init__(self, settings: FcmSettings) -> None:
        self.settings = settings
        account: dict[str, Any] = json.loads(settings.service_account_file.read_text())
        self.project_id = settings.project_id or str(account["project_id"])
        verify: ssl.SSLContext | bool = True
        if settings.ca_file is not None:
            verify = ssl.create_default_context(cafile=str(settings.ca_file))
        self.client = httpx2.AsyncClient(
            http2=True,
            verify=verify,
            timeout=settings.request_timeout_s,
            limits=httpx2.Limits(
                max_connections=settings.connections, max_keepalive_connections=settings.connections
            ),
            trust_env=False,
        )
        self.token = AccessToken(account, self.client)
        self.url = f"{settings.endpoint}/v1/projects/{self.project_id}/messages:send"
        self._gate = CredentialGate(FCM, self.project_id, settings.pause_s)

    async def post(self, message: dict[str, Any]) -> Rejection:
        """One message through the project's gate; a 401 refreshes the access token and sends once more."""
        return await self._gate.run(lambda: self._post_refreshing(message))

    async def _post_refreshing(self, message: dict[str, Any]) -> Rejection:
        rejection, used = await self._post_once(message, "")
        if rejection.verdict is Verdict.REFRESH:
            rejection, _ = await self._post_once(message, used)
            if rejection.verdict is Verdict.REFRESH:  # refused twice: our credential, not this device
                rejection = Rejection(Verdict.CREDENTIAL, rejection.reason)
        return rejection

    async def _post_once(self, message: dict[str, Any], stale: str) -> tuple[Rejection, str]:
        started = time.perf_counter()
        try:
            authorization = await self.token.header(stale=stale)
        except FcmAuthError as error:
            return Rejection(Verdict.CREDENTIAL, "token-refused"), str(error)
        except ConnectionError:
            return Rejection(Verdict.TRANSIENT, CONNECTION_ERROR), ""
        try:
            response = await self.client.post(
                self.url, json={"message": message}, headers={"authorization": authorization}
            )
        except httpx2.HTTPError as error:
            metrics.PROVIDER_SECONDS.labels(FCM, CONNECTION_ERROR).observe(time.perf_counter() - started)
            return Rejection(Verdict.TRANSIENT, f"{CONNECTION_ERROR}: {type(error).__name__}"), authorization
        if response.status_code == 200:
            rejection = classify_fcm(200, None)
        else:
            code, text = _error(response.content)
            retry_after_s = parse_retry_after(response.headers.get("retry-after"))
            rejection = classify_fcm(response.status_code, code, text, retry_after_s)
        metrics.PROVIDER_SECONDS.labels(FCM, rejection.reason or "sent").observe(
            time.perf_counter() - started
        )
        return rejection, authorization

    async def close(self) -> None:
        await self.client.aclose()


class FcmProvider:
    """The `fcm` transport (android with pushType gcm/fcm/none, and fcm) for apps with `[apps.fcm]`."""

    transport = FCM

    def __init__(self, apps: Sequence[AppSettings]) -> None:
        self._projects = {app.app_id: FcmProject(app.fcm) for app in apps if app.fcm is not None}

    async def send(self, push: PushContext, notifications: Sequence[Notification]) -> list[Outcome]:
        project = self._projects.get(push.app_id)
        sent_at = datetime.now(UTC)
        return list(await asyncio.gather(*(self._send_one(project, push, n, sent_at) for n in notifications)))

    async def _send_one(
        self, project: FcmProject | None, push: PushContext, notification: Notification, sent_at: datetime
    ) -> Outcome:
        device = notification.device
        if project is None:
            return Failed(device, Reason.PROVIDER_NOT_CONFIGURED)
        message = build_message(
            notification.data, push.options, token=device.device_token or "", push_id=push.push_id,
            sent_at=sent_at, expiry_ms=push.expiry_ms, notification=project.settings.notification,
        )  # fmt: skip
        rejection = await project.post(message)
        if rejection.verdict is Verdict.SENT:
            return Sent(device)
        if rejection.verdict in (Verdict.TRANSIENT, Verdict.REFRESH):
            return Deferred(device, rejection.reason, rejection.retry_after_s)
        return Failed(device, rejection.reason, dead_token=rejection.verdict is Verdict.DEAD_TOKEN)

    async def close(self) -> None:
        await asyncio.gather(*(p.close() for p in self._projects.values()), return_exceptions=True)


def _error(body: bytes) -> tuple[str | None, str]:
    """(FcmError errorCode, or the rpc status when there is none; the message) of a google.rpc.Status body."""
    try:
        error = json.loads(body).get("error", {})
    except (ValueError, AttributeError):
        return None, ""
    if not isinstance(error, dict):
        return None, ""
    message = str(error.get("message", ""))
    for detail in error.get("details") or []:
        if isinstance(detail, dict) and detail.get("errorCode"):
            return str(detail["errorCode"]), message
    status = error.get("status")
    return (str(status) if status else None), message
