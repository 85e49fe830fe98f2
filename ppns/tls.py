"""The node's own TLS layer: one small object per accepted socket, everything else shared by the node.

asyncio's and uvloop's SSL transports cost ~24 KiB per idle connection (uvloop: a 256 KiB read buffer per
connection, two MemoryBIOs, an SSL protocol and an app-side transport object). Here each connection is one
`TlsTransport`: the raw socket's BufferedProtocol and, for its DeviceConnection, the transport it writes to.
What it holds is the SSLObject (OpenSSL's state, ~13 KiB of which ~7.6 KiB is OpenSSL's fixed `SSL` struct:
docs/benchmarks.md) and three references. Shared by every connection of the node (`TlsEndpoint`):

* the read buffer: the loop reads each socket into it and `buffer_updated` consumes it at once;
* the incoming and outgoing MemoryBIOs. Every SSLObject operation runs to completion synchronously, so
  each one starts with both empty: a read feeds the incoming BIO and drains it (OpenSSL keeps a partial
  record in the connection's own buffer, never in the BIO), and every operation is followed by moving the
  outgoing BIO to that connection's socket (handshake flights, session tickets, KeyUpdate answers, records).
  The app code a read calls (DeviceConnection.data_received) never writes to *another* connection, so no
  other SSLObject runs while this one's bytes are in the incoming BIO (resets of other connections only
  abort their sockets).

CPython sets SSL_MODE_RELEASE_BUFFERS on every context, so OpenSSL frees a connection's 16 KiB read and
write buffers whenever they are empty (i.e. while it idles).

One `write()` = one `SSLObject.write()` = one TLS record (a line is at most a few KiB, far below the 16 KiB
record limit): the Linux client loses messages that share a record (reference §5 MUST 4). Every close is an
abort: RST, never FIN, never close_notify.
"""

from __future__ import annotations

import asyncio
import ctypes
import ssl
import sys
from collections.abc import Callable
from typing import Any, Protocol

from pushgw.logs import get_logger

log = get_logger(__name__)
READ_BUFFER_BYTES = 256 * 1024  # one per node
_READ_CHUNK = 64 * 1024
# OpenSSL's default TLS 1.3 suites, ChaCha20-Poly1305 first instead of AES-256-GCM.
TLS13_SUITES = b"TLS_CHACHA20_POLY1305_SHA256:TLS_AES_128_GCM_SHA256:TLS_AES_256_GCM_SHA384"


def prefer_chacha20(context: ssl.SSLContext) -> bool:
    """Order the TLS 1.3 suites ChaCha20-Poly1305 first (the server's preference is what OpenSSL picks):
    its two cipher states take ~0.4 KiB less per idle connection than AES-256-GCM, OpenSSL's first choice
    (docs/benchmarks.md), and it is the faster one on device CPUs without AES instructions. The set stays
    OpenSSL's default, so every TLS 1.3 client (all of which have AES-128-GCM) still connects.

    Python's ssl module cannot set TLS 1.3 suites, so this calls `SSL_CTX_set_ciphersuites` through ctypes
    on the context's SSL_CTX (the first field after the object header of CPython's `_ssl._SSLContext`
    since 3.2), from the libssl `_ssl` is linked against. Returns False (defaults kept) where that is not
    possible."""
    if sys.implementation.name != "cpython" or not (3, 11) <= sys.version_info < (3, 15):
        return False  # only the layouts checked (3.11–3.14)
    try:
        library = ctypes.CDLL(ssl._ssl.__file__)  # type: ignore[attr-defined]  # resolves in _ssl's libssl
        set_suites = library.SSL_CTX_set_ciphersuites
        get_options = library.SSL_CTX_get_options
    except (AttributeError, OSError):
        return False
    set_suites.argtypes = [ctypes.c_void_p, ctypes.c_char_p]
    set_suites.restype = ctypes.c_int
    get_options.argtypes = [ctypes.c_void_p]
    get_options.restype = ctypes.c_uint64
    ssl_ctx = ctypes.c_void_p.from_address(id(context) + object.__basicsize__).value
    # Only an SSL_CTX that reports this context's options is changed: anything else is left alone.
    if ssl_ctx is None or get_options(ssl_ctx) != int(context.options):
        return False
    return bool(set_suites(ssl_ctx, TLS13_SUITES) == 1)


