from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from processors.state import MemoryStore, RocksDBOptions, RocksDBStore, Store

StoreFactory = Callable[[], Store]


@pytest.fixture(params=["rocksdb", "memory"])
def store_type(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def store_factory(store_type: str, tmp_path: Path) -> Iterator[StoreFactory]:
    """Makes store objects for one store; every call sees the same data (same dir / same memory)."""
    created: list[Store] = []
    memory: list[MemoryStore] = []

    def factory() -> Store:
        store: Store
        if store_type == "rocksdb":
            store = RocksDBStore(
                "proc", "things", tmp_path / "state", RocksDBOptions(block_cache_size=1024 * 1024)
            )
        else:
            # A MemoryStore keeps its data per object: reuse the object to model a reopen.
            if not memory:
                memory.append(MemoryStore("proc", "things"))
            store = memory[0]
        created.append(store)
        return store

    yield factory
    for store in created:
        store.close()


@pytest.fixture
def store(store_factory: StoreFactory) -> Store:
    return store_factory()
