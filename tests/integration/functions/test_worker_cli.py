"""`streams worker` as users run it: a subprocess, both modes, graceful SIGTERM."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from streams import App, Event, KafkaError, StreamsConfig

pytestmark = pytest.mark.kafka

APP_MODULE = """
from streams import App, Event, Step

app = App("{namespace}", bootstrap_servers="{bootstrap}")

@app.function(id="hello", trigger="hello/said")
async def hello(event: Event, step: Step) -> str:
    name = await step.run("upper", lambda: event.data["name"].upper())
    return await step.run("greet", lambda: f"hello {{name}}")
"""


@pytest.mark.parametrize("mode", ["threads", "processes"])
def test_worker_runs_an_app_and_stops_on_sigterm(
    mode: str, streams_config: StreamsConfig, tmp_path: Path
) -> None:
    (tmp_path / "hello_app.py").write_text(
        APP_MODULE.format(namespace=streams_config.namespace, bootstrap=streams_config.bootstrap_servers)
    )
    # The worker's app uses the default layout; the test's client must agree with it.
    config = StreamsConfig(
        namespace=streams_config.namespace, bootstrap_servers=streams_config.bootstrap_servers
    )
    env = {**os.environ, "PYTHONPATH": f"{tmp_path}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    worker = subprocess.Popen(
        [sys.executable, "-m", "streams", "worker", "hello_app:app", "--mode", mode,
         "--state-dir", str(tmp_path / "state")],
        env=env, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip
    try:
        from confluent_kafka import Consumer

        from processors.records import CODEC, HISTORY_ENTRY

        app = App(config.namespace, config)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                app.create_topics()  # idempotent: the worker may have created them already
                break
            except KafkaError:  # both created them at the same moment; the next call sees them
                time.sleep(0.5)
        app.send(Event(name="hello/said", data={"name": "kafka"}))
        app.close()
        reader = Consumer(
            {
                **config.client_config(),
                "group.id": f"{streams_config.namespace}.reader",
                "auto.offset.reset": "earliest",
                "isolation.level": "read_committed",
            }
        )
        reader.subscribe([config.topic("history")])
        output: str | None = None
        while time.monotonic() < deadline and output is None:
            for message in reader.consume(10, timeout=1):
                if message.error() is None:
                    entry = CODEC.decode(HISTORY_ENTRY, message.value())
                    if entry["status"] == "COMPLETED":
                        output = entry["output_json"]
        reader.close()
    finally:
        worker.send_signal(signal.SIGTERM)
        try:
            out, _ = worker.communicate(timeout=90)
        except subprocess.TimeoutExpired:
            worker.kill()
            out, _ = worker.communicate()
    assert output == '"hello KAFKA"', out[-3000:]
    assert worker.returncode == 0, out[-3000:]
