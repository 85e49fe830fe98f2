"""`pushgw ppns` as a real process: config errors, serving devices over TLS, SIGTERM resets every device, a
node killed -9 while its devices move to another node."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import aio_pika

from pushgw.emulators.tls import ServerCertificates, write_server_certificates
from pushgw.settings import load_settings
from tests.fixtures.mongo import MongoServer
from tests.fixtures.ports import free_port
from tests.fixtures.ppns_devices import LINUX, connect_device, wait_for
from tests.fixtures.processes import ProcessFactory, PushgwProcess
from tests.fixtures.rabbit import RABBIT_URL, RabbitAdmin
from tests.fixtures.waiting import until
from tests.integration.test_ppns import NO_SWEEP, held_by, store


def ppns_config(
    tmp_path: Path, mongo_uri: str, db_name: str, section: str, name: str = "pushgw", queue: str = ""
) -> Path:
    path = tmp_path / f"{name}.toml"
    path.write_text(
        f'[mongo]\nuri = "{mongo_uri}"\n{queue}[ppns]\n{section}\n'
        f'[[apps]]\napp_id = "app1"\nmaster_key = "master1"\nmongo_database = "{db_name}"\n'
    )
    return path


def test_ppns_without_a_certificate_refuses_to_start(
    pushgw_processes: ProcessFactory, tmp_path: Path, mongo_server: MongoServer, db_name: str
) -> None:
    config = ppns_config(tmp_path, mongo_server.uri, db_name, "port = 0")
    result = pushgw_processes.run("ppns", "--config", str(config))
    assert result.returncode == 2 and "ppns.cert_file" in result.stderr


def test_ppns_process_serves_a_device_and_resets_it_on_sigterm(
    pushgw_processes: ProcessFactory, tmp_path: Path, mongo_server: MongoServer, db_name: str
) -> None:
    certificates = write_server_certificates(tmp_path / "tls")
    port, metrics_port = free_port(), free_port()
    section = (
        f'host = "127.0.0.1"\nport = {port}\ncert_file = "{certificates.cert_file}"\n'
        f'key_file = "{certificates.key_file}"\nmetrics_port = {metrics_port}\npoll_interval_s = 0.05\n'
    )
    config = ppns_config(tmp_path, mongo_server.uri, db_name, section)
    node = pushgw_processes.start("ppns", "--config", str(config))
    node.wait_ready(f"http://127.0.0.1:{metrics_port}/metrics")
    device = connect_device(port, certificates.ca_file, LINUX)
    try:
        device.send_handshake()
        wait_for(device, lambda: device.heartbeats == 1, "pong")
        store(load_settings(config), device.installation_id, {"alert": "from the fleet"})
        wait_for(device, lambda: device.alerts() == ["from the fleet"], "the push")
        assert node.terminate() == 0
        wait_for(device, lambda: device.state != "open", "the shutdown")
        assert device.state == "reset"
    finally:
        device.close()


def start_live_node(
    processes: ProcessFactory,
    tmp_path: Path,
    certificates: ServerCertificates,
    mongo_server: MongoServer,
    db_name: str,
    rabbit: RabbitAdmin,
    node_id: str,
) -> tuple[PushgwProcess, int, Path]:
    """A `pushgw ppns` process with a broker (live pushes through its node queue) and no sweep."""
    port, metrics_port = free_port(), free_port()
    section = (
        f'host = "127.0.0.1"\nport = {port}\ncert_file = "{certificates.cert_file}"\n'
        f'key_file = "{certificates.key_file}"\nmetrics_port = {metrics_port}\nnode_id = "{node_id}"\n'
        f"poll_interval_s = {NO_SWEEP}\n"
    )
    queue = f'[queue]\nurl = "{RABBIT_URL}"\nprefix = "{rabbit.prefix}"\n'
    config = ppns_config(tmp_path, mongo_server.uri, db_name, section, name=node_id, queue=queue)
    node = processes.start("ppns", "--config", str(config))
    node.wait_ready(f"http://127.0.0.1:{metrics_port}/metrics")
    return node, port, config


def queue_exists(rabbit: RabbitAdmin, name: str) -> bool:
    try:
        rabbit.count(name)
    except aio_pika.exceptions.ChannelClosed:
        return False
    return True


def test_a_node_killed_while_its_devices_reconnect_to_another_loses_no_push(
    pushgw_processes: ProcessFactory,
    tmp_path: Path,
    mongo_server: MongoServer,
    mongo: Any,
    db_name: str,
    rabbit: RabbitAdmin,
) -> None:
    certificates = write_server_certificates(tmp_path / "tls")
    start = (pushgw_processes, tmp_path, certificates, mongo_server, db_name, rabbit)
    node_a, port_a, config = start_live_node(*start, "node-a")
    _, port_b, _ = start_live_node(*start, "node-b")
    settings = load_settings(config)
    devices = [connect_device(port_a, certificates.ca_file, LINUX) for _ in range(3)]
    moved = []
    try:
        for device in devices:
            device.send_handshake()
            held_by(mongo, db_name, device.installation_id, "node-a")
            store(settings, device.installation_id, {"alert": "one"})
        for device in devices:
            wait_for(device, lambda d=device: d.alerts() == ["one"], "the live push via node A")
        node_a.kill()
        until(lambda: not queue_exists(rabbit, "ppns.node-a"), what="node A's queue to vanish with it")
        for device in devices:
            wait_for(device, lambda d=device: d.state != "open", "node A's death to reach the device")
            store(settings, device.installation_id, {"alert": "two"})  # presence still names node A
        for index, device in enumerate(devices):
            again = connect_device(
                port_b, certificates.ca_file, LINUX, installation_id=device.installation_id, last=device.last
            )
            again.send_handshake()
            moved.append(again)
            if index == 0:  # while the others are still reconnecting
                for other in devices:
                    store(settings, other.installation_id, {"alert": "three"})
        for again in moved:
            wait_for(again, lambda a=again: a.alerts() == ["two", "three"], "every push via node B")
    finally:
        for device in [*devices, *moved]:
            device.close()
