"""The embedded result cache and stable hashing of task inputs."""

from __future__ import annotations

import math
import struct
import threading
from collections.abc import Callable
from typing import Any

from headwater.wire import TaskSpec
from headwater_runtime.engine import CacheEntry


class Snapshot:
    """A cached value as pickled bytes: every cache hit unpickles its own copy, so a
    task that changes its input in place cannot change what later runs get."""

    __slots__ = ("data",)

    def __init__(self, data: bytes) -> None:
        """Hold ``data``, a value pickled by ``snapshot``."""
        self.data = data


def snapshot(value: Any) -> Snapshot:
    """``value`` frozen for the cache (cloudpickle: lambdas and local classes too);
    raises what pickling raises for a value that cannot be copied."""
    import cloudpickle  # only once a task caches

    return Snapshot(cloudpickle.dumps(value))


def thaw(value: Any) -> Any:
    """A fresh copy of a snapshot; any other value as it is."""
    if type(value) is Snapshot:
        import pickle

        return pickle.loads(value.data)
    return value


class ResultCache:
    """In-memory cache of task results, keyed by cache key (one per process by
    default, so it survives across runs in a notebook or a long-lived process)."""

    def __init__(self) -> None:
        self._entries: dict[str, CacheEntry] = {}
        self._lock = threading.Lock()

    def get(self, key: str) -> CacheEntry | None:
        """The entry under ``key`` (expired or not: the engine checks expiry), or None."""
        with self._lock:
            return self._entries.get(key)

    def put(self, key: str, value: Any, expires_at: float | None) -> None:
        """Store a result until ``expires_at`` (seconds since the epoch; None: forever)."""
        with self._lock:
            self._entries[key] = CacheEntry(value, expires_at)

    def clear(self) -> None:
        """Forget every entry."""
        with self._lock:
            self._entries.clear()

    def __len__(self) -> int:
        return len(self._entries)


PROCESS_CACHE = ResultCache()


def cache_snapshot(
    cache: ResultCache, key: str, value: Any, expires_at: float | None, task: str
) -> None:
    """Store a snapshot of ``value`` (a result of task ``task``); one that cannot be
    pickled is left uncached, with a warning (a server could not cache it either)."""
    try:
        frozen = snapshot(value)
    except Exception as exc:
        import warnings

        warnings.warn(
            f"task {task!r}: its result ({type(value).__name__}) was not cached: it "
            f"cannot be pickled ({exc})",
            RuntimeWarning,
            stacklevel=2,
        )
        return
    cache.put(key, frozen, expires_at)


def cache_key(spec: TaskSpec, inputs: dict[str, Any]) -> str:
    """Task identity + versions + the user's key (key function) or a hash of inputs."""
    cache = spec.cache
    assert cache is not None
    return make_cache_key(spec.cache_key_prefix, cache.key_fn, spec.name, inputs)


def make_cache_key(
    prefix: str, key_fn: Callable[[dict[str, Any]], Any] | None, name: str, inputs: dict[str, Any]
) -> str:
    """``prefix`` + the user's key, or a stable hash of the inputs (no key function)."""
    if key_fn is None:
        return prefix + stable_hash(inputs)
    user = key_fn(inputs)
    if not isinstance(user, str):
        raise TypeError(
            f"cache_key_fn of task {name!r} must return a str, not {type(user).__name__}"
        )
    return prefix + user


def stable_hash(value: Any) -> str:
    """A hash of a value that is the same in every process (unlike ``hash()``).

    Containers are hashed structurally (dict and set order do not matter), numpy-like
    arrays by dtype, shape and bytes (arrays of objects: by their elements); anything
    else by its cloudpickle bytes.
    """
    import hashlib  # only once a task caches: ~10 ms of OpenSSL at import

    h = hashlib.blake2b(digest_size=20)
    _feed(h, value, 0)
    return h.hexdigest()


def _feed(h: Any, value: Any, depth: int) -> None:
    if depth > 64:
        raise ValueError("inputs nest too deeply to hash for caching")
    if value is None or isinstance(value, bool):
        h.update(b"N" if value is None else (b"T" if value else b"F"))
    elif isinstance(value, int):
        h.update(b"i" + str(value).encode())
    elif isinstance(value, float):
        h.update(b"f" + (b"nan" if math.isnan(value) else struct.pack("<d", value)))
    elif isinstance(value, str):
        data = value.encode("utf-8", "surrogatepass")
        h.update(b"s" + struct.pack("<Q", len(data)) + data)
    elif isinstance(value, bytes | bytearray):
        h.update(b"b" + struct.pack("<Q", len(value)) + bytes(value))
    elif isinstance(value, list | tuple):
        h.update((b"l" if isinstance(value, list) else b"t") + struct.pack("<Q", len(value)))
        for item in value:
            _feed(h, item, depth + 1)
    elif isinstance(value, dict):
        h.update(b"d" + struct.pack("<Q", len(value)))
        for part in sorted(_sub_hash(k) + _sub_hash(v) for k, v in value.items()):
            h.update(part.encode())
    elif isinstance(value, set | frozenset):
        h.update(b"S" + struct.pack("<Q", len(value)))
        for part in sorted(_sub_hash(v) for v in value):
            h.update(part.encode())
    elif hasattr(value, "tobytes") and hasattr(value, "dtype") and hasattr(value, "shape"):
        h.update(f"a{value.dtype}{value.shape}".encode())
        if getattr(value.dtype, "hasobject", False):
            # Its bytes are the addresses of its objects: a freed array's reused
            # addresses hit the cache for other values, an element changed in place
            # did not miss. Its elements are hashed instead.
            _feed(h, value.tolist(), depth + 1)
        else:
            h.update(value.tobytes())
    else:
        import cloudpickle  # only for values of other types (most inputs are plain)

        h.update(b"p" + cloudpickle.dumps(value))


def _sub_hash(value: Any) -> str:
    import hashlib

    h = hashlib.blake2b(digest_size=16)
    _feed(h, value, 0)
    return h.hexdigest()
