from headwater.v1 import payload_pb2 as _payload_pb2
from headwater.v1 import state_pb2 as _state_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class JournalEntry(_message.Message):
    __slots__ = ("format", "at", "run_started", "timers_fired", "attempt_started", "attempt_succeeded", "attempt_failed", "attempt_skipped", "attempt_lost", "cache_checked", "cancel_requested")
    FORMAT_FIELD_NUMBER: _ClassVar[int]
    AT_FIELD_NUMBER: _ClassVar[int]
    RUN_STARTED_FIELD_NUMBER: _ClassVar[int]
    TIMERS_FIRED_FIELD_NUMBER: _ClassVar[int]
    ATTEMPT_STARTED_FIELD_NUMBER: _ClassVar[int]
    ATTEMPT_SUCCEEDED_FIELD_NUMBER: _ClassVar[int]
    ATTEMPT_FAILED_FIELD_NUMBER: _ClassVar[int]
    ATTEMPT_SKIPPED_FIELD_NUMBER: _ClassVar[int]
    ATTEMPT_LOST_FIELD_NUMBER: _ClassVar[int]
    CACHE_CHECKED_FIELD_NUMBER: _ClassVar[int]
    CANCEL_REQUESTED_FIELD_NUMBER: _ClassVar[int]
    format: int
    at: float
    run_started: RunStarted
    timers_fired: TimersFired
    attempt_started: AttemptStarted
    attempt_succeeded: AttemptSucceeded
    attempt_failed: AttemptFailed
    attempt_skipped: AttemptSkipped
    attempt_lost: AttemptLost
    cache_checked: CacheChecked
    cancel_requested: CancelRequested
    def __init__(self, format: _Optional[int] = ..., at: _Optional[float] = ..., run_started: _Optional[_Union[RunStarted, _Mapping]] = ..., timers_fired: _Optional[_Union[TimersFired, _Mapping]] = ..., attempt_started: _Optional[_Union[AttemptStarted, _Mapping]] = ..., attempt_succeeded: _Optional[_Union[AttemptSucceeded, _Mapping]] = ..., attempt_failed: _Optional[_Union[AttemptFailed, _Mapping]] = ..., attempt_skipped: _Optional[_Union[AttemptSkipped, _Mapping]] = ..., attempt_lost: _Optional[_Union[AttemptLost, _Mapping]] = ..., cache_checked: _Optional[_Union[CacheChecked, _Mapping]] = ..., cancel_requested: _Optional[_Union[CancelRequested, _Mapping]] = ...) -> None: ...

