"""The PPNS node over real TLS with emulated devices, pushes stored by the real PpnsProvider in SecantusDB."""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import json
import socket
import ssl
import struct
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import aio_pika
import pytest
from prometheus_client import REGISTRY

from ppns.backlog import Entry, open_backlogs
from ppns.live import LivePublisher, encode_entries, entries_exchange
from ppns.protocol import format_time
from pushgw.emulators.tls import ServerCertificates, write_server_certificates
from pushgw.messages import Device
from pushgw.mongo import create_client
from pushgw.settings import Settings
from tests.fixtures.emulators import PROVIDER_WORKER
from tests.fixtures.fleet import RunningWorker
from tests.fixtures.gateway import RunningGateway, SettingsFactory
from tests.fixtures.mongo import MongoServer
from tests.fixtures.parse_data import installation, seed_schema
from tests.fixtures.ports import free_port
from tests.fixtures.ppns_devices import (
    ARDUINO,
    GO,
    LINUX,
    PROFILES,
    RTOS,
    EmulatedDevice,
    RunningNode,
    connect_device,
    wait_for,
)
from tests.fixtures.tcp_proxy import TcpProxy
from tests.fixtures.waiting import until
from tests.integration.test_fleet import final_status, send
from workers.outcomes import Failed, Outcome, Reason, Sent
from workers.providers.ppns import PpnsProvider
from workers.providers.provider import Notification, PushContext

NodeFactory = Callable[[Settings], RunningNode]
_push_counter = iter(range(10**6))


def ppns_settings(
    make_settings: SettingsFactory,
    certificates: ServerCertificates,
    sections: dict[str, Any] | None = None,
    **ppns: Any,
) -> Settings:
    section = {
        "host": "127.0.0.1", "port": 0, "cert_file": str(certificates.cert_file),
        "key_file": str(certificates.key_file), "poll_interval_s": 0.05, "reject_delay_s": 0.05, **ppns,
    }  # fmt: skip
    return make_settings(ppns=section, **(sections or {}))


def store(
    settings: Settings, installation_id: str, *datas: dict[str, Any], app_id: str = "app1"
) -> list[Outcome]:
    """Each `data` as its own push, through the fleet's provider (one batch per push)."""

    async def run() -> list[Outcome]:
        mongo = create_client(settings.mongo.uri or "", settings.mongo.timeout_ms)
        provider = PpnsProvider(settings, mongo)
        outcomes: list[Outcome] = []
        try:
            for data in datas:
                device = Device(
                    object_id="obj", device_type="embedded", transport="ppns", installation_id=installation_id
                )
                push = PushContext(
                    app_id=app_id, push_id=f"P{next(_push_counter):09d}", options={}, expiry_ms=None
                )
                outcomes += await provider.send(push, [Notification(device, data)])
        finally:
            await provider.close()
            await mongo.close()
        return outcomes

    return asyncio.run(run())


@pytest.fixture
def settings(make_settings: SettingsFactory, ppns_certificates: ServerCertificates) -> Settings:
    return ppns_settings(make_settings, ppns_certificates)


@pytest.fixture
def node(ppns_node_factory: NodeFactory, settings: Settings) -> RunningNode:
    return ppns_node_factory(settings)


def assert_clean_wire(device: Any) -> None:
    """Reference §8: one message per record, LF only, compact, `time` strictly increasing and first."""
    times = []
    for record in device.records:
        assert record.endswith(b"\n") and record.count(b"\n") == 1 and b"\r" not in record, record
        message = json.loads(record)
        if message:
            assert list(message) == ["time", "push_id", "data"], message
            assert len(message["time"]) == 24 and len(message["push_id"]) == 10
            times.append(message["time"])
    assert times == sorted(set(times))


@pytest.mark.parametrize("profile", PROFILES, ids=lambda p: p.name)
def test_every_client_family_gets_a_burst_of_pushes_in_order(
    node: RunningNode, settings: Settings, profile: Any
) -> None:
    device = node.device(profile)
    device.send_handshake()
    until(lambda: node.server.connection_count == 1, what="handshake")
    alerts = [f"push {n}" for n in range(30)]
    assert all(
        isinstance(outcome, Sent)
        for outcome in store(settings, device.installation_id, *({"alert": a} for a in alerts))
    )
    wait_for(device, lambda: len(device.pushes) == 30, "30 pushes")
    assert device.alerts() == alerts and not device.desynced
    assert_clean_wire(device)
    if profile.ping_after_handshake != "none":
        wait_for(device, lambda: device.heartbeats == 1, "pong")
    device.close()


def test_reconnect_with_last_replays_only_what_was_missed(node: RunningNode, settings: Settings) -> None:
    device = node.device(LINUX)
    device.send_handshake()
    until(lambda: node.server.connection_count == 1, what="handshake")
    store(settings, device.installation_id, {"alert": "a"}, {"alert": "b"})
    wait_for(device, lambda: len(device.pushes) == 2, "two pushes")
    device.close()
    until(lambda: node.server.connection_count == 0, what="disconnect noticed")
    store(settings, device.installation_id, {"alert": "c"}, {"alert": "d"}, {"alert": "e"})
    again = node.device(LINUX, installation_id=device.installation_id, last=device.last)
    again.send_handshake()
    wait_for(again, lambda: len(again.pushes) == 3, "the three missed pushes")
    assert again.alerts() == ["c", "d", "e"]
    assert_clean_wire(again)


def test_handshake_without_last_gets_only_pushes_never_written(node: RunningNode, settings: Settings) -> None:
    device = node.device(ARDUINO)  # Arduino keeps no `last` (persistence is `#if 0`)
    device.send_handshake()
    until(lambda: node.server.connection_count == 1, what="handshake")
    store(settings, device.installation_id, {"alert": "seen"})
    wait_for(device, lambda: len(device.pushes) == 1, "first push")
    device.close()
    until(lambda: node.server.connection_count == 0, what="disconnect noticed")
    store(settings, device.installation_id, {"alert": "offline"})
    again = node.device(GO, installation_id=device.installation_id)  # omits `last` altogether
    again.send_handshake()
    wait_for(again, lambda: len(again.pushes) == 1, "the unwritten push")
    assert again.alerts() == ["offline"]


def test_server_restart_resets_devices_and_they_resume_with_last(
    ppns_node_factory: NodeFactory, settings: Settings
) -> None:
    node = ppns_node_factory(settings)
    device = node.device(LINUX)
    device.send_handshake()
    until(lambda: node.server.connection_count == 1, what="handshake")
    store(settings, device.installation_id, {"alert": "before"})
    wait_for(device, lambda: len(device.pushes) == 1, "push before restart")
    node.stop()
    wait_for(device, lambda: device.state != "open", "the restart to reach the device")
    assert device.state == "reset"  # RST, never FIN: the Linux client spins forever after a FIN
    store(settings, device.installation_id, {"alert": "during"})
    restarted = ppns_node_factory(settings)
    again = restarted.device(LINUX, installation_id=device.installation_id, last=device.last)
    again.send_handshake()
    wait_for(again, lambda: len(again.pushes) == 1, "the push stored during the restart")
    assert again.alerts() == ["during"]


