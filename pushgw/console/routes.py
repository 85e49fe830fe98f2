"""The console's routes: login/logout, the page, and its JSON endpoints (pushes, overview, test push)."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any, Protocol
from urllib.parse import parse_qs, urlsplit

from pymongo.asynchronous.database import AsyncDatabase
from pymongo.errors import PyMongoError
from starlette.requests import Request
from starlette.responses import FileResponse, HTMLResponse, JSONResponse, RedirectResponse, Response
from starlette.routing import BaseRoute, Route

from pushgw.auth import authenticate
from pushgw.connections import Connections
from pushgw.console import pages, session
from pushgw.console.overview import Overview
from pushgw.errors import RequestError
from pushgw.intake import Intake, PushRequest
from pushgw.logs import get_logger
from pushgw.mongo import Document, app_database
from pushgw.push_listing import recent_pushes
from pushgw.push_status import COLLECTION
from pushgw.settings import AppSettings, Settings

log = get_logger(__name__)
_STATIC = Path(__file__).parent / "static"
_STATIC_FILES = {"console.js": "text/javascript", "console.css": "text/css"}
_SECURITY_HEADERS = {
    "cache-control": "no-store",
    "content-security-policy": "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; "
    "connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'",
    "x-frame-options": "DENY",
    "x-content-type-options": "nosniff",
    "referrer-policy": "same-origin",  # "no-referrer" makes Chromium send `Origin: null` with forms
}
_MAX_BODY_BYTES = 65_536  # forms and test pushes are small


class GatewayState(Protocol):
    """What the console needs of the running intake: its connections and the intake itself."""

    connections: Connections | None
    intake: Intake | None


def console_routes(settings: Settings, gateway: GatewayState) -> list[BaseRoute]:
    """The console's routes under `console.path`, or none when `console.enabled` is false."""
    if not settings.console.enabled:
        return []
    console = Console(settings, gateway)
    base = settings.console.path
    return [
        Route(base, console.page, methods=["GET"]),
        Route(base + "/", console.page, methods=["GET"]),
        Route(base + "/login", console.login, methods=["POST"]),
        Route(base + "/logout", console.logout, methods=["POST"]),
        Route(base + "/api/pushes", console.pushes, methods=["GET"]),
        Route(base + "/api/overview", console.overview, methods=["GET"]),
        Route(base + "/api/test-push", console.test_push, methods=["POST"]),
        Route(base + "/static/{name}", console.static, methods=["GET"]),
    ]


