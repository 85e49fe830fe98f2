"""The console's JSON endpoints on the real intake app (uvicorn, RabbitMQ, SecantusDB) and a real PPNS node."""

from __future__ import annotations

import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx2
from playwright.sync_api import Page, expect

from pushgw.emulators.apns import ApnsEmulator
from pushgw.emulators.tls import write_server_certificates
from pushgw.settings import Settings
from tests.fixtures.emulators import ProviderFleet, apns_credential, seed_installations
from tests.fixtures.gateway import RunningGateway, SettingsFactory, app_config
from tests.fixtures.mongo import MongoServer
from tests.fixtures.parse_data import installation
from tests.fixtures.ports import free_port, free_port_pair
from tests.fixtures.ppns_devices import LINUX, connect_device, wait_for
from tests.fixtures.processes import ProcessFactory, PushgwProcess
from tests.fixtures.rabbit import RabbitAdmin
from tests.fixtures.waiting import until

MASTER = {"X-Parse-Application-Id": "app1", "X-Parse-Master-Key": "master1"}
GatewayFactory = Callable[[Settings], RunningGateway]


def log_in(client: httpx2.Client, app_id: str = "app1", master_key: str = "master1") -> httpx2.Response:
    return client.post("/console/login", data={"app_id": app_id, "master_key": master_key})


def start_ppns_node(
    pushgw_processes: ProcessFactory,
    tmp_path: Path,
    mongo_server: MongoServer,
    db_name: str,
    ppns: dict[str, Any],
) -> PushgwProcess:
    """`pushgw ppns` with this `[ppns]` section, one app, the test's database."""
    config = tmp_path / "ppns.toml"
    config.write_text(
        f'[mongo]\nuri = "{mongo_server.uri}"\n[ppns]\n'
        + "".join(f"{key} = {value!r}\n".replace("'", '"') for key, value in ppns.items())
        + f'[[apps]]\napp_id = "app1"\nmaster_key = "master1"\nmongo_database = "{db_name}"\n'
    )
    return pushgw_processes.start("ppns", "--config", str(config))


def test_overview_shows_queue_depths_and_connected_ppns_devices(
    make_settings: SettingsFactory, gateway_factory: GatewayFactory, rabbit: RabbitAdmin,
    pushgw_processes: ProcessFactory, tmp_path: Path, mongo_server: MongoServer, db_name: str,
) -> None:  # fmt: skip
    certificates = write_server_certificates(tmp_path / "tls")
    port, metrics_port = free_port(), free_port()
    ppns = {"host": "127.0.0.1", "port": port, "cert_file": str(certificates.cert_file),
            "key_file": str(certificates.key_file), "metrics_port": metrics_port}  # fmt: skip
    node = start_ppns_node(pushgw_processes, tmp_path, mongo_server, db_name, ppns)
    node.wait_ready(f"http://127.0.0.1:{metrics_port}/metrics")
    gateway = gateway_factory(make_settings(ppns=ppns))
    client = gateway.client()
    for _ in range(2):
        assert client.post("/parse/push", json={"channels": ["a"]}, headers=MASTER).status_code == 200
    assert log_in(client).status_code == 303

    overview = client.get("/console/api/overview").json()
    assert overview["queues"] == {
        "available": True,
        "depths": {rabbit.queue("plan"): 2, rabbit.queue("send"): 0, rabbit.queue("parse"): 0,
                   rabbit.queue("dead"): 0},
    }  # fmt: skip
    assert overview["ppns"]["connected"] == 0
    assert [check["name"] for check in overview["credentials"]] == ["ppns"]
    assert overview["credentials"][0]["ok"] and "valid until" in overview["credentials"][0]["detail"]

    device = connect_device(port, certificates.ca_file, LINUX)
    try:
        device.send_handshake()
        wait_for(device, lambda: device.heartbeats == 1, "pong")
        until(lambda: client.get("/console/api/overview").json()["ppns"]["connected"] == 1,
              timeout_s=10, interval_s=0.1, what="the console to count the device")  # fmt: skip
        assert client.get("/console/api/overview").json()["ppns"]["known_installations"] == 1
    finally:
        device.close()

    pushes = client.get("/console/api/pushes").json()["pushes"]
    assert [(push["status"], push["target"], push["final"]) for push in pushes] == [
        ("pending", "channels: a", False)
    ] * 2


