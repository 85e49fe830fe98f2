"""build_app(): the intake ASGI app — POST {mount}/push, Parse CORS headers, health/ready/metrics, errors."""

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
from pushgw.console import console_routes
from pushgw.errors import InternalError, RequestError, RouteNotFound, StatusError
from pushgw.intake import Intake, PushRequest
from pushgw.logs import get_logger
from pushgw.metrics import INTAKE_LATENCY, INTAKE_REQUESTS
from pushgw.mongo import ping
from pushgw.settings import Settings

log = get_logger(__name__)
_JSON = b"application/json; charset=utf-8"
_ACCEPTED_BODY = b'{"result":true}'
_TOO_LARGE = StatusError(413, "request entity too large")  # Express's body-parser answer


def build_app(
    settings: Settings, *, connections: Connections | None = None, clock: Clock | None = None
) -> ASGIApp:
    """The intake app. Without `connections` its lifespan opens and closes its own (serve, tests)."""
    gateway = _Gateway(settings, connections, clock or SystemClock())
    routes = [
        *console_routes(settings, gateway),
        Route("/{path:path}", gateway.dispatch, methods=["GET", "HEAD", "POST", "PUT", "DELETE", "PATCH"]),
    ]
    return ParseFront(Starlette(routes=routes, lifespan=gateway.lifespan), gateway, settings)


class _Gateway:
    """The app's state: connections and the intake exist from lifespan startup to shutdown."""

    def __init__(self, settings: Settings, connections: Connections | None, clock: Clock) -> None:
        self.settings = settings
        self._given = connections
        self._clock = clock
        self.connections: Connections | None = None
        self.intake: Intake | None = None

    @asynccontextmanager
    async def lifespan(self, _: Starlette) -> AsyncIterator[None]:
        connections = self._given or await Connections.open(self.settings)
        self.intake = Intake(self.settings, connections, self._clock)
        await self.intake.prepare()
        self.connections = connections
        log.info(
            "intake_started",
            mounts=self.settings.http.mounts,
            apps=[app.app_id for app in self.settings.apps],
        )
        try:
            yield
        finally:
            if self._given is None:
                await connections.close()
            log.info("intake_stopped")

    async def dispatch(self, request: Request) -> Response:
        """Everything but POST {mount}/push: health, readiness, metrics, and Express's 404 page."""
        path = request.url.path
        normalized = path.rstrip("/").lower() or "/"
        if request.method == "GET" and normalized in ("/health", "/ready", "/metrics") and self.connections:
            return await _operations(normalized, self.connections)
        return render_error(RouteNotFound(request.method, path))


class ParseFront:
    """Parse's allowCrossDomain headers on every response, OPTIONS → 200 `OK`, and the push hot path.

    `POST {mount}/push` is served here directly on ASGI messages (it is the one request that must be
    cheap); every other request goes to the Starlette app.
    """

    def __init__(self, app: ASGIApp, gateway: _Gateway, settings: Settings) -> None:
        self.app = app
        self._gateway = gateway
        self._mounts = {mount.lower() for mount in settings.http.mounts}
        self._limit = settings.http.max_body_bytes
        self.headers = [
            (b"access-control-allow-origin", settings.http.cors_allow_origin.encode()),
            (b"access-control-allow-methods", parse_quirks.ALLOW_METHODS.encode()),
            (b"access-control-allow-headers", parse_quirks.ALLOW_HEADERS.encode()),
            (b"access-control-expose-headers", parse_quirks.EXPOSE_HEADERS.encode()),
        ]

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        if scope["method"] == "OPTIONS":
            await self._answer(send, 200, [(b"content-type", b"text/plain; charset=utf-8")], b"OK")
            return
        if scope["method"] == "POST" and self._is_push_path(scope["path"]):
            await self._push(scope, receive, send)
            return

        async def send_with_cors(message: Message) -> None:
            if message["type"] == "http.response.start":
                message["headers"] = [*message.get("headers", []), *self.headers]
            await send(message)

        await self.app(scope, receive, send_with_cors)

    def _is_push_path(self, path: str) -> bool:
        normalized = path.rstrip("/").lower()
        return normalized.endswith("/push") and normalized.removesuffix("/push") in self._mounts

    async def _push(self, scope: Scope, receive: Receive, send: Send) -> None:
        started = time.perf_counter()
        intake = self._gateway.intake
        try:
            if intake is None:
                raise InternalError("intake not started")
            request = await self._read(scope, receive)
            push_id = await intake.accept(request)
        except RequestError as error:
            outcome = f"rejected_{error.status}"
            log.info("push_rejected", status=error.status, error=str(error))
            await self._answer(send, *error_parts(error))
        except Exception:  # a bug: still answer in Parse's shape, never a bare "Internal Server Error"
            log.exception("intake_bug")
            outcome = "error"
            await self._answer(send, *error_parts(InternalError("unexpected error")))
        else:
            outcome = "accepted"
            headers = [(b"x-parse-push-status-id", push_id.encode()), (b"content-type", _JSON)]
            await self._answer(send, 200, headers, _ACCEPTED_BODY)
        INTAKE_REQUESTS.labels(outcome).inc()
        INTAKE_LATENCY.labels(outcome).observe(time.perf_counter() - started)

    async def _read(self, scope: Scope, receive: Receive) -> PushRequest:
        """Headers and body; 413 as soon as the declared or received size passes `http.max_body_bytes`."""
        headers = {
            name.decode("latin-1").lower(): value.decode("latin-1")
            for name, value in reversed(scope["headers"])
        }
        declared = headers.get("content-length", "")
        if declared.isdigit() and int(declared) > self._limit:
            raise _TOO_LARGE
        chunks: list[bytes] = []
        size, more = 0, True
        while more:
            message = await receive()
            if message["type"] == "http.disconnect":
                break
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self._limit:
                raise _TOO_LARGE
            chunks.append(chunk)
            more = message.get("more_body", False)
        client = scope.get("client")
        return PushRequest(scope["path"], headers, b"".join(chunks), client[0] if client else None)

    async def _answer(self, send: Send, status: int, headers: list[tuple[bytes, bytes]], body: bytes) -> None:
        headers = [*headers, (b"content-length", str(len(body)).encode()), *self.headers]
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": body})


def error_parts(error: RequestError) -> tuple[int, list[tuple[bytes, bytes]], bytes]:
    """The one place request errors become HTTP answers: status, headers, body."""
    if isinstance(error, RouteNotFound):
        return error.status, [(b"content-type", b"text/html; charset=utf-8")], error.html.encode()
    # Parse sends 403 unauthorized without a Content-Type header (observed 9.10): content_type is None.
    headers = [] if error.content_type is None else [(b"content-type", error.content_type.encode())]
    return error.status, headers, parse_quirks.js_json(error.body).encode()


def render_error(error: RequestError) -> Response:
    status, headers, body = error_parts(error)
    response = Response(body, status)
    response.raw_headers = [*headers, (b"content-length", str(len(body)).encode())]
    return response


async def _operations(path: str, connections: Connections) -> Response:
    if path == "/health":
        return Response(b'{"status":"ok"}', media_type=_JSON.decode())
    if path == "/metrics":
        return Response(generate_latest(), media_type=CONTENT_TYPE_LATEST)
    mongo_ok = await ping(connections.mongo)
    queue_ok = await connections.broker.is_ready()
    body = parse_quirks.js_json(
        {"mongo": "ok" if mongo_ok else "down", "queue": "ok" if queue_ok else "down"}
    )
    return Response(body, 200 if mongo_ok and queue_ok else 503, media_type=_JSON.decode())
