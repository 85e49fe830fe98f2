"""`pushgw serve` and `pushgw dev` as real processes: startup errors, graceful SIGTERM, the dev quick start."""

from __future__ import annotations

import json
import re
import shlex
import ssl
import subprocess
import threading
from pathlib import Path
from typing import Any

import httpx2
import pytest
from pymongo import MongoClient

from tests.fixtures.mongo import MongoServer
from tests.fixtures.parse_data import installation
from tests.fixtures.ports import free_port
from tests.fixtures.processes import ProcessFactory
from tests.fixtures.rabbit import RABBIT_URL, RabbitAdmin
from tests.fixtures.waiting import until

MASTER = {
    "X-Parse-Application-Id": "app1",
    "X-Parse-Master-Key": "master1",
    "Content-Type": "application/json",
}


def serve_config(
    tmp_path: Path, mongo_uri: str, db_name: str, prefix: str, port: int, processes: int = 1
) -> Path:
    path = tmp_path / "pushgw.toml"
    path.write_text(
        f'[mongo]\nuri = "{mongo_uri}"\n[queue]\nurl = "{RABBIT_URL}"\nprefix = "{prefix}"\n'
        f'[http]\nport = {port}\nprocesses = {processes}\n[log]\nlevel = "info"\n'
        f'[[apps]]\napp_id = "app1"\nmaster_key = "master1"\nmongo_database = "{db_name}"\n'
    )
    return path


def test_bad_config_stops_startup_naming_the_key(pushgw_processes: ProcessFactory, tmp_path: Path) -> None:
    config = tmp_path / "bad.toml"
    config.write_text('[http]\nport = "not-a-port"\n[[apps]]\napp_id = "a"\nmaster_key = "m"\n')
    result = pushgw_processes.run("serve", "--config", str(config))
    assert result.returncode == 2
    assert "http.port" in result.stderr


def test_serve_refuses_the_memory_queue(pushgw_processes: ProcessFactory, tmp_path: Path) -> None:
    config = tmp_path / "mem.toml"
    config.write_text('[[apps]]\napp_id = "a"\nmaster_key = "m"\n')
    result = pushgw_processes.run("serve", "--config", str(config))
    assert result.returncode == 2
    assert "queue.url" in result.stderr


@pytest.mark.parametrize("processes", [1, 2])
def test_sigterm_drains_requests_and_loses_nothing_accepted(
    pushgw_processes: ProcessFactory, tmp_path: Path, mongo_server: MongoServer, mongo: Any, db_name: str,
    rabbit: RabbitAdmin, processes: int,
) -> None:  # fmt: skip
    port = free_port()
    config = serve_config(tmp_path, mongo_server.uri, db_name, rabbit.prefix, port, processes)
    server = pushgw_processes.start("serve", "--config", str(config))
    base = f"http://127.0.0.1:{port}"
    server.wait_ready(f"{base}/ready")
    accepted: list[str] = []
    stop = threading.Event()

    def load() -> None:
        with httpx2.Client(base_url=base, timeout=10) as client:
            while not stop.is_set():
                try:
                    response = client.post("/parse/push", json={"channels": ["a"]}, headers=MASTER)
                except httpx2.HTTPError:
                    return  # the listener closed: expected once draining starts
                assert response.status_code == 200, response.text
                accepted.append(response.headers["x-parse-push-status-id"])

    workers = [threading.Thread(target=load) for _ in range(4)]
    for worker in workers:
        worker.start()
    until(lambda: len(accepted) >= 50, what="some accepted pushes")
    assert server.terminate() == 0
    stop.set()
    for worker in workers:
        worker.join(timeout=15)
    ids = {row["_id"] for row in mongo[db_name]["_PushStatus"].find({}, {"_id": 1})}
    queued = {json.loads(message.body)["push_id"] for message in rabbit.take_all("plan")}
    assert set(accepted) <= ids
    assert set(accepted) <= queued
    assert server.output.count('"event": "intake_stopped"') == processes
    for secret in ("master1",):
        assert secret not in server.output


def test_dev_quick_start_curl_works_and_data_persists(
    pushgw_processes: ProcessFactory, tmp_path: Path
) -> None:
    env = {"PUSHGW_HTTP__PORT": free_port(), "PUSHGW_MONGO__EMBEDDED_PORT": free_port()}
    dev = pushgw_processes.start("dev", env=env)
    base = f"http://127.0.0.1:{env['PUSHGW_HTTP__PORT']}"
    dev.wait_ready(f"{base}/ready", timeout_s=60)
    until(lambda: "Send a push:" in dev.output and "sandbox" in dev.output, what="the dev banner")
    curl = dev.output.split("Send a push:\n", 1)[1].split("\n\n", 1)[0]
    embedded = f"mongodb://127.0.0.1:{env['PUSHGW_MONGO__EMBEDDED_PORT']}/?directConnection=true"
    with MongoClient(embedded) as client:
        client["parse"]["_Installation"].insert_many([installation("ios"), installation("android")])
    result = subprocess.run(
        ["bash", "-c", curl.replace("\\\n", " ") + " -s -i"], capture_output=True, text=True, check=True
    )
    assert result.stdout.startswith("HTTP/1.1 200")
    push_id = re.search(r"x-parse-push-status-id: (\w+)", result.stdout, re.IGNORECASE)
    assert push_id is not None
    with MongoClient(embedded) as client:
        # The in-process worker consumed the memory:// queue and delivered through the emulators.
        row = until(
            lambda: client["parse"]["_PushStatus"].find_one({"_id": push_id.group(1), "status": "succeeded"})
        )
        assert (row["numSent"], row["sentPerType"]) == (2, {"ios": 1, "android": 1})
    for name in ("apns", "fcm"):
        url = re.search(rf"{name}: +EMULATOR at (\S+)", dev.output)
        assert url is not None, dev.output
        ca = ssl.create_default_context(cafile=str(tmp_path / ".pushgw" / "emulators" / name / "ca.pem"))
        with httpx2.Client(verify=ca, http2=True) as http:
            assert http.get(f"{url.group(1)}/emulator/stats").json()["accepted"] == 1
    assert dev.terminate() == 0
    assert (tmp_path / ".pushgw" / "mongo").is_dir()

    again = pushgw_processes.start("dev", env=env)
    again.wait_ready(f"{base}/ready", timeout_s=60)
    with MongoClient(
        f"mongodb://127.0.0.1:{env['PUSHGW_MONGO__EMBEDDED_PORT']}/?directConnection=true"
    ) as client:
        row = client["parse"]["_PushStatus"].find_one({"_id": push_id.group(1)})
    assert row is not None and row["payload"] == '{"alert":"Hello from pushgw"}'
    assert again.terminate() == 0
    assert shlex.split(curl.replace("\\\n", " "))[0] == "curl"
