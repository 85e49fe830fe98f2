"""A real Parse Server 9.10.0 on pushgw's database: REST, the JS SDK, Cloud Code and Parse's own queue route.

One Parse Server (tests/e2e/parse_host, configured as docs/parse-server.md says), `pushgw serve`, `pushgw
worker`, `pushgw ppns`, the APNs and FCM emulators and a PPNS device serve the whole module. Every push is
checked at the devices and through Parse Server's `GET /parse/classes/_PushStatus/<id>`.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import uuid
from collections.abc import Iterator
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx2
import pytest
from pymongo import MongoClient

from pushgw.emulators import ApnsEmulator, FcmEmulator, run_in_thread
from pushgw.emulators.tls import write_server_certificates
from tests.fixtures.emulators import apns_credential, fcm_settings
from tests.fixtures.mongo import MongoServer
from tests.fixtures.ports import free_port
from tests.fixtures.ppns_devices import LINUX, EmulatedDevice, connect_device, wait_for
from tests.fixtures.processes import ProcessFactory
from tests.fixtures.rabbit import RABBIT_URL, RabbitAdmin
from tests.fixtures.waiting import until

PARSE_HOST = Path(__file__).resolve().parent / "parse_host"
APP_ID, MASTER_KEY, REST_KEY, JS_KEY = "e2eAppId", "e2e-master-key", "e2e-rest-key", "e2e-js-key"
PARSE_BATCH_SIZE = 2  # Parse's queue route then publishes several pages for one push
COMMANDS = ("serve", "worker", "ppns")  # `pushgw <command>`, all on one config file
PUSH_ID = re.compile(r"^[A-Za-z0-9]{10}$")
WORKER = (
    "batch_size = 50\ndelay_tiers_s = [1]\nmax_attempts = 2\nrequeue_delay_s = 0.2\nwatchdog_interval_s = 1\n"
)


@dataclass
class Stack:
    parse: httpx2.Client  # Parse Server, http://127.0.0.1:<port>/parse
    pushgw: httpx2.Client  # pushgw's intake
    pushgw_url: str
    apns: ApnsEmulator
    fcm: FcmEmulator
    device: EmulatedDevice
    parse_env: dict[str, str] = field(default_factory=dict)  # to start another Parse Server on the same app
    ids: dict[str, str] = field(default_factory=dict)  # name → objectId (users and installations)
    tokens: dict[str, str] = field(default_factory=dict)  # installation name → deviceToken

    def master(self, method: str, path: str, body: Any = None) -> httpx2.Response:
        headers = {"X-Parse-Application-Id": APP_ID, "X-Parse-Master-Key": MASTER_KEY}
        return self.parse.request(method, path, json=body, headers=headers)

    def rest(self, path: str, body: Any, session: str | None = None) -> dict[str, Any]:
        headers = {"X-Parse-Application-Id": APP_ID, "X-Parse-REST-API-Key": REST_KEY}
        if session:
            headers["X-Parse-Session-Token"] = session
        response = self.parse.post(path, json=body, headers=headers)
        assert response.status_code in (200, 201), response.text
        result: dict[str, Any] = response.json()
        return result

    def intake_requests(self, outcome: str = "accepted") -> float:
        """pushgw's intake requests with `outcome`: tells which side took a push in."""
        metrics = self.pushgw.get(self.pushgw_url.removesuffix("/parse") + "/metrics").text
        found = re.search(rf'^pushgw_intake_requests_total\{{outcome="{outcome}"\}} (\S+)$', metrics, re.M)
        return float(found.group(1)) if found else 0.0

    def badge(self, installation: str) -> int:
        row = self.master("GET", f"/installations/{self.ids[installation]}").json()
        return int(row.get("badge", 0))

    def final_status(self, push_id: str) -> dict[str, Any]:
        """The `_PushStatus` row as Parse Server returns it, once it is final."""

        def final() -> dict[str, Any] | None:
            response = self.master("GET", f"/classes/_PushStatus/{push_id}")
            row: dict[str, Any] = response.json() if response.status_code == 200 else {}
            return row if row.get("status") in ("succeeded", "failed") else None

        return until(final, timeout_s=30, interval_s=0.1, what=f"_PushStatus {push_id} to be final")

    def apns_payloads(self, alert: str) -> dict[str, dict[str, Any]]:
        """Device token → `aps` of every APNs notification whose alert is `alert` or its translation."""
        payloads = {n.token: n.payload["aps"] for n in self.apns.notifications()}
        return {token: aps for token, aps in payloads.items() if aps.get("alert", "").startswith(alert)}

    def fcm_alerts(self, alert: str) -> dict[str, str]:
        """Device token → alert of every FCM message whose alert starts with `alert`."""
        found = {m.token: json.loads(m.message["android"]["data"]["data"]) for m in self.fcm.messages()}
        return {
            token: data["alert"] for token, data in found.items() if data.get("alert", "").startswith(alert)
        }

    def ppns_alerts(self, alert: str, count: int = 1) -> list[str]:
        wait_for(self.device, lambda: len(self._ppns_matching(alert)) >= count, f"PPNS push {alert!r}")
        return self._ppns_matching(alert)

    def _ppns_matching(self, alert: str) -> list[str]:
        return [text for text in self.device.alerts() if str(text).startswith(alert)]