class TlsState(Protocol):
    """What the layer uses of `ssl.SSLObject` (and of `_ssl._SSLSocket`, the object inside it)."""

    def do_handshake(self) -> None: ...
    def read(self, size: int = ..., /) -> bytes: ...
    def write(self, data: bytes | bytearray | memoryview, /) -> int: ...


class TlsEndpoint:
    """What every TLS connection of a node shares: the context, one read buffer, one pair of MemoryBIOs."""

    __slots__ = (
        "app_factory",
        "buffer",
        "context",
        "handshake_timeout_s",
        "handshaking",
        "incoming",
        "outgoing",
        "view",
    )

    def __init__(
        self,
        context: ssl.SSLContext,
        app_factory: Callable[[], asyncio.Protocol],
        handshake_timeout_s: float,
    ) -> None:
        self.context = context
        self.app_factory = app_factory
        self.handshake_timeout_s = handshake_timeout_s
        self.buffer = bytearray(READ_BUFFER_BYTES)
        self.view = memoryview(self.buffer)
        self.incoming = ssl.MemoryBIO()
        self.outgoing = ssl.MemoryBIO()
        self.handshaking = 0  # sockets accepted whose TLS handshake is not done (nor failed) yet

    def wrap(self) -> TlsState:
        """A server-side TLS state on the shared BIOs. `SSLContext._wrap_bio` is what `wrap_bio` calls (3.7+)
        without the `ssl.SSLObject` wrapper around it (an object, its __dict__ and a weakref: ~0.25 KiB per
        connection, docs/benchmarks.md)."""
        raw = getattr(self.context, "_wrap_bio", None)
        if raw is None:
            return self.context.wrap_bio(self.incoming, self.outgoing, server_side=True)
        state: TlsState = raw(self.incoming, self.outgoing, server_side=True, server_hostname=None)
        return state

    def protocol(self) -> TlsTransport:
        """The protocol factory for `loop.create_server` (one per accepted socket)."""
        return TlsTransport(self)