class RunStarted(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class TimersFired(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class AttemptStarted(_message.Message):
    __slots__ = ("key", "attempt")
    KEY_FIELD_NUMBER: _ClassVar[int]
    ATTEMPT_FIELD_NUMBER: _ClassVar[int]
    key: str
    attempt: int
    def __init__(self, key: _Optional[str] = ..., attempt: _Optional[int] = ...) -> None: ...

class AttemptSucceeded(_message.Message):
    __slots__ = ("key", "attempt", "value", "cache_key", "cached")
    KEY_FIELD_NUMBER: _ClassVar[int]
    ATTEMPT_FIELD_NUMBER: _ClassVar[int]
    VALUE_FIELD_NUMBER: _ClassVar[int]
    CACHE_KEY_FIELD_NUMBER: _ClassVar[int]
    CACHED_FIELD_NUMBER: _ClassVar[int]
    key: str
    attempt: int
    value: StoredValue
    cache_key: str
    cached: bool
    def __init__(self, key: _Optional[str] = ..., attempt: _Optional[int] = ..., value: _Optional[_Union[StoredValue, _Mapping]] = ..., cache_key: _Optional[str] = ..., cached: _Optional[bool] = ...) -> None: ...

class AttemptFailed(_message.Message):
    __slots__ = ("key", "attempt", "failure", "timed_out")
    KEY_FIELD_NUMBER: _ClassVar[int]
    ATTEMPT_FIELD_NUMBER: _ClassVar[int]
    FAILURE_FIELD_NUMBER: _ClassVar[int]
    TIMED_OUT_FIELD_NUMBER: _ClassVar[int]
    key: str
    attempt: int
    failure: _state_pb2.Failure
    timed_out: bool
    def __init__(self, key: _Optional[str] = ..., attempt: _Optional[int] = ..., failure: _Optional[_Union[_state_pb2.Failure, _Mapping]] = ..., timed_out: _Optional[bool] = ...) -> None: ...

class AttemptSkipped(_message.Message):
    __slots__ = ("key", "attempt", "reason")
    KEY_FIELD_NUMBER: _ClassVar[int]
    ATTEMPT_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    key: str
    attempt: int
    reason: str
    def __init__(self, key: _Optional[str] = ..., attempt: _Optional[int] = ..., reason: _Optional[str] = ...) -> None: ...

class AttemptLost(_message.Message):
    __slots__ = ("key", "attempt", "reason")
    KEY_FIELD_NUMBER: _ClassVar[int]
    ATTEMPT_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    key: str
    attempt: int
    reason: str
    def __init__(self, key: _Optional[str] = ..., attempt: _Optional[int] = ..., reason: _Optional[str] = ...) -> None: ...

class CacheChecked(_message.Message):
    __slots__ = ("key", "cache_key", "hit", "value", "expires_at")
    KEY_FIELD_NUMBER: _ClassVar[int]
    CACHE_KEY_FIELD_NUMBER: _ClassVar[int]
    HIT_FIELD_NUMBER: _ClassVar[int]
    VALUE_FIELD_NUMBER: _ClassVar[int]
    EXPIRES_AT_FIELD_NUMBER: _ClassVar[int]
    key: str
    cache_key: str
    hit: bool
    value: StoredValue
    expires_at: float
    def __init__(self, key: _Optional[str] = ..., cache_key: _Optional[str] = ..., hit: _Optional[bool] = ..., value: _Optional[_Union[StoredValue, _Mapping]] = ..., expires_at: _Optional[float] = ...) -> None: ...

class CancelRequested(_message.Message):
    __slots__ = ("reason",)
    REASON_FIELD_NUMBER: _ClassVar[int]
    reason: str
    def __init__(self, reason: _Optional[str] = ...) -> None: ...

class StoredValue(_message.Message):
    __slots__ = ("value_id", "list", "dict", "select", "constant", "none")
    VALUE_ID_FIELD_NUMBER: _ClassVar[int]
    LIST_FIELD_NUMBER: _ClassVar[int]
    DICT_FIELD_NUMBER: _ClassVar[int]
    SELECT_FIELD_NUMBER: _ClassVar[int]
    CONSTANT_FIELD_NUMBER: _ClassVar[int]
    NONE_FIELD_NUMBER: _ClassVar[int]
    value_id: str
    list: StoredList
    dict: StoredDict
    select: StoredSelect
    constant: _payload_pb2.Payload
    none: bool
    def __init__(self, value_id: _Optional[str] = ..., list: _Optional[_Union[StoredList, _Mapping]] = ..., dict: _Optional[_Union[StoredDict, _Mapping]] = ..., select: _Optional[_Union[StoredSelect, _Mapping]] = ..., constant: _Optional[_Union[_payload_pb2.Payload, _Mapping]] = ..., none: _Optional[bool] = ...) -> None: ...

class StoredList(_message.Message):
    __slots__ = ("items", "tuple")
    ITEMS_FIELD_NUMBER: _ClassVar[int]
    TUPLE_FIELD_NUMBER: _ClassVar[int]
    items: _containers.RepeatedCompositeFieldContainer[StoredValue]
    tuple: bool
    def __init__(self, items: _Optional[_Iterable[_Union[StoredValue, _Mapping]]] = ..., tuple: _Optional[bool] = ...) -> None: ...

class StoredDict(_message.Message):
    __slots__ = ("keys", "values")
    KEYS_FIELD_NUMBER: _ClassVar[int]
    VALUES_FIELD_NUMBER: _ClassVar[int]
    keys: _containers.RepeatedScalarFieldContainer[str]
    values: _containers.RepeatedCompositeFieldContainer[StoredValue]
    def __init__(self, keys: _Optional[_Iterable[str]] = ..., values: _Optional[_Iterable[_Union[StoredValue, _Mapping]]] = ...) -> None: ...

class StoredSelect(_message.Message):
    __slots__ = ("base", "path")
    BASE_FIELD_NUMBER: _ClassVar[int]
    PATH_FIELD_NUMBER: _ClassVar[int]
    base: StoredValue
    path: _containers.RepeatedCompositeFieldContainer[_payload_pb2.PathElement]
    def __init__(self, base: _Optional[_Union[StoredValue, _Mapping]] = ..., path: _Optional[_Iterable[_Union[_payload_pb2.PathElement, _Mapping]]] = ...) -> None: ...
