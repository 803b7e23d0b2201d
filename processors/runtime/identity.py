"""The identity of one processor instance in one state directory.

Responsibilities:

- lock ``<state_dir>/<namespace>/<processor>/`` for the life of the instance, so two processes never
  share a state directory (RocksDB would refuse anyway, later and less clearly);
- keep a random instance id in that directory. The transactional id is
  ``<namespace>.<processor>.<instance id>``: unique among running processes (the lock guarantees
  it), yet reused by a restart on the same state directory. The restart's ``init_transactions``
  then fences the crashed predecessor and aborts its open transaction at once, instead of waiting
  ``transaction.timeout.ms`` for the broker to abort it (which blocks the partitions' LSO).
  A worker started on a fresh state directory gets a new id.
"""

from __future__ import annotations

import fcntl
import os
import uuid
from pathlib import Path

from processors.errors import StateError

_ID_FILE = "instance.id"
_LOCK_FILE = ".lock"


class InstanceIdentity:
    """A locked processor directory and the instance id kept in it.

    Args:
        directory: ``<state_dir>/<namespace>/<processor>``.
    """

    def __init__(self, directory: Path) -> None:
        self.directory = Path(directory)
        self._fd: int | None = None
        self.instance_id: str | None = None

    def acquire(self) -> str:
        """Locks the directory and returns the instance id (created on first use).

        Raises:
            StateError: Another process holds the directory.
        """
        if self.instance_id is not None:
            return self.instance_id
        self.directory.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.directory / _LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise StateError(
                f"state directory {self.directory} is in use by another worker process; give each "
                "worker its own --state-dir"
            ) from None
        self._fd = fd
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        path = self.directory / _ID_FILE
        try:
            instance_id = path.read_text().strip()
        except FileNotFoundError:
            instance_id = ""
        if not instance_id:
            instance_id = uuid.uuid4().hex
            tmp = path.with_suffix(".tmp")
            tmp.write_text(instance_id + "\n")
            tmp.replace(path)
        self.instance_id = instance_id
        return instance_id

    def release(self) -> None:
        """Unlocks the directory (the id stays for the next start)."""
        if self._fd is not None:
            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None
        self.instance_id = None
