"""build_app(): the intake ASGI app — routes, Parse CORS headers, health/ready/metrics, error rendering."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from pushgw import parse_quirks
from pushgw.clock import Clock, SystemClock
from pushgw.connections import Connections
from pushgw.errors import InternalError, RequestError, RouteNotFound
from pushgw.intake import Intake
from pushgw.logs import get_logger
from pushgw.metrics import INTAKE_LATENCY, INTAKE_REQUESTS
from pushgw.mongo import ping
from pushgw.settings import Settings

log = get_logger(__name__)
_JSON = "application/json; charset=utf-8"
_ACCEPTED_BODY = b'{"result":true}'


def build_app(
    settings: Settings, *, connections: Connections | None = None, clock: Clock | None = None
) -> ASGIApp:
    """The intake app. Without `connections` its lifespan opens and closes its own (serve, tests)."""
    gateway = _Gateway(settings, connections, clock or SystemClock())
    routes = [
        Route("/{path:path}", gateway.dispatch, methods=["GET", "HEAD", "POST", "PUT", "DELETE", "PATCH"])
    ]
    return ParseCors(Starlette(routes=routes, lifespan=gateway.lifespan), settings.http.cors_allow_origin)


class _Gateway:
    """The app's state: connections and the intake exist from lifespan startup to shutdown."""

    def __init__(self, settings: Settings, connections: Connections | None, clock: Clock) -> None:
        self._settings = settings
        self._given = connections
        self._clock = clock
        self._mounts = {mount.lower() for mount in settings.http.mounts}
        self._connections: Connections | None = None
        self._intake: Intake | None = None

    @asynccontextmanager
    async def lifespan(self, _: Starlette) -> AsyncIterator[None]:
        connections = self._given or await Connections.open(self._settings)
        self._intake = Intake(self._settings, connections, self._clock)
        await self._intake.prepare()
        self._connections = connections
        log.info(
            "intake_started",
            mounts=self._settings.http.mounts,
            apps=[app.app_id for app in self._settings.apps],
        )
        try:
            yield
        finally:
            if self._given is None:
                await connections.close()
            log.info("intake_stopped")

    async def dispatch(self, request: Request) -> Response:
        assert self._intake is not None and self._connections is not None, "lifespan not started"
        path = request.url.path
        normalized = path.rstrip("/").lower() or "/"
        if normalized.endswith("/push") and normalized.removesuffix("/push") in self._mounts:
            if request.method == "POST":
                return await _accept_push(self._intake, request)
            return render_error(RouteNotFound(request.method, path))
        if request.method == "GET" and normalized in ("/health", "/ready", "/metrics"):
            return await _operations(normalized, self._connections)
        return render_error(RouteNotFound(request.method, path))


async def _accept_push(intake: Intake, request: Request) -> Response:
    started = time.perf_counter()
    try:
        push_id = await intake.accept(request)
    except RequestError as error:
        outcome = f"rejected_{error.status}"
        response = render_error(error)
        log.info("push_rejected", status=error.status, error=str(error))
    except Exception:  # a bug: still answer in Parse's shape, never a bare "Internal Server Error"
        log.exception("intake_bug")
        outcome = "error"
        response = render_error(InternalError("unexpected error"))
    else:
        outcome = "accepted"
        response = Response(_ACCEPTED_BODY, 200, {"X-Parse-Push-Status-Id": push_id}, media_type=_JSON)
    INTAKE_REQUESTS.labels(outcome).inc()
    INTAKE_LATENCY.labels(outcome).observe(time.perf_counter() - started)
    return response


def render_error(error: RequestError) -> Response:
    """The one place request errors become HTTP answers."""
    if isinstance(error, RouteNotFound):
        return Response(error.html, error.status, media_type="text/html; charset=utf-8")
    body = parse_quirks.js_json(error.body).encode()
    response = Response(body, error.status)
    if error.content_type is None:
        # Parse sends 403 unauthorized without a Content-Type header (observed 9.10).
        del response.headers["content-type"]
    else:
        response.headers["content-type"] = error.content_type
    return response


async def _operations(path: str, connections: Connections) -> Response:
    if path == "/health":
        return Response(b'{"status":"ok"}', media_type=_JSON)
    if path == "/metrics":
        return Response(generate_latest(), media_type=CONTENT_TYPE_LATEST)
    mongo_ok = await ping(connections.mongo)
    queue_ok = await connections.broker.is_ready()
    body = parse_quirks.js_json(
        {"mongo": "ok" if mongo_ok else "down", "queue": "ok" if queue_ok else "down"}
    )
    return Response(body, 200 if mongo_ok and queue_ok else 503, media_type=_JSON)


class ParseCors:
    """Parse's allowCrossDomain: the same CORS headers on every response; OPTIONS answers 200 `OK`."""

    def __init__(self, app: ASGIApp, allow_origin: str) -> None:
        self.app = app
        self.headers = [
            (b"access-control-allow-origin", allow_origin.encode()),
            (b"access-control-allow-methods", parse_quirks.ALLOW_METHODS.encode()),
            (b"access-control-allow-headers", parse_quirks.ALLOW_HEADERS.encode()),
            (b"access-control-expose-headers", parse_quirks.EXPOSE_HEADERS.encode()),
        ]

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        if scope["method"] == "OPTIONS":
            await self._preflight(send)
            return

        async def send_with_cors(message: Message) -> None:
            if message["type"] == "http.response.start":
                message["headers"] = [*message.get("headers", []), *self.headers]
            await send(message)

        await self.app(scope, receive, send_with_cors)

    async def _preflight(self, send: Send) -> None:
        headers = [*self.headers, (b"content-type", b"text/plain; charset=utf-8"), (b"content-length", b"2")]
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        await send({"type": "http.response.body", "body": b"OK"})
