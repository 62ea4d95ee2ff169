"""deploy/: the compose file, the Kubernetes manifests and the Grafana provisioning parse, and
refer only to what exists — settings of ``tracehouse.config.Settings``, ports the roles listen
on, probe paths a running server answers, ConfigMap and Secret keys, files of the repository —
and the cluster DDL the migrate Job would run parses in ClickHouse.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from tests.conftest import ServerFactory
from tracehouse.access import AccessControl
from tracehouse.alerting.rules import parse_rules_file
from tracehouse.app import Tracehouse
from tracehouse.config import Settings
from tracehouse.storage import connect
from tracehouse.storage.client import MIN_SERVER_VERSION

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
K8S = DEPLOY / "kubernetes"
COMPOSE = DEPLOY / "compose" / "compose.yaml"
GRAFANA = DEPLOY / "grafana" / "provisioning"
DEFAULTS = Settings()
PORTS = {"otlp-grpc": DEFAULTS.grpc_port, "otlp-http": DEFAULTS.http_port, "api": DEFAULTS.api_port}
PROBE_PATHS = {"/healthz", "/readyz"}
# Not a field: names the YAML configuration file (tracehouse/config.py).
CONFIG_ENV = "TRACEHOUSE_CONFIG"
TRACEHOUSE_IMAGE = "tracehouse"
CLICKHOUSE_IMAGES = ("clickhouse/clickhouse-server", "clickhouse/clickhouse-keeper")
COMPOSE_URL = r"http://tracehouse:\$\{CLICKHOUSE_PASSWORD:-\w+\}@clickhouse:8123/otel"
ROLES_OF = {"ingest": ["ingest"], "query": ["query"], "worker": ["worker"]}


def _yaml_files() -> list[Path]:
    return sorted(p for p in DEPLOY.rglob("*") if p.suffix in (".yaml", ".yml"))


def _load_all(path: Path) -> list[dict[str, Any]]:
    return [doc for doc in yaml.safe_load_all(path.read_text()) if doc is not None]


def _kustomization() -> dict[str, Any]:
    loaded: dict[str, Any] = yaml.safe_load((K8S / "kustomization.yaml").read_text())
    return loaded


def _resources() -> list[dict[str, Any]]:
    """Every object the kustomization lists, in order."""
    return [doc for name in _kustomization()["resources"] for doc in _load_all(K8S / name)]


def _of_kind(kind: str) -> dict[str, dict[str, Any]]:
    return {r["metadata"]["name"]: r for r in _resources() if r["kind"] == kind}


def _pod_specs() -> dict[str, dict[str, Any]]:
    """Pod specs of the Deployments and Jobs, by workload name."""
    out = {}
    for resource in _resources():
        if resource["kind"] in ("Deployment", "Job"):
            out[resource["metadata"]["name"]] = resource["spec"]["template"]["spec"]
    return out


def _containers() -> Iterator[tuple[str, dict[str, Any], dict[str, Any]]]:
    for workload, pod in _pod_specs().items():
        for container in pod["containers"]:
            yield workload, pod, container


def _configmap_file(key: str) -> str:
    data: dict[str, str] = _of_kind("ConfigMap")["tracehouse-config"]["data"]
    return data[key]


def _secret_keys() -> set[str]:
    secret = _of_kind("Secret")["tracehouse-secrets"]
    return set(secret.get("stringData", {})) | set(secret.get("data", {}))


def _compose() -> dict[str, Any]:
    loaded: dict[str, Any] = yaml.safe_load(COMPOSE.read_text())
    return loaded


def _version(image: str) -> tuple[int, int]:
    tag = image.rsplit(":", 1)[1]
    major, minor = (int(part) for part in tag.split(".")[:2])
    return major, minor


# --- everything parses ------------------------------------------------------------------------


def test_every_yaml_file_in_deploy_parses() -> None:
    files = _yaml_files()
    assert len(files) >= 12
    for path in files:
        assert _load_all(path), f"{path} is empty"


def test_the_kustomization_lists_existing_files_with_the_expected_objects() -> None:
    kustomization = _kustomization()
    listed = kustomization["resources"]
    assert all((K8S / name).is_file() for name in listed)
    on_disk = {p.name for p in K8S.glob("*.yaml")} - {"kustomization.yaml"}
    assert set(listed) == on_disk, "a manifest is not in kustomization.yaml (or vice versa)"
    kinds = sorted((r["kind"], r["metadata"]["name"]) for r in _resources())
    assert kinds == sorted(
        [
            ("Namespace", "tracehouse"),
            ("ConfigMap", "tracehouse-config"),
            ("Secret", "tracehouse-secrets"),
            ("ClickHouseKeeperInstallation", "tracehouse-keeper"),
            ("ClickHouseInstallation", "tracehouse"),
            ("Job", "tracehouse-migrate"),
            ("Deployment", "tracehouse-ingest"),
            ("Service", "tracehouse-ingest"),
            ("HorizontalPodAutoscaler", "tracehouse-ingest"),
            ("Deployment", "tracehouse-query"),
            ("Service", "tracehouse-query"),
            ("Deployment", "tracehouse-worker"),
        ]
    )
    assert kustomization["namespace"] == "tracehouse"
    # The image named in the manifests is the one kustomize rewrites to the built image.
    assert [i["name"] for i in kustomization["images"]] == [TRACEHOUSE_IMAGE]


# --- configuration ------------------------------------------------------------------------------


def _env(container: dict[str, Any]) -> dict[str, Any]:
    return {item["name"]: item for item in container.get("env", [])}


def _tracehouse_env_names() -> list[tuple[str, str]]:
    """(where, name) of every TRACEHOUSE_* variable the manifests and compose file set."""
    found = [
        (workload, name)
        for workload, _, container in _containers()
        for name in _env(container)
        if name.startswith("TRACEHOUSE_")
    ]
    for service, spec in _compose()["services"].items():
        for name in spec.get("environment", {}):
            if name.startswith("TRACEHOUSE_"):
                found.append((f"compose:{service}", name))
    return found


def test_every_tracehouse_variable_set_is_a_setting() -> None:
    names = _tracehouse_env_names()
    assert len(names) >= 12
    fields = set(Settings.model_fields)
    unknown = [
        (where, name)
        for where, name in names
        if name != CONFIG_ENV and name.removeprefix("TRACEHOUSE_").lower() not in fields
    ]
    assert unknown == []


def test_literal_values_are_valid_settings() -> None:
    """Every literal value given to a setting is accepted by Settings (as the server would)."""
    checked = 0
    sources: list[dict[str, Any]] = [
        {n: i["value"] for n, i in _env(c).items() if "value" in i} for _, _, c in _containers()
    ]
    sources += [s.get("environment", {}) for s in _compose()["services"].values()]
    for values in sources:
        for name, value in values.items():
            if not name.startswith("TRACEHOUSE_") or name == CONFIG_ENV:
                continue
            field = name.removeprefix("TRACEHOUSE_").lower()
            Settings(**{field: value})
            checked += 1
    assert checked >= 6


def test_the_configmap_file_is_a_valid_configuration_for_the_cluster(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    config = tmp_path / "tracehouse.yaml"
    config.write_text(_configmap_file("tracehouse.yaml"))
    keys = set(yaml.safe_load(config.read_text()))
    assert keys <= set(Settings.model_fields), keys - set(Settings.model_fields)
    monkeypatch.setenv(CONFIG_ENV, str(config))
    settings = Settings()
    assert settings.cluster == "tracehouse"
    assert settings.auto_migrate is False  # the Job migrates
    # The file names the cluster the ClickHouseInstallation defines.
    (chi,) = _of_kind("ClickHouseInstallation").values()
    (cluster,) = chi["spec"]["configuration"]["clusters"]
    assert cluster["name"] == settings.cluster
    assert cluster["layout"] == {"shardsCount": 2, "replicasCount": 2}
    # The worker lease is a KeeperMap table there: the servers must allow KeeperMap.
    assert settings.resolved_leader_store == "keeper"
    assert chi["spec"]["configuration"]["settings"]["keeper_map_path_prefix"].startswith("/")


def test_config_path_points_at_the_mounted_configmap_key() -> None:
    for workload, pod, container in _containers():
        env = _env(container)
        path = Path(env[CONFIG_ENV]["value"])
        mounts = {m["mountPath"]: m["name"] for m in container["volumeMounts"]}
        volume_name = mounts[str(path.parent)]
        volume = {v["name"]: v for v in pod["volumes"]}[volume_name]
        assert volume["configMap"]["name"] == "tracehouse-config", workload
        assert _configmap_file(path.name), workload


def test_secret_references_name_existing_keys() -> None:
    keys = _secret_keys()
    refs = 0
    for workload, pod, container in _containers():
        for item in _env(container).values():
            ref = item.get("valueFrom", {}).get("secretKeyRef")
            if ref:
                assert (ref["name"], ref["key"]) in {("tracehouse-secrets", k) for k in keys}
                refs += 1
        for volume in pod.get("volumes", []):
            if "secret" in volume:
                assert volume["secret"]["secretName"] == "tracehouse-secrets", workload
                assert {i["key"] for i in volume["secret"]["items"]} <= keys
    assert refs == len(_pod_specs())  # every workload gets its ClickHouse URL from the Secret
    (chi,) = _of_kind("ClickHouseInstallation").values()
    secret_password = chi["spec"]["configuration"]["users"]["tracehouse/k8s_secret_password"]
    assert secret_password == "tracehouse-secrets/clickhouse-password"
    assert "clickhouse-password" in keys


def test_the_secret_url_reaches_the_operator_service_of_the_cluster() -> None:
    url = _of_kind("Secret")["tracehouse-secrets"]["stringData"]["clickhouse-url"]
    (chi,) = _of_kind("ClickHouseInstallation").values()
    match = re.fullmatch(r"http://tracehouse:[^@]+@([\w-]+):8123/(\w+)", url)
    assert match, url
    assert match.group(1) == f"clickhouse-{chi['metadata']['name']}"  # the operator's Service


# --- roles, images, ports and probes ----------------------------------------------------------


def test_each_deployment_runs_its_role_with_the_tracehouse_image() -> None:
    deployments = _of_kind("Deployment")
    for role, roles in ROLES_OF.items():
        pod = deployments[f"tracehouse-{role}"]["spec"]["template"]["spec"]
        (container,) = pod["containers"]
        assert container["image"] == TRACEHOUSE_IMAGE
        assert container["args"] == ["serve", "--roles", ",".join(roles)]
    worker = deployments["tracehouse-worker"]
    assert worker["spec"]["replicas"] == 2
    (container,) = worker["spec"]["template"]["spec"]["containers"]
    assert _env(container)["TRACEHOUSE_LEADER_ELECTION"]["value"] == "true"
    (job,) = _of_kind("Job").values()
    assert job["spec"]["template"]["spec"]["containers"][0]["args"] == ["migrate"]


def test_clickhouse_images_are_new_enough_and_keeper_is_wired() -> None:
    (chi,) = _of_kind("ClickHouseInstallation").values()
    (chk,) = _of_kind("ClickHouseKeeperInstallation").values()
    images = [
        c["image"]
        for resource in (chi, chk)
        for template in resource["spec"]["templates"]["podTemplates"]
        for c in template["spec"]["containers"]
    ]
    compose_image = _compose()["services"]["clickhouse"]["image"]
    for image in [*images, compose_image]:
        assert image.split(":")[0] in CLICKHOUSE_IMAGES
        assert _version(image) >= MIN_SERVER_VERSION, image
    (node,) = chi["spec"]["configuration"]["zookeeper"]["nodes"]
    assert node["host"] == f"keeper-{chk['metadata']['name']}"  # the operator's Service name
    assert str(node["port"]) == chk["spec"]["configuration"]["settings"]["keeper_server/tcp_port"]
    (keeper_cluster,) = chk["spec"]["configuration"]["clusters"]
    assert keeper_cluster["layout"]["replicasCount"] == 3


def test_container_and_service_ports_are_the_settings_defaults() -> None:
    deployments = _of_kind("Deployment")
    for _, _, container in _containers():
        for port in container.get("ports", []):
            assert PORTS[port["name"]] == port["containerPort"]
    services = _of_kind("Service")
    for name, service in services.items():
        pod = deployments[name]["spec"]["template"]["spec"]
        container_ports = {p["name"] for c in pod["containers"] for p in c.get("ports", [])}
        selector = service["spec"]["selector"]
        labels = deployments[name]["spec"]["template"]["metadata"]["labels"]
        assert selector.items() <= labels.items(), name
        for port in service["spec"]["ports"]:
            assert port["targetPort"] in container_ports
            assert port["port"] == PORTS[port["targetPort"]]
    assert {p["port"] for p in services["tracehouse-ingest"]["spec"]["ports"]} == {4317, 4318}
    assert {p["port"] for p in services["tracehouse-query"]["spec"]["ports"]} == {8080}
    (hpa,) = _of_kind("HorizontalPodAutoscaler").values()
    assert hpa["spec"]["scaleTargetRef"]["name"] in deployments


def test_probes_use_real_paths_on_the_api_port() -> None:
    probes = 0
    for workload, _, container in _containers():
        for kind in ("readinessProbe", "livenessProbe"):
            if kind not in container:
                continue
            get = container[kind]["httpGet"]
            assert get["path"] in PROBE_PATHS, (workload, get["path"])
            assert get["port"] == "api"
            probes += 1
    assert probes == 6  # readiness and liveness for ingest, query and worker


def test_every_volume_mount_has_its_volume() -> None:
    for workload, pod in _pod_specs().items():
        volumes = {v["name"] for v in pod.get("volumes", [])}
        for container in [*pod.get("initContainers", []), *pod["containers"]]:
            assert {m["name"] for m in container.get("volumeMounts", [])} <= volumes, workload


def _mounted_file(pod: dict[str, Any], container: dict[str, Any], path: Path) -> dict[str, Any]:
    """The volume that provides ``path`` in ``container`` (mounted at its directory)."""
    mounts = {m["mountPath"]: m["name"] for m in container["volumeMounts"]}
    name = mounts[str(path.parent)]
    volume: dict[str, Any] = {v["name"]: v for v in pod["volumes"]}[name]
    return volume


def test_the_access_file_is_the_secrets_and_loads(tmp_path: Path) -> None:
    """Every role reads its tokens from the Secret's access.yaml, a valid access file."""
    settings = yaml.safe_load(_configmap_file("tracehouse.yaml"))
    path = Path(settings["access_file"])
    for role in ROLES_OF:
        pod = _of_kind("Deployment")[f"tracehouse-{role}"]["spec"]["template"]["spec"]
        volume = _mounted_file(pod, pod["containers"][0], path)
        assert volume["secret"]["secretName"] == "tracehouse-secrets", role
        assert {"key": "access.yaml", "path": path.name} in volume["secret"]["items"], role
    access = tmp_path / "access.yaml"
    access.write_text(_of_kind("Secret")["tracehouse-secrets"]["stringData"]["access.yaml"])
    AccessControl.from_file(access)  # raises AccessFileError naming the problem