def gauge(metrics_port: int) -> float:
    text = httpx2.get(f"http://127.0.0.1:{metrics_port}/metrics", timeout=2).text
    return next(
        float(line.split()[1]) for line in text.splitlines() if line.startswith("pushgw_ppns_connections ")
    )


def test_overview_sums_the_connections_of_every_ppns_node_process(
    make_settings: SettingsFactory, gateway_factory: GatewayFactory, pushgw_processes: ProcessFactory,
    tmp_path: Path, mongo_server: MongoServer, db_name: str,
) -> None:  # fmt: skip
    certificates = write_server_certificates(tmp_path / "tls")
    port, metrics_port = free_port(), until(free_port_pair, what="two adjacent free ports")
    ppns = {"host": "127.0.0.1", "port": port, "cert_file": str(certificates.cert_file),
            "key_file": str(certificates.key_file), "metrics_port": metrics_port, "processes": 2}  # fmt: skip
    node = start_ppns_node(pushgw_processes, tmp_path, mongo_server, db_name, ppns)
    for each in (metrics_port, metrics_port + 1):
        node.wait_ready(f"http://127.0.0.1:{each}/metrics")
    client = gateway_factory(make_settings(ppns=ppns)).client()
    assert log_in(client).status_code == 303
    devices: list[Any] = []
    try:
        while not all(gauge(metrics_port + k) for k in (0, 1)):  # the kernel spreads them: ~1 in 2 each
            assert len(devices) < 40, "every device landed on one process"
            devices.append(connect_device(port, certificates.ca_file, LINUX))
            devices[-1].send_handshake()
            wait_for(devices[-1], lambda: devices[-1].heartbeats == 1, "pong")
        until(lambda: client.get("/console/api/overview").json()["ppns"]["connected"] == len(devices),
              timeout_s=10, interval_s=0.1, what="the console to count the devices of both processes")  # fmt: skip
    finally:
        for device in devices:
            device.close()
    assert node.terminate() == 0


def test_login_follows_the_intake_rules(
    make_settings: SettingsFactory, gateway_factory: GatewayFactory
) -> None:
    apps = [
        app_config(read_only_master_key="read-only"),
        app_config("app2", "master2", master_key_ips=["10.0.0.0/8"]),
    ]
    gateway = gateway_factory(make_settings(apps=apps))
    client = gateway.client()
    for app_id, key in (("app1", "wrong"), ("nope", "master1"), ("app1", "read-only"), ("app2", "master2")):
        refused = log_in(client, app_id, key)
        assert refused.status_code == 401, (app_id, key)
        assert "Wrong app id or master key." in refused.text
        assert "pushgw_console" not in refused.headers.get("set-cookie", "")
    assert client.get("/console/api/pushes").status_code == 401
    accepted = log_in(client)
    assert accepted.status_code == 303 and accepted.headers["location"] == "/console"
    cookie = accepted.headers["set-cookie"]
    assert "HttpOnly" in cookie and "SameSite=strict" in cookie and "Path=/console" in cookie
    assert "master1" not in cookie
    assert client.get("/console/api/pushes").json() == {"app_id": "app1", "pushes": []}


def test_session_ends_when_the_master_key_changes(
    make_settings: SettingsFactory, gateway_factory: GatewayFactory
) -> None:
    first = gateway_factory(make_settings()).client()
    assert log_in(first).status_code == 303
    cookie = first.cookies["pushgw_console"]
    rotated = gateway_factory(make_settings(apps=[app_config(master_key="rotated")]))
    second = rotated.client()
    second.cookies.set("pushgw_console", cookie)
    assert second.get("/console/api/pushes").status_code == 401
    same_key = gateway_factory(make_settings()).client()
    same_key.cookies.set("pushgw_console", cookie)
    assert same_key.get("/console/api/pushes").status_code == 200  # another process, same key: valid


