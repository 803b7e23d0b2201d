"""The Helm chart in helm/streams, rendered with ``helm template`` (skipped when helm is missing).

``scripts/helm-check.sh`` lints the chart and validates the manifests against the Kubernetes
schemas; these tests pin down what the chart must say. The exec probe script is tested on its own
(no helm needed) against a real flock.
"""

from __future__ import annotations

import fcntl
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "helm" / "streams"
PROBE = CHART / "files" / "probe.py"
SPLIT_VALUES = CHART / "ci" / "sasl-tls-split-values.yaml"
EXISTING_SECRET_VALUES = CHART / "ci" / "existing-secret-values.yaml"
KUBE_VERSION = "1.34.0"
ALL_PROCESSORS = {"router", "matcher", "executor", "timers"}

# A throw-away chart that turns rendered manifests into one JSON document with helm's own YAML
# parser, so the tests need no YAML library.
_TO_JSON_TEMPLATE = """\
{{- $items := list -}}
{{- range $doc := regexSplit "(?m)^---[ \\t]*$" (.Files.Get "manifest.yaml") -1 -}}
{{- $obj := fromYaml $doc -}}
{{- if hasKey $obj "Error" -}}{{- fail (printf "cannot parse: %s" (get $obj "Error")) -}}{{- end -}}
{{- if $obj -}}{{- $items = append $items $obj -}}{{- end -}}
{{- end -}}
{{ dict "apiVersion" "v1" "kind" "List" "items" $items | toJson }}
"""


def _find_helm() -> str | None:
    found = shutil.which("helm")
    if found:
        return found
    candidates = [os.environ.get("GOBIN", "")]
    candidates += [str(Path(p) / "bin") for p in os.environ.get("GOPATH", "").split(os.pathsep) if p]
    candidates.append(str(Path.home() / "go" / "bin"))
    for directory in candidates:
        if directory and os.access(Path(directory) / "helm", os.X_OK):
            return str(Path(directory) / "helm")
    return None


@pytest.fixture(scope="module")
def helm() -> str:
    path = _find_helm()
    if path is None:
        pytest.skip("helm is not installed (scripts/helm-check.sh installs it with `go install`)")
    return path


@pytest.fixture(scope="module")
def json_chart(tmp_path_factory: pytest.TempPathFactory) -> Path:
    chart = tmp_path_factory.mktemp("tojson")
    (chart / "Chart.yaml").write_text("apiVersion: v2\nname: tojson\nversion: 0.0.0\n")
    (chart / "templates").mkdir()
    (chart / "templates" / "out.yaml").write_text(_TO_JSON_TEMPLATE)
    return chart


def _template(helm: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [helm, "template", "rel", str(CHART), "--kube-version", KUBE_VERSION, *args],
        capture_output=True,
        text=True,
        timeout=60,
    )


def _render(helm: str, json_chart: Path, *args: str) -> list[dict[str, Any]]:
    rendered = _template(helm, *args)
    assert rendered.returncode == 0, rendered.stderr
    (json_chart / "manifest.yaml").write_text(rendered.stdout)
    converted = subprocess.run(
        [helm, "template", "x", str(json_chart)], capture_output=True, text=True, timeout=60, check=True
    )
    last_line = converted.stdout.strip().splitlines()[-1]
    items: list[dict[str, Any]] = json.loads(last_line)["items"]
    return items


