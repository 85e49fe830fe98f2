"""`pushgw ppns` as a real process: config errors, serving devices over TLS, SIGTERM resets every device, a
node killed -9 while its devices move to another node, `processes = 2` (two nodes on one port under a
supervisor)."""

from __future__ import annotations

import os
import signal
from collections.abc import Callable
from pathlib import Path
from typing import Any

import aio_pika
import httpx2

from pushgw.emulators.tls import ServerCertificates, write_server_certificates
from pushgw.settings import Settings, load_settings
from tests.fixtures.fleet import RunningWorker
from tests.fixtures.gateway import RunningGateway
from tests.fixtures.mongo import MongoServer
from tests.fixtures.parse_data import installation, seed_schema
from tests.fixtures.ports import free_port, free_port_pair
from tests.fixtures.ppns_devices import LINUX, connect_device, wait_for
from tests.fixtures.processes import ProcessFactory, PushgwProcess
from tests.fixtures.rabbit import RABBIT_URL, RabbitAdmin
from tests.fixtures.waiting import until
from tests.integration.test_fleet import final_status, send
from tests.integration.test_ppns import NO_SWEEP, held_by, store

CONNECTIONS = "pushgw_ppns_connections"


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


def test_ppns_processes_need_a_shared_database_and_a_valid_count(
    pushgw_processes: ProcessFactory, tmp_path: Path, mongo_server: MongoServer, db_name: str
) -> None:
    embedded = tmp_path / "embedded.toml"
    embedded.write_text(
        '[ppns]\nplain_tcp = true\nport = 0\nprocesses = 2\n[[apps]]\napp_id = "app1"\nmaster_key = "m"\n'
    )
    result = pushgw_processes.run("ppns", "--config", str(embedded))
    assert result.returncode == 2 and "mongo.uri" in result.stderr
    config = ppns_config(tmp_path, mongo_server.uri, db_name, "plain_tcp = true\nport = 0")
    result = pushgw_processes.run("ppns", "--config", str(config), "--processes", "0")
    assert result.returncode == 2 and "--processes 0" in result.stderr


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


def live_section(certificates: ServerCertificates, port: int, metrics_port: int, node_id: str) -> str:
    """The `[ppns]` settings of a node that listens on `port` and gets pushes live (the sweep disabled)."""
    return (
        f'host = "127.0.0.1"\nport = {port}\ncert_file = "{certificates.cert_file}"\n'
        f'key_file = "{certificates.key_file}"\nmetrics_port = {metrics_port}\nnode_id = "{node_id}"\n'
        f"poll_interval_s = {NO_SWEEP}\n"
    )


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
    section = live_section(certificates, port, metrics_port, node_id)
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


def child_pids(pid: int) -> list[int]:
    return [int(child) for child in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]


def gone(pid: int) -> bool:
    """Exited and reaped (a zombie still has a /proc entry)."""
    return not Path(f"/proc/{pid}").exists()


def connections_gauge(metrics_port: int) -> float:
    text = httpx2.get(f"http://127.0.0.1:{metrics_port}/metrics", timeout=2).text
    return next(float(line.split()[1]) for line in text.splitlines() if line.startswith(CONNECTIONS + " "))


def start_two_process_node(
    processes: ProcessFactory,
    tmp_path: Path,
    certificates: ServerCertificates,
    mongo_server: MongoServer,
    db_name: str,
    rabbit: RabbitAdmin,
) -> tuple[PushgwProcess, int, int, Path]:
    """`pushgw ppns` with `processes = 2`: children `pn-0` (metrics port M) and `pn-1` (M + 1)."""
    port, metrics_port = free_port(), until(free_port_pair, what="two adjacent free ports")
    section = live_section(certificates, port, metrics_port, "pn") + "processes = 2\n"
    queue = (
        f'[queue]\nurl = "{RABBIT_URL}"\nprefix = "{rabbit.prefix}"\npublish_timeout_s = 3\n'
        "[worker]\nbatch_size = 50\ndelay_tiers_s = [1]\nmax_attempts = 2\nrequeue_delay_s = 0.1\n"
    )
    config = ppns_config(tmp_path, mongo_server.uri, db_name, section, queue=queue)
    node = processes.start("ppns", "--config", str(config))
    for each in (metrics_port, metrics_port + 1):
        node.wait_ready(f"http://127.0.0.1:{each}/metrics")
    return node, port, metrics_port, config


