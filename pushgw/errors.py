"""Request errors with the HTTP answer Parse gives for each; one renderer turns them into responses."""

from __future__ import annotations

from typing import Any

from pushgw import parse_quirks

# Parse error codes on the push path (Parse-SDK-JS src/ParseError.ts).
INTERNAL_SERVER_ERROR = 1
OBJECT_NOT_FOUND = 101
INVALID_QUERY = 102
INVALID_KEY_NAME = 105
INVALID_JSON = 107
PUSH_MISCONFIGURED = 115
OPERATION_FORBIDDEN = 119


class PushgwError(Exception):
    """Root of every exception pushgw raises on purpose."""


class RequestError(PushgwError):
    """An error answered to an HTTP client; `status`, `body` and `content_type` are what it receives."""

    status: int = 500
    content_type: str | None = "application/json; charset=utf-8"

    @property
    def body(self) -> dict[str, Any]:
        return {"code": INTERNAL_SERVER_ERROR, "message": "Internal server error."}


class ParseError(RequestError):
    """A Parse error `{code, error}`; the HTTP status follows middlewares.handleParseErrors."""

    def __init__(self, code: int, message: str) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message
        self.status = {INTERNAL_SERVER_ERROR: 500, OBJECT_NOT_FOUND: 404}.get(code, 400)

    @property
    def body(self) -> dict[str, Any]:
        return {"code": self.code, "error": self.message}


class Unauthorized(RequestError):
    """403 `{"error": "unauthorized"}`, sent by Parse with no Content-Type header at all (observed 9.10)."""

    status = 403
    content_type = None

    @property
    def body(self) -> dict[str, Any]:
        return {"error": "unauthorized"}


class PermissionDenied(RequestError):
    """403 `{"error": "Permission denied"}`: authenticated, but not with the master key (observed 9.10)."""

    status = 403

    @property
    def body(self) -> dict[str, Any]:
        return {"error": "Permission denied"}


class StatusError(RequestError):
    """An error that carries its own HTTP status: `{"error": message}` without a code (body-parser style)."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message

    @property
    def body(self) -> dict[str, Any]:
        return {"error": self.message}


class MalformedJson(StatusError):
    """400 `{"error": "<parser message>"}`: raised before authentication, like Express's body parser."""

    def __init__(self, message: str) -> None:
        super().__init__(400, message)


class InvalidBadge(RequestError):
    """Parse throws a plain string for a bad `data.badge`, which becomes a 500 (observed 9.10)."""

    status = parse_quirks.INVALID_BADGE_STATUS

    @property
    def body(self) -> dict[str, Any]:
        return dict(parse_quirks.INVALID_BADGE_BODY)


class InternalError(RequestError):
    """Infrastructure failure, nothing left to deliver: Parse's generic 500, safe for the SDK to retry."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class RouteNotFound(RequestError):
    """Express's HTML 404 for a method or path without a route (`Cannot GET /parse/push`)."""

    status = 404
    content_type = "text/html; charset=utf-8"

    def __init__(self, method: str, path: str) -> None:
        super().__init__(f"{method} {path}")
        self.method = method
        self.path = path

    @property
    def html(self) -> str:
        """Express's finalhandler page, its message escaped the way finalhandler does it."""
        message = parse_quirks.express_escape(f"Cannot {self.method} {self.path}")
        return parse_quirks.NOT_FOUND_HTML.format(message=message)
