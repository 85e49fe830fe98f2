"""The Dockerfile's shape, the systemd units (`systemd-analyze verify` and `security`) and Heroku's Procfile and
app.json: each runs a real pushgw subcommand with settings pushgw loads."""

from __future__ import annotations

import json
import re
import shlex
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from tests.deploy.checks import (
    CONFIG,
    DEPLOY,
    DRAIN_S,
    ROOT,
    is_subcommand,
    load_with_environment,
    pushgw_subcommand,
    setting_path,
)

SYSTEMD = DEPLOY / "systemd"
SANDBOXING = {
    "NoNewPrivileges": "yes", "ProtectSystem": "strict", "PrivateTmp": "yes", "ProtectHome": "yes",
    "KillSignal": "SIGTERM", "SystemCallFilter": "@system-service",
}  # fmt: skip


# ---- Dockerfile ----------------------------------------------------------------------------------------------


def dockerfile_stages() -> list[list[tuple[str, str]]]:
    text = (DEPLOY / "docker" / "Dockerfile").read_text().replace("\\\n", " ")
    arguments = dict(re.findall(r"^ARG (\w+)=(\S+)$", text, re.MULTILINE))
    stages: list[list[tuple[str, str]]] = []
    for line in text.splitlines():
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        instruction, _, rest = line.strip().partition(" ")
        rest = re.sub(r"\$\{(\w+)\}", lambda match: arguments[match.group(1)], rest)
        if instruction == "FROM":
            stages.append([])
        if stages:
            stages[-1].append((instruction, rest.strip()))
    return stages


def test_dockerfile_is_multi_stage_non_root_and_drains() -> None:
    stages = dockerfile_stages()
    assert len(stages) >= 2
    for stage in stages:
        image = stage[0][1].split()[0]
        assert ":" in image and not image.endswith(":latest"), image
    final = dict(stage_instructions := stages[-1])
    assert final["USER"].split(":")[0] not in ("0", "root")
    assert final["STOPSIGNAL"] == "SIGTERM"
    assert json.loads(final["ENTRYPOINT"]) == ["pushgw"]
    assert is_subcommand(json.loads(final["CMD"])[0])
    runs = " ".join(rest for instruction, rest in stage_instructions if instruction == "RUN")
    assert not re.search(r"apt-get install|build-essential|gcc", runs)
    assert "from=build" in runs and "pip uninstall --yes pip" in runs
    healthcheck = final["HEALTHCHECK"]
    assert healthcheck.startswith("--interval=")
    command = json.loads(healthcheck[healthcheck.index("CMD") + 3 :])
    assert command[:2] == ["python", "-c"]
    compile(command[2], "HEALTHCHECK", "exec")
    for name in ("PUSHGW_HTTP__HOST", "PUSHGW_CONFIG"):
        assert name in final["ENV"]
    setting_path("PUSHGW_HTTP__HOST")


def test_build_context_holds_what_the_wheel_needs() -> None:
    ignore = (ROOT / ".dockerignore").read_text().splitlines()
    allowed = {line[1:].rstrip("/") for line in ignore if line.startswith("!")}
    copied = set()
    for instruction, rest in dockerfile_stages()[0]:
        if instruction == "COPY":
            copied.update(rest.split()[:-1])
    assert copied == allowed
    assert all((ROOT / name).exists() for name in copied)


# ---- systemd -------------------------------------------------------------------------------------------------


def unit_settings(path: Path) -> dict[str, list[str]]:
    values: dict[str, list[str]] = {}
    for line in path.read_text().splitlines():
        if "=" in line and not line.startswith(("#", "[")):
            key, _, value = line.partition("=")
            values.setdefault(key, []).append(value)
    return values


@pytest.fixture
def installed_units(tmp_path: Path) -> dict[str, Path]:
    """The units with ExecStart pointing at this checkout's pushgw (verify needs an existing binary)."""
    pushgw = str(Path(sys.executable).parent / "pushgw")  # the console script of this environment
    assert Path(pushgw).is_file()
    units = {}
    for path in sorted(SYSTEMD.glob("*.service")):
        name = path.name.replace("@.service", "@1.service")
        (tmp_path / name).write_text(path.read_text().replace("/opt/pushgw/bin/pushgw", pushgw))
        units[path.name] = tmp_path / name
    return units