def test_newest_connection_wins_and_the_old_one_is_reset(node: RunningNode, settings: Settings) -> None:
    old = node.device(LINUX)
    old.send_handshake()
    until(lambda: node.server.connection_count == 1, what="first connection")
    new = node.device(RTOS, installation_id=old.installation_id)
    new.send_handshake()
    wait_for(old, lambda: old.state != "open", "the old connection to be dropped")
    assert old.state == "reset"
    store(settings, old.installation_id, {"alert": "to the new one"})
    wait_for(new, lambda: len(new.pushes) == 1, "push on the new connection")
    until(lambda: node.server.connection_count == 1, what="only the new connection")


def test_oversized_payload_fails_payload_too_large_and_later_pushes_arrive(
    make_settings: SettingsFactory, ppns_certificates: ServerCertificates, ppns_node_factory: NodeFactory
) -> None:
    settings = ppns_settings(make_settings, ppns_certificates, app_push_line_bytes={"app1": 1023})
    node = ppns_node_factory(settings)
    device = node.device(LINUX)
    device.send_handshake()
    until(lambda: node.server.connection_count == 1, what="handshake")
    outcomes = store(settings, device.installation_id, {"alert": "x" * 1100}, {"alert": "small"})
    assert isinstance(outcomes[0], Failed) and outcomes[0].reason == Reason.PAYLOAD_TOO_LARGE
    assert isinstance(outcomes[1], Sent)
    wait_for(device, lambda: len(device.pushes) == 1, "the small push")
    assert device.alerts() == ["small"] and not device.desynced


def test_default_limit_is_the_linux_buffer(settings: Settings) -> None:
    fits = "x" * (
        2047 - len('{"time":"2026-11-25T17:10:58.337Z","push_id":"AbCdEfGhIj","data":{"alert":""}}\n')
    )
    outcomes = store(settings, "inst-limit", {"alert": fits}, {"alert": fits + "x"})
    assert isinstance(outcomes[0], Sent)
    assert isinstance(outcomes[1], Failed) and outcomes[1].reason == Reason.PAYLOAD_TOO_LARGE


def handshakes(outcome: str) -> float:
    return REGISTRY.get_sample_value("pushgw_ppns_handshakes_total", {"outcome": outcome}) or 0.0


def test_unknown_app_id_is_reset_after_a_short_delay_and_counted(node: RunningNode) -> None:
    before = handshakes("unknown_app")
    device = node.device(LINUX, app_id="not-configured")
    device.send_handshake()
    wait_for(device, lambda: device.state != "open", "the rejection")
    assert device.state == "reset" and not device.records
    assert handshakes("unknown_app") == before + 1


def test_slow_loris_handshake_is_reset_at_the_timeout(
    make_settings: SettingsFactory, ppns_certificates: ServerCertificates, ppns_node_factory: NodeFactory
) -> None:
    node = ppns_node_factory(ppns_settings(make_settings, ppns_certificates, handshake_timeout_s=0.5))
    device = node.device(LINUX)
    device.write(b'{"installation_id":')
    wait_for(device, lambda: device.state != "open", "the handshake timeout")
    assert device.state == "reset"


def test_endless_line_is_reset(node: RunningNode) -> None:
    device = node.device(LINUX)
    for _ in range(3):
        device.write(b"x" * 2000)
    wait_for(device, lambda: device.state != "open", "the line limit")
    assert device.state == "reset"


@pytest.mark.parametrize(
    "first_write",
    [
        b'{"installation_id":"%s", "oauth_key":"app1", "v":"e1.0.0", "last":null}\n{}\n',
        b'{"installation_id":"%s","oauth_key":"app1","v":"e1.0.0"}\r\n{}\r\n',
        b'\r\n  { "v" : "a1.8.0" , "oauth_key" : "app1", "installation_id" : "%s", "last_seen": [], "x": {"y": 1} }\r\n{}\n{}\r\n',
    ],
    ids=["lf-with-ping", "crlf-no-last-with-ping", "spaces-unknown-fields-two-pings"],
)
def test_handshake_variants_are_accepted_and_glued_pings_answered(
    node: RunningNode, first_write: bytes
) -> None:
    device = node.device(GO)
    device.write(first_write.replace(b"%s", device.installation_id.encode()))
    expected = first_write.count(b"{}")
    wait_for(device, lambda: device.heartbeats == expected, "pongs")
    assert device.records == [b"{}\n"] * expected
    until(lambda: node.server.connection_count == 1, what="the connection to be registered")


def test_pings_are_answered_each_in_its_own_record(node: RunningNode) -> None:
    device = node.device(LINUX)
    device.send_handshake()
    wait_for(device, lambda: device.heartbeats == 1, "first pong")
    for _ in range(5):
        device.ping()
    wait_for(device, lambda: device.heartbeats == 6, "five more pongs")
    assert device.records == [b"{}\n"] * 6


def test_server_keepalive_reaches_a_client_that_never_pings(
    make_settings: SettingsFactory, ppns_certificates: ServerCertificates, ppns_node_factory: NodeFactory
) -> None:
    node = ppns_node_factory(ppns_settings(make_settings, ppns_certificates, keepalive_interval_s=0.1))
    device = node.device(RTOS)
    device.send_handshake()
    wait_for(device, lambda: device.heartbeats >= 3, "server keep-alives")
    assert device.state == "open"


def test_alpn_never_selects_h2(node: RunningNode) -> None:
    assert node.device(LINUX).tls.selected_alpn_protocol() == "http/1.1"
    assert node.device(LINUX, alpn=("h2",)).tls.selected_alpn_protocol() is None


def test_plain_tcp_mode_for_a_tls_terminator(
    make_settings: SettingsFactory, ppns_certificates: ServerCertificates, ppns_node_factory: NodeFactory
) -> None:
    node = ppns_node_factory(ppns_settings(make_settings, ppns_certificates, plain_tcp=True))
    with socket.create_connection(("127.0.0.1", node.port), timeout=5) as sock:
        sock.sendall(b'{"installation_id":"i1","oauth_key":"app1","v":"e1.0.0"}\n{}\n')
        assert sock.recv(100) == b"{}\n"


