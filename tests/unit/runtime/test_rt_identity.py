"""The instance id is kept per state directory and the directory is locked while in use."""

from __future__ import annotations

from pathlib import Path

import pytest

from processors.errors import StateError
from processors.runtime.identity import InstanceIdentity


def test_id_survives_restarts_and_the_directory_is_exclusive(tmp_path: Path) -> None:
    first = InstanceIdentity(tmp_path / "ns" / "proc")
    instance = first.acquire()
    with pytest.raises(StateError, match="in use by another worker"):
        InstanceIdentity(tmp_path / "ns" / "proc").acquire()
    first.release()
    again = InstanceIdentity(tmp_path / "ns" / "proc")
    assert again.acquire() == instance
    again.release()
    assert InstanceIdentity(tmp_path / "other").acquire() != instance
