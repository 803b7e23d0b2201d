"""Errors raised by the engine, under :class:`streams.errors.StreamsError` so users can catch one type.

::

    StreamsError                            (streams.errors)
    └── ProcessorError                      the engine failed while processing
        └── StateError                      a state store or store transaction was misused or failed
            └── StoreCorruptedError         a store's files cannot be opened or read; wipe and restore

Misuse of a store transaction (writing after ``prepare()``, committing twice, opening a second
transaction on a partition) raises :class:`StateError`; so does a store that is locked by another
process. :class:`StoreCorruptedError` is the one state failure that a full restore from the changelog
fixes: the runtime wipes the partition and replays its changelog from the beginning.
"""

from __future__ import annotations

from pathlib import Path

from streams.errors import StreamsError


class ProcessorError(StreamsError):
    """Root of the errors raised by the engine (router, matcher, executor, timers, runtime, state)."""


class StateError(ProcessorError):
    """A state store or one of its transactions was misused or failed.

    Attributes:
        store: The store's name, when known.
        partition: The store partition, when known.
    """

    def __init__(self, message: str, *, store: str | None = None, partition: int | None = None) -> None:
        where = ""
        if store is not None:
            where = f"store {store!r}" + (f" partition {partition}" if partition is not None else "") + ": "
        super().__init__(where + message)
        self.store = store
        self.partition = partition


class StoreCorruptedError(StateError):
    """A store partition's files cannot be opened or read.

    Recovery is to wipe the partition and restore it from its changelog from the first offset.

    Attributes:
        path: The partition's directory, when the store lives on disk.
    """

    def __init__(
        self,
        message: str,
        *,
        store: str | None = None,
        partition: int | None = None,
        path: Path | None = None,
    ) -> None:
        super().__init__(message, store=store, partition=partition)
        self.path = path