@pytest.mark.parametrize("role", ["worker", "query"])
def test_the_init_container_renders_valid_alert_rules_with_the_secret(
    role: str, tmp_path: Path
) -> None:
    """Run the init container's own command here: the rules file it writes is what
    alert_rules_file names, parses as a rules file, and signs with the Secret's key."""
    settings = yaml.safe_load(_configmap_file("tracehouse.yaml"))
    rules_path = Path(settings["alert_rules_file"])
    pod = _of_kind("Deployment")[f"tracehouse-{role}"]["spec"]["template"]["spec"]
    (init,) = pod["initContainers"]
    assert init["image"] == TRACEHOUSE_IMAGE
    program, flag, code, source, target = init["command"]
    assert (program, flag) == ("python", "-c")
    assert Path(target) == rules_path
    # The main container sees the rendered file through the same volume.
    assert _mounted_file(pod, init, rules_path) == _mounted_file(
        pod, pod["containers"][0], rules_path
    )
    assert _mounted_file(pod, init, Path(source))["configMap"]["name"] == "tracehouse-config"
    secret = _of_kind("Secret")["tracehouse-secrets"]["stringData"]
    (env,) = init["env"]
    ref = env["valueFrom"]["secretKeyRef"]
    assert ref == {"name": "tracehouse-secrets", "key": "webhook-secret"}
    template = tmp_path / "alert-rules.yaml"
    template.write_text(_configmap_file(Path(source).name))
    rendered = tmp_path / "rendered.yaml"
    subprocess.run(
        [sys.executable, flag, code, str(template), str(rendered)],
        env={**os.environ, env["name"]: secret[ref["key"]]},
        check=True,
    )
    rules = parse_rules_file(rendered.read_text())
    assert rules.rules and rules.receivers
    assert {r.secret for r in rules.receivers} == {secret["webhook-secret"]}
    assert "WEBHOOK_SECRET" not in rendered.read_text()


