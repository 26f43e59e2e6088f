"""The run manager's cache lookups (a part of ``RunManager``, kept apart for size).

Keys are derived here from a task's cache spec and the encoded inputs (the control plane
never decodes them), or taken from a worker that ran the task's key function; entries
are read from the store and checked for expiry.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING

from headwater.v1 import payload_pb2, worker_pb2
from headwater_runtime.engine import (
    CacheChecked,
    CacheEntry,
    CheckCache,
    Clock,
    Event,
    EventIgnored,
    TaskSucceeded,
)
from headwater_runtime.store import NotFound, Store

from ._values import SERVER_VALUES, to_input_value

if TYPE_CHECKING:
    from ._runs import ActiveRun

#: Where a run's consumers map over a task's result (None: nowhere).
Split = tuple[str | int, ...] | None


def _mapped_length(value: payload_pb2.Value, split: tuple[str | int, ...]) -> int | None:
    """How many elements the part of ``value`` at ``split`` has (None: it is no
    sequence, so it cannot be mapped over)."""
    return SERVER_VALUES.length(SERVER_VALUES.select(value, split) if split else value)


def hit_width(checked: CacheChecked, split: Split) -> int:
    """How many elements a cache hit makes its run's consumers map over (0 for a miss,
    or when none maps over the result)."""
    if checked.entry is None or split is None:
        return 0
    return _mapped_length(checked.entry.value, split) or 0


class RunCacheLookups:
    """Cache lookups of the run manager (a mixin of ``RunManager``)."""

    store: Store
    clock: Clock
    runs: Mapping[str, ActiveRun]
    #: Whether the values a stored result holds outside the control plane can still
    #: be read (held by a Dask bridge): an entry whose value cannot is a miss.
    value_available: Callable[[object], bool] | None

    def handle(self, flow_run_id: str, event: Event) -> list[EventIgnored]:
        """(RunManager.handle.)"""
        raise NotImplementedError

    def function_cache_key(self, flow_run_id: str, run_key: str, reported: str) -> str:
        """The cache key for a key a worker derived with the task's key function ("" if
        the task does not cache by function: workers cannot write arbitrary keys)."""
        if not reported:  # the common case: every result of an uncached task
            return ""
        active = self.runs.get(flow_run_id)
        run = active.engine.runs.get(run_key) if active is not None else None
        if run is None:
            return ""
        spec, cache = run.spec, run.spec.cache
        if cache is None or not cache.by_function:
            return ""
        return f"{spec.cache_key_prefix}key={reported}"

    def _cached(self, key: str, split: Split = None) -> CacheEntry | None:
        """The valid cache entry under ``key`` (None when missing or expired, or not
        split at ``split``, the path where this run's consumers map over the result:
        an entry a run that used the result whole stored cannot serve them, so the task
        runs again and its split result replaces the entry)."""
        row = self.store.get_cache(key)
        if row is None or (row.expires_at is not None and row.expires_at <= self.clock.now()):
            return None
        data = self.store.get_values([row.value_id]).get(row.value_id)
        if data is None:
            return None
        value = payload_pb2.Value.FromString(data)
        if self.value_available is not None and not self.value_available(value):
            return None  # held by a Dask bridge that let go of it, or is gone
        if split is not None and _mapped_length(value, split) is None:
            return None  # (that part of it cannot be mapped over)
        return CacheEntry(value, row.expires_at)

    def cache_lookup(self, flow_run_id: str, run_key: str, attempt: int, reported: str) -> bool:
        """A worker derived a cache key with the task's key function (CacheKeyReport).
        On a valid hit the attempt ends CACHED with the stored value, and True tells
        the worker not to run the task."""
        key = self.function_cache_key(flow_run_id, run_key, reported)
        if not key:
            return False
        active = self.runs[flow_run_id]  # (function_cache_key found it)
        entry = self._cached(key, active.split_nodes.get(active.engine.runs[run_key].spec.id))
        if entry is None:
            return False
        hit = TaskSucceeded(run_key, attempt, entry.value, cache_key=key, cached=True)
        return not self.handle(flow_run_id, hit)

    def check_cache(self, command: CheckCache, split: Split = None) -> CacheChecked:
        """The cache lookup of a task run about to be scheduled; ``split``: where the
        run's consumers map over its result (``ActiveRun.split_nodes``). Store reads:
        off the loop (a reader thread), or where the run is worked on off it."""
        spec = command.run.spec
        cache = spec.cache
        assert cache is not None
        if cache.by_function:
            # The key function lives in the worker: the assignment asks it for the key
            # (CacheKeyReport), answered by cache_lookup before the task runs.
            return CacheChecked(command.run.key, "", None)
        digest = hashlib.sha256()
        sha256_of = _StoredHashes(self.store)
        for name in sorted(command.inputs):
            digest.update(name.encode() + b"\0")
            value = to_input_value(command.inputs[name], elements=False)
            _by_content(value, sha256_of)
            digest.update(value.SerializeToString(deterministic=True))
        key = spec.cache_key_prefix + digest.hexdigest()
        return CacheChecked(command.run.key, key, self._cached(key, split))


class _StoredHashes:
    """The SHA-256 the store computed of each payload asked for ("" when it is not
    stored), each read once."""

    def __init__(self, store: Store) -> None:
        self.store = store
        self._known: dict[str, str] = {}

    def __call__(self, payload_id: str) -> str:
        if payload_id not in self._known:
            try:
                self._known[payload_id] = self.store.payload_meta(payload_id).sha256
            except NotFound:
                self._known[payload_id] = ""
        return self._known[payload_id]


def _by_content(msg: worker_pb2.InputValue, sha256_of: Callable[[str], str]) -> None:
    """An input's references to the store named by their content for its cache key:
    each ``payload_id`` (new with every upload) replaced by the SHA-256 the store
    computed of the bytes (not the one a reference states). An input of more than
    the inline limit (1 MiB) was a new key on every run: such a task never hit its
    cache on a server (a user trial). A reference held elsewhere (a Dask cluster) or
    to a payload no longer stored keeps its id."""
    if msg.HasField("value"):
        values = [msg.value]
        while values:
            value = values.pop()
            values.extend(value.items)
            if value.WhichOneof("kind") != "ref" or value.ref.location:
                continue
            sha256 = sha256_of(value.ref.payload_id)
            if sha256:
                value.ref.payload_id = ""
                value.ref.sha256 = sha256
    for item in msg.list.items:
        _by_content(item, sha256_of)
    for entry in msg.map.entries:
        _by_content(entry.value, sha256_of)