def holder_of(mongo: Any, db_name: str, installation_id: str) -> str:
    def claimed() -> str:
        document = mongo[db_name]["_PPNSBacklog"].find_one({"_id": installation_id}, {"holder": 1}) or {}
        return str(document.get("holder", "")).rpartition("/")[0]

    return until(claimed, what=f"{installation_id}'s handshake claim")


def test_two_node_processes_share_the_port_and_each_delivers_its_devices(
    pushgw_processes: ProcessFactory,
    tmp_path: Path,
    mongo_server: MongoServer,
    mongo: Any,
    db_name: str,
    rabbit: RabbitAdmin,
    gateway_factory: Callable[[Settings], RunningGateway],
    worker_factory: Callable[..., RunningWorker],
) -> None:
    certificates = write_server_certificates(tmp_path / "tls")
    node, port, metrics_port, config = start_two_process_node(
        pushgw_processes, tmp_path, certificates, mongo_server, db_name, rabbit
    )
    children = child_pids(node.process.pid)
    assert len(children) == 2
    devices, on_child = [], {}
    try:
        while len(on_child) < 2:  # the kernel spreads connections by their addresses: ~1 in 2 each
            assert len(devices) < 40, f"every device landed on {set(on_child)}"
            device = connect_device(port, certificates.ca_file, LINUX)
            devices.append(device)
            device.send_handshake()
            wait_for(device, lambda d=device: d.heartbeats == 1, "pong")
            on_child.setdefault(holder_of(mongo, db_name, device.installation_id), device)
        assert set(on_child) == {"pn-0", "pn-1"}
        held = [
            sum(holder_of(mongo, db_name, d.installation_id) == f"pn-{k}" for d in devices) for k in (0, 1)
        ]
        until(
            lambda: [connections_gauge(metrics_port), connections_gauge(metrics_port + 1)] == held,
            what=f"each child's pushgw_ppns_connections to be {held}",
        )
        seed_schema(mongo[db_name])
        mongo[db_name]["_Installation"].insert_many(
            [installation("embedded", installationId=d.installation_id) for d in on_child.values()]
        )
        settings = load_settings(config)
        gateway, _ = gateway_factory(settings), worker_factory(settings)
        push_id = send(gateway, {"where": {}, "data": {"alert": "to both children"}})
        row = final_status(mongo, db_name, push_id)
        assert (row["status"], row["numSent"]) == ("succeeded", 2)
        for device in on_child.values():
            wait_for(device, lambda d=device: d.alerts() == ["to both children"], "the push via its child")
        assert node.terminate() == 0
        until(lambda: all(gone(pid) for pid in children), what="both children to exit")
        for device in devices:
            wait_for(device, lambda d=device: d.state != "open", "the shutdown")
            assert device.state == "reset"
    finally:
        for device in devices:
            device.close()


def test_a_dead_child_is_restarted_and_no_child_outlives_a_killed_supervisor(
    pushgw_processes: ProcessFactory,
    tmp_path: Path,
    mongo_server: MongoServer,
    db_name: str,
    rabbit: RabbitAdmin,
) -> None:
    certificates = write_server_certificates(tmp_path / "tls")
    node, _, metrics_port, _ = start_two_process_node(
        pushgw_processes, tmp_path, certificates, mongo_server, db_name, rabbit
    )
    first, second = child_pids(node.process.pid)
    os.kill(first, signal.SIGKILL)
    until(lambda: gone(first), what="the killed child to be reaped")
    replaced = until(
        lambda: [pid for pid in child_pids(node.process.pid) if pid != second],
        what="the supervisor to restart the child",
    )
    node.wait_ready(f"http://127.0.0.1:{metrics_port}/metrics")
    until(
        lambda: (
            node.output.count(f'"queue": "{rabbit.prefix}.ppns.pn-0", "event": "ppns_node_queue_consuming"')
            == 2
        ),
        what="the restarted child to consume its node queue again",
    )
    node.kill()  # SIGKILL: nothing is passed on, the kernel's parent-death signal stops the children
    until(lambda: gone(second) and gone(replaced[0]), what="the children to die with the supervisor")
