"""A local single-node Apache Kafka for development and tests, run from jars without Docker.

Responsibilities:

- install: resolve the pinned Kafka jars (plus a log4j2 binding) with Maven into a cache folder, once;
- start: write ``server.properties`` and a log4j2 config, format the storage on first start and launch
  a combined KRaft broker+controller as a detached process, then wait until it answers metadata;
- stop and status, found again through files in the data directory.

Layout of a data directory (default ``~/.cache/streams/kafka-data/default``)::

    broker.json         cluster id and the ports last used (reused on the next start when free)
    broker.pid          pid of the running broker; removed by stop
    bootstrap           "127.0.0.1:<port>" while the broker runs; removed by stop
    server.properties   written on every start
    log4j2.properties   written on every start
    kraft-logs/         partitions and the KRaft metadata log
    logs/server.log     broker log (rolled at 50 MB, 3 files); logs/stdout.log: JVM output

Only :meth:`LocalKafka.from_env` reads environment variables.
"""

from __future__ import annotations

import base64
import contextlib
import errno
import hashlib
import json
import logging
import os
import re
import shutil
import signal
import socket
import subprocess
import time
import uuid
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from streams.errors import BrokerError

__all__ = [
    "DEPENDENCY_PLUGIN_VERSION",
    "KAFKA_VERSION",
    "LOG4J_VERSION",
    "BrokerStatus",
    "LocalKafka",
]

_log = logging.getLogger(__name__)

#: Kafka release the local broker runs. 4.4.0 does not resolve (its kafka-tools-api is missing);
#: bumping this moves the
#: install into a new cache folder.
KAFKA_VERSION = "4.3.1"
SCALA_VERSION = "2.13"
#: Kafka's jars log through slf4j 1.7; this binding routes them to log4j2 so the broker log is kept.
LOG4J_VERSION = "2.24.3"
#: Pinned so the install does not depend on the version a given Maven release defaults to.
DEPENDENCY_PLUGIN_VERSION = "3.8.1"
MIN_JAVA_VERSION = 17

_HOST = "127.0.0.1"
_NODE_ID = 1
_MARKER = ".installed"
_LOG_TAIL_LINES = 40
_ERROR_LINE = re.compile(r"\] (ERROR|FATAL) ")
_JAVA_HINT = (
    "install Java 17 or newer, e.g. `sudo apt-get install openjdk-17-jre-headless` (Debian/Ubuntu), "
    "`brew install openjdk@17` (macOS), or set JAVA_HOME/PATH to an existing JDK"
)
_MAVEN_HINT = (
    "install Maven (needed once, to download the Kafka jars), e.g. `sudo apt-get install maven` "
    "(Debian/Ubuntu) or `brew install maven` (macOS)"
)


@dataclass(frozen=True)
class BrokerStatus:
    """What :meth:`LocalKafka.status` found in a data directory.

    Attributes:
        running: Whether the broker process is alive.
        pid: Its process id, when running.
        bootstrap: Its ``host:port``, when running.
        data_dir: The data directory looked at.
        log_file: The broker log.
    """

    running: bool
    pid: int | None
    bootstrap: str | None
    data_dir: Path
    log_file: Path