def test_console_can_be_disabled_and_moved(
    make_settings: SettingsFactory, gateway_factory: GatewayFactory
) -> None:
    disabled = gateway_factory(make_settings(console={"enabled": False})).client()
    assert disabled.get("/console").status_code == 404
    assert log_in(disabled).status_code == 404
    moved = gateway_factory(make_settings(console={"path": "/ops/console"})).client()
    assert moved.get("/console").status_code == 404
    page = moved.get("/ops/console")
    assert page.status_code == 200 and 'action="/ops/console/login"' in page.text
    assert (
        moved.post("/ops/console/login", data={"app_id": "app1", "master_key": "master1"}).status_code == 303
    )
    assert moved.get("/ops/console/api/pushes").status_code == 200


def test_behind_a_tls_terminator_the_cookie_can_be_forced_secure(
    make_settings: SettingsFactory, gateway_factory: GatewayFactory
) -> None:
    gateway = gateway_factory(make_settings(console={"cookie_secure": True}))
    client = gateway.client()
    host = gateway.url.removeprefix("http://")
    form = {"app_id": "app1", "master_key": "master1"}
    # The browser saw https://host; pushgw sees plain HTTP from the terminator: the host still matches.
    accepted = client.post("/console/login", data=form, headers={"Origin": f"https://{host}"})
    assert accepted.status_code == 303
    assert "Secure" in accepted.headers["set-cookie"]
    foreign = client.post("/console/login", data=form, headers={"Origin": "https://evil.example"})
    assert foreign.status_code == 403
    plain = gateway_factory(make_settings()).client()
    assert "Secure" not in log_in(plain).headers["set-cookie"]


def test_credentials_the_provider_refused_show_as_paused(
    provider_fleet: ProviderFleet,
    apns_factory: Callable[..., ApnsEmulator],
    mongo: Any,
    db_name: str,
    page: Page,
) -> None:
    emulator, impostor = apns_factory(), apns_factory()
    bundle_id = f"com.example.paused{uuid.uuid4().hex[:8]}"  # the counter is per process: a fresh label
    seed_installations(mongo, db_name, *[installation("ios", appIdentifier=bundle_id) for _ in range(5)])
    wrong_key = apns_credential(
        emulator, key_file=str(impostor.token_key_file), pause_s=1, bundle_ids=[bundle_id]
    )
    gateway, _, _ = provider_fleet(apns=[wrong_key])
    client = gateway.client()
    assert log_in(client).status_code == 303
    assert client.get("/console/api/overview").json()["provider_pauses"] == []
    [check] = client.get("/console/api/overview").json()["credentials"]
    assert check["ok"]  # offline, the key signs: only the provider can tell it is not the team's key

    assert client.post("/parse/push", json={"where": {}, "data": {"alert": "x"}}, headers=MASTER).is_success
    pauses = until(lambda: client.get("/console/api/overview").json()["provider_pauses"], timeout_s=30,
                   what="the pause to show")  # fmt: skip
    assert [(pause["provider"], pause["credential"], pause["reason"]) for pause in pauses] == [
        ("apns", bundle_id, "InvalidProviderToken")
    ]
    assert pauses[0]["pauses"] >= 1

    page.goto(f"{gateway.url}/console")
    page.locator("#app-id").fill("app1")
    page.locator("#master-key").fill("master1")
    page.get_by_role("button", name="Log in").click()
    expect(page.locator("#credentials li.paused")).to_contain_text(
        f"PAUSED apns {bundle_id}: refused by the provider (InvalidProviderToken)"
    )
    expect(page.locator("#credentials li.paused")).to_have_css("color", "rgb(207, 34, 46)")
