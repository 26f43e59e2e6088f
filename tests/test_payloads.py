"""Payload encoding: json only when decoding gives back the same value and types."""

from __future__ import annotations

import enum
import math
from typing import Any

import pytest

from headwater.wire import EncodingError, decode, encode


class Color(enum.StrEnum):
    RED = "red"


@pytest.mark.parametrize(
    "value",
    [None, True, 3, -(2**53 - 1), 1.5, "héllo", [1, "a", None], {"k": [1.0, {"n": False}]}],
)
def test_exact_json_values_are_json_and_round_trip(value: Any) -> None:
    encoded = encode(value)
    assert encoded.encoding == "json"
    back = decode(encoded)
    assert back == value and type(back) is type(value)


@pytest.mark.parametrize(
    "value",
    [(1, 2), {1, 2}, math.inf, {1: "int key"}, Color.RED, "lone \ud800 surrogate", b"raw", 2**70],
)
def test_values_json_would_change_fall_back_to_pickle(value: Any) -> None:
    encoded = encode(value)
    assert encoded.encoding == "pickle"
    back = decode(encoded)
    assert type(back) is type(value)
    assert back == value or (isinstance(value, float) and math.isnan(value))


@pytest.mark.parametrize("value", [(1, 2), "lone \ud800", Color.RED, {1, 2}])
def test_portable_values_must_be_json(value: Any) -> None:
    with pytest.raises(EncodingError):
        encode(value, portable=True)


def test_unserialisable_values_name_their_type() -> None:
    import threading

    with pytest.raises(EncodingError, match="lock"):
        encode(threading.Lock())