def pushgw_config(path: Path, mongo_uri: str, prefix: str, intake_port: int, ppns: str) -> Path:
    path.write_text(
        f'[mongo]\nuri = "{mongo_uri}"\n[queue]\nurl = "{RABBIT_URL}"\nprefix = "{prefix}"\n'
        f'[http]\nport = {intake_port}\n[worker]\n{WORKER}[ppns]\n{ppns}[log]\nlevel = "info"\n'
    )
    return path


def start_parse_server(cleanup: ExitStack, tmp: Path, env: dict[str, str]) -> str:
    """Parse Server (parse_host/parse-host.js) on a free port, stopped first at cleanup; its URL."""
    port = free_port()
    with (tmp / "parse-server.log").open("wb") as log:
        process = subprocess.Popen(
            ["node", str(PARSE_HOST / "parse-host.js")], cwd=tmp, stdin=subprocess.DEVNULL, stdout=log,
            stderr=subprocess.STDOUT, env={**env, "PARSE_PORT": str(port), "PARSE_LOGS_DIR": str(tmp / "logs")},
        )  # fmt: skip
    cleanup.callback(stop_node, process)
    url = f"http://127.0.0.1:{port}/parse"

    def healthy() -> bool:
        if process.poll() is not None:  # exit code 0 can still mean "port in use"
            raise AssertionError(f"Parse Server exited:\n{(tmp / 'parse-server.log').read_text()}")
        try:
            return httpx2.get(f"{url}/health", timeout=1).status_code == 200
        except httpx2.HTTPError:
            return False

    until(healthy, timeout_s=60, interval_s=0.1, what="Parse Server /health")
    return url


def stop_node(process: subprocess.Popen[bytes]) -> None:
    """SIGTERM (the host flushes its queue adapter first), SIGKILL if it hangs."""
    process.terminate()
    try:
        process.wait(timeout=10)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


def start_pushgw(
    cleanup: ExitStack, tmp: Path, mongo_server: MongoServer, db_name: str, prefix: str
) -> tuple[str, ApnsEmulator, FcmEmulator, EmulatedDevice]:
    """Emulators, `pushgw serve`, `pushgw worker`, `pushgw ppns` and a connected PPNS device."""
    apns, fcm = ApnsEmulator(directory=tmp / "apns", auth="token"), FcmEmulator(directory=tmp / "fcm")
    for emulator in (apns, fcm):
        cleanup.callback(run_in_thread(emulator).stop)
    certificates = write_server_certificates(tmp / "ppns-tls")
    intake_port, ppns_port, ppns_metrics = free_port(), free_port(), free_port()
    ppns = (
        f'host = "127.0.0.1"\nport = {ppns_port}\ncert_file = "{certificates.cert_file}"\n'
        f'key_file = "{certificates.key_file}"\nmetrics_port = {ppns_metrics}\npoll_interval_s = 0.05\n'
    )
    config = str(pushgw_config(tmp / "pushgw.toml", mongo_server.uri, prefix, intake_port, ppns))
    app = {"app_id": APP_ID, "master_key": MASTER_KEY, "rest_api_key": REST_KEY, "javascript_key": JS_KEY,
           "mongo_database": db_name, "apns": [apns_credential(apns)], "fcm": fcm_settings(fcm)}  # fmt: skip
    processes = ProcessFactory(tmp)
    cleanup.callback(processes.stop_all)
    env = {"PUSHGW_APPS": json.dumps([app])}
    intake, worker, node = (processes.start(command, "--config", config, env=env) for command in COMMANDS)
    intake.wait_ready(f"http://127.0.0.1:{intake_port}/ready")
    node.wait_ready(f"http://127.0.0.1:{ppns_metrics}/metrics")
    until(lambda: "worker_started" in worker.output, timeout_s=30, what="worker start")
    device = connect_device(ppns_port, certificates.ca_file, LINUX, app_id=APP_ID)
    cleanup.callback(device.close)
    device.send_handshake()
    wait_for(device, lambda: device.heartbeats == 1, "PPNS pong")
    return f"http://127.0.0.1:{intake_port}/parse", apns, fcm, device


