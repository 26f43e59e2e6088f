from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class Payload(_message.Message):
    __slots__ = ("data", "metadata")
    class MetadataEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    DATA_FIELD_NUMBER: _ClassVar[int]
    METADATA_FIELD_NUMBER: _ClassVar[int]
    data: bytes
    metadata: _containers.ScalarMap[str, str]
    def __init__(self, data: _Optional[bytes] = ..., metadata: _Optional[_Mapping[str, str]] = ...) -> None: ...

class PayloadRef(_message.Message):
    __slots__ = ("payload_id", "size_bytes", "metadata", "sha256", "location", "dask_key")
    class MetadataEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    PAYLOAD_ID_FIELD_NUMBER: _ClassVar[int]
    SIZE_BYTES_FIELD_NUMBER: _ClassVar[int]
    METADATA_FIELD_NUMBER: _ClassVar[int]
    SHA256_FIELD_NUMBER: _ClassVar[int]
    LOCATION_FIELD_NUMBER: _ClassVar[int]
    DASK_KEY_FIELD_NUMBER: _ClassVar[int]
    payload_id: str
    size_bytes: int
    metadata: _containers.ScalarMap[str, str]
    sha256: str
    location: str
    dask_key: str
    def __init__(self, payload_id: _Optional[str] = ..., size_bytes: _Optional[int] = ..., metadata: _Optional[_Mapping[str, str]] = ..., sha256: _Optional[str] = ..., location: _Optional[str] = ..., dask_key: _Optional[str] = ...) -> None: ...

class Value(_message.Message):
    __slots__ = ("inline", "ref", "items")
    INLINE_FIELD_NUMBER: _ClassVar[int]
    REF_FIELD_NUMBER: _ClassVar[int]
    ITEMS_FIELD_NUMBER: _ClassVar[int]
    inline: Payload
    ref: PayloadRef
    items: _containers.RepeatedCompositeFieldContainer[Value]
    def __init__(self, inline: _Optional[_Union[Payload, _Mapping]] = ..., ref: _Optional[_Union[PayloadRef, _Mapping]] = ..., items: _Optional[_Iterable[_Union[Value, _Mapping]]] = ...) -> None: ...

class PathElement(_message.Message):
    __slots__ = ("index", "key")
    INDEX_FIELD_NUMBER: _ClassVar[int]
    KEY_FIELD_NUMBER: _ClassVar[int]
    index: int
    key: str
    def __init__(self, index: _Optional[int] = ..., key: _Optional[str] = ...) -> None: ...

class UploadPayloadHeader(_message.Message):
    __slots__ = ("size_bytes", "metadata", "sha256")
    class MetadataEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    SIZE_BYTES_FIELD_NUMBER: _ClassVar[int]
    METADATA_FIELD_NUMBER: _ClassVar[int]
    SHA256_FIELD_NUMBER: _ClassVar[int]
    size_bytes: int
    metadata: _containers.ScalarMap[str, str]
    sha256: str
    def __init__(self, size_bytes: _Optional[int] = ..., metadata: _Optional[_Mapping[str, str]] = ..., sha256: _Optional[str] = ...) -> None: ...

class UploadPayloadRequest(_message.Message):
    __slots__ = ("header", "chunk")
    HEADER_FIELD_NUMBER: _ClassVar[int]
    CHUNK_FIELD_NUMBER: _ClassVar[int]
    header: UploadPayloadHeader
    chunk: bytes
    def __init__(self, header: _Optional[_Union[UploadPayloadHeader, _Mapping]] = ..., chunk: _Optional[bytes] = ...) -> None: ...

class UploadPayloadResponse(_message.Message):
    __slots__ = ("ref",)
    REF_FIELD_NUMBER: _ClassVar[int]
    ref: PayloadRef
    def __init__(self, ref: _Optional[_Union[PayloadRef, _Mapping]] = ...) -> None: ...

class DownloadPayloadRequest(_message.Message):
    __slots__ = ("payload_id", "offset")
    PAYLOAD_ID_FIELD_NUMBER: _ClassVar[int]
    OFFSET_FIELD_NUMBER: _ClassVar[int]
    payload_id: str
    offset: int
    def __init__(self, payload_id: _Optional[str] = ..., offset: _Optional[int] = ...) -> None: ...

class DownloadPayloadResponse(_message.Message):
    __slots__ = ("chunk", "offset", "size_bytes")
    CHUNK_FIELD_NUMBER: _ClassVar[int]
    OFFSET_FIELD_NUMBER: _ClassVar[int]
    SIZE_BYTES_FIELD_NUMBER: _ClassVar[int]
    chunk: bytes
    offset: int
    size_bytes: int
    def __init__(self, chunk: _Optional[bytes] = ..., offset: _Optional[int] = ..., size_bytes: _Optional[int] = ...) -> None: ...