def test_a_device_that_does_not_trust_the_certificate_never_connects(
    node: RunningNode, tmp_path: Path
) -> None:
    other = write_server_certificates(tmp_path / "other")
    with pytest.raises(ssl.SSLCertVerificationError):
        connect_device(node.port, other.ca_file)


def test_intake_to_worker_to_node_to_device(
    make_settings: SettingsFactory,
    ppns_certificates: ServerCertificates,
    ppns_node_factory: NodeFactory,
    gateway_factory: Callable[[Settings], RunningGateway],
    worker_factory: Callable[..., RunningWorker],
    mongo: Any,
    db_name: str,
) -> None:
    settings = ppns_settings(
        make_settings, ppns_certificates, {"worker": PROVIDER_WORKER, "recording": {"transports": []}}
    )
    node = ppns_node_factory(settings)
    linux, android = node.device(LINUX), node.device(GO)
    seed_schema(mongo[db_name])
    mongo[db_name]["_Installation"].insert_many([
        installation("embedded", installationId=linux.installation_id),
        installation("android", pushType="ppns", installationId=android.installation_id),
    ])  # fmt: skip
    for device in (linux, android):
        device.send_handshake()
    until(lambda: node.server.connection_count == 2, what="both handshakes")
    gateway, _ = gateway_factory(settings), worker_factory(settings)
    push_id = send(gateway, {"where": {}, "data": {"alert": "hello"}})
    row = final_status(mongo, db_name, push_id)
    assert (row["status"], row["numSent"], row["sentPerType"]) == (
        "succeeded",
        2,
        {"embedded": 1, "android": 1},
    )
    wait_for(linux, lambda: len(linux.pushes) == 1, "the Linux device's push")
    wait_for(android, lambda: len(android.pushes) == 1, "the Android device's push")
    for device in (linux, android):
        assert device.pushes[0]["data"]["alert"] == "hello" and device.pushes[0]["push_id"] == push_id


def test_arduino_installation_limit_of_127_bytes(
    make_settings: SettingsFactory, ppns_certificates: ServerCertificates, ppns_node_factory: NodeFactory
) -> None:
    installation_id = "0123abcd-0123-abcd-0123-0123456789ab"
    limits = {installation_id: 127}
    settings = ppns_settings(make_settings, ppns_certificates, installation_push_line_bytes=limits)
    node = ppns_node_factory(settings)
    device = node.device(ARDUINO, installation_id=installation_id)
    device.send_handshake()
    until(lambda: node.server.connection_count == 1, what="handshake")
    outcomes = store(settings, installation_id, {"alert": "y" * 60}, {"alert": "ok"})
    assert isinstance(outcomes[0], Failed) and outcomes[0].reason == Reason.PAYLOAD_TOO_LARGE
    wait_for(device, lambda: device.alerts() == ["ok"], "the short push")
    assert device.truncated == 0 and all(len(line) <= 126 for line in device.lines)


def test_device_moving_to_another_node_replaces_the_old_connection_and_loses_nothing(
    ppns_node_factory: NodeFactory, settings: Settings
) -> None:
    node_a, node_b = ppns_node_factory(settings), ppns_node_factory(settings)
    first = node_a.device(LINUX)
    first.send_handshake()
    until(lambda: node_a.server.connection_count == 1, what="handshake on node A")
    store(settings, first.installation_id, {"alert": "via A"})
    wait_for(first, lambda: first.alerts() == ["via A"], "the push via node A")
    moved = node_b.device(RTOS, installation_id=first.installation_id, last=first.last)
    moved.send_handshake()
    wait_for(first, lambda: first.state != "open", "node A to drop the replaced connection")
    assert first.state == "reset"
    store(settings, first.installation_id, {"alert": "via B"})
    wait_for(moved, lambda: moved.alerts() == ["via B"], "the push via node B")
    until(lambda: node_a.server.connection_count == 0, what="node A to forget the device")


# --- live delivery through the node queue (the sweep disabled: `poll_interval_s` = NO_SWEEP) --------------

NO_SWEEP = 3600.0


def store_silently(settings: Settings, installation_id: str, *datas: dict[str, Any]) -> None:
    """Store like the provider but publish nothing: a live message lost on the way."""

    async def run() -> None:
        mongo = create_client(settings.mongo.uri or "", settings.mongo.timeout_ms)
        try:
            backlog = open_backlogs(mongo, settings)["app1"]
            for data in datas:
                await backlog.store(installation_id, f"S{next(_push_counter):09d}", data, None)
        finally:
            await mongo.close()

    asyncio.run(run())


def now_ms() -> int:
    return int(time.time() * 1000)


def pushes(stage: str) -> float:
    return REGISTRY.get_sample_value("pushgw_ppns_pushes_total", {"stage": stage}) or 0.0


def held_by(mongo: Any, db_name: str, installation_id: str, node: RunningNode | str) -> None:
    """Wait until the installation's presence names `node` (its handshake's claim is written)."""
    node_id = node if isinstance(node, str) else node.server.node_id

    def holder() -> bool:
        document = mongo[db_name]["_PPNSBacklog"].find_one({"_id": installation_id}, {"holder": 1}) or {}
        return str(document.get("holder", "")).startswith(node_id + "/")

    until(holder, what=f"{installation_id} held by {node_id}")


def live_node(ppns_node_factory: NodeFactory, settings: Settings) -> RunningNode:
    node = ppns_node_factory(settings)
    until(lambda: node.server.live, what="the node to consume its queue")
    return node


def held_device(node: RunningNode, mongo: Any, db_name: str) -> EmulatedDevice:
    """A LINUX device that finished its handshake on `node`, its claim written."""
    device = node.device(LINUX)
    device.send_handshake()
    held_by(mongo, db_name, device.installation_id, node)
    return device


@pytest.fixture
def live_settings(make_settings: SettingsFactory, ppns_certificates: ServerCertificates) -> Settings:
    return ppns_settings(make_settings, ppns_certificates, poll_interval_s=NO_SWEEP)


def test_a_push_reaches_a_connected_device_through_its_node_queue_without_a_sweep(
    ppns_node_factory: NodeFactory, live_settings: Settings, mongo: Any, db_name: str
) -> None:
    node = live_node(ppns_node_factory, live_settings)
    device = held_device(node, mongo, db_name)
    written, caught_up = pushes("written"), pushes("caught_up")
    alerts = [f"live {n}" for n in range(5)]
    store(live_settings, device.installation_id, *({"alert": a} for a in alerts))
    wait_for(device, lambda: len(device.pushes) == 5, "five live pushes")
    assert device.alerts() == alerts and not device.desynced
    assert_clean_wire(device)
    assert (pushes("written") - written, pushes("caught_up") - caught_up) == (5, 0)
    # Each push is recorded as written to the device (one document per push, within `written_interval_s`)...
    marks = mongo[db_name]["_PPNSWritten"]
    until(
        lambda: marks.count_documents({"installations": device.installation_id}) == 5,
        what="the five pushes recorded as written",
    )
    # ...so a reconnect without `last` (the `unwritten` policy) gets nothing again, and a later push does.
    device.close()
    again = node.device(LINUX, installation_id=device.installation_id)
    again.send_handshake(omit_last=True)
    held_by(mongo, db_name, device.installation_id, node)
    store(live_settings, device.installation_id, {"alert": "later"})
    wait_for(again, lambda: len(again.pushes) == 1, "only the later push")
    assert again.alerts() == ["later"]


