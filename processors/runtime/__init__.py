"""The processor runtime: the exactly-once loop, store transactions, restore, rebalance, worker.

Import the pieces from their modules; :func:`run_worker` and :class:`Processor` are the entry points.
"""

from __future__ import annotations

from processors.runtime.config import RuntimeConfig
from processors.runtime.context import Context, StoreView
from processors.runtime.loop import ProcessorLoop
from processors.runtime.processor import AvroDecoder, Decoder, EventDecoder, Processor, RawDecoder, Record
from processors.runtime.worker import run_worker

__all__ = [
    "AvroDecoder",
    "Context",
    "Decoder",
    "EventDecoder",
    "Processor",
    "ProcessorLoop",
    "RawDecoder",
    "Record",
    "RuntimeConfig",
    "StoreView",
    "run_worker",
]