@pytest.fixture(scope="module")
def stack(
    parse_host_modules: Path, tmp_path_factory: pytest.TempPathFactory, mongo_server: MongoServer,
    mongo: MongoClient[dict[str, Any]],
) -> Iterator[Stack]:  # fmt: skip
    tmp = tmp_path_factory.mktemp("parse-e2e")
    db_name, rabbit = f"t_{uuid.uuid4().hex[:12]}", RabbitAdmin(RABBIT_URL, f"t{uuid.uuid4().hex[:10]}")
    with ExitStack() as cleanup:
        cleanup.callback(mongo.drop_database, db_name)
        cleanup.callback(rabbit.delete_all)  # runs after every process is stopped
        pushgw_url, apns, fcm, device = start_pushgw(cleanup, tmp, mongo_server, db_name, rabbit.prefix)
        parse_env = {
            "PATH": os.environ["PATH"], "PARSE_APP_ID": APP_ID, "PARSE_MASTER_KEY": MASTER_KEY,
            "PARSE_REST_KEY": REST_KEY, "PARSE_JS_KEY": JS_KEY, "PUSHGW_URL": pushgw_url,
            "PARSE_DB_URI": f"mongodb://127.0.0.1:{mongo_server.port}/{db_name}", "PUSHGW_AMQP_URL": RABBIT_URL,
            "PUSHGW_QUEUE_PREFIX": rabbit.prefix, "PUSHGW_SPOOL_DIR": str(tmp / "spool"),
            "PARSE_PUSH_BATCH_SIZE": str(PARSE_BATCH_SIZE),
        }  # fmt: skip
        parse_url = start_parse_server(cleanup, tmp, parse_env)
        parse, pushgw = httpx2.Client(base_url=parse_url, timeout=15), httpx2.Client(timeout=15)
        cleanup.callback(parse.close)
        cleanup.callback(pushgw.close)
        result = Stack(parse, pushgw, pushgw_url, apns, fcm, device, parse_env)
        register_audience(result)
        yield result


def register_audience(stack: Stack) -> None:
    """Users and installations created through Parse Server's REST API, as apps register them."""
    sessions = {}
    for name, team in (("alice", "blue"), ("bob", "red"), ("carol", "blue")):
        body = {"username": name, "password": f"{name}-pw", "team": team}
        user = stack.rest("/users", body)
        stack.ids[name], sessions[name] = user["objectId"], user["sessionToken"]
    stack.tokens = {
        "ios_alice": uuid.uuid4().hex * 2, "ios_bob": uuid.uuid4().hex * 2,
        "android_alice": f"fcm-alice-{uuid.uuid4().hex}:APA91b", "android_carol": f"fcm-carol-{uuid.uuid4().hex}:APA91b",
    }  # fmt: skip
    installations = {
        "ios_alice": ("alice", {"deviceType": "ios", "channels": ["news"], "badge": 3, "localeIdentifier": "fr-FR"}),
        "ios_bob": ("bob", {"deviceType": "ios", "channels": ["news"], "localeIdentifier": "en-US"}),
        "android_alice": ("alice", {"deviceType": "android", "pushType": "gcm", "channels": ["news"],
                                    "localeIdentifier": "fr-FR"}),
        "android_carol": ("carol", {"deviceType": "android", "pushType": "gcm", "channels": ["sports"],
                                    "localeIdentifier": "en-GB"}),
        "device_carol": ("carol", {"deviceType": "embedded", "channels": ["news"], "localeIdentifier": "fr-FR",
                                   "installationId": stack.device.installation_id}),
    }  # fmt: skip
    for name, (owner, fields) in installations.items():
        body = {"installationId": str(uuid.uuid4()), "appIdentifier": "com.example.app", **fields,
                "user": {"__type": "Pointer", "className": "_User", "objectId": stack.ids[owner]}}  # fmt: skip
        if name in stack.tokens:
            body["deviceToken"] = stack.tokens[name]
        stack.ids[name] = stack.rest("/installations", body, session=sessions[owner])["objectId"]