def test_a_lost_live_message_is_a_gap_read_from_the_backlog_in_order(
    ppns_node_factory: NodeFactory, live_settings: Settings, mongo: Any, db_name: str
) -> None:
    node = live_node(ppns_node_factory, live_settings)
    device = held_device(node, mongo, db_name)
    store(live_settings, device.installation_id, {"alert": "a"})
    wait_for(device, lambda: device.alerts() == ["a"], "the first live push")
    gaps = pushes("gap")
    store_silently(live_settings, device.installation_id, {"alert": "b"}, {"alert": "c"})
    store(live_settings, device.installation_id, {"alert": "d"})
    wait_for(device, lambda: len(device.pushes) == 4, "the lost pushes and the next one")
    assert device.alerts() == ["a", "b", "c", "d"]
    assert pushes("gap") == gaps + 1
    assert_clean_wire(device)


def test_device_moving_between_nodes_is_reset_by_a_message_and_gets_every_push_on_the_new_node(
    ppns_node_factory: NodeFactory, live_settings: Settings, mongo: Any, db_name: str
) -> None:
    node_a, node_b = live_node(ppns_node_factory, live_settings), live_node(ppns_node_factory, live_settings)
    first = node_a.device(LINUX)
    first.send_handshake()
    held_by(mongo, db_name, first.installation_id, node_a)
    store(live_settings, first.installation_id, {"alert": "via A"})
    wait_for(first, lambda: first.alerts() == ["via A"], "the push via node A")
    store_silently(live_settings, first.installation_id, {"alert": "while moving"})
    moved = node_b.device(RTOS, installation_id=first.installation_id, last=first.last)
    moved.send_handshake()
    wait_for(first, lambda: first.state != "open", "node A to reset the replaced connection")
    assert first.state == "reset"
    store(live_settings, first.installation_id, {"alert": "via B"})
    wait_for(moved, lambda: len(moved.pushes) == 2, "the pushes via node B")
    assert moved.alerts() == ["while moving", "via B"]
    until(lambda: node_a.server.connection_count == 0, what="node A to forget the device")


def test_node_losing_its_broker_catches_up_from_the_backlog_when_it_reconnects(
    make_settings: SettingsFactory,
    ppns_certificates: ServerCertificates,
    ppns_node_factory: NodeFactory,
    live_settings: Settings,
    tcp_proxy: type[TcpProxy],
    mongo: Any,
    db_name: str,
) -> None:
    proxy = tcp_proxy(5672)
    through_proxy = {"queue": {"url": f"amqp://guest:guest@127.0.0.1:{proxy.port}/"}}
    node = live_node(
        ppns_node_factory,
        ppns_settings(make_settings, ppns_certificates, through_proxy, poll_interval_s=NO_SWEEP),
    )
    device = node.device(LINUX)
    device.send_handshake()
    held_by(mongo, db_name, device.installation_id, node)
    store(live_settings, device.installation_id, {"alert": "before"})
    wait_for(device, lambda: device.alerts() == ["before"], "the push before the outage")
    proxy.cut()  # RabbitMQ sees the node's connection die and deletes its exclusive queue
    until(lambda: not node.server.live, what="the node to notice the outage")
    store(live_settings, device.installation_id, {"alert": "during 1"}, {"alert": "during 2"})
    proxy.restore()
    wait_for(device, lambda: len(device.pushes) == 3, "the pushes stored during the outage", timeout_s=30)
    store(live_settings, device.installation_id, {"alert": "after"})
    wait_for(device, lambda: len(device.pushes) == 4, "the push after the outage")
    assert device.alerts() == ["before", "during 1", "during 2", "after"]
    assert device.state == "open"


def test_provider_counts_pushes_sent_when_the_broker_is_unreachable(
    make_settings: SettingsFactory,
    ppns_certificates: ServerCertificates,
    ppns_node_factory: NodeFactory,
    live_settings: Settings,
    mongo: Any,
    db_name: str,
) -> None:
    node = live_node(ppns_node_factory, live_settings)
    device = held_device(node, mongo, db_name)
    closed_port = {"queue": {"url": f"amqp://guest:guest@127.0.0.1:{free_port()}/"}}
    no_broker = ppns_settings(make_settings, ppns_certificates, closed_port, poll_interval_s=NO_SWEEP)
    outcomes = store(no_broker, device.installation_id, {"alert": "stored only"})
    assert [type(outcome) for outcome in outcomes] == [Sent]
    store(live_settings, device.installation_id, {"alert": "next"})
    wait_for(device, lambda: len(device.pushes) == 2, "both pushes (the first from the backlog)")
    assert device.alerts() == ["stored only", "next"]


def test_one_batch_for_devices_on_two_nodes_is_one_log_entry_that_reaches_both_nodes(
    ppns_node_factory: NodeFactory, live_settings: Settings, mongo: Any, db_name: str
) -> None:
    nodes = [live_node(ppns_node_factory, live_settings) for _ in range(2)]
    devices = [nodes[n % 2].device(GO if n % 3 else LINUX) for n in range(12)]
    for n, device in enumerate(devices):
        device.send_handshake()
        held_by(mongo, db_name, device.installation_id, nodes[n % 2])
    offline = "never-connected"
    published = pushes("published")

    async def run() -> list[Outcome]:
        client = create_client(live_settings.mongo.uri or "", live_settings.mongo.timeout_ms)
        provider = PpnsProvider(live_settings, client)
        try:
            targets = [d.installation_id for d in devices] + [offline, devices[0].installation_id]
            batch = [
                Notification(Device(object_id=f"o{n}", device_type="embedded", transport="ppns",
                                    installation_id=i), {"alert": "all"})
                for n, i in enumerate(targets)
            ]  # fmt: skip
            push = PushContext(app_id="app1", push_id="Bcast00001", options={}, expiry_ms=None)
            return await provider.send(push, batch)
        finally:
            await provider.close()
            await client.close()

    outcomes = asyncio.run(run())
    assert [type(outcome) for outcome in outcomes] == [Sent] * 14  # a duplicate row is stored once
    for device in devices:
        wait_for(device, lambda d=device: d.alerts() == ["all"], "the broadcast")
    assert pushes("published") == published + 13  # one entry for 13 installations, the offline one included
    entries = list(mongo[db_name]["_PPNSLog"].find({"installations": devices[0].installation_id}))
    assert [
        (entry["push_id"], entry["installations"].count(devices[0].installation_id)) for entry in entries
    ] == [("Bcast00001", 1)]


