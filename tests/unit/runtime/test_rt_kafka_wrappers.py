"""Error mapping and the producer's transactional retry/abort rules, on a fake librdkafka producer."""

from __future__ import annotations

from typing import Any

import pytest
from confluent_kafka import KafkaError as CKafkaError
from confluent_kafka import KafkaException

import processors.kafka.producer as producer_module
from processors.kafka.errors import (
    FatalKafkaError,
    ProducerFencedError,
    RetriableKafkaError,
    TransactionAbortRequiredError,
    map_error,
)
from processors.kafka.producer import Producer, TransactionState
from streams.errors import KafkaError, UsageError


def error(code: int, *, fatal: bool = False, retriable: bool = False, abort: bool = False) -> KafkaException:
    return KafkaException(
        CKafkaError(code, "boom", fatal=fatal, retriable=retriable, txn_requires_abort=abort)
    )


@pytest.mark.parametrize(
    ("exc", "kind"),
    [
        (error(CKafkaError._TIMED_OUT, retriable=True), RetriableKafkaError),
        (error(CKafkaError._TIMED_OUT, retriable=True, abort=True), RetriableKafkaError),
        (error(CKafkaError.ILLEGAL_GENERATION, abort=True), TransactionAbortRequiredError),
        (error(CKafkaError._FENCED, fatal=True), ProducerFencedError),
        (error(CKafkaError._STATE, fatal=True), FatalKafkaError),
        (error(CKafkaError._FATAL), FatalKafkaError),  # the fatal event librdkafka emits
        (error(CKafkaError._STATE), KafkaError),
    ],
)
def test_errors_map_to_the_action_librdkafka_documents(exc: KafkaException, kind: type[KafkaError]) -> None:
    mapped = map_error(exc, "commit_transaction")
    assert type(mapped) is kind
    assert mapped.code == exc.args[0].code()
    assert str(mapped).startswith("commit_transaction: boom")


class FakeLibProducer:
    def __init__(self, config: dict[str, Any]) -> None:
        self.config = config
        self.script: dict[str, list[BaseException]] = {}
        self.calls: list[str] = []

    def _call(self, name: str) -> None:
        self.calls.append(name)
        failures = self.script.get(name)
        if failures:
            raise failures.pop(0)

    def init_transactions(self, timeout: float) -> None:
        self._call("init")

    def begin_transaction(self) -> None:
        self._call("begin")

    def commit_transaction(self, timeout: float) -> None:
        self._call("commit")

    def abort_transaction(self, timeout: float) -> None:
        self._call("abort")

    def send_offsets_to_transaction(self, offsets: Any, metadata: Any, timeout: float) -> None:
        self._call("send_offsets")

    def produce(self, topic: str, value: Any, key: Any, **kwargs: Any) -> None:
        self._call("produce")

    def flush(self, timeout: float) -> int:
        return 0

    def poll(self, timeout: float) -> int:
        return 0

    def purge(self, **kwargs: Any) -> None:
        pass


@pytest.fixture
def producer(monkeypatch: pytest.MonkeyPatch) -> tuple[Producer, FakeLibProducer]:
    monkeypatch.setattr(producer_module, "_ConfluentProducer", FakeLibProducer)
    wrapped = Producer({"bootstrap.servers": "x"}, transactional_id="ns.p.1")
    lib: FakeLibProducer = wrapped._producer  # type: ignore[assignment]
    assert lib.config["transactional.id"] == "ns.p.1" and lib.config["enable.idempotence"] is True
    assert lib.config["partitioner"] == "murmur2_random"
    wrapped.init()
    return wrapped, lib


def test_retriable_commit_is_retried(producer: tuple[Producer, FakeLibProducer]) -> None:
    wrapped, lib = producer
    lib.script["commit"] = [error(CKafkaError._TIMED_OUT, retriable=True)]
    wrapped.begin()
    wrapped.commit()
    assert lib.calls.count("commit") == 2
    assert wrapped.state is TransactionState.READY


def test_abortable_commit_raises_and_the_caller_can_abort(producer: tuple[Producer, FakeLibProducer]) -> None:
    wrapped, lib = producer
    lib.script["commit"] = [error(CKafkaError.ILLEGAL_GENERATION, abort=True)]
    wrapped.begin()
    with pytest.raises(TransactionAbortRequiredError):
        wrapped.commit()
    assert wrapped.state is TransactionState.OPEN
    wrapped.abort()
    assert wrapped.state is TransactionState.READY


def test_fatal_error_makes_the_producer_unusable(producer: tuple[Producer, FakeLibProducer]) -> None:
    wrapped, lib = producer
    lib.script["send_offsets"] = [error(CKafkaError._FENCED, fatal=True)]
    wrapped.begin()
    with pytest.raises(ProducerFencedError):
        wrapped.send_offsets([object()], "meta")  # type: ignore[list-item]
    assert wrapped.state is TransactionState.FATAL
    with pytest.raises(ProducerFencedError):
        wrapped.begin()


def test_produce_needs_an_open_transaction(producer: tuple[Producer, FakeLibProducer]) -> None:
    wrapped, _ = producer
    with pytest.raises(UsageError, match="needs an open transaction"):
        wrapped.produce("t", b"k", b"v")


def test_a_full_local_queue_is_waited_out(producer: tuple[Producer, FakeLibProducer]) -> None:
    wrapped, lib = producer
    lib.script["produce"] = [BufferError(), BufferError()]
    wrapped.begin()
    wrapped.produce("t", b"k", b"v")
    assert lib.calls.count("produce") == 3 and wrapped.produced == 1
