"""Worker subprocesses and in-process loops for the runtime integration tests."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
from dataclasses import dataclass, field
from pathlib import Path

from processors.runtime import ProcessorLoop
from streams._config import StreamsConfig

SCRIPT = Path(__file__).resolve().parent / "counting.py"


@dataclass
class WorkerProcess:
    process: subprocess.Popen[bytes]
    log: Path

    def wait(self, timeout: float) -> int:
        return self.process.wait(timeout)

    def terminate(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)

    def kill(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGKILL)
            self.process.wait(30)


@dataclass
class Workers:
    config: StreamsConfig
    log_dir: Path
    started: list[WorkerProcess] = field(default_factory=list)

    def start(
        self, state_dir: Path, *, crash_after: int | None = None, crash_point: str = "random"
    ) -> WorkerProcess:
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        env.pop("COUNTING_CRASH_AFTER", None)
        if crash_after is not None:
            env["COUNTING_CRASH_AFTER"] = str(crash_after)
            env["COUNTING_CRASH_POINT"] = crash_point
        log = self.log_dir / f"worker-{len(self.started)}.log"
        assert self.config.bootstrap_servers is not None
        command = [
            sys.executable,
            str(SCRIPT),
            "--bootstrap",
            self.config.bootstrap_servers,
            "--namespace",
            self.config.namespace,
            "--state-dir",
            str(state_dir),
        ]
        with log.open("wb") as out:
            process = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, env=env)
        worker = WorkerProcess(process, log)
        self.started.append(worker)
        return worker


@dataclass
class LoopThread:
    loop: ProcessorLoop
    thread: threading.Thread
    result: list[int]

    def stop(self, timeout: float = 60.0) -> int:
        self.loop.stop()
        self.thread.join(timeout)
        assert not self.thread.is_alive(), "loop did not stop"
        return self.result[0]
