"""client_ip(): the caller's address behind trusted proxies, for the master-key allow-list."""

from __future__ import annotations

from ipaddress import ip_network

from pushgw.auth import client_ip

TRUSTED = [ip_network("127.0.0.1/32"), ip_network("10.0.0.0/8")]


def test_untrusted_peer_is_the_client_whatever_it_forwards() -> None:
    assert client_ip("192.0.2.1", "10.1.1.1", TRUSTED) == "192.0.2.1"


def test_trusted_hops_are_skipped_from_the_right() -> None:
    assert client_ip("127.0.0.1", "198.51.100.7, 10.2.3.4", TRUSTED) == "198.51.100.7"


def test_spoofed_leftmost_entry_is_ignored() -> None:
    assert client_ip("127.0.0.1", "10.9.9.9, 203.0.113.5", TRUSTED) == "203.0.113.5"


def test_all_hops_trusted_gives_the_leftmost() -> None:
    assert client_ip("127.0.0.1", "10.0.0.2", TRUSTED) == "10.0.0.2"


def test_no_forwarded_header_gives_the_peer() -> None:
    assert client_ip("127.0.0.1", None, TRUSTED) == "127.0.0.1"