def test_two_workers_storing_at_once_reach_the_device_in_strictly_increasing_time_losing_none(
    ppns_node_factory: NodeFactory, live_settings: Settings, mongo: Any, db_name: str
) -> None:
    """Two providers (two workers) store 20 pushes each for one installation, concurrently: their log
    transactions conflict and retry, entries commit in `seq` order, and the device gets all 40 in order."""
    node = live_node(ppns_node_factory, live_settings)
    device = held_device(node, mongo, db_name)

    async def run() -> list[Outcome]:
        client = create_client(live_settings.mongo.uri or "", live_settings.mongo.timeout_ms)
        providers = [PpnsProvider(live_settings, client) for _ in range(2)]
        target = Device(
            object_id="o", device_type="embedded", transport="ppns", installation_id=device.installation_id
        )

        async def one(worker: int, n: int) -> list[Outcome]:
            push = PushContext(app_id="app1", push_id=f"W{worker}{n:08d}", options={}, expiry_ms=None)
            return await providers[worker].send(push, [Notification(target, {"alert": f"{worker}-{n}"})])

        try:
            answers = await asyncio.gather(*(one(worker, n) for n in range(20) for worker in (0, 1)))
            return [outcome for answer in answers for outcome in answer]
        finally:
            for provider in providers:
                await provider.close()
            await client.close()

    outcomes = asyncio.run(run())
    assert [type(outcome) for outcome in outcomes] == [Sent] * 40
    wait_for(device, lambda: len(device.pushes) == 40, "all 40 pushes")
    assert sorted(device.alerts()) == sorted(f"{w}-{n}" for w in (0, 1) for n in range(20))
    assert_clean_wire(device)  # `time` strictly increasing
    entries = mongo[db_name]["_PPNSLog"].find({"installations": device.installation_id}).sort("_id", 1)
    times = [entry["time"] for entry in entries]
    assert len(times) == 40 and times == sorted(times)  # commit (`seq`) order is `time` order


def test_every_publish_made_while_the_live_publisher_connects_reaches_the_nodes(
    live_settings: Settings,
) -> None:
    """A worker's first PPNS sends finish together: a publish made at any moment while its live connection
    is being opened waits for it, and every message reaches the nodes' exchange. (One made between the
    channel and the exchange's declaration used to publish nothing, so its devices waited for the sweep.)"""
    queue_settings = live_settings.queue

    async def run() -> tuple[list[bool], int]:
        connection = await aio_pika.connect(queue_settings.url)
        publisher = LivePublisher(queue_settings)
        try:
            channel = await connection.channel()
            exchange = await channel.declare_exchange(
                entries_exchange(queue_settings.prefix), aio_pika.ExchangeType.FANOUT
            )
            node_queue = await channel.declare_queue(exclusive=True)
            await node_queue.bind(exchange)
            loop = asyncio.get_running_loop()
            first = asyncio.ensure_future(publisher.publish_entries(b"0"))
            later: list[asyncio.Future[bool]] = []

            def one_more() -> None:  # one more publish on every turn of the loop until the first is out
                if not first.done():
                    later.append(asyncio.ensure_future(publisher.publish_entries(b"%d" % (len(later) + 1))))
                    loop.call_soon(one_more)

            one_more()
            await first
            published = [first.result(), *await asyncio.gather(*later)]

            async def arrived(expected: int) -> int:
                count = 0
                async with node_queue.iterator(no_ack=True) as messages:
                    async for _ in messages:
                        count += 1
                        if count == expected:
                            break
                return count

            return published, await asyncio.wait_for(arrived(sum(published)), timeout=10)
        finally:
            await publisher.close()
            await connection.close()

    published, arrived = asyncio.run(run())
    assert len(published) > 1
    assert published.count(False) == 0
    assert arrived == len(published)


SlowNodeFactory = Callable[..., tuple[RunningNode, TcpProxy]]


@pytest.fixture
def node_behind_proxy(
    tcp_proxy: type[TcpProxy],  # first: it closes after the node has stopped
    make_settings: SettingsFactory,
    ppns_certificates: ServerCertificates,
    ppns_node_factory: NodeFactory,
    mongo_server: MongoServer,
) -> SlowNodeFactory:
    """`start(cut=False, **ppns)`: a live node (no sweep) whose database is behind a proxy that can hold its
    answers (a held answer waits; it never times out), or, with `cut`, that starts cut off (then the node's
    database commands time out after 1 s)."""

    def start(cut: bool = False, **ppns: Any) -> tuple[RunningNode, TcpProxy]:
        proxy = tcp_proxy(mongo_server.port)
        if cut:
            proxy.cut()
        uri = f"mongodb://127.0.0.1:{proxy.port}/?directConnection=true"
        slow = {"mongo": {"uri": uri, "timeout_ms": 1000 if cut else 30000}}
        settings = ppns_settings(make_settings, ppns_certificates, slow, poll_interval_s=NO_SWEEP, **ppns)
        return live_node(ppns_node_factory, settings), proxy

    return start


def test_a_gap_that_comes_due_while_an_earlier_gap_is_read_is_read_once_that_read_ends(
    node_behind_proxy: SlowNodeFactory, live_settings: Settings, mongo: Any, db_name: str
) -> None:
    """Entry 2 arrives before 1, and the node's read of the log for 1 is slow. Meanwhile 1 arrives live, then
    4 before 3, and 4's wait ends while that read still runs. Once it ends, the node reads 3 and hands out
    3 and 4 (they used to wait for the next live entry, or the sweep: 30 s)."""
    node, proxy = node_behind_proxy()
    device = held_device(node, mongo, db_name)
    store_silently(live_settings, device.installation_id, *({"alert": str(n)} for n in range(1, 5)))
    log_entries = {
        document["_id"]: Entry(
            document["_id"],
            document["time"],
            document["push_id"],
            document["data"],
            document["installations"],
        )
        for document in mongo[db_name]["_PPNSLog"].find({"installations": device.installation_id})
    }
    assert sorted(log_entries) == [1, 2, 3, 4]
    app_entries = node.server._dispatcher.apps["app1"]  # the node's view of app1's entries

    def publish(seq: int) -> None:
        async def run() -> None:
            publisher = LivePublisher(live_settings.queue)
            try:
                assert await publisher.publish_entries(encode_entries("app1", [log_entries[seq]]))
            finally:
                await publisher.close()

        asyncio.run(run())

    proxy.hold()  # the database's answers to the node wait
    gaps = pushes("gap")
    publish(2)
    until(lambda: pushes("gap") > gaps, what="the node to read the log for entry 1")
    publish(1)
    wait_for(device, lambda: device.alerts() == ["1", "2"], "entries 1 and 2, live")
    publish(4)
    until(lambda: 4 in app_entries._waiting, what="entry 4 to wait for 3")
    until(lambda: app_entries._timer is None, what="entry 4's wait to end while the first read runs")
    assert pushes("gap") == gaps + 1  # no second read yet: the first one still runs
    proxy.release()
    wait_for(device, lambda: len(device.pushes) == 4, "entries 3 and 4 after the first read ends")
    assert device.alerts() == ["1", "2", "3", "4"]
    assert_clean_wire(device)