class LocalKafka:
    """Installs, starts and stops a single-node KRaft Kafka (combined broker and controller).

    The broker is meant for development and tests: one node, replication factor 1 everywhere,
    plaintext on 127.0.0.1 only, automatic topic creation off (topics are created explicitly, as in
    production). Exactly-once transactions work.

    Args:
        home: Install folder; the jars go to ``home/libs``.
        data_dir: Default data directory of :meth:`start`, :meth:`stop` and :meth:`status`.
        java: The ``java`` executable (name on ``PATH`` or a path).
        mvn: The ``mvn`` executable, used by :meth:`install` only.
        heap: JVM heap flags; ``-Xms256m -Xmx1g`` keeps the broker at about 320 MB resident.
    """

    def __init__(
        self,
        *,
        home: Path,
        data_dir: Path,
        java: str = "java",
        mvn: str = "mvn",
        heap: tuple[str, ...] = ("-Xms256m", "-Xmx1g"),
    ) -> None:
        self.home = Path(home).expanduser().absolute()
        self.data_dir = Path(data_dir).expanduser().absolute()
        self.java = java
        self.mvn = mvn
        self.heap = heap

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> LocalKafka:
        """Builds the default instance; the one place this module reads environment variables.

        ``STREAMS_KAFKA_HOME`` overrides the install folder (default
        ``$XDG_CACHE_HOME/streams/kafka/<version>``, i.e. ``~/.cache/streams/kafka/4.3.1``). The
        default data directory is ``$XDG_CACHE_HOME/streams/kafka-data/default``: one well-known
        broker per user, which ``streams kafka stop``/``status`` find without arguments.

        Args:
            env: Variables to read instead of ``os.environ``.
        """
        source = os.environ if env is None else env
        cache = Path(source.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "streams"
        home = source.get("STREAMS_KAFKA_HOME") or cache / "kafka" / KAFKA_VERSION
        return cls(home=Path(home), data_dir=cache / "kafka-data" / "default")

    def __repr__(self) -> str:
        return f"LocalKafka(home={str(self.home)!r}, data_dir={str(self.data_dir)!r})"

    # -- install ---------------------------------------------------------------------------------

    @property
    def libs_dir(self) -> Path:
        """Folder holding the broker's jars once installed."""
        return self.home / "libs"

    @property
    def installed(self) -> bool:
        """Whether a complete install matching the current pom is present."""
        marker = self.home / _MARKER
        try:
            recorded = json.loads(marker.read_text())
        except (OSError, ValueError):
            return False
        return isinstance(recorded, dict) and recorded.get("pom_sha256") == _sha256(render_pom())

    def install(self, *, force: bool = False) -> Path:
        """Downloads the Kafka jars with Maven into :attr:`libs_dir`, unless already there.

        Maven runs with strict checksums into a temporary folder that replaces ``libs`` only on
        success, and a marker file records the pom it came from, so an interrupted install is redone
        and stale jars never mix with new ones. Concurrent installs wait for each other.

        Args:
            force: Reinstall even when a complete install exists.

        Returns:
            The folder holding the jars.

        Raises:
            BrokerError: Java or Maven is missing or too old, or Maven fails.
        """
        self.home.mkdir(parents=True, exist_ok=True)
        with _file_lock(self.home / ".lock"):
            if self.installed and not force:
                return self.libs_dir
            self._java_path()  # Maven needs Java too; fail early with the clearer message.
            mvn = _which(self.mvn, "Maven (mvn)", _MAVEN_HINT)
            pom = self.home / "pom.xml"
            pom.write_text(render_pom())
            staging = self.home / f"libs.tmp-{os.getpid()}"
            shutil.rmtree(staging, ignore_errors=True)
            (self.home / _MARKER).unlink(missing_ok=True)
            goal = ["dependency:copy-dependencies", f"-DoutputDirectory={staging}", "-DincludeScope=runtime"]
            command = [mvn, "-B", "-q", "-C", "-f", str(pom), *goal]
            _log.info("installing Kafka %s jars into %s", KAFKA_VERSION, self.libs_dir)
            try:
                done = subprocess.run(
                    command, cwd=self.home, capture_output=True, text=True, timeout=1800, check=False
                )
            except subprocess.TimeoutExpired as exc:
                raise BrokerError(f"Maven did not finish within 30 minutes: {' '.join(command)}") from exc
            (self.home / "install.log").write_text(done.stdout + done.stderr)
            if done.returncode != 0:
                shutil.rmtree(staging, ignore_errors=True)
                raise BrokerError(
                    f"Maven failed (exit {done.returncode}) to download the Kafka jars; command: "
                    f"{' '.join(command)}\n{_tail_text(done.stdout + done.stderr)}"
                )
            jars = sorted(p.name for p in staging.glob("*.jar"))
            expected = (f"kafka_{SCALA_VERSION}-{KAFKA_VERSION}.jar", f"log4j-core-{LOG4J_VERSION}.jar")
            missing = [name for name in expected if name not in jars]
            if missing:
                raise BrokerError(f"Maven finished but {', '.join(missing)} is missing from {staging}")
            shutil.rmtree(self.libs_dir, ignore_errors=True)
            staging.rename(self.libs_dir)
            marker = {"kafka_version": KAFKA_VERSION, "pom_sha256": _sha256(render_pom()), "jars": jars}
            (self.home / _MARKER).write_text(json.dumps(marker, indent=2) + "\n")
            _log.info("installed %d jars into %s", len(jars), self.libs_dir)
            return self.libs_dir

    # -- start / stop / status -------------------------------------------------------------------

    def start(self, port: int | None = None, data_dir: Path | None = None, *, timeout: float = 60.0) -> str:
        """Starts the broker detached and waits until it serves metadata; idempotent.

        Steps:
            1. If a broker already runs on ``data_dir``, return its address (an explicit ``port``
               that differs is an error).
            2. Install the jars if needed.
            3. Pick ports: ``port`` if given, else the port used last time if free, else a free one;
               the controller port likewise.
            4. Write ``server.properties`` and ``log4j2.properties``; format the storage on first
               start with a new cluster id (kept in ``broker.json``).
            5. Launch Java in its own session (it outlives this process) and write ``broker.pid``.
            6. Wait until the broker answers a metadata request, then write ``bootstrap``.

        Args:
            port: Client (PLAINTEXT) port on 127.0.0.1.
            data_dir: Data directory; defaults to :attr:`data_dir`.
            timeout: Seconds to wait for readiness.

        Returns:
            The bootstrap address, ``127.0.0.1:<port>``.

        Raises:
            BrokerError: Installing, formatting or starting failed, or the broker was not ready in
                time (the message ends with the broker log's last lines; the process is stopped).
        """
        data = self._data_dir(data_dir)
        data.mkdir(parents=True, exist_ok=True)
        with _file_lock(data / ".lock"):
            # Step 1
            current = self.status(data)
            if current.running and current.bootstrap is not None:
                if port is not None and current.bootstrap != f"{_HOST}:{port}":
                    raise BrokerError(
                        f"a broker already runs on {current.bootstrap} with data dir {data}; stop it "
                        "first (`streams kafka stop`) or use another --data-dir"
                    )
                return current.bootstrap
            if current.running:
                self._stop_locked(data, current.pid, 30.0)
            _remove(data / "broker.pid", data / "bootstrap")
            # Step 2
            self.install()
            java = self._java_path()
            # Step 3
            state = _read_json(data / "broker.json")
            client_port, controller_port = _pick_ports(
                port if port is not None else _int_or_none(state.get("port")),
                _int_or_none(state.get("controller_port")),
                explicit=port is not None,
            )
            cluster_id = str(state.get("cluster_id") or new_cluster_id())
            # Step 4
            kraft_dir = data / "kraft-logs"
            (data / "logs").mkdir(exist_ok=True)
            properties = data / "server.properties"
            properties.write_text(render_server_properties(client_port, controller_port, kraft_dir))
            (data / "log4j2.properties").write_text(render_log4j2(data / "logs" / "server.log"))
            state = {"cluster_id": cluster_id, "port": client_port, "controller_port": controller_port}
            (data / "broker.json").write_text(json.dumps(state, indent=2) + "\n")
            if not (kraft_dir / "meta.properties").exists():
                self._format(java, data, cluster_id)
            # Step 5
            log_offset = _file_size(data / "logs" / "server.log")
            pid = self._launch(java, data)
            (data / "broker.pid").write_text(f"{pid}\n")
            bootstrap = f"{_HOST}:{client_port}"
            _log.info("started Kafka %s (pid %d) on %s, data dir %s", KAFKA_VERSION, pid, bootstrap, data)
            # Step 6
            try:
                _wait_ready(pid, bootstrap, data, timeout, log_offset)
            except BaseException:  # also Ctrl-C: never leave a half-started broker behind
                self._stop_locked(data, pid, 10.0)
                raise
            (data / "bootstrap").write_text(bootstrap + "\n")
            return bootstrap

    def stop(self, data_dir: Path | None = None, *, timeout: float = 30.0) -> int | None:
        """Stops the broker: SIGTERM (controlled shutdown), then SIGKILL after ``timeout`` seconds.

        Args:
            data_dir: Data directory; defaults to :attr:`data_dir`.
            timeout: Seconds to wait after SIGTERM.

        Returns:
            The pid that was stopped, or ``None`` when no broker was running.
        """
        data = self._data_dir(data_dir)
        if not data.is_dir():
            return None
        with _file_lock(data / ".lock"):
            current = self.status(data)
            self._stop_locked(data, current.pid, timeout)
            return current.pid

    def status(self, data_dir: Path | None = None) -> BrokerStatus:
        """Reports whether a broker runs on a data directory, from its pid and bootstrap files.

        A pid file whose process is gone, is a zombie, or (on Linux) is not this data directory's
        Kafka counts as not running.

        Args:
            data_dir: Data directory; defaults to :attr:`data_dir`.
        """
        data = self._data_dir(data_dir)
        pid = _int_or_none(_read_text(data / "broker.pid"))
        running = pid is not None and _is_broker(pid, data)
        bootstrap = _read_text(data / "bootstrap") if running else None
        return BrokerStatus(
            running=running,
            pid=pid if running else None,
            bootstrap=bootstrap or None,
            data_dir=data,
            log_file=data / "logs" / "server.log",
        )

    # -- internals -------------------------------------------------------------------------------

    def _data_dir(self, data_dir: Path | None) -> Path:
        return self.data_dir if data_dir is None else Path(data_dir).expanduser().absolute()

    def _java_path(self) -> str:
        java = _which(self.java, "Java", _JAVA_HINT)
        version = java_major_version(java)
        if version is None or version < MIN_JAVA_VERSION:
            found = "unknown" if version is None else str(version)
            raise BrokerError(
                f"Kafka {KAFKA_VERSION} needs Java {MIN_JAVA_VERSION}+, {java} is {found}; " + _JAVA_HINT
            )
        return java

    def _jvm_command(self, java: str, data: Path, main: str) -> list[str]:
        logs = data / "logs"
        if main != "kafka.Kafka":  # a short-lived tool (storage format): no tuning, no GC log
            return [
                java,
                f"-Dlog4j2.configurationFile={data / 'log4j2.properties'}",
                "-cp",
                f"{self.libs_dir}/*",
                main,
            ]
        return [
            java,
            *self.heap,
            # Kafka's own defaults (kafka-run-class.sh), with GC threads capped for small machines
            # where the broker shares two cores with the workers.
            "-XX:+UseG1GC",
            "-XX:MaxGCPauseMillis=20",
            "-XX:InitiatingHeapOccupancyPercent=35",
            "-XX:+ExplicitGCInvokesConcurrent",
            f"-XX:ParallelGCThreads={min(2, os.cpu_count() or 1)}",
            "-XX:ConcGCThreads=1",
            "-XX:+ExitOnOutOfMemoryError",
            f"-XX:ErrorFile={logs}/hs_err_pid%p.log",
            f"-Xlog:gc*:file={logs}/gc.log:time,tags:filecount=3,filesize=10M",
            "-Djava.awt.headless=true",
            f"-Dlog4j2.configurationFile={data / 'log4j2.properties'}",
            "-cp",
            f"{self.libs_dir}/*",
            main,
        ]

    def _format(self, java: str, data: Path, cluster_id: str) -> None:
        arguments = ["format", "-t", cluster_id, "-c", str(data / "server.properties")]
        command = [*self._jvm_command(java, data, "kafka.tools.StorageTool"), *arguments]
        done = subprocess.run(command, capture_output=True, text=True, timeout=120, check=False)
        if done.returncode != 0:
            raise BrokerError(
                f"formatting the Kafka storage in {data / 'kraft-logs'} failed (exit {done.returncode}):\n"
                + _tail_text(done.stdout + done.stderr)
            )

    def _launch(self, java: str, data: Path) -> int:
        command = [*self._jvm_command(java, data, "kafka.Kafka"), str(data / "server.properties")]
        stdout = data / "logs" / "stdout.log"
        # posix_spawn, not subprocess.Popen: the broker must outlive this process, and a Popen object
        # dropped while its child runs raises ResourceWarning. setsid gives it its own session and
        # process group, so Ctrl-C in the terminal that started it does not reach it.
        return os.posix_spawn(
            java,
            command,
            dict(os.environ),
            file_actions=[
                (os.POSIX_SPAWN_OPEN, 0, os.devnull, os.O_RDONLY, 0),
                (os.POSIX_SPAWN_OPEN, 1, str(stdout), os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644),
                (os.POSIX_SPAWN_DUP2, 1, 2),
            ],
            setsid=True,
        )

    def _stop_locked(self, data: Path, pid: int | None, timeout: float) -> None:
        if pid is not None and _is_broker(pid, data):
            _log.info("stopping Kafka (pid %d), data dir %s", pid, data)
            _signal(pid, signal.SIGTERM)
            deadline = time.monotonic() + timeout
            while _alive(pid) and time.monotonic() < deadline:
                time.sleep(0.1)
            if _alive(pid):
                _log.warning("Kafka (pid %d) ignored SIGTERM for %.0f s; killing it", pid, timeout)
                _signal(pid, signal.SIGKILL)
                deadline = time.monotonic() + 10
                while _alive(pid) and time.monotonic() < deadline:
                    time.sleep(0.1)
        _remove(data / "broker.pid", data / "bootstrap")


# -- rendering (pure; unit-tested) ---------------------------------------------------------------


def render_pom() -> str:
    """The Maven project whose runtime dependencies are the broker's classpath."""
    deps = [
        ("org.apache.kafka", f"kafka_{SCALA_VERSION}", KAFKA_VERSION),
        ("org.apache.logging.log4j", "log4j-slf4j-impl", LOG4J_VERSION),
        ("org.apache.logging.log4j", "log4j-core", LOG4J_VERSION),
    ]
    dependencies = "\n".join(
        f"    <dependency><groupId>{group}</groupId><artifactId>{artifact}</artifactId>"
        f"<version>{version}</version></dependency>"
        for group, artifact, version in deps
    )
    return f"""<?xml version="1.0" encoding="UTF-8"?>
<!-- Generated by streams._broker; edits are overwritten. -->
<project xmlns="http://maven.apache.org/POM/4.0.0">
  <modelVersion>4.0.0</modelVersion>
  <groupId>local.streams</groupId>
  <artifactId>kafka-broker</artifactId>
  <version>{KAFKA_VERSION}</version>
  <packaging>pom</packaging>
  <dependencies>
{dependencies}
  </dependencies>
  <build>
    <pluginManagement>
      <plugins>
        <plugin>
          <groupId>org.apache.maven.plugins</groupId>
          <artifactId>maven-dependency-plugin</artifactId>
          <version>{DEPENDENCY_PLUGIN_VERSION}</version>
        </plugin>
      </plugins>
    </pluginManagement>
  </build>
</project>
"""


def render_server_properties(port: int, controller_port: int, log_dir: Path) -> str:
    """``server.properties`` of the single-node combined broker and controller.

    The static voter set (``controller.quorum.voters``) lets the controller port change between
    starts. Internal topics get replication factor 1 and fewer partitions than Kafka's default 50,
    which makes the first consumer group and the first transaction come up faster.

    Args:
        port: Client (PLAINTEXT) port on 127.0.0.1.
        controller_port: KRaft controller port on 127.0.0.1.
        log_dir: Where partitions and the metadata log live.
    """
    settings: dict[str, str | int] = {
        "process.roles": "broker,controller",
        "node.id": _NODE_ID,
        "controller.quorum.voters": f"{_NODE_ID}@{_HOST}:{controller_port}",
        "listeners": f"PLAINTEXT://{_HOST}:{port},CONTROLLER://{_HOST}:{controller_port}",
        "advertised.listeners": f"PLAINTEXT://{_HOST}:{port}",
        "controller.listener.names": "CONTROLLER",
        "inter.broker.listener.name": "PLAINTEXT",
        "listener.security.protocol.map": "PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT",
        "log.dirs": str(log_dir),
        "num.partitions": 1,
        "default.replication.factor": 1,
        "min.insync.replicas": 1,
        "auto.create.topics.enable": "false",
        "offsets.topic.replication.factor": 1,
        "offsets.topic.num.partitions": 10,
        "transaction.state.log.replication.factor": 1,
        "transaction.state.log.min.isr": 1,
        "transaction.state.log.num.partitions": 10,
        "share.coordinator.state.topic.replication.factor": 1,
        "share.coordinator.state.topic.min.isr": 1,
        "group.initial.rebalance.delay.ms": 0,
        "num.network.threads": 2,
        "num.io.threads": 4,
        "num.recovery.threads.per.data.dir": 1,
    }
    lines = [f"{key}={_escape_property(str(value))}" for key, value in settings.items()]
    return "# Generated by streams._broker on every start; edits are overwritten.\n" + "\n".join(lines) + "\n"


def render_log4j2(log_file: Path) -> str:
    """log4j2 configuration sending the broker log to ``log_file``, rolled at 50 MB, 3 files kept.

    Args:
        log_file: The broker log, e.g. ``<data_dir>/logs/server.log``.
    """
    name = _escape_property(str(log_file))
    return f"""# Generated by streams._broker on every start; edits are overwritten.
status = warn
appender.file.type = RollingFile
appender.file.name = file
appender.file.fileName = {name}
appender.file.filePattern = {name}.%i
appender.file.layout.type = PatternLayout
appender.file.layout.pattern = [%d] %p %m (%c)%n
appender.file.policies.type = Policies
appender.file.policies.size.type = SizeBasedTriggeringPolicy
appender.file.policies.size.size = 50MB
appender.file.strategy.type = DefaultRolloverStrategy
appender.file.strategy.max = 3
rootLogger.level = INFO
rootLogger.appenderRef.file.ref = file
logger.request.name = kafka.request.logger
logger.request.level = WARN
logger.network.name = kafka.network.RequestChannel$
logger.network.level = WARN
logger.cleaner.name = kafka.log.LogCleaner
logger.cleaner.level = WARN
"""


def new_cluster_id() -> str:
    """A random cluster id in Kafka's format (URL-safe base64 of 16 bytes, no padding)."""
    while True:
        text = base64.urlsafe_b64encode(uuid.uuid4().bytes).decode().rstrip("=")
        if not text.startswith("-"):  # Kafka's Uuid.randomUuid rejects these too (CLI parsing).
            return text


def java_major_version(java: str) -> int | None:
    """The major version of a ``java`` executable (8 for ``1.8.0``), or ``None`` if unknown.

    Args:
        java: Path of the executable.
    """
    try:
        done = subprocess.run([java, "-version"], capture_output=True, text=True, timeout=30, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return None
    found = re.search(r'version "(\d+)(?:\.(\d+))?', done.stderr + done.stdout)
    if found is None:
        return None
    major = int(found.group(1))
    return int(found.group(2) or 0) if major == 1 else major


# -- helpers -------------------------------------------------------------------------------------


def _wait_ready(pid: int, bootstrap: str, data: Path, timeout: float, log_offset: int) -> None:
    """Polls until the broker answers a metadata request listing itself."""
    from confluent_kafka import KafkaException
    from confluent_kafka.admin import AdminClient

    host, _, port = bootstrap.rpartition(":")
    deadline = time.monotonic() + timeout
    admin = None
    while True:
        if not _alive(pid):
            raise BrokerError(
                f"Kafka exited during start-up; see {data / 'logs'}\n{_log_tails(data, log_offset)}"
            )
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise BrokerError(
                f"Kafka did not become ready on {bootstrap} within {timeout:.0f} s; see {data / 'logs'}\n"
                + _log_tails(data, log_offset)
            )
        try:
            # A plain connect first: cheap, and keeps librdkafka from logging refused connections.
            with socket.create_connection((host, int(port)), timeout=min(1.0, remaining)):
                pass
            if admin is None:
                # librdkafka's own log goes to this module's logger instead of stderr.
                config: dict[str, Any] = {"bootstrap.servers": bootstrap, "logger": _log}
                admin = AdminClient(config)
            metadata = admin.list_topics(timeout=max(0.5, min(5.0, remaining)))
            if metadata.brokers:
                return
        except OSError:
            pass
        except KafkaException as exc:
            _log.debug("broker not ready yet: %s", exc)
        time.sleep(0.2)


def _pick_ports(port: int | None, controller_port: int | None, *, explicit: bool) -> tuple[int, int]:
    if port is not None and not _port_free(port):
        if explicit:
            raise BrokerError(f"port {port} on {_HOST} is in use; pick another with --port")
        port = None
    if controller_port is not None and (controller_port == port or not _port_free(controller_port)):
        controller_port = None
    with contextlib.ExitStack() as stack:
        chosen: list[int] = []
        for wanted in (port, controller_port):
            if wanted is not None:
                chosen.append(wanted)
                continue
            # Keep each probe socket open until both are chosen so the two ports differ.
            sock = stack.enter_context(socket.socket(socket.AF_INET, socket.SOCK_STREAM))
            sock.bind((_HOST, 0))
            free = int(sock.getsockname()[1])
            if free in chosen:  # pragma: no cover - the kernel never hands out a bound port twice
                raise BrokerError("could not find two free ports")
            chosen.append(free)
        return chosen[0], chosen[1]


def _port_free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((_HOST, port))
        except OSError:
            return False
        return True


def _alive(pid: int) -> bool:
    if _reap(pid):
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    if _zombie(pid):
        # Gone: reap it if it is ours (it may have exited after the first waitpid), else its parent,
        # possibly an init that never reaps, holds it.
        _reap(pid)
        return False
    return True


def _zombie(pid: int) -> bool:
    """Whether every thread of ``pid`` has exited (Linux; ``False`` where unknown).

    The main thread alone being a zombie is not enough: the JVM's launcher thread exits early and
    the broker keeps shutting down in its other threads.
    """
    try:
        tasks = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return False
    for task in tasks:
        stat = _read_text(Path(f"/proc/{pid}/task/{task}/stat"))
        # Field 3 (after the parenthesised command name) is the state.
        if stat is not None and stat.rpartition(")")[2].split()[:1] != ["Z"]:
            return False
    return True


def _reap(pid: int) -> bool:
    """Collects the exit status if ``pid`` is our own exited child, so it is not left a zombie."""
    try:
        return os.waitpid(pid, os.WNOHANG)[0] == pid
    except ChildProcessError:
        return False


def _is_broker(pid: int, data: Path) -> bool:
    if not _alive(pid):
        return False
    if not Path("/proc/self").exists():
        return True  # no procfs (macOS): trust the pid file
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
    except PermissionError:
        return True
    except OSError:
        return False
    # The pid may have been reused by another process since the broker died.
    return b"kafka.Kafka" in cmdline and str(data / "server.properties").encode() in cmdline


def _signal(pid: int, signum: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signum)


def _which(name: str, what: str, hint: str) -> str:
    found = shutil.which(name)
    if found is None:
        raise BrokerError(f"{what} not found ({name!r} is not on PATH); {hint}")
    return found


@contextlib.contextmanager
def _file_lock(path: Path) -> Iterator[None]:
    import fcntl  # POSIX only; imported here so the CLI still loads elsewhere

    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _log_tails(data: Path, since: int = 0) -> str:
    """The last lines of the broker's logs, led by the first error logged after byte ``since``."""
    parts = []
    for name in ("server.log", "stdout.log"):
        text = _read_log(data / "logs" / name, since if name == "server.log" else 0)
        if not text.strip():
            continue
        lines = text.splitlines()
        # The cause is often an exception whose stack trace pushes it out of the tail.
        first_error = next((i for i, line in enumerate(lines) if _ERROR_LINE.search(line)), None)
        if first_error is not None and first_error < len(lines) - _LOG_TAIL_LINES:
            parts.append("--- first error ---\n" + "\n".join(lines[first_error : first_error + 2]))
        parts.append(f"--- last lines of {data / 'logs' / name} ---\n{_tail_text(text)}")
    return "\n".join(parts) or "(the broker wrote no log)"


def _read_log(path: Path, since: int, limit: int = 1 << 20) -> str:
    """The text of ``path`` from byte ``since``, at most its last ``limit`` bytes."""
    try:
        with path.open("rb") as handle:
            size = handle.seek(0, os.SEEK_END)
            start = since if size >= since else 0  # the log rolled over since
            handle.seek(max(start, size - limit))
            return handle.read().decode(errors="replace")
    except FileNotFoundError:
        return ""


def _file_size(path: Path) -> int:
    try:
        return path.stat().st_size
    except FileNotFoundError:
        return 0


def _tail_text(text: str, lines: int = _LOG_TAIL_LINES) -> str:
    return "\n".join(text.rstrip().splitlines()[-lines:])


def _escape_property(value: str) -> str:
    return value.replace("\\", "\\\\")


def _sha256(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def _read_text(path: Path) -> str | None:
    try:
        return path.read_text().strip()
    except OSError as exc:
        if exc.errno in (errno.ENOENT, errno.ENOTDIR):
            return None
        raise


def _read_json(path: Path) -> dict[str, object]:
    text = _read_text(path)
    if not text:
        return {}
    try:
        value = json.loads(text)
    except ValueError:
        return {}
    return value if isinstance(value, dict) else {}


def _int_or_none(value: object) -> int | None:
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    if isinstance(value, str) and value.strip().isdigit():
        return int(value)
    return None


def _remove(*paths: Path) -> None:
    for path in paths:
        path.unlink(missing_ok=True)
