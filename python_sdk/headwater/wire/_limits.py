"""Sizes every side of the wire agrees on (one definition each), and the limits a
server puts on what its peers send (``Limits``, configurable; docs/limits.md).

gRPC refuses messages above 4 MiB by default; Headwater keeps every message it builds
well under that and moves larger values through PayloadService in chunks.
"""

from __future__ import annotations

from dataclasses import dataclass

MiB = 1 << 20

#: gRPC's default largest message (what a peer with default settings accepts).
GRPC_MESSAGE_LIMIT = 4 * MiB
#: Hard ceiling for a message Headwater builds (the gRPC limit minus headroom for
#: the envelope around the values).
MESSAGE_LIMIT = GRPC_MESSAGE_LIMIT - 64 * 1024
#: Inline value bytes allowed in one message, all values together (results,
#: assignments); above it values go by reference.
MESSAGE_BUDGET = 3 * MiB
#: Largest single value sent inline; larger ones are uploaded and sent by reference.
#: The server announces its own in ``Welcome.inline_payload_limit``.
INLINE_PAYLOAD_LIMIT = 1 * MiB
#: Size of one chunk of a payload upload or download (and the most a server accepts).
CHUNK_SIZE = 1 * MiB
#: Most bytes gathered into one batch of stream messages.
BATCH_BYTES = 1 * MiB
#: Longest stack trace, failure message or log line sent; the rest is cut (a deep
#: recursion's traceback must not make a message the peer refuses).
TEXT_LIMIT = 64 * 1024
#: Default largest payload a server accepts (a 300 MB array must pass; bound the disk).
MAX_PAYLOAD_BYTES = 4 << 30
#: Seconds since the epoch a protobuf Timestamp can hold: 0001-01-01 to 9999-12-31 UTC.
TIMESTAMP_RANGE = (-62_135_596_800, 253_402_300_799)
#: The longest protobuf Duration (about 10,000 years), in seconds.
MAX_DURATION = 315_576_000_000
#: The highest ``max_nesting`` a server takes (and its default). Protobuf decoders
#: refuse a message nested over 100 levels, and the server builds messages around what
#: that limit lets in: a batched assignment whose argument nests dicts
#: ``max_nesting - 1`` deep (three message levels each) around a mapped task's results,
#: each nesting elements ``max_nesting`` deep, is the deepest; a flow run's result
#: (graph inputs around values) nests half as much per level. At 23 every such
#: message decodes in Python, at 24 that assignment does not (measured by
#: tests/test_nesting_bound.py). A server once took 150 and then answered GetFlowRun
#: with a message no client could decode.
MAX_NESTING_CEILING = 23
#: The highest ``max_worker_slots`` a server takes: a worker's slots are stored as a
#: 32-bit integer (PostgreSQL's INTEGER).
MAX_SLOTS_CEILING = 2**31 - 1


