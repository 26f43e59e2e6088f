"""The payload references in a worker's result, checked before the result is taken
(``WorkerReports.look_up_refs``): each reference to the server's store must name a
stored payload, with the size and SHA-256 it was stored with (when the reference gives
them); a reference whose ``location`` is neither empty (the store) nor "dask" is not
one the protocol defines; a worker-only credential references only payloads it may
read (``Reader``: a reference is a way to read, for the tasks that take the value). A
result that fails is refused and its task fails (docs/worker-protocol.md,
"TaskResult"): its readers would fail later, on a download. A graph build's converted
parameters are checked the same way (``RunCreation.build``).
"""

from __future__ import annotations

from dataclasses import dataclass

from grpc import StatusCode

from headwater.v1 import payload_pb2
from headwater_runtime.store import NotFound, PayloadMeta, Store

from ._assignments import Token

#: Values (elements at any depth) from which a result is searched on a reader thread
#: rather than on the event loop.
REFS_ON_LOOP = 64
#: The "attempt" of a Dask bridge export's value in the keys of ``stored_problems``
#: (its payload id in place of a task run id).
EXPORT = -1
#: Where a PayloadRef may point: the server's store ("") or a Dask cluster.
LOCATIONS = ("", "dask")

#: Why a result cannot be taken: its status and the words after "the result of ...".
Problem = tuple[StatusCode, str]


def walk(
    value: payload_pb2.Value, budget: int | None = None
) -> tuple[list[payload_pb2.PayloadRef], list[Problem]] | None:
    """The references to the store in ``value`` (at any depth, in order) and the
    problems seen without the store (an undefined location); None when the value has
    more than ``budget`` elements in all (then it is walked off the loop)."""
    refs: list[payload_pb2.PayloadRef] = []
    odd: list[str] = []
    stack = [value]
    seen = 0
    while stack:
        current = stack.pop()
        seen += 1
        if budget is not None and seen > budget:
            return None
        if current.WhichOneof("kind") == "ref":
            location = current.ref.location
            if not location:
                refs.append(current.ref)
            elif location not in LOCATIONS:
                odd.append(location)
        stack.extend(reversed(current.items))
    problems: list[Problem] = []
    if odd:
        problems.append(
            (
                StatusCode.INVALID_ARGUMENT,
                f"references a payload at location {odd[0][:40]!r}, which the protocol does "
                "not define (a PayloadRef's location is empty, for the server's store, "
                'or "dask")',
            )
        )
    return refs, problems


@dataclass(frozen=True)
class Reader:
    """A worker-only credential, which may reference only the payloads it may read:
    those it uploaded and the inputs of the attempts its sessions hold."""

    credential: str
    held_inputs: frozenset[str]

    def may_read(self, meta: PayloadMeta) -> bool:
        """Whether the credential may reference this stored payload: one it may read,
        or one stored before uploaders were recorded (a worker that uploaded it before
        an upgrade and reports its result after must not see its task fail; such a
        payload it may not download)."""
        if meta.uploader is None:
            return True
        mine = meta.uploader != "" and meta.uploader == self.credential
        return mine or meta.id in self.held_inputs


def stored_problems(
    store: Store,
    refs: dict[Token, list[payload_pb2.PayloadRef]],
    wide: dict[Token, payload_pb2.Value],
    reader: Reader | None = None,
) -> dict[Token, list[Problem]]:
    """(On a reader thread.) By attempt, what is wrong with the store references of its
    result: ``refs`` already gathered, ``wide`` values to walk here; ``reader``: the
    worker-only credential that reports them, if it is one. Only attempts with a
    problem are in the answer."""
    out: dict[Token, list[Problem]] = {}
    refs = dict(refs)
    for key, value in wide.items():
        found = walk(value)
        assert found is not None
        refs[key], problems = found
        if problems:
            out[key] = problems
    metas: dict[str, PayloadMeta | None] = {}

    def meta(payload_id: str) -> PayloadMeta | None:
        if payload_id not in metas:
            try:
                metas[payload_id] = store.payload_meta(payload_id)
            except NotFound:
                metas[payload_id] = None
        return metas[payload_id]

    for key, ids in refs.items():
        problems = out.get(key, [])
        if reader is None:
            missing = [r.payload_id for r in ids if meta(r.payload_id) is None]
            readable = ids
        else:  # not stored, or not its to read: one answer (no oracle of what exists)
            missing, readable, denied = [], [], []
            for r in ids:
                m = meta(r.payload_id)
                if m is not None and reader.may_read(m):
                    readable.append(r)
                else:
                    denied.append(r.payload_id)
            if denied:
                more = f" (and {len(denied) - 1} more)" if len(denied) > 1 else ""
                problems.append(
                    (
                        StatusCode.PERMISSION_DENIED,
                        f"references payload {denied[0]!r}{more}, which is not stored or not "
                        f"one credential {reader.credential!r} (role worker) may read: a "
                        "worker-only credential references only payloads it uploaded (to "
                        "the end of UploadPayload) or that an attempt it holds takes as input",
                    )
                )
        if missing:
            more = f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""
            verb = "are" if missing[1:] else "is"
            problems.append(
                (
                    StatusCode.FAILED_PRECONDITION,
                    f"references payload {missing[0]!r}{more}, which {verb} not stored: upload "
                    "a result's payloads (UploadPayload, to its end) before reporting it",
                )
            )
        for ref in readable:
            stored = meta(ref.payload_id)
            if stored is not None and _contradicts(ref, stored):
                problems.append(
                    (
                        StatusCode.INVALID_ARGUMENT,
                        f"references payload {ref.payload_id!r} as {_described(ref)}, but it "
                        f"is stored as {stored.size} bytes with SHA-256 {stored.sha256[:16]!r}: "
                        "send the PayloadRef UploadPayload returned, unchanged",
                    )
                )
                break
        if problems:
            out[key] = problems
    return out


def _described(ref: payload_pb2.PayloadRef) -> str:
    """What a reference says of its payload (only what it gives: 0 or "" is unsaid)."""
    said = [f"{ref.size_bytes} bytes"] if ref.size_bytes else []
    said += [f"SHA-256 {ref.sha256[:16]!r}"] if ref.sha256 else []
    return " with ".join(said)


def _contradicts(ref: payload_pb2.PayloadRef, stored: PayloadMeta) -> bool:
    """Whether a reference's size or hash differs from its payload's (either one left
    empty, or 0, is not compared)."""
    wrong_size = bool(ref.size_bytes) and ref.size_bytes != stored.size
    wrong_hash = bool(ref.sha256 and stored.sha256) and ref.sha256 != stored.sha256
    return wrong_size or wrong_hash
