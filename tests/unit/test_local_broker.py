"""The local broker's generated files, install logic and status, without starting Java."""

from __future__ import annotations

import base64
import os
import socket
import stat
import subprocess
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest
from click.testing import CliRunner

from streams._broker import (
    DEPENDENCY_PLUGIN_VERSION,
    KAFKA_VERSION,
    LOG4J_VERSION,
    LocalKafka,
    _pick_ports,
    java_major_version,
    new_cluster_id,
    render_log4j2,
    render_pom,
    render_server_properties,
)
from streams._broker_cli import kafka_group
from streams.errors import BrokerError

POM_NS = {"m": "http://maven.apache.org/POM/4.0.0"}


def _properties(text: str) -> dict[str, str]:
    pairs = (line.split("=", 1) for line in text.splitlines() if line and not line.startswith("#"))
    return {key.strip(): value.strip() for key, value in pairs}


def _script(path: Path, body: str) -> str:
    path.write_text("#!/bin/sh\n" + body)
    path.chmod(path.stat().st_mode | stat.S_IXUSR)
    return str(path)


def _fake_java(tmp_path: Path, version: str = "17.0.15") -> str:
    return _script(tmp_path / "java", f"echo 'openjdk version \"{version}\" 2025-04-15' >&2\n")


def _fake_mvn(tmp_path: Path, *, fail: bool = False) -> str:
    """A stand-in for Maven that "downloads" the expected jars and counts its calls."""
    jars = f"kafka_2.13-{KAFKA_VERSION}.jar log4j-core-{LOG4J_VERSION}.jar slf4j-api-1.7.36.jar"
    failure = 'echo "[ERROR] Could not resolve dependencies" >&2; exit 1\n' if fail else ""
    return _script(
        tmp_path / "mvn",
        f'echo call >> "{tmp_path}/mvn.calls"\n{failure}'
        'for arg in "$@"; do\n'
        '  case "$arg" in -DoutputDirectory=*) out="${arg#-DoutputDirectory=}";; esac\n'
        "done\n"
        f'mkdir -p "$out"; for jar in {jars}; do touch "$out/$jar"; done\n',
    )


def _calls(tmp_path: Path) -> int:
    path = tmp_path / "mvn.calls"
    return len(path.read_text().splitlines()) if path.exists() else 0


def test_server_properties_make_a_single_node_kraft_broker(tmp_path: Path) -> None:
    props = _properties(render_server_properties(39092, 39093, tmp_path / "kraft-logs"))
    assert props["process.roles"] == "broker,controller"
    assert props["controller.quorum.voters"] == f"{props['node.id']}@127.0.0.1:39093"
    assert props["listeners"] == "PLAINTEXT://127.0.0.1:39092,CONTROLLER://127.0.0.1:39093"
    assert props["advertised.listeners"] == "PLAINTEXT://127.0.0.1:39092"
    assert props["log.dirs"] == str(tmp_path / "kraft-logs")
    for key in (
        "offsets.topic.replication.factor",
        "transaction.state.log.replication.factor",
        "transaction.state.log.min.isr",
        "min.insync.replicas",
        "default.replication.factor",
        "num.partitions",
    ):
        assert props[key] == "1", key
    assert props["group.initial.rebalance.delay.ms"] == "0"
    assert props["auto.create.topics.enable"] == "false"


def test_property_values_escape_backslashes() -> None:
    props = render_server_properties(1, 2, Path("/data/a\\b"))
    assert "log.dirs=/data/a\\\\b" in props.splitlines()


def test_pom_pins_kafka_and_the_log4j_binding() -> None:
    root = ET.fromstring(render_pom())
    deps = {
        (dep.findtext("m:groupId", namespaces=POM_NS), dep.findtext("m:artifactId", namespaces=POM_NS)): (
            dep.findtext("m:version", namespaces=POM_NS)
        )
        for dep in root.iterfind("m:dependencies/m:dependency", POM_NS)
    }
    assert deps == {
        ("org.apache.kafka", "kafka_2.13"): KAFKA_VERSION,
        ("org.apache.logging.log4j", "log4j-slf4j-impl"): LOG4J_VERSION,
        ("org.apache.logging.log4j", "log4j-core"): LOG4J_VERSION,
    }
    plugin = root.find("m:build/m:pluginManagement/m:plugins/m:plugin", POM_NS)
    assert plugin is not None
    assert plugin.findtext("m:artifactId", namespaces=POM_NS) == "maven-dependency-plugin"
    assert plugin.findtext("m:version", namespaces=POM_NS) == DEPENDENCY_PLUGIN_VERSION


def test_log4j2_config_writes_the_broker_log_to_the_data_dir(tmp_path: Path) -> None:
    props = _properties(render_log4j2(tmp_path / "logs" / "server.log"))
    assert props["appender.file.fileName"] == str(tmp_path / "logs" / "server.log")
    assert props["rootLogger.appenderRef.file.ref"] == props["appender.file.name"]


def test_cluster_ids_have_kafkas_format() -> None:
    ids = {new_cluster_id() for _ in range(200)}
    assert len(ids) == 200
    for cluster_id in ids:
        assert len(cluster_id) == 22 and not cluster_id.startswith("-")
        assert len(base64.urlsafe_b64decode(cluster_id + "==")) == 16


def test_from_env_is_the_only_place_reading_variables(tmp_path: Path) -> None:
    kafka = LocalKafka.from_env({"STREAMS_KAFKA_HOME": str(tmp_path / "k"), "XDG_CACHE_HOME": "/c"})
    assert kafka.home == tmp_path / "k"
    assert kafka.data_dir == Path("/c/streams/kafka-data/default")
    default = LocalKafka.from_env({})
    assert default.home == Path.home() / ".cache" / "streams" / "kafka" / KAFKA_VERSION
    assert default.libs_dir == default.home / "libs"