def test_systemd_units_verify_cleanly(installed_units: dict[str, Path]) -> None:
    assert set(installed_units) == {"pushgw-serve.service", "pushgw-worker@.service", "pushgw-ppns.service"}
    for unit in installed_units.values():
        result = subprocess.run(
            ["systemd-analyze", "verify", "--man=no", str(unit)],
            check=False,
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert result.returncode == 0 and result.stderr == "", f"{unit.name}: {result.stderr}"
        security = subprocess.run(
            ["systemd-analyze", "security", "--offline=yes", "--threshold=25", str(unit)],
            check=False, capture_output=True, text=True, timeout=60,
        )  # fmt: skip
        assert security.returncode == 0, f"{unit.name} exposure above 2.5:\n{security.stdout}"


def test_systemd_verify_catches_a_misspelt_directive(installed_units: dict[str, Path]) -> None:
    unit = installed_units["pushgw-serve.service"]
    unit.write_text(unit.read_text().replace("ProtectSystem=", "ProtectSytem="))
    result = subprocess.run(
        ["systemd-analyze", "verify", "--man=no", str(unit)], check=False, capture_output=True, text=True
    )
    assert "Unknown key" in result.stderr


@pytest.mark.parametrize("name", ["pushgw-serve.service", "pushgw-worker@.service", "pushgw-ppns.service"])
def test_systemd_unit_runs_a_real_command_sandboxed(name: str, monkeypatch: pytest.MonkeyPatch) -> None:
    values = unit_settings(SYSTEMD / name)
    [exec_start] = values["ExecStart"]
    assert is_subcommand(pushgw_subcommand(shlex.split(exec_start)))
    for key, value in SANDBOXING.items():
        assert value in values[key], (name, key)
    assert values["User"] == ["pushgw"] and values["RestrictAddressFamilies"]
    assert float(values["TimeoutStopSec"][0].rstrip("s")) >= DRAIN_S
    environment = dict(item.split("=", 1) for item in values["Environment"])
    environment = {key: value.replace("%i", "1") for key, value in environment.items()}
    assert environment.pop("PUSHGW_CONFIG") == "/etc/pushgw/pushgw.toml"
    load_with_environment(environment, monkeypatch, CONFIG)
    if name == "pushgw-ppns.service":
        assert values["AmbientCapabilities"] == ["CAP_NET_BIND_SERVICE"]
        assert int(values["LimitNOFILE"][0]) >= 100_000
        assert environment["PUSHGW_PPNS__PORT"] == "443"


# ---- Heroku --------------------------------------------------------------------------------------------------


def procfile() -> dict[str, str]:
    lines = (ROOT / "Procfile").read_text().splitlines()
    return dict(line.split(": ", 1) for line in lines if line.strip())


def test_procfile_processes_get_port_and_broker_from_heroku(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    stub = tmp_path / "pushgw"
    stub.write_text('#!/bin/sh\nprintf "%s\\n" "$@" > "$OUT.args"\nenv > "$OUT.env"\n')
    stub.chmod(0o755)
    processes = procfile()
    assert set(processes) == {"web", "worker"}
    for process, command in processes.items():
        out = tmp_path / process
        heroku = {"PATH": f"{tmp_path}:/usr/bin:/bin", "PORT": "43210", "OUT": str(out),
                  "CLOUDAMQP_URL": "amqps://u:p@cloudamqp.example/v", "PUSHGW_MONGO__URI": "mongodb://db/"}  # fmt: skip
        subprocess.run(["bash", "-c", command], env=heroku, check=True, timeout=30)
        args = (out.with_suffix(".args")).read_text().split()
        assert is_subcommand(args[0])
        environment = dict(
            line.split("=", 1) for line in out.with_suffix(".env").read_text().splitlines() if "=" in line
        )
        pushgw_env = {key: value for key, value in environment.items() if key.startswith("PUSHGW_")}
        settings = load_with_environment(pushgw_env, monkeypatch)
        assert settings.queue.url == heroku["CLOUDAMQP_URL"]
        if process == "web":
            assert (settings.http.host, settings.http.port) == ("0.0.0.0", 43210)


def test_app_json_matches_the_procfile_and_real_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    app = json.loads((ROOT / "app.json").read_text())
    assert set(app["formation"]) == set(procfile())
    assert any(addon["plan"].startswith("cloudamqp:") for addon in app["addons"])
    environment = {name: spec.get("value", "") for name, spec in app["env"].items()}
    environment["PUSHGW_APPS"] = '[{"app_id": "a", "master_key": "m"}]'
    environment["PUSHGW_MONGO__URI"] = "mongodb://db/"
    assert all(app["env"][name]["required"] for name in ("PUSHGW_APPS", "PUSHGW_MONGO__URI"))
    load_with_environment(environment, monkeypatch)
    requirements = [
        line for line in (ROOT / "requirements.txt").read_text().splitlines() if not line.startswith("#")
    ]
    assert requirements == ["."]
    assert tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["name"] == "pushgw"
