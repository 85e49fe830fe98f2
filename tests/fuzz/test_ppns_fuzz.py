"""Hostile byte streams at the PPNS handshake and keep-alive paths: the node never crashes, never leaks a
connection, and a well-behaved device on the same node keeps receiving pushes."""

from __future__ import annotations

import uuid
from collections.abc import Callable

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pushgw.emulators.tls import ServerCertificates
from pushgw.settings import Settings
from tests.fixtures.gateway import SettingsFactory
from tests.fixtures.ppns_devices import GO, LINUX, EmulatedDevice, RunningNode, wait_for
from tests.fixtures.waiting import until
from tests.integration.test_ppns import ppns_settings, store

FRAGMENTS = [
    b"{}", b"\n", b"\r\n", b"\r", b"{", b"}", b'"last":', b"null", b"\x00", b"\xff\xfe", b" " * 300,
    b'{"installation_id":"x","oauth_key":"app1"}\n', b'{"installation_id":1,"oauth_key":["app1"]}\n',
    b"[" * 2000, b'{"a":' * 500, b"x" * 5000, b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n",
]  # fmt: skip
streams = st.one_of(
    st.binary(max_size=3000),
    st.lists(st.sampled_from(FRAGMENTS) | st.binary(max_size=40), max_size=30).map(b"".join),
)
FUZZ = settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


@pytest.fixture
def fuzz_settings(make_settings: SettingsFactory, ppns_certificates: ServerCertificates) -> Settings:
    return ppns_settings(
        make_settings,
        ppns_certificates,
        handshake_timeout_s=0.5,
        reject_delay_s=0.0,
        max_input_line_bytes=1024,
    )


@pytest.fixture
def node(fuzz_settings: Settings, ppns_node_factory: Callable[[Settings], RunningNode]) -> RunningNode:
    return ppns_node_factory(fuzz_settings)


@pytest.fixture
def witness(node: RunningNode) -> EmulatedDevice:
    device = node.device(LINUX)
    device.send_handshake()
    wait_for(device, lambda: device.heartbeats == 1, "the witness's pong")
    return device


def hostile(node: RunningNode, first: bytes, then: bytes) -> None:
    device = node.device(GO)
    try:
        device.write(first)
        if then:
            device.write(then)
        device.pump(0.01)
    except OSError:
        pass  # the node may reset a hostile stream before we finish writing it
    finally:
        device.close()
        node.devices.remove(device)
    until(lambda: node.server.socket_count == 1, timeout_s=5, what="the hostile connection to be gone")


def assert_witness_still_served(node: RunningNode, witness: EmulatedDevice, settings_: Settings) -> None:
    store(settings_, witness.installation_id, {"alert": "still here"})
    wait_for(witness, lambda: witness.alerts() == ["still here"], "the witness's push")
    assert witness.state == "open" and node.server.connection_count == 1


def test_hostile_handshakes(node: RunningNode, witness: EmulatedDevice, fuzz_settings: Settings) -> None:
    @FUZZ
    @given(stream=streams)
    def run(stream: bytes) -> None:
        hostile(node, stream, b"")

    run()
    assert_witness_still_served(node, witness, fuzz_settings)


def test_hostile_bytes_after_a_valid_handshake(
    node: RunningNode, witness: EmulatedDevice, fuzz_settings: Settings
) -> None:
    @FUZZ
    @given(stream=streams)
    def run(stream: bytes) -> None:
        handshake = (
            b'{"installation_id":"%s","oauth_key":"app1","v":"e1.0.0"}\r\n' % uuid.uuid4().hex.encode()
        )
        hostile(node, handshake, stream)

    run()
    assert_witness_still_served(node, witness, fuzz_settings)
