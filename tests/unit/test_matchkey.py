from __future__ import annotations

import random
import time
from typing import Any

import cel
import pytest

from streams._matchkey import (
    MISSING,
    SEPARATOR,
    correlation_key,
    extract,
    match_key,
    murmur2,
    name_key,
    parse_path,
    partition_for,
)
from streams.errors import SerializationError, UsageError

# Java's Utils.murmur2 results. Sources: Kafka clients/src/test/java/org/apache/kafka/common/utils/
# UtilsTest.java (testMurmur2), the librdkafka rdmurmur2.c unit test (Java-compatible by design) and the
# Akka/Pekko Murmur2Spec (checked against Kafka's implementation).
JAVA_MURMUR2 = {
    b"21": -973932308,
    b"foobar": -790332482,
    b"a-little-bit-long-string": -985981536,
    b"a-little-bit-longer-string": -1486304829,
    b"lkjh234lh9fiuh90y23oiuhsafujhadof229phr9h19h89h8": -58897971,
    b"abc": 479470107,
    b"kafka": -798503068,  # 0xd067cf64
    b"giberish123456789": -1890243828,  # 0x8f552b0c
    b"1234": -1614185708,  # 0x9fc97b14
    b"234": -406844982,  # 0xe7c009ca
    b"34": -2026295078,  # 0x873930da
    b"4": 1514888353,  # 0x5a4b5ca1
    b"PreAmbleWillBeRemoved,ThePrePartThatIs": 2017611548,
    b"reAmbleWillBeRemoved,ThePrePartThatIs": 1247982455,
    b"eAmbleWillBeRemoved,ThePrePartThatIs": -521871202,
    b"AmbleWillBeRemoved,ThePrePartThatIs": 1656271935,
    b"": 275646681,  # 0x106e08d9
    b"1": -1993445489,
    b"12": 126087238,
    b"123": -267702483,
    b"12345": -1188365604,
}


@pytest.mark.parametrize(("data", "expected"), JAVA_MURMUR2.items(), ids=lambda v: repr(v))
def test_murmur2_matches_java(data: bytes, expected: int) -> None:
    assert murmur2(data) == expected


def test_murmur2_is_signed_32_bit() -> None:
    rng = random.Random(7)
    for _ in range(500):
        h = murmur2(rng.randbytes(rng.randrange(0, 40)))
        assert -(2**31) <= h < 2**31


def test_partition_for_is_java_to_positive_modulo() -> None:
    # toPositive clears the sign bit (it is not abs()).
    assert partition_for(b"21", 1000) == (-973932308 & 0x7FFFFFFF) % 1000 == 340
    assert partition_for(b"abc", 12) == 479470107 % 12
    assert partition_for(b"", 3) == 275646681 % 3
    assert partition_for(b"anything", 1) == 0
    with pytest.raises(ValueError, match="at least 1"):
        partition_for(b"x", 0)


def test_librdkafka_murmur2_random_partitions_the_same() -> None:
    """Producers configured with ``partitioner=murmur2_random`` agree with :func:`partition_for`.

    Uses librdkafka's in-process mock cluster (loopback only, no broker; its topics have 4 partitions).
    A real multi-partition topic is covered by the integration tests.
    """
    confluent_kafka = pytest.importorskip("confluent_kafka")
    producer = confluent_kafka.Producer(
        {"test.mock.num.brokers": 1, "partitioner": "murmur2_random", "linger.ms": 0, "log_level": 0}
    )
    rng = random.Random(11)
    keys = [b"", *JAVA_MURMUR2, *(rng.randbytes(rng.randrange(1, 60)) for _ in range(200))]
    keys.append(match_key("shop/cart.purchased", "data.cart_id", 'c"\\1'))
    delivered: dict[bytes, int] = {}

    def on_delivery(err: Any, msg: Any) -> None:
        assert err is None, err
        delivered[msg.key()] = msg.partition()

    for key in keys:
        producer.produce("murmur2-check", key=key, value=b"v", on_delivery=on_delivery)
    deadline = time.monotonic() + 20
    while len(delivered) < len(set(keys)) and time.monotonic() < deadline:
        producer.poll(0.05)
    producer.flush(5)
    partitions = len(producer.list_topics("murmur2-check", timeout=5).topics["murmur2-check"].partitions)
    assert partitions > 1
    assert delivered == {key: partition_for(key, partitions) for key in keys}


# --------------------------------------------------------------------------------------------------
# Keys
# --------------------------------------------------------------------------------------------------


def test_match_key_layout() -> None:
    assert match_key("cart/purchased", "data.cart_id", "c-1") == b'cart/purchased\x00data.cart_id\x00"c-1"'
    assert match_key("a", "data.n", 7) == b"a\x00data.n\x007"
    assert match_key("a", "data.x", "é") == 'a\x00data.x\x00"é"'.encode()