@pytest.mark.parametrize("role", sorted(ROLES_OF))
def test_the_probed_paths_answer_on_a_server_of_each_role(
    make_server: ServerFactory, role: str, tmp_path: Path
) -> None:
    """With the manifests' access file too: probes and scrapes carry no token."""
    access = tmp_path / "access.yaml"
    access.write_text(_of_kind("Secret")["tracehouse-secrets"]["stringData"]["access.yaml"])
    app = make_server(roles=ROLES_OF[role], access_file=access)
    for path in sorted(PROBE_PATHS | {"/metrics"}):
        response = httpx.get(f"http://127.0.0.1:{app.ports.api}{path}", timeout=10)
        assert response.status_code == 200, (role, path, response.text)


def test_readiness_follows_migrations_applied_by_another_process(server: Tracehouse) -> None:
    """A role started before the migrate Job finished becomes ready once it has, without a
    restart (the roles run with auto_migrate=false on Kubernetes and compose)."""
    api = f"http://127.0.0.1:{server.ports.api}/readyz"
    server._migrated = False  # as if it had started before the Job (the engine is migrated)
    response = httpx.get(api, timeout=10)
    assert (response.status_code, response.json()) == (200, {"status": "ready"})


# --- compose ------------------------------------------------------------------------------------


def test_compose_runs_clickhouse_and_the_three_roles_after_migrating() -> None:
    services = _compose()["services"]
    assert {"clickhouse", "migrate", "ingest", "query", "worker"} <= set(services)
    for role in ROLES_OF:
        spec = services[role]
        assert spec["command"] == ["serve", "--roles", role]
        assert spec["depends_on"]["migrate"]["condition"] == "service_completed_successfully"
        assert "/readyz" in " ".join(spec["healthcheck"]["test"])
        assert spec["environment"]["TRACEHOUSE_AUTO_MIGRATE"] == "false"
        url = spec["environment"]["TRACEHOUSE_CLICKHOUSE_URL"]
        assert re.fullmatch(COMPOSE_URL, url), url
    assert services["migrate"]["command"] == ["migrate"]
    assert services["migrate"]["depends_on"]["clickhouse"]["condition"] == "service_healthy"
    assert services["worker"]["environment"]["TRACEHOUSE_LEADER_ELECTION"] == "true"
    clickhouse = services["clickhouse"]
    assert clickhouse["environment"]["CLICKHOUSE_USER"] == "tracehouse"
    assert clickhouse["environment"]["CLICKHOUSE_DB"] == "otel"
    assert "clickhouse-data:/var/lib/clickhouse" in clickhouse["volumes"]


