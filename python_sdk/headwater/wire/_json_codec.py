"""The ``json`` payload encoding: plain JSON plus a few ``$`` tags, for every language.

The language-neutral definition is docs/payloads.md ("json"); the shared test vectors
are tests/json_vectors.json (the Node worker's codec reads them too). ``dumps`` writes
the canonical text; ``loads`` reads any conforming text. ``is_plain`` tells whether a
value needs no tag at all (the Python-to-Python rule keeps such values json and
pickles the rest).
"""

from __future__ import annotations

import base64
import binascii
import json
import math
import re
from datetime import UTC, date, datetime, timedelta, timezone
from typing import Any

#: Largest integer a double holds exactly (2^53 - 1): beyond it integers are tagged.
MAX_SAFE = 2**53 - 1
MAX_DEPTH = 100
TAGS = ("$int", "$float", "$bytes", "$datetime", "$date", "$object")

_INT = re.compile(r"-?(?:0|[1-9][0-9]*)")
_DATE = re.compile(r"([0-9]{4})-([0-9]{2})-([0-9]{2})")
_DATETIME = re.compile(
    r"([0-9]{4})-([0-9]{2})-([0-9]{2})[Tt]([0-9]{2}):([0-9]{2}):([0-9]{2})(\.[0-9]+)?"
    r"([Zz]|[+-][0-9]{2}:[0-9]{2})"
)
_B64 = re.compile(r"[A-Za-z0-9+/]*={0,2}")
_FLOATS = {"NaN": math.nan, "Infinity": math.inf, "-Infinity": -math.inf}


class JsonCodecError(ValueError):
    """A value cannot be written as json, or a text is not valid json for Headwater."""


# Writing ------------------------------------------------------------------------------


def _is_tag_like(obj: dict[str, Any]) -> bool:
    """A user object that a reader would take for a tag (so it must be wrapped)."""
    if len(obj) != 1:
        return False
    key = next(iter(obj))
    return isinstance(key, str) and key.startswith("$")


def is_plain(value: Any, depth: int = 0) -> bool:
    """Whether plain JSON (no tag) gives back an equal value of the same types."""
    if depth > MAX_DEPTH:
        return False
    if value is None or type(value) is bool or type(value) is str:
        return True
    if type(value) is int:
        return -MAX_SAFE <= value <= MAX_SAFE
    if type(value) is float:
        return math.isfinite(value)
    if type(value) is list:
        return all(is_plain(v, depth + 1) for v in value)
    if type(value) is dict:
        return not _is_tag_like(value) and all(
            type(k) is str and is_plain(v, depth + 1) for k, v in value.items()
        )
    return False


def format_datetime(value: datetime) -> str:
    """Canonical RFC 3339 text: UTC, ``Z``, 3 or 6 fraction digits only when needed."""
    utc = value.astimezone(UTC)
    text = (
        f"{utc.year:04d}-{utc.month:02d}-{utc.day:02d}"
        f"T{utc.hour:02d}:{utc.minute:02d}:{utc.second:02d}"
    )
    micros = utc.microsecond
    if micros:
        text += f".{micros // 1000:03d}" if micros % 1000 == 0 else f".{micros:06d}"
    return text + "Z"


def _tagged(value: Any, depth: int) -> Any:
    """The JSON-ready structure of a value (tags as one-key dicts)."""
    if depth > MAX_DEPTH:
        raise JsonCodecError(f"the value is nested more than {MAX_DEPTH} levels deep")
    kind = type(value)
    if value is None or kind is bool:
        return value
    if kind is str:
        return value
    if kind is int:
        return value if -MAX_SAFE <= value <= MAX_SAFE else {"$int": str(value)}
    if kind is float:
        if math.isfinite(value):
            return value
        name = "NaN" if math.isnan(value) else ("Infinity" if value > 0 else "-Infinity")
        return {"$float": name}
    if kind is list:
        return [_tagged(v, depth + 1) for v in value]
    if kind is dict:
        out: dict[str, Any] = {}
        for k, v in value.items():
            if type(k) is not str:
                raise JsonCodecError(f"a dict key of type {type(k).__name__} (keys must be str)")
            out[k] = _tagged(v, depth + 1)
        return {"$object": out} if _is_tag_like(out) else out
    if kind is bytes:
        return {"$bytes": base64.b64encode(value).decode("ascii")}
    if kind is datetime:
        if value.tzinfo is None or value.utcoffset() is None:
            raise JsonCodecError(
                "a naive datetime (no time zone) cannot be json; make it aware, e.g. "
                "value.replace(tzinfo=datetime.timezone.utc)"
            )
        try:
            return {"$datetime": format_datetime(value)}
        except OverflowError as exc:
            raise JsonCodecError(f"the datetime {value!r} is out of range in UTC") from exc
    if kind is date:
        return {"$date": value.isoformat()}
    raise JsonCodecError(
        f"a {kind.__name__} cannot be json (json takes None, bool, int, float, str, "
        "bytes, aware datetime, date, list and dict with str keys)"
    )


