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

    def drop(self, key: str) -> None:
        """Forget the entry under ``key``, if any."""
        with self._lock:
            self._entries.pop(key, None)

    def clear(self) -> None:
        """Forget every entry."""
        with self._lock:
            self._entries.clear()

    def __len__(self) -> int:
        return len(self._entries)


PROCESS_CACHE = ResultCache()


def cache_snapshot(
    cache: ResultCache,
    key: str,
    value: Any,
    expires_at: float | None,
    task: str,
    fn: Callable[..., Any] | None = None,
) -> None:
    """Store a snapshot of ``value`` (a result of task ``task``, whose function is
    ``fn``); one that cannot be pickled is left uncached, with a warning at the task's
    definition (a server could not cache it either)."""
    try:
        frozen = snapshot(value)
    except Exception as exc:
        warn_at_task(
            fn,
            f"task {task!r}: its result ({type(value).__name__}) was not cached: it "
            f"cannot be pickled ({exc})",
        )
        return
    cache.put(key, frozen, expires_at)


def warn_at_task(fn: Callable[..., Any] | None, message: str) -> None:
    """A RuntimeWarning about a task, shown at its function's definition (the user's
    code, once per place as warnings are) rather than at the line of Headwater's that
    noticed (it named runtime/headwater_runtime/embedded/_threads.py, a user trial)."""
    import inspect
    import warnings

    target = inspect.unwrap(fn) if fn is not None else None
    code = getattr(target, "__code__", None)
    module_globals = getattr(target, "__globals__", None)
    if code is None or not isinstance(module_globals, dict):
        warnings.warn(message, RuntimeWarning, stacklevel=3)
        return
    warnings.warn_explicit(
        message,
        RuntimeWarning,
        code.co_filename,
        code.co_firstlineno,
        module=module_globals.get("__name__"),
        registry=module_globals.setdefault("__warningregistry__", {}),
        module_globals=module_globals,
    )


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

    Containers are hashed structurally, with their types (set order does not matter,
    dict order does), numpy-like arrays by dtype, shape and bytes (arrays of objects:
    by their elements); anything else by its cloudpickle bytes.
    """
    import hashlib  # only once a task caches: ~10 ms of OpenSSL at import

    h = hashlib.blake2b(digest_size=20)
    _feed(h, value, 0)
    return h.hexdigest()


#: The types hashed by their contents; a subclass (an IntEnum, an OrderedDict, a named
#: tuple) by its own name as well (bool first: it is an int). Equal values of two of
#: these types are different inputs: ``1`` and ``Color.RED``, ``{1}`` and
#: ``frozenset({1})``, ``b"x"`` and ``bytearray(b"x")`` hit each other's cache entries
#: (a task's ``repr`` of them differs: a trial).
_CONTENT_TYPES = (bool, int, float, str, bytes, bytearray, list, tuple, dict, set, frozenset)
_TAGS = {bool: b"?", int: b"i", float: b"f", str: b"s", bytes: b"b", bytearray: b"B"}
_TAGS |= {list: b"l", tuple: b"t", dict: b"d", set: b"S", frozenset: b"Z"}


def _feed(h: Any, value: Any, depth: int) -> None:
    if depth > 64:
        raise ValueError("inputs nest too deeply to hash for caching")
    if value is None:
        h.update(b"N")
        return
    base = next((t for t in _CONTENT_TYPES if isinstance(value, t)), None)
    if base is not None:
        kind = type(value)
        if kind is not base:
            h.update(b"c" + f"{kind.__module__}.{kind.__qualname__}".encode() + b"\0")
        _feed_content(h, _TAGS[base], base, value, depth)
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


def _feed_content(h: Any, tag: bytes, base: type, value: Any, depth: int) -> None:
    """A value of one of _CONTENT_TYPES (or a subclass) by its contents."""
    if base is bool:
        h.update(tag + (b"T" if value else b"F"))
    elif base is int:
        h.update(tag + str(int(value)).encode())
    elif base is float:
        h.update(tag + (b"nan" if math.isnan(value) else struct.pack("<d", value)))
    elif base is str:
        data = str.__str__(value).encode("utf-8", "surrogatepass")
        h.update(tag + struct.pack("<Q", len(data)) + data)
    elif base is bytes or base is bytearray:
        h.update(tag + struct.pack("<Q", len(value)) + bytes(value))
    elif base is list or base is tuple:
        h.update(tag + struct.pack("<Q", len(value)))
        for item in value:
            _feed(h, item, depth + 1)
    elif base is dict:
        # In order: a dict's order is its own (a task iterating it sees it), and the
        # same in every process.
        h.update(tag + struct.pack("<Q", len(value)))
        for key, item in value.items():
            _feed(h, key, depth + 1)
            _feed(h, item, depth + 1)
    else:  # a set: iteration order differs between processes (string hashing)
        h.update(tag + struct.pack("<Q", len(value)))
        for part in sorted(_sub_hash(v) for v in value):
            h.update(part.encode())


def _sub_hash(value: Any) -> str:
    import hashlib

    h = hashlib.blake2b(digest_size=16)
    _feed(h, value, 0)
    return h.hexdigest()
