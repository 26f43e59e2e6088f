"""How the server turns the engine's value handles into an assignment's InputValue
trees (server/_values.py): built in place, the same tree whatever the nesting."""

from __future__ import annotations

from headwater.v1 import payload_pb2, worker_pb2
from headwater.wire import EncodedValue
from headwater_runtime.server._values import (
    NULL,
    Composite,
    Selected,
    fill_input_value,
    to_input_value,
)


def _inline(data: bytes, **metadata: str) -> payload_pb2.Value:
    return payload_pb2.Value(
        inline=payload_pb2.Payload(data=data, metadata={"encoding": "json", **metadata})
    )


def _split_result() -> payload_pb2.Value:
    value = _inline(b"[1,2]", **{"headwater.length": "2"})
    value.items.extend([_inline(b"1"), _inline(b"2")])
    return value


def _expected(elements: bool) -> worker_pb2.InputValue:
    whole = _split_result() if elements else payload_pb2.Value(inline=_split_result().inline)
    selected = worker_pb2.InputValue(value=whole)
    selected.path.add(key="rows")
    selected.path.add(index=0)
    tree = worker_pb2.InputValue(
        list=worker_pb2.InputValueList(
            items=[
                worker_pb2.InputValue(value=NULL),
                worker_pb2.InputValue(value=_inline(b"7")),
                selected,
                worker_pb2.InputValue(
                    map=worker_pb2.InputValueMap(
                        entries=[
                            worker_pb2.InputValueMapEntry(
                                key="a", value=worker_pb2.InputValue(value=whole)
                            ),
                            worker_pb2.InputValueMapEntry(
                                key="empty",
                                value=worker_pb2.InputValue(map=worker_pb2.InputValueMap()),
                            ),
                        ]
                    )
                ),
                worker_pb2.InputValue(list=worker_pb2.InputValueList(tuple=True)),
            ]
        )
    )
    return tree


def _handle() -> Composite:
    return Composite(
        "list",
        (
            None,
            EncodedValue(b"7", {"encoding": "json"}),
            Selected(_split_result(), ("rows", 0)),
            Composite("dict", (_split_result(), Composite("dict", ())), ("a", "empty")),
            Composite("tuple", ()),
        ),
    )


def test_an_input_tree_is_the_same_built_alone_or_in_place() -> None:
    for elements in (True, False):
        expected = _expected(elements)
        assert to_input_value(_handle(), elements=elements) == expected
        assignment = worker_pb2.Assignment()
        fill_input_value(assignment.inputs["x"], _handle(), elements=elements)
        assert assignment.inputs["x"] == expected
        # Empty containers stay what they are (the oneof is set).
        last = assignment.inputs["x"].list.items[4]
        assert last.WhichOneof("kind") == "list" and last.list.tuple
        assert assignment.inputs["x"].list.items[3].map.entries[1].value.WhichOneof("kind") == "map"


def test_a_reduce_over_many_results_is_one_list_in_the_assignment() -> None:
    results = tuple(_inline(str(i).encode()) for i in range(10_000))
    assignment = worker_pb2.Assignment()
    fill_input_value(assignment.inputs["values"], Composite("list", results), elements=False)
    items = assignment.inputs["values"].list.items
    assert len(items) == 10_000 and items[9_999].value.inline.data == b"9999"


class _Payloads:
    """The store's put_payload, counting what is stored."""

    def __init__(self) -> None:
        self.stored: list[bytes] = []

    def put_payload(self, chunks: object, metadata: dict[str, str], size: int) -> object:
        from headwater_runtime.store import PayloadMeta

        data = b"".join(chunks)  # type: ignore[call-overload]
        self.stored.append(data)
        return PayloadMeta(f"{len(self.stored):032x}", size, metadata, "0" * 64)


def test_spilling_moves_only_values_larger_than_a_reference() -> None:
    """An assignment over its budget has its large inline inputs moved to the store,
    largest first, until it fits; tiny ones (a reduce over a wide map) stay inline,
    since a reference would be larger and each would cost a stored payload."""
    from headwater_runtime.server._spill import SPILL_MIN_BYTES, spill_inputs

    tiny = worker_pb2.Assignment()
    items = tiny.inputs["values"].list.items
    for i in range(20_000):
        items.add().value.CopyFrom(_inline(str(i).encode(), encoding="json"))
    store = _Payloads()
    assert spill_inputs(tiny, store, budget=50_000) == 0  # type: ignore[arg-type]
    assert store.stored == [] and tiny.ByteSize() > 50_000
    mixed = worker_pb2.Assignment()
    items = mixed.inputs["values"].list.items
    for size in (100, 5_000, SPILL_MIN_BYTES, 20_000, 10_000):
        items.add().value.CopyFrom(_inline(b"x" * size, encoding="json"))
    assert spill_inputs(mixed, store, budget=12_000) == 2  # type: ignore[arg-type]
    assert [len(data) for data in store.stored] == [20_000, 10_000]
    kinds = [item.value.WhichOneof("kind") for item in mixed.inputs["values"].list.items]
    assert kinds == ["inline", "inline", "inline", "ref", "ref"]
    assert mixed.ByteSize() <= 12_000


def test_sizes_summed_a_part_at_a_time_are_exactly_what_protobuf_encodes() -> None:
    """A wide Assignment is sized a part at a time (one ByteSize() of a 30 MB message
    holds the GIL ~0.5 s): lists, maps with empty keys and entries without a value,
    split values with paths, the tuple flag and every other field count exactly."""
    from headwater_runtime.server._sizes import MANY, assignment_size, input_size, value_size

    msg = worker_pb2.Assignment(
        token=worker_pb2.FencingToken(task_run_id="r/t", attempt=2),
        flow_run_id="r",
        task_id="t",
        task_type="m.t",
        task_name="t",
        argument_order=["xs", "m", "w", "one"],
        map_index=-1,
        result_encoding="json",
        split_result=True,
        result_consumer="task 'x', argument 'y'",
    )
    msg.trace_context["traceparent"] = "00-abc"
    msg.timeout.FromSeconds(5)
    msg.split_path.add(index=3)
    listed = msg.inputs["xs"].list
    for i in range(MANY + 500):
        listed.items.add().value.CopyFrom(_inline(str(i).encode(), encoding="json"))
    listed.tuple = True
    mapped = msg.inputs["m"].map
    for i in range(MANY + 200):
        entry = mapped.entries.add(key=f"k{i}")
        entry.value.value.CopyFrom(_inline(b"v" * (i % 300), encoding="json"))
    mapped.entries.add(key="").value.value.CopyFrom(_inline(b"1", encoding="json"))
    mapped.entries.add(key="no value")
    split = msg.inputs["w"].value
    split.CopyFrom(_inline(b"[...]", encoding="json"))
    for i in range(MANY):
        split.items.append(_inline(str(i).encode(), encoding="json"))
    msg.inputs["w"].path.add(key="rows")
    msg.inputs["one"].value.CopyFrom(_inline(b"7", encoding="json"))
    msg.inputs[""].value.CopyFrom(_inline(b"8", encoding="json"))
    assert input_size(msg.inputs["xs"]) == msg.inputs["xs"].ByteSize()
    assert input_size(msg.inputs["m"]) == msg.inputs["m"].ByteSize()
    assert value_size(split) == split.ByteSize()
    assert assignment_size(msg) == msg.ByteSize()
    small = worker_pb2.Assignment(task_id="t")
    small.inputs["x"].value.CopyFrom(_inline(b"1", encoding="json"))
    assert assignment_size(small) == small.ByteSize()