def test_java_version_parsing(tmp_path: Path) -> None:
    assert java_major_version(_fake_java(tmp_path, "17.0.15")) == 17
    assert java_major_version(_fake_java(tmp_path, "21")) == 21
    assert java_major_version(_fake_java(tmp_path, "1.8.0_392")) == 8
    assert java_major_version(str(tmp_path / "missing")) is None


def test_old_java_is_refused_with_what_to_install(tmp_path: Path) -> None:
    old_java = _fake_java(tmp_path, "11.0.2")
    kafka = LocalKafka(home=tmp_path / "home", data_dir=tmp_path / "data", java=old_java)
    with pytest.raises(BrokerError, match=r"needs Java 17\+.*openjdk-17-jre-headless"):
        kafka.install()


def test_missing_java_and_maven_say_what_to_install(tmp_path: Path) -> None:
    no_java = LocalKafka(home=tmp_path / "home", data_dir=tmp_path / "data", java="no-such-java-xyz")
    with pytest.raises(BrokerError, match=r"Java not found.*apt-get install openjdk-17-jre-headless"):
        no_java.install()
    no_mvn = LocalKafka(
        home=tmp_path / "home", data_dir=tmp_path / "data", java=_fake_java(tmp_path), mvn="no-such-mvn-xyz"
    )
    with pytest.raises(BrokerError, match=r"Maven \(mvn\) not found.*apt-get install maven"):
        no_mvn.install()


def test_install_runs_maven_once_and_marks_completion(tmp_path: Path) -> None:
    kafka = LocalKafka(
        home=tmp_path / "home", data_dir=tmp_path / "data", java=_fake_java(tmp_path), mvn=_fake_mvn(tmp_path)
    )
    assert not kafka.installed
    libs = kafka.install()
    assert libs == kafka.libs_dir and (libs / f"kafka_2.13-{KAFKA_VERSION}.jar").exists()
    assert kafka.installed and (kafka.home / "pom.xml").read_text() == render_pom()
    assert kafka.install() == libs
    assert _calls(tmp_path) == 1
    kafka.install(force=True)
    assert _calls(tmp_path) == 2
    assert not list(kafka.home.glob("libs.tmp-*"))


def test_failed_install_keeps_no_marker_and_reports_maven_output(tmp_path: Path) -> None:
    kafka = LocalKafka(
        home=tmp_path / "home",
        data_dir=tmp_path / "data",
        java=_fake_java(tmp_path),
        mvn=_fake_mvn(tmp_path, fail=True),
    )
    with pytest.raises(BrokerError, match=r"(?s)Maven failed.*Could not resolve dependencies"):
        kafka.install()
    assert not kafka.installed
    assert not kafka.libs_dir.exists() and not list(kafka.home.glob("libs.tmp-*"))


def test_a_changed_pom_invalidates_the_install(tmp_path: Path) -> None:
    kafka = LocalKafka(
        home=tmp_path / "home", data_dir=tmp_path / "data", java=_fake_java(tmp_path), mvn=_fake_mvn(tmp_path)
    )
    kafka.install()
    marker = kafka.home / ".installed"
    marker.write_text(marker.read_text().replace('"pom_sha256": "', '"pom_sha256": "stale'))
    assert not kafka.installed


def test_status_of_a_fresh_data_dir(tmp_path: Path) -> None:
    status = LocalKafka(home=tmp_path / "home", data_dir=tmp_path / "data").status()
    assert not status.running and status.pid is None and status.bootstrap is None
    assert status.log_file == tmp_path / "data" / "logs" / "server.log"


def test_stale_or_foreign_pid_files_do_not_count_as_running(tmp_path: Path) -> None:
    data = tmp_path / "data"
    data.mkdir()
    kafka = LocalKafka(home=tmp_path / "home", data_dir=data)
    dead = subprocess.run(["sh", "-c", "echo $$"], capture_output=True, text=True, check=True)
    (data / "broker.pid").write_text(dead.stdout)
    (data / "bootstrap").write_text("127.0.0.1:1\n")
    assert not kafka.status().running
    if Path("/proc/self").exists():  # the pid is alive but not this data dir's Kafka
        (data / "broker.pid").write_text(f"{os.getpid()}\n")
        assert not kafka.status().running
    assert kafka.stop() is None
    assert not (data / "broker.pid").exists() and not (data / "bootstrap").exists()


def test_ports_busy_ones_are_refused_or_replaced() -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        taken = busy.getsockname()[1]
        with pytest.raises(BrokerError, match=f"port {taken} .* in use"):
            _pick_ports(taken, None, explicit=True)
        port, controller = _pick_ports(taken, taken, explicit=False)
        assert taken not in (port, controller) and port != controller
    again, _ = _pick_ports(port, None, explicit=False)
    assert again == port


def test_cli_status_of_a_stopped_broker(tmp_path: Path) -> None:
    result = CliRunner().invoke(
        kafka_group,
        ["status", "--data-dir", str(tmp_path / "data")],
        env={"STREAMS_KAFKA_HOME": str(tmp_path / "home")},
    )
    assert result.exit_code == 3, result.output
    assert "running: no" in result.output
    stopped = CliRunner().invoke(kafka_group, ["stop", "--data-dir", str(tmp_path / "data")])
    assert stopped.exit_code == 0 and stopped.output.strip() == "not running"