class TlsTransport(asyncio.BufferedProtocol, asyncio.Transport):
    """One TLS connection: the raw socket's protocol, and the transport of the app protocol (a
    DeviceConnection) once the TLS handshake is done. A failed or unfinished handshake (timeout:
    `handshake_timeout_s`) is reset and never reaches the app."""

    __slots__ = ("_app", "_endpoint", "_raw", "_timer", "_tls")

    def __init__(self, endpoint: TlsEndpoint) -> None:
        # No BaseTransport.__init__: its `_extra` dict (64 bytes per connection) is never read here.
        self._endpoint = endpoint
        self._raw: asyncio.Transport | None = None
        self._tls: TlsState | None = None
        self._app: asyncio.Protocol | None = None  # set once the TLS handshake is done
        self._timer: asyncio.TimerHandle | None = None

    # --- the raw socket's protocol -----------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._raw = transport  # type: ignore[assignment]  # uvloop's transports are not subclasses
        endpoint = self._endpoint
        self._tls = endpoint.wrap()
        endpoint.handshaking += 1
        self._timer = asyncio.get_running_loop().call_later(endpoint.handshake_timeout_s, self.abort)

    def get_buffer(self, sizehint: int) -> bytearray:
        return self._endpoint.buffer

    def buffer_updated(self, nbytes: int) -> None:
        endpoint = self._endpoint
        incoming = endpoint.incoming
        try:
            if self._tls is None:  # reset meanwhile: nothing more to decrypt
                return
            incoming.write(endpoint.view[:nbytes])
            if self._app is None and not self._handshake():
                return
            self._receive()
        except ssl.SSLError:  # hostile or broken TLS: RST (the alert OpenSSL wrote is dropped)
            self.abort()
        except Exception:  # the connection's boundary: one device's failure must not reach the server
            log.exception("ppns_tls_failed")
            self.abort()
        finally:
            if incoming.pending:  # left by a connection that failed or was reset: never seen by the next
                incoming.read()
            if endpoint.outgoing.pending:
                endpoint.outgoing.read()

    def _handshake(self) -> bool:
        """Advance the TLS handshake; True once it is done and the app protocol is connected."""
        tls = self._tls
        assert tls is not None
        try:
            tls.do_handshake()
        except ssl.SSLWantReadError:
            self._flush()
            return False
        self._flush()
        self._handshake_over()
        app = self._app = self._endpoint.app_factory()
        app.connection_made(self)
        return self._tls is not None  # the app may have reset at once (the node is stopping)

    def _handshake_over(self) -> None:
        """Done, failed or timed out: the timer goes, and the socket no longer counts as handshaking."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
            self._endpoint.handshaking -= 1

    def _receive(self) -> None:
        """Everything the incoming BIO holds, decrypted record by record, to the app; post-handshake
        messages (session tickets, KeyUpdate, renegotiation) are answered by the flush after each read."""
        while (tls := self._tls) is not None and (app := self._app) is not None:
            try:
                data = tls.read(_READ_CHUNK)
            except ssl.SSLWantReadError:
                self._flush()
                return
            except ssl.SSLZeroReturnError:  # close_notify: an end of stream, answered with RST
                self._flush()
                app.eof_received()
                self.abort()
                return
            self._flush()
            if not data:
                return
            app.data_received(data)

    def _flush(self) -> None:
        """The outgoing BIO to this connection's socket (after every SSLObject operation)."""
        outgoing = self._endpoint.outgoing
        if outgoing.pending:
            data = outgoing.read()
            raw = self._raw
            if raw is not None and not raw.is_closing():
                raw.write(data)

    def eof_received(self) -> bool | None:
        app = self._app
        if app is not None:
            app.eof_received()
        self.abort()  # RST, never FIN (also during the TLS handshake)
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        self._handshake_over()
        self._tls = None  # OpenSSL's state is freed now, not when the app lets go of its transport
        app, self._app = self._app, None
        if app is not None:
            app.connection_lost(exc)

    def pause_writing(self) -> None:
        if self._app is not None:
            self._app.pause_writing()

    def resume_writing(self) -> None:
        if self._app is not None:
            self._app.resume_writing()

    # --- the app's transport -----------------------------------------------------------------------------

    def write(self, data: bytes | bytearray | memoryview) -> None:
        """One TLS record (data ≤ 16 KiB), sent at once. Raises ssl.SSLError if the TLS state is broken."""
        tls = self._tls
        if tls is None:
            return
        try:
            tls.write(data)
        finally:
            self._flush()

    def get_write_buffer_size(self) -> int:
        """Bytes accepted but not yet sent: the socket transport's buffer (the outgoing BIO is emptied after
        every operation, so it adds nothing between operations)."""
        raw = self._raw
        pending = self._endpoint.outgoing.pending
        return pending if raw is None else raw.get_write_buffer_size() + pending

    def abort(self) -> None:
        """RST (SO_LINGER 0 on the socket): no close_notify, no FIN."""
        self._handshake_over()
        self._tls = None
        if self._raw is not None:
            self._raw.abort()

    def close(self) -> None:
        """Every close of a PPNS connection is an abort (RST)."""
        self.abort()

    def is_closing(self) -> bool:
        return self._tls is None or self._raw is None or self._raw.is_closing()

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        if name == "ssl_object":
            return self._tls
        if name == "sslcontext":
            return self._endpoint.context
        if self._raw is None:
            return default
        return self._raw.get_extra_info(name, default)

    def pause_reading(self) -> None:
        if self._raw is not None:
            self._raw.pause_reading()

    def resume_reading(self) -> None:
        if self._raw is not None:
            self._raw.resume_reading()

    def is_reading(self) -> bool:
        return self._raw is not None and self._raw.is_reading()
