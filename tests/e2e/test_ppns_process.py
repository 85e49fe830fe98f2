"""`pushgw ppns` as a real process: config errors, serving devices over TLS, SIGTERM resets every device."""

from __future__ import annotations

from pathlib import Path

from pushgw.emulators.tls import write_server_certificates
from pushgw.settings import load_settings
from tests.fixtures.mongo import MongoServer
from tests.fixtures.ports import free_port
from tests.fixtures.ppns_devices import LINUX, connect_device, wait_for
from tests.fixtures.processes import ProcessFactory
from tests.integration.test_ppns import store


def ppns_config(tmp_path: Path, mongo_uri: str, db_name: str, section: str) -> Path:
    path = tmp_path / "pushgw.toml"
    path.write_text(
        f'[mongo]\nuri = "{mongo_uri}"\n[ppns]\n{section}\n'
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
