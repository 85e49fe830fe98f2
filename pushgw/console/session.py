"""Console sessions: a signed, expiring cookie per app, and the CSRF token that goes with it.

The signing key is derived from the app's master key, so every `pushgw serve` process accepts the same
cookie and rotating the master key ends every session. The cookie never holds the key itself.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import secrets
from dataclasses import dataclass

from pushgw.settings import Settings

COOKIE = "pushgw_console"
CSRF_HEADER = "x-pushgw-csrf"


@dataclass(frozen=True, slots=True)
class Session:
    app_id: str
    expires_s: int
    nonce: str


def issue(settings: Settings, app_id: str, now_s: float) -> tuple[str, Session]:
    """A new session for `app_id` (whose master key the caller proved) and its cookie value."""
    session = Session(app_id, int(now_s) + settings.console.session_ttl_s, secrets.token_urlsafe(16))
    payload = _b64(json.dumps([session.app_id, session.expires_s, session.nonce]).encode())
    return f"{payload}.{_sign(settings, app_id, payload.encode())}", session


def verify(settings: Settings, cookie: str | None, now_s: float) -> Session | None:
    """The session a cookie carries, or None if it is missing, forged, expired or its app is gone."""
    if not cookie or cookie.count(".") != 1:
        return None
    payload, signature = cookie.split(".")
    try:
        app_id, expires_s, nonce = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    except (ValueError, TypeError):
        return None
    if not isinstance(app_id, str) or settings.app(app_id) is None or not isinstance(expires_s, int):
        return None
    if not hmac.compare_digest(signature, _sign(settings, app_id, payload.encode())) or expires_s <= now_s:
        return None
    return Session(app_id, expires_s, str(nonce))


def csrf_token(settings: Settings, session: Session) -> str:
    """The token the page sends back with every state-changing request of this session."""
    return _sign(settings, session.app_id, b"csrf\0" + session.nonce.encode())


def is_valid_csrf(settings: Settings, session: Session, token: str | None) -> bool:
    return bool(token) and hmac.compare_digest(str(token), csrf_token(settings, session))


def _sign(settings: Settings, app_id: str, message: bytes) -> str:
    app = settings.app(app_id)
    assert app is not None  # callers look the app up first
    key = hashlib.sha256(b"pushgw console session\0" + app.master_key.get_secret_value().encode()).digest()
    return _b64(hmac.new(key, message, hashlib.sha256).digest())


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).decode().rstrip("=")