def test_replay_none_skips_pushes_stored_before_the_handshake_not_those_stored_while_it_is_admitted(
    node_behind_proxy: SlowNodeFactory, live_settings: Settings
) -> None:
    """`replay_without_last = "none"` means nothing stored before the handshake. A push stored after it,
    while the connection's claim and replay still wait for the database, reaches the device (it used to be
    skipped: the replay's cursor was the newest push when the replay read the log)."""
    installation_id = str(uuid.uuid4())
    store(live_settings, installation_id, {"alert": "before"})
    node, proxy = node_behind_proxy(replay_without_last="none")
    proxy.hold()  # the claim and the replay wait
    device = node.device(LINUX, installation_id=installation_id)
    device.send_handshake()
    until(lambda: node.server.connection_count == 1, what="the handshake to register the connection")
    store(live_settings, installation_id, {"alert": "during"})
    proxy.release()
    wait_for(device, lambda: len(device.pushes) == 1, "the push stored after the handshake")
    store(live_settings, installation_id, {"alert": "after"})
    wait_for(device, lambda: len(device.pushes) == 2, "the push after the replay")
    assert device.alerts() == ["during", "after"]
    assert_clean_wire(device)


def test_unwritten_replay_on_a_new_node_keeps_a_push_the_old_node_wrote_to_the_stale_connection(
    node_behind_proxy: SlowNodeFactory,
    ppns_node_factory: NodeFactory,
    live_settings: Settings,
    mongo: Any,
    db_name: str,
) -> None:
    """A device without `last` (Arduino) reconnects to node B while node A still holds its old socket. A
    push stored while B's claim and replay wait is written by A to the old socket and marked written; B's
    replay (policy `unwritten`) must not start after it: the device gets it on its new connection."""
    node_a = live_node(ppns_node_factory, live_settings)
    node_b, proxy = node_behind_proxy()  # replay_without_last = "unwritten" (the default)
    stale = held_device(node_a, mongo, db_name)  # left open: the device rebooted without closing it
    proxy.hold()
    moved = node_b.device(ARDUINO, installation_id=stale.installation_id)
    moved.send_handshake()
    until(lambda: node_b.server.connection_count == 1, what="node B to register the new connection")
    store(live_settings, stale.installation_id, {"alert": "during"})
    marks = mongo[db_name]["_PPNSWritten"]
    until(
        lambda: marks.count_documents({"installations": stale.installation_id}) == 1,
        what="node A to mark the push written to the old connection",
    )
    proxy.release()
    wait_for(moved, lambda: len(moved.pushes) == 1, "the push stored after the new handshake")
    assert moved.alerts() == ["during"]


def test_backlog_cap_limits_the_pushes_before_the_handshake_not_those_stored_while_it_is_admitted(
    node_behind_proxy: SlowNodeFactory, live_settings: Settings, mongo: Any, db_name: str
) -> None:
    """`backlog_cap` (here 2) bounds what a reconnecting device is replayed from before its handshake. The
    pushes stored while its claim and replay wait for the database are not capped: they are live pushes
    (all five used to be cut to the newest two)."""
    node, proxy = node_behind_proxy(backlog_cap=2)
    installation_id = str(uuid.uuid4())
    store(live_settings, installation_id, *({"alert": f"old {n}"} for n in range(3)))
    proxy.hold()  # the claim and the replay wait
    device = node.device(LINUX, installation_id=installation_id, last="2000-01-01T00:00:00.000Z")
    device.send_handshake()
    until(lambda: node.server.connection_count == 1, what="the handshake to register the connection")
    store(live_settings, installation_id, *({"alert": f"new {n}"} for n in range(5)))
    proxy.release()
    wait_for(device, lambda: len(device.pushes) == 7, "the two newest old pushes and all five new ones")
    assert device.alerts() == ["old 1", "old 2", *(f"new {n}" for n in range(5))]
    assert_clean_wire(device)


def test_a_node_that_could_not_read_the_log_at_start_still_hands_out_entries_in_order(
    node_behind_proxy: SlowNodeFactory,
    live_settings: Settings,
    mongo: Any,
    db_name: str,
    capfd: pytest.CaptureFixture[str],
) -> None:
    """The node starts while its database is unreachable, so it does not know where the log stands. Once
    the database is back, entry 2's message arrives and entry 1's never does: the device gets 1, then 2
    (the first live entry used to become the starting point, and 1 was taken as handed out)."""
    node, proxy = node_behind_proxy(cut=True)
    output: list[str] = []

    def failed_reads() -> int:
        output.append(capfd.readouterr().out)
        return "".join(output).count("ppns_log_unavailable")

    until(lambda: failed_reads() >= 2, what="the node's start and its first sweep to fail to read the log")
    proxy.restore()
    device = held_device(node, mongo, db_name)
    store_silently(live_settings, device.installation_id, {"alert": "1"}, {"alert": "2"})
    second = mongo[db_name]["_PPNSLog"].find_one({"_id": 2}) or {}
    entry = Entry(2, second["time"], second["push_id"], second["data"], second["installations"])

    async def publish() -> None:
        publisher = LivePublisher(live_settings.queue)
        try:
            assert await publisher.publish_entries(encode_entries("app1", [entry]))
        finally:
            await publisher.close()

    asyncio.run(publish())
    wait_for(device, lambda: len(device.pushes) == 2, "entries 1 and 2")
    assert device.alerts() == ["1", "2"]
    assert_clean_wire(device)


