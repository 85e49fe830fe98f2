"""Console session cookies: signed per app, expiring, bound to the master key; CSRF tokens per session."""

from __future__ import annotations

from pydantic import SecretStr

from pushgw.console import session
from pushgw.settings import AppSettings, ConsoleSettings, Settings


def settings(master_key: str = "master1", ttl_s: int = 600) -> Settings:
    return Settings(
        apps=[AppSettings(app_id="app1", master_key=SecretStr(master_key))],
        console=ConsoleSettings(session_ttl_s=ttl_s),
    )


def test_issued_cookie_verifies_until_it_expires() -> None:
    cookie, issued = session.issue(settings(), "app1", now_s=1000)
    assert session.verify(settings(), cookie, now_s=1599) == issued
    assert session.verify(settings(), cookie, now_s=1600) is None
    assert "master1" not in cookie


def test_tampered_or_foreign_cookies_are_refused() -> None:
    cookie, _ = session.issue(settings(), "app1", now_s=1000)
    payload, signature = cookie.split(".")
    assert session.verify(settings(), f"{payload}.{signature[:-2]}xx", now_s=1001) is None
    assert session.verify(settings(), f"{payload}x.{signature}", now_s=1001) is None
    assert session.verify(settings(master_key="rotated"), cookie, now_s=1001) is None
    for junk in (None, "", "a", "a.b.c", "!!!.sig", "bnVsbA.sig"):
        assert session.verify(settings(), junk, now_s=1001) is None


def test_csrf_token_belongs_to_one_session() -> None:
    _, first = session.issue(settings(), "app1", now_s=1000)
    _, second = session.issue(settings(), "app1", now_s=1000)
    token = session.csrf_token(settings(), first)
    assert session.is_valid_csrf(settings(), first, token)
    assert not session.is_valid_csrf(settings(), second, token)
    assert not session.is_valid_csrf(settings(), first, None)
    assert not session.is_valid_csrf(settings(), first, "")
