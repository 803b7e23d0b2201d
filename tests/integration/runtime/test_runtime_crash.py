"""kill -9 at random moments, including in the middle of the commit protocol: counts stay exact."""

from __future__ import annotations

import random
import threading
import time
from collections import Counter
from pathlib import Path

import pytest
from counting import OUTPUT, Inputs, check_outputs, produce_inputs, read_topic
from runtime_harness import Workers

from streams._config import StreamsConfig

pytestmark = pytest.mark.kafka


def _produce_in_background(config: StreamsConfig, total: int, rate: float) -> tuple[Inputs, threading.Thread]:
    inputs = Inputs(per_key=Counter())
    thread = threading.Thread(
        target=produce_inputs,
        args=(config, total),
        kwargs={"into": inputs, "rate": rate},
        name="input-producer",
    )
    thread.start()
    return inputs, thread


def _run_with_kills(
    workers: Workers, config: StreamsConfig, state: Path, total: int, kills: int, seed: int
) -> None:
    rng = random.Random(seed)
    inputs, producer = _produce_in_background(config, total, rate=total / (kills * 2.5))
    hooks = 0
    for i in range(kills):
        if i % 2 == 0:
            # The worker kills itself at a random point of a random commit (mid-protocol).
            worker = workers.start(state, crash_after=rng.randint(1, 6), crash_point="random")
            code = worker.wait(90)
            hooks += 1
        else:
            worker = workers.start(state)
            time.sleep(rng.uniform(1.5, 4.0))
            worker.kill()
            code = worker.process.returncode
        assert code == -9, f"worker {i} exited with {code}; see {worker.log}"
    producer.join()
    final = workers.start(state)
    outputs = read_topic(config, config.topic(OUTPUT), inputs.countable, timeout_s=180)
    final.terminate()
    assert final.wait(60) == 0, f"see {final.log}"
    check_outputs(outputs, inputs)
    logs = "".join(w.log.read_text() for w in workers.started)
    assert logs.count("crash hook: SIGKILL at") == hooks


def test_kill_9_ten_times_during_a_30k_run_keeps_counts_exact(
    workers: Workers, counting_config: StreamsConfig, tmp_path: Path
) -> None:
    _run_with_kills(workers, counting_config, tmp_path / "worker-state", total=30_000, kills=10, seed=7)


@pytest.mark.slow
def test_kill_9_twenty_times_during_a_100k_run_keeps_counts_exact(
    workers: Workers, counting_config: StreamsConfig, tmp_path: Path
) -> None:
    _run_with_kills(workers, counting_config, tmp_path / "worker-state", total=100_000, kills=20, seed=11)
