"""The dispatcher: capabilities, labels, slots, fairness, lost workers, cancellation."""

from __future__ import annotations

from headwater.v1 import worker_pb2
from headwater_runtime.server._assignments import queued_attempts
from headwater_runtime.server._dispatch import Dispatcher, WorkerSession
from headwater_runtime.server._runs import PendingAssignment


def pending(run: str, key: str, task_type: str = "m.t", **labels: str) -> PendingAssignment:
    token = worker_pb2.FencingToken(task_run_id=f"{run}/{key}", attempt=1)
    return PendingAssignment(run, task_type, labels, worker_pb2.Assignment(token=token))


class Worker:
    def __init__(self, name: str, slots: int, caps: set[str], **labels: str) -> None:
        self.inbox: list[worker_pb2.ConnectResponse] = []
        self.session = WorkerSession(
            name, name, name, frozenset(caps), dict(labels), slots, self.inbox.append
        )

    def assigned(self) -> list[str]:
        return [m.assignment.token.task_run_id for m in self.inbox if m.HasField("assignment")]


def test_never_more_than_the_free_slots_and_freed_slots_are_refilled() -> None:
    d = Dispatcher(on_lost=lambda *a: None)
    w = Worker("w", 2, {"m.t"})
    d.connect(w.session)
    for i in range(5):
        d.submit(pending("r", f"t[{i}]"))
    assert w.assigned() == ["r/t[0]", "r/t[1]"]
    d.finished(("r/t[0]", 1))
    assert w.assigned() == ["r/t[0]", "r/t[1]", "r/t[2]"]
    assert d.pending_count == 2


def test_an_attempt_waiting_for_its_child_flow_run_lends_its_slot() -> None:
    """A task that calls a flow waits for the child run, whose tasks may need this
    very worker: its slot is lent while the child runs (ChildRuns tells, ``lend``),
    taken back when it ends; a worker reconnecting with such an attempt lends it too."""
    d = Dispatcher(on_lost=lambda *a: None)
    w = Worker("w", 1, {"m.t"})
    d.connect(w.session)
    d.submit(pending("r", "parent"))
    d.submit(pending("c", "child[0]"))
    d.submit(pending("c", "child[1]"))
    assert w.assigned() == ["r/parent"]
    d.lend(("r/parent", 1), True)
    assert w.assigned() == ["r/parent", "c/child[0]"], "the lent slot is used at once"
    d.finished(("c/child[0]", 1))
    assert w.assigned()[-1] == "c/child[1]"
    d.lend(("r/parent", 1), False)  # the child ended: the parent's slot is its own again
    d.finished(("c/child[1]", 1))
    d.submit(pending("r", "next"))
    assert w.assigned()[-1] == "c/child[1]", "one slot, held by the parent"
    d.lend(("elsewhere/x", 1), True)  # an attempt no worker holds: nothing happens
    d.disconnect(w.session.session_id)

    again = Worker("w2", 1, {"m.t"})
    d.waits = lambda token: token == ("r/parent", 1)
    d.connect(again.session, {("r/parent", 1): "r"})
    assert again.assigned() == ["r/next"], "a reclaimed waiting attempt lends its slot"


def test_capabilities_and_labels_route_tasks() -> None:
    d = Dispatcher(on_lost=lambda *a: None)
    cpu = Worker("cpu", 4, {"m.t", "m.gpu"})
    gpu = Worker("gpu", 4, {"m.gpu"}, gpu="true")
    d.connect(cpu.session)
    d.connect(gpu.session)
    d.submit(pending("r", "train", "m.gpu", gpu="true"))
    d.submit(pending("r", "prep", "m.t"))
    assert gpu.assigned() == ["r/train"]
    assert cpu.assigned() == ["r/prep"]


def test_a_task_nobody_can_take_waits_until_a_suitable_worker_connects() -> None:
    d = Dispatcher(on_lost=lambda *a: None)
    cpu = Worker("cpu", 4, {"m.gpu"})
    d.connect(cpu.session)
    d.submit(pending("r", "train", "m.gpu", gpu="true"))
    assert cpu.assigned() == [] and d.pending_count == 1
    gpu = Worker("gpu", 1, {"m.gpu"}, gpu="true")
    d.connect(gpu.session)
    assert gpu.assigned() == ["r/train"]


def test_flow_runs_are_served_round_robin() -> None:
    d = Dispatcher(on_lost=lambda *a: None)
    for i in range(4):
        d.submit(pending("big", f"t[{i}]"))
    d.submit(pending("small", "t"))
    w = Worker("w", 2, {"m.t"})
    d.connect(w.session)
    assert sorted(w.assigned()) == ["big/t[0]", "small/t"]


def test_task_types_take_turns_on_a_shared_worker() -> None:
    """A wide map of one task type does not keep a worker's slots from another run's
    task of another type: each freed slot goes to the types in turn."""
    d = Dispatcher(on_lost=lambda *a: None)
    w = Worker("w", 2, {"m.wide", "m.other"})
    d.connect(w.session)
    for i in range(100):
        d.submit(pending("wide", f"t[{i}]", "m.wide"))
    assert w.assigned() == ["wide/t[0]", "wide/t[1]"]
    for i in range(3):
        d.submit(pending("small", f"s[{i}]", "m.other"))
    d.finished(("wide/t[0]", 1))
    d.finished(("wide/t[1]", 1))
    assert sorted(w.assigned()[2:]) == ["small/s[0]", "wide/t[2]"]
    d.finished(("small/s[0]", 1))
    d.finished(("wide/t[2]", 1))
    assert sorted(w.assigned()[4:]) == ["small/s[1]", "wide/t[3]"]