def assert_counts(row: dict[str, Any], sent_per_type: dict[str, int]) -> None:
    assert row["status"] == "succeeded", row
    assert (row["numSent"], row.get("numFailed", 0)) == (sum(sent_per_type.values()), 0), row
    assert row["sentPerType"] == sent_per_type, row
    assert "count" not in row, row


def test_rest_push_to_pushgw_reaches_apns_fcm_and_ppns_localized_with_badges(stack: Stack) -> None:
    before = {name: stack.badge(name) for name in ("ios_alice", "ios_bob", "android_alice")}
    body = {
        "channels": ["news"],
        "data": {"alert": "REST hello", "alert-fr": "REST bonjour", "badge": "Increment"},
    }
    headers = {"X-Parse-Application-Id": APP_ID, "X-Parse-Master-Key": MASTER_KEY}
    response = stack.pushgw.post(f"{stack.pushgw_url}/push", json=body, headers=headers)
    assert (response.status_code, response.json()) == (200, {"result": True}), response.text
    row = stack.final_status(response.headers["X-Parse-Push-Status-Id"])
    assert_counts(row, {"ios": 2, "android": 1, "embedded": 1})
    aps = stack.apns_payloads("REST")
    assert aps[stack.tokens["ios_alice"]] == {"alert": "REST bonjour", "badge": before["ios_alice"] + 1}
    assert aps[stack.tokens["ios_bob"]] == {"alert": "REST hello", "badge": before["ios_bob"] + 1}
    assert stack.fcm_alerts("REST") == {stack.tokens["android_alice"]: "REST bonjour"}
    assert stack.ppns_alerts("REST") == ["REST bonjour"]
    assert {name: stack.badge(name) for name in before} == {name: badge + 1 for name, badge in before.items()}