class Console:
    def __init__(self, settings: Settings, gateway: GatewayState) -> None:
        self._settings = settings
        self._gateway = gateway
        self._base = settings.console.path
        self._overview = Overview(settings)

    async def page(self, request: Request) -> Response:
        current = self._session(request)
        if current is None:
            return _secured(HTMLResponse(pages.login_page(self._base)))
        csrf = session.csrf_token(self._settings, current)
        return _secured(HTMLResponse(pages.console_page(self._base, current.app_id, csrf, self._settings)))

    async def login(self, request: Request) -> Response:
        """App id + master key, checked as the intake checks them; a session cookie on success."""
        if not _same_origin(request):
            return _secured(Response("cross-origin request refused", 403))
        fields = await _form(request)
        app_id = fields.get("app_id", [""])[0]
        headers = {"x-parse-application-id": app_id, "x-parse-master-key": fields.get("master_key", [""])[0]}
        peer = request.client.host if request.client else None
        try:
            app = authenticate(headers, {}, peer, self._settings)
        except RequestError:
            log.info("console_login_refused", app_id=app_id[:100], peer=peer)
            page = pages.login_page(self._base, error="Wrong app id or master key.")
            return _secured(HTMLResponse(page, 401))
        cookie, _ = session.issue(self._settings, app.app_id, time.time())
        log.info("console_login", app_id=app.app_id, peer=peer)
        response = RedirectResponse(self._base, 303)
        response.set_cookie(
            session.COOKIE, cookie, max_age=self._settings.console.session_ttl_s, path=self._base,
            httponly=True, samesite="strict", secure=self._is_secure(request),
        )  # fmt: skip
        return _secured(response)

    async def logout(self, request: Request) -> Response:
        current = self._session(request)
        form = await _form(request)
        if current is not None and not self._is_trusted_write(request, current, form.get("csrf", [""])[0]):
            return _secured(Response("invalid CSRF token", 403))
        response = RedirectResponse(self._base, 303)
        response.delete_cookie(session.COOKIE, path=self._base, httponly=True, samesite="strict")
        return _secured(response)

    async def pushes(self, request: Request) -> Response:
        found = self._app(request)
        if isinstance(found, Response):
            return found
        collection = self._database(found).get_collection(found.collection_prefix + COLLECTION)
        try:
            pushes = await recent_pushes(collection, limit=self._settings.console.recent_pushes)
        except PyMongoError as error:
            return _secured(JSONResponse({"error": f"database: {type(error).__name__}"}, 503))
        return _secured(JSONResponse({"app_id": found.app_id, "pushes": pushes}))

    async def overview(self, request: Request) -> Response:
        found = self._app(request)
        if isinstance(found, Response):
            return found
        return _secured(JSONResponse(await self._overview.collect(found, self._database(found))))

    async def test_push(self, request: Request) -> Response:
        """A push from the form, through the intake's own `accept()` with this app's master key."""
        found = self._app(request)
        if isinstance(found, Response):
            return found
        current = self._session(request)
        token = request.headers.get(session.CSRF_HEADER)
        if current is None or not self._is_trusted_write(request, current, token):
            return _secured(JSONResponse({"error": "invalid CSRF token"}, 403))
        intake = self._gateway.intake
        if intake is None:
            return _secured(JSONResponse({"error": "intake not started"}, 503))
        try:
            body = _test_push_body(json.loads(await _small_body(request)))
        except (ValueError, TypeError) as error:
            return _secured(JSONResponse({"error": str(error)}, 400))
        push = PushRequest(
            path=self._settings.http.mounts[0] + "/push",
            headers={"x-parse-application-id": found.app_id,
                     "x-parse-master-key": found.master_key.get_secret_value(),
                     "content-type": "application/json"},
            body=json.dumps(body).encode(),
            peer=request.client.host if request.client else None,
        )  # fmt: skip
        try:
            push_id = await intake.accept(push)
        except RequestError as error:
            return _secured(JSONResponse({"error": error.body}, error.status))
        log.info("console_test_push", app_id=found.app_id, push_id=push_id)
        return _secured(JSONResponse({"push_id": push_id}))

    async def static(self, request: Request) -> Response:
        name = request.path_params["name"]
        if name not in _STATIC_FILES:
            return _secured(Response("not found", 404))
        return _secured(FileResponse(_STATIC / name, media_type=_STATIC_FILES[name]))

    def _is_secure(self, request: Request) -> bool:
        configured = self._settings.console.cookie_secure
        return request.url.scheme == "https" if configured is None else configured

    def _session(self, request: Request) -> session.Session | None:
        return session.verify(self._settings, request.cookies.get(session.COOKIE), time.time())

    def _app(self, request: Request) -> AppSettings | Response:
        """The session's app, or the 401 every JSON endpoint answers without a valid session."""
        current = self._session(request)
        app = self._settings.app(current.app_id) if current is not None else None
        if app is None or self._gateway.connections is None:
            return _secured(JSONResponse({"error": "log in first"}, 401))
        return app

    def _is_trusted_write(self, request: Request, current: session.Session, token: str | None) -> bool:
        return _same_origin(request) and session.is_valid_csrf(self._settings, current, token)

    def _database(self, app: AppSettings) -> AsyncDatabase[Document]:
        connections = self._gateway.connections
        assert connections is not None  # _app() checked
        return app_database(connections.mongo, app)


async def _form(request: Request) -> dict[str, list[str]]:
    return parse_qs((await _small_body(request)).decode("utf-8", errors="replace"))


async def _small_body(request: Request) -> bytes:
    """The body, or nothing once it passes `_MAX_BODY_BYTES` (no request can exhaust memory)."""
    body = b""
    async for chunk in request.stream():
        body += chunk
        if len(body) > _MAX_BODY_BYTES:
            return b""
    return body


def _test_push_body(form: Any) -> dict[str, Any]:
    """`{"channels": "a, b"}` or `{"where": "{…}"}` plus `{"alert": "…"}` → a Parse push body."""
    if not isinstance(form, dict):
        raise TypeError("expected a JSON object")
    body: dict[str, Any] = {}
    if form.get("audience") == "where":
        where = json.loads(str(form.get("where") or "{}"))
        if not isinstance(where, dict):
            raise TypeError("where must be a JSON object")
        body["where"] = where
    else:
        body["channels"] = [part.strip() for part in str(form.get("channels", "")).split(",") if part.strip()]
    body["data"] = {"alert": str(form.get("alert", ""))}
    return body


def _same_origin(request: Request) -> bool:
    """A browser's Origin (sent with every POST) must name this server's host; non-browser clients send
    none. The scheme is not compared: behind a TLS terminator the browser says https, we see http."""
    origin = request.headers.get("origin")
    return origin is None or urlsplit(origin).netloc == request.headers.get("host")


def _secured(response: Response) -> Response:
    response.headers.update(_SECURITY_HEADERS)
    return response