def test_a_lost_worker_reports_its_attempts_and_others_take_over() -> None:
    lost: list[tuple[str, str, int]] = []
    d = Dispatcher(on_lost=lambda *a: lost.append(a))
    a = Worker("a", 1, {"m.t"})
    d.connect(a.session)
    d.submit(pending("r", "x"))
    d.disconnect("a")
    assert lost == [("r", "r/x", 1)]
    assert d.owner(("r/x", 1)) is None


def test_cancel_drops_pending_or_tells_the_worker() -> None:
    d = Dispatcher(on_lost=lambda *a: None)
    w = Worker("w", 1, {"m.t"})
    d.connect(w.session)
    d.submit(pending("r", "a"))
    d.submit(pending("r", "b"))
    d.cancel("r", "r/b", 1, "stop")
    assert d.pending_count == 0
    d.cancel("r", "r/a", 1, "stop")
    cancels = [m.cancel for m in w.inbox if m.HasField("cancel")]
    assert [(c.token.task_run_id, c.reason) for c in cancels] == [("r/a", "stop")]


def test_reconnecting_worker_keeps_adopted_attempts_in_its_slots() -> None:
    d = Dispatcher(on_lost=lambda *a: None)
    w = Worker("w", 1, {"m.t"})
    d.connect(w.session, adopted={("r/a", 1): "r"})
    d.submit(pending("r", "b"))
    assert w.assigned() == []  # its only slot is taken by the adopted attempt
    d.finished(("r/a", 1))
    assert w.assigned() == ["r/b"]


def coded(run: str, key: str, digest: str, task_type: str = "m.t") -> PendingAssignment:
    token = worker_pb2.FencingToken(task_run_id=f"{run}/{key}", attempt=1)
    assignment = worker_pb2.Assignment(token=token)
    return PendingAssignment(run, task_type, {}, assignment, code_digest=digest)


def test_a_worker_with_other_code_for_a_task_is_not_given_it_and_the_run_says_why() -> None:
    d = Dispatcher(on_lost=lambda *a: None)
    old = Worker("old", 4, {"m.t", "m.u"})
    old.session.code_digests = {"m.t": "aaaa", "m.u": "uuuu"}
    d.connect(old.session)
    d.submit(coded("r", "t", "bbbb"))  # the graph was built with other code for m.t
    d.submit(coded("r", "u", "uuuu", "m.u"))  # the same code for m.u
    d.submit(coded("r", "v", "", "m.u"))  # a graph that names no code: not checked
    assert old.assigned() == ["r/u", "r/v"]
    (reason,) = d.stale_reasons("r").values()
    assert reason.startswith("worker 'old' has other code for task 'm.t' (digest aaaa, the")
    assert "built with bbbb" in reason and "--allow-stale-code" in reason
    assert d.stale_reasons("other run") == {}

    # A worker that reports no digest for the type (--allow-stale-code, or another
    # language) takes it; so does one with the same code.
    anything = Worker("anything", 1, {"m.t"})
    d.connect(anything.session)
    assert anything.assigned() == ["r/t"] and d.stale_reasons("r") == {}
    d.submit(coded("r", "t2", "bbbb"))
    new = Worker("new", 1, {"m.t"})
    new.session.code_digests = {"m.t": "bbbb"}
    d.connect(new.session)
    assert new.assigned() == ["r/t2"]


def test_the_reason_is_given_only_while_no_connected_worker_could_take_the_task() -> None:
    d = Dispatcher(on_lost=lambda *a: None)
    busy = Worker("busy", 1, {"m.t"})
    busy.session.code_digests = {"m.t": "bbbb"}
    stale = Worker("stale", 1, {"m.t"})
    stale.session.code_digests = {"m.t": "aaaa"}
    d.connect(busy.session)
    d.connect(stale.session)
    d.submit(coded("r", "first", "bbbb"))
    d.submit(coded("r", "second", "bbbb"))
    assert busy.assigned() == ["r/first"] and stale.assigned() == []
    # The second waits for a free slot of a worker with its code, not for new code.
    assert d.stale_reasons("r") == {}
    d.disconnect(busy.session.session_id)
    assert "worker 'stale' has other code" in d.stale_reasons("r")["r/second"]


def test_attempts_laid_out_off_the_loop_queue_as_submit_many_would() -> None:
    """A run starting hands its ready attempts over laid out (queued_attempts, built
    on a reader thread): same order, same index, deadlines kept; and a run that
    already has attempts queued gets them queued one by one, none lost or doubled."""
    d = Dispatcher(on_lost=lambda *a: None)
    first = [pending("r", f"a[{i}]") for i in range(3)]
    other = [pending("r", "g", "m.gpu")]
    first[1].start_by = 5.0
    d.submit_queued(queued_attempts("r", {"m.t": first, "m.gpu": other}))
    assert d.pending_count == 4
    assert d.queue_depth() == {"m.t": 3, "m.gpu": 1}
    assert d.next_start_by == 5.0
    later = [pending("r", f"b[{i}]") for i in range(2)]
    d.submit_queued(queued_attempts("r", {"m.t": later}))  # the run is queued: merged
    assert d.pending_count == 6
    d.cancel("r", "r/a[0]", 1, "no")
    assert [p.token[0] for p in d.overdue(10.0)] == ["r/a[1]"]
    w = Worker("w", 10, {"m.t"})
    d.connect(w.session)
    assert w.assigned() == ["r/a[2]", "r/b[0]", "r/b[1]"]
    assert d.pending_count == 1  # the gpu attempt waits for a worker that has m.gpu