def test_js_sdk_push_to_pushgw_resolves_to_the_push_status_id(stack: Stack) -> None:
    before = stack.badge("ios_alice")
    driver = {"serverURL": stack.pushgw_url, "appId": APP_ID, "javascriptKey": JS_KEY, "masterKey": MASTER_KEY,
              "userId": stack.ids["alice"], "data": {"alert": "SDK for alice", "badge": "Increment"}}  # fmt: skip
    result = subprocess.run(
        ["node", str(PARSE_HOST / "sdk-push.js"), json.dumps(driver)], cwd=PARSE_HOST, capture_output=True,
        text=True, timeout=60, check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    push_id = json.loads(result.stdout)["id"]
    assert PUSH_ID.match(push_id or ""), result.stdout
    # `where` was the SDK's serialized user pointer: only alice's two token installations.
    assert_counts(stack.final_status(push_id), {"ios": 1, "android": 1})
    assert stack.apns_payloads("SDK") == {
        stack.tokens["ios_alice"]: {"alert": "SDK for alice", "badge": before + 1}
    }
    assert stack.fcm_alerts("SDK") == {stack.tokens["android_alice"]: "SDK for alice"}
    assert stack.badge("ios_alice") == before + 1


def test_cloud_code_push_goes_to_pushgw_with_direct_access_on(stack: Stack) -> None:
    accepted = stack.intake_requests()
    response = stack.rest("/functions/notifyTeam", {"team": "blue", "data": {"alert": "Cloud blue"}})
    push_id = response["result"]
    assert PUSH_ID.match(push_id), response
    assert stack.intake_requests() == accepted + 1  # pushgw's intake took it, not Parse's /push
    # $inQuery on _User (team blue: alice and carol), whatever their channels; pushgw wrote the row.
    row = stack.final_status(push_id)
    assert_counts(row, {"ios": 1, "android": 2, "embedded": 1})
    assert set(stack.apns_payloads("Cloud")) == {stack.tokens["ios_alice"]}
    assert set(stack.fcm_alerts("Cloud")) == {stack.tokens["android_alice"], stack.tokens["android_carol"]}
    assert stack.ppns_alerts("Cloud") == ["Cloud blue"]
    # Cloud Code queries still run in-process next to the override (directAccess + the router pin).
    assert stack.rest("/functions/countTeam", {"team": "blue"}) == {"result": 2}


def test_cloud_code_push_errors_are_pushgw_errors_as_parse_errors(stack: Stack) -> None:
    body = {"channels": ["news"], "data": {"alert": "never"}, "expiration_time": "not a date"}
    headers = {"X-Parse-Application-Id": APP_ID, "X-Parse-Master-Key": MASTER_KEY}
    direct = stack.pushgw.post(f"{stack.pushgw_url}/push", json=body, headers=headers)
    assert direct.status_code == 400, direct.text
    rejected = stack.intake_requests("rejected_400")
    headers = {"X-Parse-Application-Id": APP_ID, "X-Parse-REST-API-Key": REST_KEY}
    cloud = stack.parse.post("/functions/sendRaw", json={"push": body}, headers=headers)
    assert (cloud.status_code, cloud.json()) == (400, direct.json())
    assert stack.intake_requests("rejected_400") == rejected + 1  # pushgw answered, Parse relayed


def test_parse_server_queue_route_is_finished_by_the_fleet_with_one_badge_increment(stack: Stack) -> None:
    before = {name: stack.badge(name) for name in ("ios_alice", "ios_bob", "android_alice")}
    body = {
        "channels": ["news"],
        "data": {"alert": "Queued hello", "alert-fr": "Queued bonjour", "badge": "Increment"},
    }
    accepted = stack.intake_requests()
    response = stack.master("POST", "/push", body)
    assert (response.status_code, response.json()) == (200, {"result": True}), response.text
    # Parse counted three token installations (two pages of PARSE_BATCH_SIZE); the fleet adds PPNS.
    row = stack.final_status(response.headers["X-Parse-Push-Status-Id"])
    assert_counts(row, {"ios": 2, "android": 1, "embedded": 1})
    after = {name: stack.badge(name) for name in before}
    assert after == {name: badge + 1 for name, badge in before.items()}  # Parse's increment, not a second one
    aps = stack.apns_payloads("Queued")
    assert aps[stack.tokens["ios_alice"]] == {"alert": "Queued bonjour", "badge": after["ios_alice"]}
    assert aps[stack.tokens["ios_bob"]] == {"alert": "Queued hello", "badge": after["ios_bob"]}
    assert stack.fcm_alerts("Queued") == {stack.tokens["android_alice"]: "Queued bonjour"}
    assert stack.ppns_alerts("Queued") == ["Queued bonjour"]
    assert stack.intake_requests() == accepted  # Parse Server took it in; the fleet only sent it


def test_a_push_that_reaches_parse_servers_own_worker_is_counted_failed_by_the_stub(
    stack: Stack, tmp_path: Path
) -> None:
    with ExitStack() as cleanup:
        url = start_parse_server(cleanup, tmp_path, {**stack.parse_env, "PARSE_OWN_WORKER": "1"})
        headers = {"X-Parse-Application-Id": APP_ID, "X-Parse-Master-Key": MASTER_KEY}
        body = {"channels": ["news"], "data": {"alert": "Unrouted"}}
        response = stack.pushgw.post(f"{url}/push", json=body, headers=headers)
        assert response.status_code == 200, response.text
        row = stack.final_status(response.headers["X-Parse-Push-Status-Id"])
    # Nothing is sent; every token installation on "news" shows up as failed instead of vanishing.
    assert (row["status"], row["numSent"], row["numFailed"]) == ("succeeded", 0, 3), row
    assert row["failedPerType"] == {"ios": 2, "android": 1}, row
    assert stack.apns_payloads("Unrouted") == {} and stack.fcm_alerts("Unrouted") == {}