def test_a_batch_stored_twice_is_one_log_entry_and_written_once(
    ppns_node_factory: NodeFactory, live_settings: Settings, mongo: Any, db_name: str
) -> None:
    """A redelivered unit stores the same batch again: the entry already committed is returned (Sent) and
    republished, and the node, having handed it out, does not write it twice."""
    node = live_node(ppns_node_factory, live_settings)
    device = held_device(node, mongo, db_name)

    async def run() -> list[Outcome]:
        client = create_client(live_settings.mongo.uri or "", live_settings.mongo.timeout_ms)
        provider = PpnsProvider(live_settings, client)
        target = Device(
            object_id="o", device_type="embedded", transport="ppns", installation_id=device.installation_id
        )
        push = PushContext(app_id="app1", push_id="Twice00001", options={}, expiry_ms=None)
        try:
            first = await provider.send(push, [Notification(target, {"alert": "once"})])
            return first + await provider.send(push, [Notification(target, {"alert": "once"})])
        finally:
            await provider.close()
            await client.close()

    assert [type(outcome) for outcome in asyncio.run(run())] == [Sent, Sent]
    store(live_settings, device.installation_id, {"alert": "after"})
    wait_for(device, lambda: device.alerts()[-1:] == ["after"], "the push after it")
    assert device.alerts() == ["once", "after"]
    assert mongo[db_name]["_PPNSLog"].count_documents({"push_id": "Twice00001"}) == 1


def test_pushes_stored_by_an_earlier_version_are_still_replayed_before_new_ones(
    node: RunningNode, settings: Settings, mongo: Any, db_name: str
) -> None:
    """Before the log, each installation's pushes were kept in its `_PPNSBacklog` document: after an
    upgrade a device still gets them on its next handshake, oldest first, then the ones stored since."""
    device = node.device(LINUX)
    old = now_ms() - 60_000
    mongo[db_name]["_PPNSBacklog"].insert_one(
        {
            "_id": device.installation_id,
            "written_time": None,
            "last_time_ms": old + 1,
            "pushes": [
                {
                    "time": format_time(old + n),
                    "push_id": f"Old000000{n}",
                    "data": {"alert": f"old {n}"},
                    "stored_ms": old,
                    "expires_ms": None,
                    "prev": None,
                }
                for n in range(2)
            ],
        }
    )
    store(settings, device.installation_id, {"alert": "new"})
    device.send_handshake()
    wait_for(device, lambda: len(device.pushes) == 3, "the two old pushes and the new one")
    assert device.alerts() == ["old 0", "old 1", "new"]
    assert_clean_wire(device)


def test_the_safety_net_sweep_delivers_a_lost_live_message_with_no_push_after_it(
    make_settings: SettingsFactory,
    ppns_certificates: ServerCertificates,
    ppns_node_factory: NodeFactory,
    mongo: Any,
    db_name: str,
) -> None:
    settings = ppns_settings(make_settings, ppns_certificates, poll_interval_s=0.2)
    node = live_node(ppns_node_factory, settings)
    device = node.device(LINUX)
    device.send_handshake()
    held_by(mongo, db_name, device.installation_id, node)
    store_silently(settings, device.installation_id, {"alert": "lost"})
    wait_for(device, lambda: device.alerts() == ["lost"], "the sweep to find the stored push")


# --- the node's own TLS layer (ppns/tls.py): one read buffer and one pair of MemoryBIOs for all connections


def tls_client(
    node: RunningNode,
    *,
    piece: int | None = None,
    receive_buffer: int | None = None,
    context: ssl.SSLContext | None = None,
    session: ssl.SSLSession | None = None,
    tls12: bool = False,
) -> tuple[EmulatedDevice, Callable[[], None]]:
    """A LINUX device connected with TLS (handshake line not sent yet) whose bytes go out in TCP segments
    of `piece` bytes (TCP_NODELAY), and the function that sends what its TLS state has written so far.
    `session` (from an earlier connection with the same `context`) asks for a resumption."""
    if context is None:
        context = ssl.create_default_context(cafile=str(node.certificates.ca_file))
        context.set_alpn_protocols(["h2", "http/1.1"])
        if tls12:
            context.maximum_version = ssl.TLSVersion.TLSv1_2
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    tls = context.wrap_bio(incoming, outgoing, server_hostname="localhost", session=session)
    sock = socket.socket()
    if receive_buffer is not None:  # before connect: the window stays small, the kernel buffers little
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, receive_buffer)
    sock.settimeout(10)
    sock.connect(("127.0.0.1", node.port))
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    device = EmulatedDevice(LINUX, str(uuid.uuid4()), "app1", sock, tls, incoming, outgoing)
    node.devices.append(device)

    def send() -> None:
        data = outgoing.read()
        step = piece or len(data) or 1
        for start in range(0, len(data), step):
            sock.sendall(data[start : start + step])

    while True:
        try:
            tls.do_handshake()
            break
        except ssl.SSLWantReadError:
            send()
            chunk = sock.recv(65536)
            if not chunk:
                raise ConnectionError("reset during the TLS handshake") from None
            incoming.write(chunk)
    return device, send


def greet(device: EmulatedDevice, send: Callable[[], None]) -> None:
    """The handshake line and a ping in one TLS record (plus whatever the TLS state still holds)."""
    device.tls.write(device.handshake_line() + b"{}\n")
    send()


def resets(reason: str) -> float:
    return REGISTRY.get_sample_value("pushgw_ppns_resets_total", {"reason": reason}) or 0.0


def test_a_tls_handshake_and_lines_in_one_byte_segments(node: RunningNode, settings: Settings) -> None:
    device, send = tls_client(node, piece=1)
    greet(device, send)
    wait_for(device, lambda: device.heartbeats == 1, "the pong")
    until(lambda: node.server.connection_count == 1, what="the handshake")
    store(settings, device.installation_id, {"alert": "one"}, {"alert": "two"})
    wait_for(device, lambda: len(device.pushes) == 2, "two pushes")
    assert device.alerts() == ["one", "two"]
    assert_clean_wire(device)


def test_the_client_finished_and_the_first_lines_in_one_segment(node: RunningNode) -> None:
    """TLS 1.3: the client's last handshake flight and its first application record arrive in one read;
    what the handshake leaves in the shared incoming BIO is this connection's first line, not lost."""
    device, send = tls_client(node)  # its Finished is still unsent: `greet` sends it with the records
    assert device.tls.version() == "TLSv1.3"
    greet(device, send)
    wait_for(device, lambda: device.heartbeats == 1, "the pong")
    until(lambda: node.server.connection_count == 1, what="the handshake")


def test_tls13_prefers_chacha20_and_tls12_gets_a_configured_suite(
    node: RunningNode, settings: Settings
) -> None:
    modern = node.device(LINUX)
    assert (modern.tls.version(), modern.tls.cipher()[0]) == ("TLSv1.3", "TLS_CHACHA20_POLY1305_SHA256")
    old, send = tls_client(node, tls12=True)
    suite = old.tls.cipher()[0]
    assert old.tls.version() == "TLSv1.2" and suite.startswith("ECDHE-") and "GCM" in suite, suite
    assert old.tls.selected_alpn_protocol() == "http/1.1"
    greet(old, send)
    wait_for(old, lambda: old.heartbeats == 1, "the TLS 1.2 pong")
    store(settings, old.installation_id, *({"alert": f"push {n}"} for n in range(3)))
    wait_for(old, lambda: len(old.pushes) == 3, "three pushes over TLS 1.2")
    assert_clean_wire(old)