def test_keys_for_quotes_and_backslashes_are_distinct_and_stable() -> None:
    values = ['a"b', "a\\b", 'a\\"b', '"', "\\", "\\\\", '\\"', "", "a", 'a"', '"a"']
    keys = [match_key("e", "data.x", value) for value in values]
    assert len(set(keys)) == len(values)
    assert match_key("e", "data.x", 'a"b') == b'e\x00data.x\x00"a\\"b"'
    assert match_key("e", "data.x", "a\\b") == b'e\x00data.x\x00"a\\\\b"'
    assert keys == [match_key("e", "data.x", value) for value in values]


def test_canonical_values() -> None:
    key = match_key
    assert key("e", "data.m", {"a": 1, "b": 2}) == key("e", "data.m", {"b": 2, "a": 1})
    assert key("e", "data.x", 1) != key("e", "data.x", "1")
    assert key("e", "data.x", True) != key("e", "data.x", 1)
    assert key("e", "data.x", None) != key("e", "data.x", "null")
    assert key("e", "data.x", [1, 2]) != key("e", "data.x", [2, 1])
    # 1 and 1.0 are one key, as CEL's == calls them equal and JSON does not tell them apart.
    assert key("e", "data.x", 1) == key("e", "data.x", 1.0)
    assert key("e", "data.x", {"l": [1.0, -0.0]}) == key("e", "data.x", {"l": [1, 0]})
    assert key("e", "data.x", 1.5) != key("e", "data.x", 1)
    assert cel.evaluate("1 == 1.0") is True and cel.evaluate('1 == "1"') is False
    assert cel.evaluate("true == 1") is False


def test_keys_separate_names_paths_and_values() -> None:
    assert match_key("a", "data.b", 1) != match_key("a", "data", 1)
    assert match_key("ab", "data.x", 1) != match_key("a", "bdata.x", 1)
    assert name_key("a") == b"a" + SEPARATOR
    # A name key ends with the separator; a match key never does (canonical JSON is non-empty, NUL-free).
    assert name_key("a\x00data.x\x00").endswith(SEPARATOR)
    for value in ("", "\x00", 0, None, [], {}):
        assert not match_key("a", "data.x", value).endswith(SEPARATOR)
    # Keys split from the right: the value has no NUL, nor does the path.
    raw = match_key("weird\x00name", "data.x", "v\x00")
    name, path, value = raw.rsplit(SEPARATOR, 2)
    assert (name, path, value) == (b"weird\x00name", b"data.x", b'"v\\u0000"')


def test_missing_value_has_no_key() -> None:
    with pytest.raises(ValueError, match="missing"):
        match_key("a", "data.x", MISSING)


def test_non_json_value_is_rejected() -> None:
    with pytest.raises(SerializationError):
        match_key("a", "data.x", float("nan"))


def test_correlation_key() -> None:
    assert correlation_key("a/b", "data.x") == b"a/b\x00data.x"
    assert correlation_key("a/b", None) == b"a/b\x00"
    assert correlation_key("a/b", None) != correlation_key("a/b\x00", None)


# --------------------------------------------------------------------------------------------------
# Paths
# --------------------------------------------------------------------------------------------------

EVENT = {
    "name": "cart/purchased",
    "data": {"cart_id": "c-1", "none": None, "nested": {"a": {"b": 0}}, "list": [1, 2], "s": "str"},
    "user": {"id": "u-1"},
    "id": "01H",
    "ts": 1,
}


@pytest.mark.parametrize(
    ("path", "expected"),
    [
        ("data.cart_id", "c-1"),
        ("data.none", None),
        ("data.nested.a.b", 0),
        ("data.nested", {"a": {"b": 0}}),
        ("user.id", "u-1"),
        ("name", "cart/purchased"),
        ("data.missing", MISSING),
        ("data.s.length", MISSING),  # a string has no fields
        ("data.list.0", MISSING),  # lists are not indexed
        ("data.nested.a.b.c", MISSING),
        ("v", MISSING),
    ],
)
def test_extract(path: str, expected: Any) -> None:
    assert extract(EVENT, path) == expected
    assert extract(EVENT, path.split(".")) == expected


def test_extract_distinguishes_null_from_missing() -> None:
    assert extract(EVENT, "data.none") is None
    assert extract(EVENT, "data.nope") is MISSING
    assert repr(MISSING) == "MISSING"


@pytest.mark.parametrize(
    ("path", "message"),
    [
        ("", "non-empty"),
        ("data..x", "empty segment"),
        (".data", "empty segment"),
        ("data.", "empty segment"),
        ("data.\x00", "NUL"),
        ("async.data.x", "without the 'async' prefix: write 'data.x'"),
        ("event.data.x", "write 'data.x'"),
    ],
)
def test_parse_path_rejects(path: str, message: str) -> None:
    with pytest.raises(UsageError, match=message):
        parse_path(path)


def test_parse_path() -> None:
    assert parse_path("data.cart-id.x") == ("data", "cart-id", "x")
    assert parse_path("name") == ("name",)