def test_compose_publishes_the_settings_ports_and_builds_from_the_repository() -> None:
    compose = _compose()
    services = compose["services"]

    def published(service: str) -> set[tuple[int, int]]:
        pairs = (p.split(":") for p in services[service].get("ports", []))
        return {(int(a), int(b)) for a, b in pairs}

    assert published("ingest") == {(4317, DEFAULTS.grpc_port), (4318, DEFAULTS.http_port)}
    assert published("query") == {(8080, DEFAULTS.api_port)}
    for role in ROLES_OF:
        build = services[role]["build"]
        context = (COMPOSE.parent / build["context"]).resolve()
        assert context == ROOT
        assert (context / build["dockerfile"]).is_file()
    named = set(compose["volumes"])
    for name, spec in services.items():
        for volume in spec.get("volumes", []):
            source = volume.split(":")[0]
            if source.startswith("."):
                assert (COMPOSE.parent / source).exists(), (name, source)
            else:
                assert source in named, (name, source)
        for dependency in spec.get("depends_on", {}):
            assert dependency in services, (name, dependency)


def test_dockerfile_installs_the_package_and_exposes_the_ports() -> None:
    dockerfile = (DEPLOY / "Dockerfile").read_text()
    for copied in re.findall(r"^COPY (.+) \S+$", dockerfile, flags=re.M):
        for path in copied.split():
            assert (ROOT / path).exists(), path
    assert "pip install ." in dockerfile
    exposed = {int(p) for p in re.search(r"^EXPOSE (.+)$", dockerfile, flags=re.M)[1].split()}
    assert exposed == set(PORTS.values())
    assert 'ENTRYPOINT ["tracehouse"]' in dockerfile
    assert "/readyz" in dockerfile


