"""Runs each processor role of an app in its own ``streams worker`` child process.

On two cores the roles' Python code competes for one interpreter lock when they share a process;
separate processes ran the runtime benchmark 1.4-1.7x faster (docs/performance.md). Children are
started with a fresh interpreter (not forked), so Kafka clients, RocksDB and thread pools are
created where they are used. SIGTERM/SIGINT is forwarded to every child; when one child exits
non-zero the others are stopped and the supervisor exits with that status.
"""

from __future__ import annotations

import logging
import signal
import subprocess
import sys
import time
from collections.abc import Sequence
from types import FrameType

logger = logging.getLogger(__name__)

_POLL_S = 0.2
_STOP_GRACE_S = 60.0


def run_role_processes(app_spec: str, roles: Sequence[str], extra_args: Sequence[str]) -> int:
    """Starts ``streams worker APP --processors ROLE`` per role and supervises the children.

    Args:
        app_spec: ``module:attribute`` of the app.
        roles: One child per role.
        extra_args: Further ``streams worker`` options passed to every child.

    Returns:
        0 when every child stopped cleanly, else the first non-zero exit status.
    """
    children = {
        role: subprocess.Popen(
            [
                sys.executable,
                "-m",
                "streams",
                "worker",
                app_spec,
                "--processors",
                role,
                "--mode",
                "threads",
                *extra_args,
            ]
        )
        for role in roles
    }
    stopping = False

    def stop_all(signum: int, _frame: FrameType | None) -> None:
        nonlocal stopping
        stopping = True
        for child in children.values():
            if child.poll() is None:
                child.send_signal(signum)

    previous = {sig: signal.signal(sig, stop_all) for sig in (signal.SIGTERM, signal.SIGINT)}
    status = 0
    try:
        while any(child.poll() is None for child in children.values()):
            for role, child in children.items():
                code = child.poll()
                if code not in (None, 0) and status == 0:
                    status = code
                    logger.error("worker for %s exited with %s; stopping the others", role, code)
                    stop_all(signal.SIGTERM, None)
            time.sleep(_POLL_S)
        for child in children.values():
            if child.returncode and status == 0 and not stopping:
                status = child.returncode
    finally:
        deadline = time.monotonic() + _STOP_GRACE_S
        for child in children.values():
            try:
                child.wait(timeout=max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                child.kill()
                child.wait()
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    return status
