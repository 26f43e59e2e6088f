"""The json payload encoding against the vectors the Node worker's tests read too."""

from __future__ import annotations

import json
import math
import re
from datetime import UTC, date, datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from headwater.wire import EncodedValue, EncodingError, decode, encode
from headwater.wire._json_codec import JsonCodecError, dumps, loads

VECTORS = json.loads((Path(__file__).parent / "json_vectors.json").read_text("utf-8"))
_NAMES = {"datetime": datetime, "date": date, "timezone": timezone, "float": float}


def expected(expression: str) -> Any:
    return eval(expression, {"__builtins__": {}}, _NAMES)  # test data written by us


def same(a: Any, b: Any) -> bool:
    """Equal values of the same types, all the way down (NaN equals NaN, -0.0 is not 0.0,
    dict key order counts)."""
    if type(a) is not type(b):
        return False
    if isinstance(a, float):
        return (math.isnan(a) and math.isnan(b)) or (
            a == b and math.copysign(1, a) == math.copysign(1, b)
        )
    if isinstance(a, list):
        return len(a) == len(b) and all(same(x, y) for x, y in zip(a, b, strict=True))
    if isinstance(a, dict):
        return list(a) == list(b) and all(same(a[k], b[k]) for k in a)
    if isinstance(a, datetime):
        return a == b and a.tzinfo == b.tzinfo
    return bool(a == b)


@pytest.mark.parametrize("vector", VECTORS["valid"], ids=lambda v: v["name"])
def test_valid_vectors_decode_to_the_value_and_encode_canonically(vector: dict[str, Any]) -> None:
    value = loads(vector["json"].encode("utf-8"))
    want = expected(vector["python"])
    assert same(value, want), f"{value!r} != {want!r}"
    canonical = vector.get("canonical", vector["json"])
    assert dumps(value) == canonical.encode("utf-8")
    assert encode(value, portable=True).data == canonical.encode("utf-8")


@pytest.mark.parametrize("vector", VECTORS["invalid"], ids=lambda v: v["name"])
def test_invalid_vectors_are_rejected_with_a_clear_error(vector: dict[str, Any]) -> None:
    data = bytes.fromhex(vector["hex"]) if "hex" in vector else vector["json"].encode("utf-8")
    with pytest.raises(JsonCodecError) as info:
        loads(data)
    assert vector.get("error", "") in str(info.value)
    assert "\n" not in str(info.value)
    with pytest.raises(EncodingError):
        decode(encode_raw(data))


def encode_raw(data: bytes) -> EncodedValue:
    return EncodedValue(data, {"encoding": "json"})


def test_timezone_aware_datetimes_are_written_in_utc() -> None:
    paris = timezone(timedelta(hours=2))
    value = datetime(2024, 6, 1, 14, 0, 0, 250000, tzinfo=paris)
    assert dumps(value) == b'{"$datetime":"2024-06-01T12:00:00.250Z"}'
    back = loads(dumps(value))
    assert back == value and back.tzinfo is UTC


@pytest.mark.parametrize(
    ("value", "fragment"),
    [
        (datetime(2024, 1, 1), "replace(tzinfo="),
        ((1, 2), "tuple"),
        ({1, 2}, "set"),
        ({1: "a"}, "int"),
        (bytearray(b"x"), "bytearray"),
        ("lone \ud800", "surrogate"),
    ],
)
def test_values_json_cannot_hold_fail_for_portable_consumers(value: Any, fragment: str) -> None:
    with pytest.raises(EncodingError, match=re.escape(fragment)):
        encode(value, portable=True)


def test_values_nested_too_deeply_fail_for_portable_consumers() -> None:
    value: list[Any] = []
    for _ in range(101):
        value = [value]
    with pytest.raises(EncodingError, match="nested more than 100"):
        encode(value, portable=True)


@pytest.mark.parametrize(
    "value",
    [
        2**53,
        {"$int": "5"},
        b"raw",
        datetime(2024, 1, 1, tzinfo=UTC),
        date(2024, 1, 1),
        math.nan,
    ],
)
def test_python_to_python_values_that_need_a_tag_stay_pickle(value: Any) -> None:
    encoded = encode(value)
    assert encoded.encoding == "pickle"
    assert same(decode(encoded), value)


def test_plain_json_is_unchanged_and_fast_path_skips_tags() -> None:
    value = {"rows": [1, 2.5, "x", None, True], "n": 2**53 - 1}
    encoded = encode(value)
    assert encoded.encoding == "json"
    assert encoded.data == b'{"rows":[1,2.5,"x",null,true],"n":9007199254740991}'
    assert encode(value, portable=True).data == encoded.data


_scalars = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**80), max_value=2**80)
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.text(alphabet=st.characters(exclude_categories=["Cs"]), max_size=8)
    | st.binary(max_size=16)
    | st.dates()
    | st.datetimes(timezones=st.just(UTC))
)
_keys = st.text(alphabet="$ab1", max_size=3)
_values = st.recursive(
    _scalars,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(_keys, inner, max_size=3),
    max_leaves=12,
)


# derandomize: the same examples on every run (as the other property tests): a result
# never depends on luck. 30,000 random examples passed when this was set.
@settings(max_examples=300, deadline=None, derandomize=True)
@given(_values)
def test_any_json_value_round_trips_exactly_and_canonically(value: Any) -> None:
    data = dumps(value)
    back = loads(data)
    assert same(back, value)
    assert dumps(back) == data