def cut_text(text: str, limit: int = TEXT_LIMIT) -> str:
    """``text`` shortened to at most ``limit`` characters, keeping its head and tail
    around a note of how many were cut (so cutting it again changes nothing: a log
    line the SDK cut was cut again by the server, whose note then said 33), and fit
    for a protobuf string: a lone surrogate (a file name os.listdir decoded from bytes
    that are not UTF-8) is written as ``\\udcff``; protobuf refused the whole message,
    and a task printing such a name failed on a worker."""
    if not text.isascii():
        try:
            text.encode("utf-8")
        except UnicodeEncodeError:
            text = text.encode("utf-8", "backslashreplace").decode("utf-8")
    if len(text) <= limit:
        return text
    marker = f"\n... ({len(text)} characters cut) ...\n"  # (as long as the note, or longer)
    half = max(0, (limit - len(marker)) // 2)
    tail = text[len(text) - half :]
    return f"{text[:half]}\n... ({len(text) - 2 * half} characters cut) ...\n{tail}"


def message_limit(announced: int) -> int:
    """The largest message a peer accepts, from what it announced (``Hello`` or
    ``Welcome.max_message_bytes``; 0 from a peer that says nothing: gRPC's default)."""
    return announced if announced > 0 else GRPC_MESSAGE_LIMIT


def message_ceiling(limit: int) -> int:
    """The most a message Headwater builds for a peer that accepts ``limit`` bytes may
    hold: ``MESSAGE_LIMIT`` at gRPC's default, the same headroom below a larger one."""
    return max(limit - (GRPC_MESSAGE_LIMIT - MESSAGE_LIMIT), limit // 2)


def message_budget(limit: int) -> int:
    """Inline value bytes one message for a peer that accepts ``limit`` bytes may carry:
    ``MESSAGE_BUDGET`` at gRPC's default, the same room left for the rest above it."""
    return max(limit - (GRPC_MESSAGE_LIMIT - MESSAGE_BUDGET), limit // 2)


# -------------------------------------------------------------- configurable limits


@dataclass(frozen=True, slots=True)
class LimitSpec:
    """What one configurable limit bounds, for people (flags, docs, messages)."""

    name: str
    meaning: str
    #: "bytes" or "count" (how its value reads).
    unit: str


#: Every configurable limit of a server, in the order docs/limits.md lists them. The
#: defaults are the fields of ``Limits``; each has a ``--max-...`` flag and a
#: ``HEADWATER_MAX_...`` variable (``limit_flag``, ``limit_variable``).
LIMIT_SPECS: tuple[LimitSpec, ...] = (
    LimitSpec(
        "max_message_bytes",
        "largest gRPC message the server receives (a request, or one message of a "
        "stream) and sends to a worker; its workers must accept as much (headwater "
        "worker --max-message-bytes)",
        "bytes",
    ),
    LimitSpec("max_payload_bytes", "largest payload one upload may declare", "bytes"),
    LimitSpec("max_chunk_bytes", "largest chunk in one upload message", "bytes"),
    LimitSpec("max_upload_chunks", "most chunk messages in one upload", "count"),
    LimitSpec("max_graph_tasks", "most tasks in one flow graph", "count"),
    LimitSpec(
        "max_graph_edges",
        "most upstream references (data and wait_for) in one flow graph, all tasks together",
        "count",
    ),
    LimitSpec(
        "max_nesting",
        "deepest nesting of a graph input (lists and dicts in lists and dicts) or of a "
        "value's elements (items of items)",
        "count",
    ),
    LimitSpec(
        "max_map_width",
        "most elements a value may declare or carry (headwater.length, items): the "
        "children a mapped task may expand into",
        "count",
    ),
    LimitSpec(
        "max_parameter_bytes",
        "largest parameter value sent inline in a request (larger ones go by reference)",
        "bytes",
    ),
    LimitSpec(
        "max_log_bytes",
        "most log text one attempt may store (its later records are dropped and counted)",
        "bytes",
    ),
    LimitSpec(
        "max_worker_slots",
        "most slots one worker may declare (Hello.slots: attempts it runs at once)",
        "count",
    ),
    LimitSpec(
        "max_list_items",
        "most entries in one list or map of a request: the messages of a worker's batch; "
        "a Hello's capabilities, labels, running attempts, code digests and flows; a "
        "run's trace context; a graph task's tags and required labels; an upload's metadata",
        "count",
    ),
)


@dataclass(frozen=True, slots=True)
class Limits:
    """The most a server accepts of every size a peer can state (docs/limits.md).

    A request over a limit is refused with RESOURCE_EXHAUSTED, a worker's result over
    one fails its task (``headwater.LimitExceeded``); either way the message names the
    limit, its value and how to raise it. ``LIMIT_SPECS`` says what each bounds.
    """

    max_message_bytes: int = GRPC_MESSAGE_LIMIT
    max_payload_bytes: int = MAX_PAYLOAD_BYTES
    max_chunk_bytes: int = CHUNK_SIZE
    max_upload_chunks: int = 1 << 16
    max_graph_tasks: int = 200_000
    max_graph_edges: int = 1_000_000
    max_nesting: int = MAX_NESTING_CEILING
    max_map_width: int = 100_000
    max_parameter_bytes: int = INLINE_PAYLOAD_LIMIT
    max_log_bytes: int = 64 << 20
    max_list_items: int = 10_000
    max_worker_slots: int = 100_000

    def __post_init__(self) -> None:
        for spec in LIMIT_SPECS:
            value = getattr(self, spec.name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{spec.name} must be a whole number >= 1, got {value!r}")
        if self.max_nesting > MAX_NESTING_CEILING:
            raise ValueError(
                f"max_nesting must be 1 to {MAX_NESTING_CEILING}, got {self.max_nesting} "
                f"({limit_flag('max_nesting')}, {limit_variable('max_nesting')}): the "
                "messages built around values nested deeper exceed the 100 levels "
                "protobuf decodes"
            )
        if self.max_worker_slots > MAX_SLOTS_CEILING:
            raise ValueError(
                f"max_worker_slots must be 1 to {MAX_SLOTS_CEILING:,}, got "
                f"{self.max_worker_slots:,} (the most a store records)"
            )
        if self.max_chunk_bytes > self.max_message_bytes - 1024:
            raise ValueError(
                f"max_chunk_bytes ({self.max_chunk_bytes}) must leave room for the message "
                f"around it within max_message_bytes ({self.max_message_bytes})"
            )

    def exceeded(self, name: str, what: str) -> LimitExceeded:
        """The error for ``what`` (a phrase ending in a number) over limit ``name``."""
        return LimitExceeded(name, getattr(self, name), what)


def limit_flag(name: str) -> str:
    """The ``headwater server`` flag that sets a limit: ``--max-map-width``."""
    return "--" + name.replace("_", "-")


def limit_variable(name: str) -> str:
    """The environment variable that sets a limit: ``HEADWATER_MAX_MAP_WIDTH``."""
    return "HEADWATER_" + name.upper()


class LimitExceeded(ValueError):
    """A request or report states a size over one of the server's limits.

    Args:
        limit: the limit's name (a field of ``Limits``).
        value: the limit's value on this server.
        what: what was too large, ending in its size ("graph 'etl' has 250000 tasks").
    """

    def __init__(self, limit: str, value: int, what: str) -> None:
        self.limit = limit
        self.value = value
        super().__init__(
            f"{what}, over this server's limit {limit} = {value} (raise it with "
            f"{limit_flag(limit)} or {limit_variable(limit)})"
        )