def dumps(value: Any, *, plain: bool = False) -> bytes:
    """The canonical json bytes of a value; JsonCodecError names what cannot be json.

    ``plain=True`` promises that ``is_plain(value)`` holds (no tag needed), which
    skips building a tagged copy.
    """
    tree = value if plain else _tagged(value, 0)
    text = json.dumps(tree, separators=(",", ":"), ensure_ascii=False, allow_nan=False)
    try:
        return text.encode("utf-8")
    except UnicodeEncodeError as exc:  # a lone surrogate is not valid UTF-8
        raise JsonCodecError(f"a str with a lone surrogate cannot be UTF-8 ({exc})") from None


# Reading ------------------------------------------------------------------------------


def _reject_constant(name: str) -> Any:
    raise JsonCodecError(f'{name} is not JSON; use {{"$float": "{name}"}}')


def _parse_datetime(text: Any) -> datetime:
    match = _DATETIME.fullmatch(text) if isinstance(text, str) else None
    if match is None:
        raise JsonCodecError(f"$datetime needs an RFC 3339 date-time string, got {text!r}")
    year, month, day, hour, minute, second = (int(g) for g in match.groups()[:6])
    fraction, offset = match.group(7), match.group(8)
    micros = int((fraction[1:] + "000000")[:6]) if fraction else 0  # truncated to µs
    try:
        tz = UTC
        if offset not in ("Z", "z"):
            sign = -1 if offset[0] == "-" else 1
            delta = timedelta(hours=int(offset[1:3]), minutes=int(offset[4:6]))
            tz = timezone(sign * delta)
        parsed = datetime(year, month, day, hour, minute, second, micros, tzinfo=tz)
        return parsed.astimezone(UTC)
    except (ValueError, OverflowError) as exc:
        raise JsonCodecError(f"$datetime {text!r} is not a valid date-time ({exc})") from None


def _parse_date(text: Any) -> date:
    match = _DATE.fullmatch(text) if isinstance(text, str) else None
    if match is None:
        raise JsonCodecError(f"$date needs a YYYY-MM-DD string, got {text!r}")
    try:
        return date(*(int(g) for g in match.groups()))
    except ValueError as exc:
        raise JsonCodecError(f"$date {text!r} is not a valid date ({exc})") from None


def _parse_bytes(text: Any) -> bytes:
    if not isinstance(text, str) or len(text) % 4 or _B64.fullmatch(text) is None:
        raise JsonCodecError(f"$bytes needs padded standard base64, got {text!r}")
    try:
        data = base64.b64decode(text, validate=True)
    except binascii.Error as exc:
        raise JsonCodecError(f"$bytes {text!r} is not valid base64 ({exc})") from None
    if base64.b64encode(data).decode("ascii") != text:
        raise JsonCodecError(f"$bytes {text!r} has non-zero padding bits")
    return data


def _parse_int(text: Any) -> int:
    if not isinstance(text, str) or _INT.fullmatch(text) is None:
        raise JsonCodecError(f"$int needs a string of decimal digits, got {text!r}")
    return int(text)


def _parse_float(text: Any) -> float:
    if not isinstance(text, str) or text not in _FLOATS:
        raise JsonCodecError(f'$float must be "NaN", "Infinity" or "-Infinity", got {text!r}')
    return _FLOATS[text]


_READERS = {
    "$int": _parse_int,
    "$float": _parse_float,
    "$bytes": _parse_bytes,
    "$datetime": _parse_datetime,
    "$date": _parse_date,
}


def _resolve(value: Any) -> Any:
    """Replace tags by the values they stand for (top-down, so $object wraps whole)."""
    if type(value) is list:
        for i, item in enumerate(value):
            value[i] = _resolve(item)
        return value
    if type(value) is not dict:
        return value
    if len(value) == 1:
        key = next(iter(value))
        if key.startswith("$"):
            inner = value[key]
            if key == "$object":
                if type(inner) is not dict:
                    raise JsonCodecError("$object needs a JSON object")
                return {k: _resolve(v) for k, v in inner.items()}
            reader = _READERS.get(key)
            if reader is None:
                raise JsonCodecError(f"unknown json tag {key!r}")
            return reader(inner)
    for k, v in value.items():
        value[k] = _resolve(v)
    return value


def loads(data: bytes) -> Any:
    """The value of json bytes; JsonCodecError for invalid text or a bad tag."""
    tags = 0

    def pairs(items: list[tuple[str, Any]]) -> dict[str, Any]:
        nonlocal tags
        obj = dict(items)
        if len(obj) == 1 and items[-1][0].startswith("$"):
            tags += 1
        return obj

    try:
        text = data.decode("utf-8")
        value = json.loads(text, object_pairs_hook=pairs, parse_constant=_reject_constant)
    except UnicodeDecodeError as exc:
        raise JsonCodecError(f"json payload is not valid UTF-8 ({exc})") from None
    except json.JSONDecodeError as exc:
        raise JsonCodecError(f"json payload is not valid JSON ({exc})") from None
    except RecursionError:
        raise JsonCodecError("json payload is nested too deeply") from None
    return _resolve(value) if tags else value
