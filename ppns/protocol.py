"""PPNS wire format: input line framing, handshake parsing, push-line encoding, and the device quirks."""

from __future__ import annotations

import hashlib
import json
import string
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

# Device quirks (docs/ppns.md; evidence in the PPNS protocol reference, §5 and §7).
# The Linux client's brace scanner discards `length + 1` bytes after each object, so CRLF drifts its
# offsets and loses every push from the third on (observed, unix/src/parse.c + common/simplejson.c).
LINE_END = b"\n"
# Each write is one TLS record; the Linux client releases at most one buffered message per record, so
# two messages in one record lose the second or third (observed). Callers write each line on its own.
ONE_MESSAGE_PER_WRITE = True
# The Linux client's static receive buffer is 2048 bytes: a longer line is dropped and desynchronises the
# following pushes (observed); CC3200 keeps 1023 (rtos/parse_impl.h), Arduino 127 (BUFSIZE=128).
LINUX_PUSH_LINE_BYTES = 2047
# The Linux client takes the first key ending in `time` as the push time (`"expiration_time"` became its
# lastPushTime, observed), so `time` is the first key and no other top-level key ends in `time`.
PUSH_KEYS = ("time", "push_id", "data")
# After a FIN the Linux client spins at 100 % CPU and never reconnects; after an RST it reports
# ECONNRESET and can restart (observed). Every server-side close sets SO_LINGER 0 first.
CLOSE_WITH_RST = True
# Clients treat any line starting with `{}` as a heartbeat; the server answers each with its own write.
PING_PREFIX = b"{}"
PONG = b"{}\n"
# `time` is echoed verbatim as `last` and compared lexically by the Go client: fixed 24 characters.
TIME_WIDTH = 24
_ALPHANUMERIC = string.ascii_letters + string.digits


class LineTooLongError(ValueError):
    """An input line exceeded the configured maximum before its LF arrived."""


@dataclass(frozen=True, slots=True)
class Handshake:
    installation_id: str
    app_id: str
    version: str
    last: str | None


class LineFramer:
    """Splits input bytes into lines ending in LF or CRLF; bounded by `max_line_bytes`."""

    __slots__ = ("_buffer", "_max")

    def __init__(self, max_line_bytes: int) -> None:
        self._max = max_line_bytes
        self._buffer: bytearray | None = None  # only while a line is incomplete (an idle device has none)

    def feed(self, chunk: bytes) -> list[bytes]:
        """Complete lines (without LF or CRLF) found so far; raise LineTooLongError on an endless line."""
        buffer = self._buffer
        if buffer is None:
            buffer = self._buffer = bytearray(chunk)
        else:
            buffer += chunk
        lines: list[bytes] = []
        while (end := buffer.find(LINE_END)) >= 0:
            line = bytes(buffer[:end]).rstrip(b"\r")
            del buffer[: end + 1]
            if len(line) > self._max:
                raise LineTooLongError(len(line))
            lines.append(line)
        if len(buffer) > self._max:
            raise LineTooLongError(len(buffer))
        if not buffer:
            self._buffer = None
        return lines


def is_ping(line: bytes) -> bool:
    return line.strip().startswith(PING_PREFIX)


def parse_handshake(line: bytes) -> Handshake | None:
    """The handshake's fields, or None when the line is not a usable handshake. Unknown fields are
    ignored; a missing `last` is the same as `null` (the spec omits it, the embedded clients send null)."""
    try:
        message = json.loads(line)
    except (ValueError, RecursionError):
        return None
    if not isinstance(message, dict):
        return None
    installation_id, app_id = message.get("installation_id"), message.get("oauth_key")
    if not isinstance(installation_id, str) or not isinstance(app_id, str):
        return None
    if not _is_id(installation_id) or not _is_id(app_id):
        return None
    last = message.get("last")
    version = message.get("v")
    return Handshake(
        installation_id=installation_id,
        app_id=app_id,
        version=version if isinstance(version, str) else "",
        last=last if isinstance(last, str) and last else None,
    )


def _is_id(value: str) -> bool:
    return 0 < len(value) <= 256


def format_time(moment_ms: int) -> str:
    """UTC `YYYY-MM-DDTHH:MM:SS.mmmZ`, always 24 characters."""
    moment = datetime.fromtimestamp(moment_ms / 1000, UTC)
    return moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{moment_ms % 1000:03d}Z"


def encode_push(time: str, push_id: str, data: dict[str, Any]) -> bytes:
    """One push as compact JSON + LF, keys in PUSH_KEYS order, never a raw newline inside."""
    message = {"time": time, "push_id": push_id, "data": data}
    return json.dumps(message, separators=(",", ":"), ensure_ascii=False).encode() + LINE_END


def push_line_bytes(data: dict[str, Any]) -> int:
    """The length of the line `data` will be sent as (time and push id have fixed widths)."""
    return len(encode_push("0" * TIME_WIDTH, "0" * 10, data))


def ppns_push_id(push_id: str) -> str:
    """The 10-alphanumeric `push_id` of a push: Parse object ids already are; others are hashed to one."""
    if len(push_id) == 10 and push_id.isascii() and push_id.isalnum():
        return push_id
    digest = int.from_bytes(hashlib.sha256(push_id.encode()).digest()[:8], "big")
    characters = []
    for _ in range(10):
        digest, index = divmod(digest, len(_ALPHANUMERIC))
        characters.append(_ALPHANUMERIC[index])
    return "".join(characters)