def test_session_tickets_resume_a_tls13_session(node: RunningNode) -> None:
    """The tickets the server sends after the handshake reach the device (flushed after the read that
    completed the handshake) and resume the next connection."""
    first, send = tls_client(node)
    greet(first, send)
    wait_for(first, lambda: first.heartbeats == 1 and first.tls.session.has_ticket, "pong and ticket")
    first.close()
    again, send = tls_client(node, context=first.tls.context, session=first.tls.session)
    assert again.tls.session_reused
    greet(again, send)
    wait_for(again, lambda: again.heartbeats == 1, "the pong on the resumed session")


def request_key_update(tls: ssl.SSLObject) -> None:
    """SSL_key_update(ssl, SSL_KEY_UPDATE_REQUESTED) on a client SSLObject (Python has no API for it): the
    next write sends a KeyUpdate that asks the server to update its keys too."""
    library = ctypes.CDLL(ssl._ssl.__file__)  # type: ignore[attr-defined]
    library.SSL_key_update.argtypes = [ctypes.c_void_p, ctypes.c_int]
    library.SSL_is_server.argtypes = [ctypes.c_void_p]
    # CPython's _ssl._SSLSocket: object header, weakref to its socket, then the SSL pointer.
    pointer = ctypes.c_void_p.from_address(
        id(tls._sslobj) + object.__basicsize__ + ctypes.sizeof(ctypes.c_void_p)
    )  # type: ignore[attr-defined]
    assert library.SSL_is_server(pointer.value) == 0
    assert library.SSL_key_update(pointer.value, 1) == 1


def test_a_key_update_from_the_device_is_answered_and_the_connection_goes_on(
    node: RunningNode, settings: Settings
) -> None:
    device = node.device(LINUX)
    device.send_handshake()
    wait_for(device, lambda: device.heartbeats == 1, "the first pong")
    request_key_update(device.tls)
    device.ping()  # the KeyUpdate, then the ping under the new key
    wait_for(device, lambda: device.heartbeats == 2, "the pong after the key update")
    store(settings, device.installation_id, {"alert": "after the key update"})
    wait_for(device, lambda: device.alerts() == ["after the key update"], "a push under the server's new key")
    assert device.state == "open"


def test_many_devices_at_once_each_get_only_their_own_pushes(node: RunningNode, settings: Settings) -> None:
    devices = [node.device(GO if n % 2 else LINUX) for n in range(40)]  # every TLS handshake first
    for device in devices:
        device.send_handshake()
    until(lambda: node.server.connection_count == 40, what="40 handshakes")

    async def run() -> list[Outcome]:
        mongo = create_client(settings.mongo.uri or "", settings.mongo.timeout_ms)
        provider = PpnsProvider(settings, mongo)
        try:
            batch = [
                Notification(Device(object_id=f"o{n}", device_type="embedded", transport="ppns",
                                    installation_id=d.installation_id), {"alert": d.installation_id})
                for n, d in enumerate(devices)
            ]  # fmt: skip
            push = PushContext(app_id="app1", push_id="Many000001", options={}, expiry_ms=None)
            return await provider.send(push, batch)
        finally:
            await provider.close()
            await mongo.close()

    assert [type(outcome) for outcome in asyncio.run(run())] == [Sent] * 40
    for device in devices:
        wait_for(device, lambda d=device: len(d.pushes) == 1, "its push")
        assert device.alerts() == [device.installation_id]
        assert_clean_wire(device)


def partial_client_hello(node: RunningNode) -> bytes:
    context = ssl.create_default_context(cafile=str(node.certificates.ca_file))
    tls = context.wrap_bio(ssl.MemoryBIO(), outgoing := ssl.MemoryBIO(), server_hostname="localhost")
    with contextlib.suppress(ssl.SSLWantReadError):
        tls.do_handshake()
    hello = outgoing.read()
    return hello[: len(hello) // 2]


@pytest.mark.parametrize("close", ["fin", "rst"])
def test_a_client_gone_mid_tls_handshake_is_forgotten(node: RunningNode, close: str) -> None:
    sock = socket.create_connection(("127.0.0.1", node.port), timeout=5)
    sock.sendall(partial_client_hello(node))
    until(lambda: node.server.socket_count == 1, what="the handshaking socket counted")
    if close == "rst":
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    sock.close()
    until(lambda: node.server.socket_count == 0, what="the socket forgotten")
    assert node.server.connection_count == 0


@pytest.mark.parametrize("sends", [b"", b"partial hello"], ids=["silent", "stalled"])
def test_a_tls_handshake_not_finished_in_time_is_reset(
    make_settings: SettingsFactory,
    ppns_certificates: ServerCertificates,
    ppns_node_factory: NodeFactory,
    sends: bytes,
) -> None:
    node = ppns_node_factory(ppns_settings(make_settings, ppns_certificates, handshake_timeout_s=0.3))
    with socket.create_connection(("127.0.0.1", node.port), timeout=5) as sock:
        sock.sendall(partial_client_hello(node) if sends else b"")
        with pytest.raises(ConnectionResetError):  # RST, never FIN (which would read as b"")
            sock.recv(100)
    until(lambda: node.server.socket_count == 0, what="the socket forgotten")


def test_a_device_that_stops_reading_is_reset_as_a_slow_reader(
    make_settings: SettingsFactory, ppns_certificates: ServerCertificates, ppns_node_factory: NodeFactory
) -> None:
    """The socket transport's unsent bytes bound a device that never reads: 200,000 pongs (one 25-byte
    record each, 5 MB) are more than the kernel's send buffer (`tcp_wmem` max 4 MiB) and a 4 KiB receive
    window hold."""
    node = ppns_node_factory(ppns_settings(make_settings, ppns_certificates, max_write_buffer_bytes=4096))
    device, send = tls_client(node, receive_buffer=4096)
    greet(device, send)
    until(lambda: node.server.connection_count == 1, what="the handshake")
    before = resets("slow_reader")
    with contextlib.suppress(OSError):  # the reset may come while the pings are still being sent
        for _ in range(40):
            device.tls.write(b"{}\n" * 5000)
            send()
    until(lambda: resets("slow_reader") == before + 1, what="the slow reader reset")
    until(lambda: node.server.socket_count == 0, what="the socket forgotten")
