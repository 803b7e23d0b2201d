"""Exec probe of a streams worker container: ``python probe.py live|ready``.

The worker has no HTTP endpoint yet (health and metrics endpoints come later), so this probe checks
only what the kernel can tell about the worker, and claims nothing more:

live   The worker process (PID 1 of the container) exists and is neither a zombie nor stopped.
       A hung event loop is NOT detected.
ready  Live, and every processor this pod runs ($STREAMS_PROBE_PROCESSORS) holds the flock on its
       state directory ``$STREAMS_STATE_DIR/$STREAMS_NAMESPACE/<processor>/.lock``. A processor
       takes that lock when it starts (after the worker has created/checked the topics) and
       releases it when it stops. Ready does NOT mean its state is restored or that it keeps up.

Exit status 0 = success; anything else fails the probe, with the reason on stdout (shown in the
pod's events).
"""

import os
import sys


def fail(reason: str) -> None:
    """Prints why the probe fails and exits 1."""
    print(reason)
    sys.exit(1)


def check_live() -> None:
    """Fails unless PID 1 (the worker) is running or sleeping."""
    try:
        with open("/proc/1/stat") as f:
            state = f.read().rsplit(")", 1)[1].split()[0]
    except OSError as exc:
        fail(f"cannot read the worker process status: {exc}")
    if state in ("Z", "X", "T", "t"):
        fail(f"worker process is in state {state}")


def held_flock_inodes() -> set[int]:
    """Inodes of the files flock-ed by processes of this container."""
    # /proc/locks lists only the locks of processes in this container's PID namespace, that is the
    # worker and its child processes. "->" marks a process waiting for a lock, not holding it.
    inodes = set()
    with open("/proc/locks") as f:
        for line in f:
            fields = line.split()
            if len(fields) >= 6 and fields[1] == "FLOCK":
                inodes.add(int(fields[5].rsplit(":", 1)[1]))
    return inodes


def check_ready() -> None:
    """Fails unless every processor of this pod holds its state directory lock."""
    check_live()
    state_dir = os.environ.get("STREAMS_STATE_DIR", "/var/lib/streams")
    namespace = os.environ.get("STREAMS_NAMESPACE", "")
    processors = [p.strip() for p in os.environ.get("STREAMS_PROBE_PROCESSORS", "").split(",") if p.strip()]
    if not processors:
        fail("STREAMS_PROBE_PROCESSORS is empty")
    root = os.path.join(state_dir, namespace)
    if not os.path.isdir(root):
        found = sorted(os.listdir(state_dir)) if os.path.isdir(state_dir) else []
        fail(
            f"no state for namespace {namespace!r} in {state_dir} yet (found {found}); still "
            "starting, or streams.namespace differs from the App's namespace"
        )
    held = held_flock_inodes()
    waiting = []
    for processor in processors:
        try:
            inode = os.stat(os.path.join(root, processor, ".lock")).st_ino
        except FileNotFoundError:
            inode = None
        if inode not in held:
            waiting.append(processor)
    if waiting:
        fail(f"processors not running yet: {', '.join(waiting)}")


if __name__ == "__main__":
    mode = sys.argv[1] if len(sys.argv) > 1 else ""
    if mode == "live":
        check_live()
    elif mode == "ready":
        check_ready()
    else:
        fail("usage: probe.py live|ready")
