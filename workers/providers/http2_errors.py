"""What the HTTP/2 client raises; `retry_safe` says whether the server surely did not process the request."""

from __future__ import annotations

from h2.errors import ErrorCodes


class Http2Error(Exception):
    """Base of every error a caller classifies; `retry_safe`: the server surely did not process it."""

    def __init__(self, message: str, *, retry_safe: bool) -> None:
        super().__init__(message)
        self.retry_safe = retry_safe


class ConnectionLost(Http2Error):
    """The connection failed, closed or went away (GOAWAY) before the answer came."""


class ConnectFailed(ConnectionLost):
    """No connection could be opened (TCP, TLS, ALPN, no SETTINGS in time), or the pool is backing off."""

    def __init__(self, message: str) -> None:
        super().__init__(message, retry_safe=True)


class RequestTimeout(Http2Error):
    """No answer within `timeout_s`. Sent requests are reset with CANCEL and may have been processed."""


class StreamReset(Http2Error):
    """The server reset the stream; only REFUSED_STREAM guarantees it was not processed (RFC 9113 §8.7)."""

    def __init__(self, error_code: int) -> None:
        refused = error_code == ErrorCodes.REFUSED_STREAM
        super().__init__(
            f"stream reset by server: {getattr(error_code, 'name', error_code)}", retry_safe=refused
        )
        self.error_code = error_code
