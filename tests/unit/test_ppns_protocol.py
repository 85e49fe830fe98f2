"""PPNS wire format: framing, handshake parsing, push lines (pure functions of ppns/protocol.py)."""

from __future__ import annotations

import socket

import pytest

from ppns.connection import configure_socket
from ppns.protocol import (
    LineFramer,
    LineTooLongError,
    encode_push,
    format_time,
    is_ping,
    parse_handshake,
    ppns_push_id,
    push_line_bytes,
)
from pushgw.settings import PpnsSettings


def test_framer_accepts_lf_and_crlf_and_keeps_partial_lines() -> None:
    framer = LineFramer(100)
    assert framer.feed(b'{"a":1}\r\n{}\n{"b"') == [b'{"a":1}', b"{}"]
    assert framer.feed(b":2}\n") == [b'{"b":2}']


def test_framer_refuses_an_endless_line() -> None:
    with pytest.raises(LineTooLongError):
        LineFramer(10).feed(b"x" * 11)


@pytest.mark.parametrize(
    ("line", "last"),
    [
        (b'{"installation_id":"i", "oauth_key":"a", "v":"e1.0.0", "last":null}', None),
        (b'{"installation_id":"i","oauth_key":"a","v":"e1.0.0"}', None),
        (
            b'{"installation_id":"i","oauth_key":"a","last":"2026-11-25T17:10:58.337Z","x":[1]}',
            "2026-11-25T17:10:58.337Z",
        ),
    ],
)
def test_handshake_last_missing_or_null_is_none(line: bytes, last: str | None) -> None:
    handshake = parse_handshake(line)
    assert handshake is not None and (handshake.installation_id, handshake.app_id, handshake.last) == (
        "i",
        "a",
        last,
    )


@pytest.mark.parametrize(
    "line", [b"{}", b"[]", b"not json", b'{"installation_id":1,"oauth_key":"a"}', b'{"oauth_key":"a"}']
)
def test_unusable_handshakes_are_none(line: bytes) -> None:
    assert parse_handshake(line) is None


def test_push_line_is_compact_lf_terminated_with_time_first() -> None:
    line = encode_push("2026-11-25T17:10:58.337Z", "AbCdEfGhIj", {"alert": "hi", "expiration_time": "x"})
    assert (
        line
        == b'{"time":"2026-11-25T17:10:58.337Z","push_id":"AbCdEfGhIj","data":{"alert":"hi","expiration_time":"x"}}\n'
    )
    assert push_line_bytes({"alert": "hi", "expiration_time": "x"}) == len(line)


def test_time_is_fixed_width_utc_millis() -> None:
    assert format_time(0) == "1970-01-01T00:00:00.000Z"
    assert format_time(1_764_090_658_337) == "2025-11-25T17:10:58.337Z"


def test_push_ids_are_ten_alphanumerics() -> None:
    assert ppns_push_id("AbCdEfGhIj") == "AbCdEfGhIj"
    derived = ppns_push_id("not-a-parse-id")
    assert len(derived) == 10 and derived.isalnum() and derived == ppns_push_id("not-a-parse-id")


def test_ping_is_any_line_starting_with_braces() -> None:
    assert is_ping(b"{}") and is_ping(b" {} ") and not is_ping(b'{"a":1}')


def test_keepalive_idle_time_is_spread_per_connection() -> None:
    """Devices that reconnect in the same second must not be probed in the same burst forever."""
    settings = PpnsSettings(tcp_keepalive_idle_s=60)
    idle = []
    for _ in range(200):
        with socket.socket() as sock:
            configure_socket(sock, settings)
            idle.append(sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPIDLE))
    assert min(idle) >= 45 and max(idle) <= 75
    assert len(set(idle)) >= 20
