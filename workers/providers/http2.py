"""A small asyncio HTTP/2 client over TLS for APNs and FCM: one connection, or a pool of them to one origin.

`open_connection()` gives an `Http2Connection` (an asyncio Protocol driving h2); `Http2Pool` keeps N of them.
Requests beyond the server's SETTINGS_MAX_CONCURRENT_STREAMS wait in FIFO order on their connection; answers
resolve futures straight from the protocol callbacks; frames are written once per event-loop iteration.
The client never retries: every failure is an `Http2Error` whose `retry_safe` says whether the server surely
did not process the request (providers.md §1.6).

Parts: `http2_connection` (the protocol), `http2_stream` (one request), `http2_stream_queue` (waiting for a
stream), `http2_keepalive` (idle PING), `h2_overrides` (h2 as we run it: requests and answers without its
frame objects), `hpack_encoder` / `hpack_decoder` (header blocks), `http2_pool` (the pool), `http2_errors`
(what callers catch).
"""

from workers.providers.http2_connection import Http2Connection, open_connection
from workers.providers.http2_errors import (
    ConnectFailed,
    ConnectionLost,
    Http2Error,
    RequestTimeout,
    StreamReset,
)
from workers.providers.http2_pool import Http2Pool
from workers.providers.http2_stream import Response

__all__ = [
    "ConnectFailed",
    "ConnectionLost",
    "Http2Connection",
    "Http2Error",
    "Http2Pool",
    "RequestTimeout",
    "Response",
    "StreamReset",
    "open_connection",
]