# --- Grafana provisioning ---------------------------------------------------------------------


def test_grafana_provisioning_loads_the_packaged_dashboards_into_the_clickhouse_source() -> None:
    (source,) = yaml.safe_load((GRAFANA / "datasources" / "clickhouse.yaml").read_text())[
        "datasources"
    ]
    assert source["type"] == "grafana-clickhouse-datasource"
    assert source["jsonData"]["defaultDatabase"] == "otel"
    assert source["jsonData"]["port"] == 8123
    (provider,) = yaml.safe_load((GRAFANA / "dashboards" / "tracehouse.yaml").read_text())[
        "providers"
    ]
    grafana = _compose()["services"]["grafana"]
    mounts = dict(v.split(":")[:2] for v in grafana["volumes"])
    sources = {target: (COMPOSE.parent / source).resolve() for source, target in mounts.items()}
    dashboards = sources[provider["options"]["path"]]
    assert dashboards == ROOT / "tracehouse" / "dashboards" / "grafana"
    assert len(list(dashboards.glob("*.json"))) >= 4
    assert sources["/etc/grafana/provisioning"] == GRAFANA


# --- the cluster DDL the Job applies ----------------------------------------------------------


def test_migrate_print_with_the_cluster_configuration_gives_ddl_clickhouse_parses(
    tmp_path: Path, engine_url: str
) -> None:
    config = tmp_path / "tracehouse.yaml"
    config.write_text(_configmap_file("tracehouse.yaml"))
    env = {**os.environ, CONFIG_ENV: str(config), "TRACEHOUSE_DATA_DIR": str(tmp_path)}
    out = subprocess.run(
        [sys.executable, "-m", "tracehouse.cli", "migrate", "--print"],
        env=env,
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    statements = [s.strip() for s in out.split(";\n") if s.strip()]
    assert len(statements) >= 10
    client = connect(engine_url)
    try:
        for statement in statements:
            (formatted,) = client.query(
                "SELECT formatQuery({q:String})", parameters={"q": statement}
            ).first_row
            assert formatted
            if formatted.startswith("CREATE TABLE"):
                assert "ON CLUSTER tracehouse" in formatted, formatted[:120]
    finally:
        client.close()
    assert any("TTL" in s and "toIntervalDay(14)" in s for s in statements)  # retention