def _of_kind(objects: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    return [o for o in objects if o["kind"] == kind]


def _one(objects: list[dict[str, Any]], kind: str, name: str | None = None) -> dict[str, Any]:
    matches = [o for o in _of_kind(objects, kind) if name is None or o["metadata"]["name"] == name]
    assert len(matches) == 1, (
        f"expected one {kind} {name or ''}, got {[m['metadata']['name'] for m in matches]}"
    )
    return matches[0]


def _worker(statefulset: dict[str, Any]) -> dict[str, Any]:
    containers = statefulset["spec"]["template"]["spec"]["containers"]
    return next(c for c in containers if c["name"] == "worker")


def _arg(command: list[str], flag: str) -> str:
    return command[command.index(flag) + 1]


def _env(container: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {e["name"]: e for e in container.get("env", [])}


@pytest.fixture(scope="module")
def default(helm: str, json_chart: Path) -> list[dict[str, Any]]:
    return _render(helm, json_chart)


@pytest.fixture(scope="module")
def split(helm: str, json_chart: Path) -> list[dict[str, Any]]:
    return _render(helm, json_chart, "-f", str(SPLIT_VALUES))


def test_statefulset_runs_the_worker_with_a_state_volume_per_pod(default: list[dict[str, Any]]) -> None:
    sts = _one(default, "StatefulSet")
    worker = _worker(sts)
    command = worker["command"]
    assert command[:3] == ["streams", "worker", "examples.cart_abandonment:app"]
    assert _arg(command, "--state-dir") == "/var/lib/streams"
    assert set(_arg(command, "--processors").split(",")) == ALL_PROCESSORS
    assert sts["spec"]["replicas"] == 2

    (claim,) = sts["spec"]["volumeClaimTemplates"]
    assert claim["spec"]["accessModes"] == ["ReadWriteOnce"]
    assert claim["spec"]["resources"]["requests"]["storage"] == "10Gi"
    mounts = {m["name"]: m["mountPath"] for m in worker["volumeMounts"]}
    assert mounts[claim["metadata"]["name"]] == "/var/lib/streams"
    assert sts["spec"]["serviceName"] == _one(default, "Service")["metadata"]["name"]


def test_worker_reads_settings_from_the_configmap(default: list[dict[str, Any]]) -> None:
    config = _one(default, "ConfigMap", "rel-streams")
    assert config["data"]["STREAMS_NAMESPACE"] == "shop"
    assert config["data"]["STREAMS_BOOTSTRAP_SERVERS"] == "kafka:9092"
    assert config["data"]["STREAMS_PARTITIONS_RUNS"] == "6"
    assert config["data"]["STREAMS_STATE_DIR"] == "/var/lib/streams"
    worker = _worker(_one(default, "StatefulSet"))
    assert {"configMapRef": {"name": "rel-streams"}} in worker["envFrom"]
    assert not _of_kind(default, "Secret"), "no secret values, so no Secret"


def test_topics_job_is_a_pre_install_and_pre_upgrade_hook(default: list[dict[str, Any]]) -> None:
    job = _one(default, "Job")
    annotations = job["metadata"]["annotations"]
    assert set(annotations["helm.sh/hook"].split(",")) == {"pre-install", "pre-upgrade"}
    assert "before-hook-creation" in annotations["helm.sh/hook-delete-policy"]
    (container,) = job["spec"]["template"]["spec"]["containers"]
    assert container["command"] == ["streams", "topics", "create"]
    # The ConfigMap does not exist yet when a pre-install hook runs: the Job carries the same
    # settings inline.
    config = _one(default, "ConfigMap", "rel-streams")["data"]
    inline = {name: e["value"] for name, e in _env(container).items() if "value" in e}
    assert inline == config


def test_pods_run_as_the_non_root_user_of_the_image(default: list[dict[str, Any]]) -> None:
    for pod in [_one(default, "StatefulSet")["spec"]["template"], _one(default, "Job")["spec"]["template"]]:
        security = pod["spec"]["securityContext"]
        assert security["runAsNonRoot"] is True
        assert security["runAsUser"] == 10001
        assert security["fsGroup"] == 10001
        for container in pod["spec"]["containers"]:
            assert container["securityContext"]["allowPrivilegeEscalation"] is False
            assert container["securityContext"]["capabilities"]["drop"] == ["ALL"]


def test_graceful_shutdown_and_honest_probes(default: list[dict[str, Any]]) -> None:
    pod = _one(default, "StatefulSet")["spec"]["template"]["spec"]
    assert pod["terminationGracePeriodSeconds"] >= 30
    worker = _worker(_one(default, "StatefulSet"))
    for probe in ("livenessProbe", "readinessProbe"):
        # The worker serves no HTTP endpoint yet: exec probes only.
        assert set(worker[probe]) & {"httpGet", "tcpSocket", "grpc"} == set()
        assert worker[probe]["exec"]["command"][1] == "/etc/streams/probe/probe.py"
    probe_config = _one(default, "ConfigMap", "rel-streams-probe")
    assert probe_config["data"]["probe.py"] == PROBE.read_text()
    assert _env(worker)["STREAMS_PROBE_PROCESSORS"]["value"] == _arg(worker["command"], "--processors")


def test_pdb_selects_the_worker_pods(default: list[dict[str, Any]]) -> None:
    pdb = _one(default, "PodDisruptionBudget")
    sts = _one(default, "StatefulSet")
    assert pdb["spec"]["maxUnavailable"] == 1
    assert (
        pdb["spec"]["selector"]["matchLabels"].items()
        <= sts["spec"]["template"]["metadata"]["labels"].items()
    )


def test_split_roles_give_each_processor_to_one_statefulset(split: list[dict[str, Any]]) -> None:
    statefulsets = {s["metadata"]["name"]: s for s in _of_kind(split, "StatefulSet")}
    assert set(statefulsets) == {"rel-streams-ingest", "rel-streams-exec", "rel-streams-timers"}
    processors = [_arg(_worker(s)["command"], "--processors").split(",") for s in statefulsets.values()]
    assert sorted(p for group in processors for p in group) == sorted(ALL_PROCESSORS)
    executor = statefulsets["rel-streams-exec"]
    command = _worker(executor)["command"]
    assert executor["spec"]["replicas"] == 4
    assert _arg(command, "--mode") == "processes"
    assert _arg(command, "--max-concurrent-steps") == "64"
    assert executor["spec"]["volumeClaimTemplates"][0]["spec"]["resources"]["requests"]["storage"] == "20Gi"
    assert executor["spec"]["volumeClaimTemplates"][0]["spec"]["storageClassName"] == "fast-ssd"
    assert len(_of_kind(split, "PodDisruptionBudget")) == 3


def test_sasl_password_and_tls_files_come_from_the_secret(split: list[dict[str, Any]]) -> None:
    secret = _one(split, "Secret", "rel-streams")
    assert set(secret["data"]) == {"sasl-password", "ca.crt"}
    config = _one(split, "ConfigMap", "rel-streams")["data"]
    assert config["STREAMS_SECURITY_PROTOCOL"] == "SASL_SSL"
    assert config["STREAMS_SASL_MECHANISM"] == "SCRAM-SHA-512"
    assert "STREAMS_SASL_PASSWORD" not in config
    for sts in _of_kind(split, "StatefulSet"):
        worker = _worker(sts)
        ref = _env(worker)["STREAMS_SASL_PASSWORD"]["valueFrom"]["secretKeyRef"]
        assert ref == {"name": "rel-streams", "key": "sasl-password"}
        mounts = {m["name"]: m for m in worker["volumeMounts"]}
        assert mounts["tls"]["readOnly"] is True
        volume = next(v for v in sts["spec"]["template"]["spec"]["volumes"] if v["name"] == "tls")
        files = {item["path"] for item in volume["secret"]["items"]}
        assert config["STREAMS_SSL_CA_LOCATION"] == f"{mounts['tls']['mountPath']}/ca.crt"
        assert files == {"ca.crt"}


def test_topics_job_gets_its_own_hook_secret_before_it_runs(split: list[dict[str, Any]]) -> None:
    job = _one(split, "Job")
    hook_secret = _one(split, "Secret", "rel-streams-topics")
    assert hook_secret["data"] == _one(split, "Secret", "rel-streams")["data"]
    annotations = hook_secret["metadata"]["annotations"]
    assert annotations["helm.sh/hook"] == job["metadata"]["annotations"]["helm.sh/hook"]
    assert int(annotations["helm.sh/hook-weight"]) < int(
        job["metadata"]["annotations"]["helm.sh/hook-weight"]
    )
    (container,) = job["spec"]["template"]["spec"]["containers"]
    assert (
        _env(container)["STREAMS_SASL_PASSWORD"]["valueFrom"]["secretKeyRef"]["name"] == "rel-streams-topics"
    )


def test_existing_secret_is_referenced_not_created(helm: str, json_chart: Path) -> None:
    objects = _render(helm, json_chart, "-f", str(EXISTING_SECRET_VALUES))
    assert not _of_kind(objects, "Secret")
    worker = _worker(_one(objects, "StatefulSet"))
    assert _env(worker)["STREAMS_SASL_PASSWORD"]["valueFrom"]["secretKeyRef"] == {
        "name": "kafka-client",
        "key": "password",
    }
    config = _one(objects, "ConfigMap", "rel-streams")["data"]
    assert config["STREAMS_SSL_KEY_LOCATION"] == "/etc/streams/tls/tls.key"
    assert "STREAMS_SSL_KEY_PASSWORD" not in _env(worker)


def test_a_processor_left_out_of_every_role_is_refused(helm: str) -> None:
    result = _template(helm, "--set", r"roles[0].name=all,roles[0].processors=router\,matcher\,executor")
    assert result.returncode != 0
    assert "no role runs the timers processor" in result.stderr


# The probe script, against real flocks (Linux only).
needs_proc_locks = pytest.mark.skipif(not Path("/proc/locks").exists(), reason="needs Linux /proc/locks")


def _probe(mode: str, state_dir: Path, processors: str) -> subprocess.CompletedProcess[str]:
    env = {
        **os.environ,
        "STREAMS_STATE_DIR": str(state_dir),
        "STREAMS_NAMESPACE": "shop",
        "STREAMS_PROBE_PROCESSORS": processors,
    }
    return subprocess.run(
        [sys.executable, str(PROBE), mode], env=env, capture_output=True, text=True, timeout=30
    )


@needs_proc_locks
def test_probe_is_ready_only_while_every_processor_holds_its_state_directory(tmp_path: Path) -> None:
    assert _probe("ready", tmp_path, "router,timers").returncode == 1  # nothing started yet
    fds = []
    for processor in ("router", "timers"):
        directory = tmp_path / "shop" / processor
        directory.mkdir(parents=True)
        fds.append(os.open(directory / ".lock", os.O_RDWR | os.O_CREAT, 0o644))
    fcntl.flock(fds[0], fcntl.LOCK_EX | fcntl.LOCK_NB)
    try:
        waiting = _probe("ready", tmp_path, "router,timers")
        assert waiting.returncode == 1
        assert "timers" in waiting.stdout and "router" not in waiting.stdout
        fcntl.flock(fds[1], fcntl.LOCK_EX | fcntl.LOCK_NB)
        assert _probe("ready", tmp_path, "router,timers").returncode == 0
        assert _probe("live", tmp_path, "router,timers").returncode == 0
    finally:
        for fd in fds:
            os.close(fd)  # releases the locks, as a stopping processor does
    assert _probe("ready", tmp_path, "router,timers").returncode == 1
