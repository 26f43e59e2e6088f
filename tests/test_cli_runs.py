"""The CLI a user reads: failure reasons, waiting reasons, large results, logs, run id
prefixes, listings, Ctrl-C, graphs; against real `headwater server` and `headwater
worker` subprocesses (and embedded runs)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest
from e2e_helpers import BOUND, Cluster, start_server, start_worker

from headwater import Client
from headwater.wire import FlowRunState

pytestmark = pytest.mark.e2e

TASKS = """
import logging, os, time
from pathlib import Path
from headwater import flow, remote_task, task

log = logging.getLogger("cli_tasks")

@task(retries=1, retry_delay=0.05)
def fetch(n: int) -> list[int]:
    marker = Path(os.environ["HW_TEST_DIR"]) / "fetch.tried"
    if not marker.exists():
        marker.write_text("1")
        raise ConnectionError("price feed not ready yet")
    print(f"fetched {n} prices")
    return list(range(1, n + 1))

def deep(depth: int, price: int):
    if depth == 0:
        raise ConnectionError("pricing API timed out")
    deeper(depth - 1, price)

def deeper(depth: int, price: int):  # (two functions: Python folds one repeated frame)
    deep(depth, price)

@task
def enrich(price: int) -> int:
    log.warning("enriching %d \x1b]0;retitled\x07", price)  # a terminal escape
    if price == 3:
        deep(30, price)
    return price * 2

@flow
def prices(n: int = 4) -> list[int]:
    return enrich.map(fetch(n))

@task
def big(size: int) -> str:
    return "x" * size

@flow
def large(n: int = 12, size: int = 400_000) -> list[str]:
    return big.map([size] * n)

@task
def counts() -> dict:
    print("read report-\\udcff.csv")  # a file name os.listdir decoded from non-UTF-8 bytes
    return {("eu", "2026-01-02"): 3}

@flow
def tuple_keys() -> dict:
    return counts()

typo = remote_task("pricing.enrichh")

@flow
def unservable() -> int:
    return typo(x=1)

@flow
def unservable_wide(n: int = 25) -> list[int]:
    return typo.map(x=list(range(n)))

@task
def wait_a_while() -> int:
    release = Path(os.environ["HW_TEST_DIR"]) / "release"
    deadline = time.monotonic() + 60
    while not release.exists() and time.monotonic() < deadline:
        time.sleep(0.02)
    return 1

@flow
def slow() -> int:
    return wait_a_while()

@task
def double(x: int) -> int:
    return 2 * x

@task
def shout(text: str) -> str:
    return text.upper()

@flow
def greet(text: str = "hi") -> str:
    return shout(text)

@flow
def shout_each(texts: list[str]) -> list[str]:
    return shout.map(texts)

@flow
def talkative(n: int = 2) -> list[int]:
    print(f"building for n={n}")  # the body runs as the graph is built
    return [double(i) for i in range(n)]
"""


@pytest.fixture
def env(tmp_path: Path) -> dict[str, str]:
    (tmp_path / "cli_tasks.py").write_text(textwrap.dedent(TASKS))
    return {
        **os.environ,
        "HW_TEST_DIR": str(tmp_path),
        "PYTHONPATH": os.pathsep.join([str(tmp_path), os.environ.get("PYTHONPATH", "")]),
        "COLUMNS": "200",
    }


@pytest.fixture
def cluster(env: dict[str, str]) -> Iterator[Cluster]:
    procs = Cluster(env)
    yield procs
    procs.stop()


def cli(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "headwater._cli", *args],
        env=env,
        capture_output=True,
        text=True,
        errors="backslashreplace",  # a task's print of undecodable bytes, as a terminal gets it
        timeout=BOUND,
    )


def test_run_on_a_server_prints_each_failure_with_its_traceback(
    tmp_path: Path, env: dict[str, str], cluster: Cluster
) -> None:
    _, address = start_server(cluster, tmp_path / "hw.db")
    start_worker(cluster, address, "w1", module="cli_tasks")
    done = cli(env, "run", str(tmp_path / "cli_tasks.py:prices"), "--server", address)
    assert done.returncode == 1, done.stderr
    err = done.stderr
    assert "enrich[2]: FAILED" in err
    assert "builtins.ConnectionError: pricing API timed out" in err
    assert 'raise ConnectionError("pricing API timed out")' in err  # the traceback
    assert "traceback lines cut (--full shows them)" in err  # trimmed by default
    assert "fetch" in err and "2" in err  # the summary: fetch took 2 attempts
    # What the tasks printed and logged, on stderr as an embedded run shows it (the run's
    # log lines; README: "what tasks print too, goes to stderr"; it showed nothing).
    assert [line for line in err.splitlines() if line.endswith(" fetch#2  fetched 4 prices")]
    assert " WARNING  enrich[3]  enriching 4 " in err, err
    # the last line, as an embedded run's: task runs by state (the failure is above)
    last = [line for line in err.splitlines() if line.startswith("flow run ")][-1]
    assert " of 'prices': FAILED in " in last, last
    assert last.endswith("(1 FAILED, 1 MAPPED, 4 SUCCESS)"), last
    run_id = err.split("flow run ", 1)[1].split(" ", 1)[0]
    # runs show: by a short prefix; trimmed, --full, --json
    shown = cli(env, "runs", "show", run_id[:8], "--server", address)
    assert shown.returncode == 0, shown.stderr
    assert run_id in shown.stdout and "FAILED" in shown.stdout
    # in either case (it found nothing in upper case, a user trial)
    upper = cli(env, "runs", "show", run_id[:8].upper(), "--server", address)
    assert upper.returncode == 0 and upper.stdout == shown.stdout, upper.stderr
    # into a reader gone before it is written to (`| head`): quiet, exit 0, as `runs
    # list` (rich's own answer was exit 1)
    for args in (["show", run_id[:8]], ["show", run_id[:8], "--all"], ["list"]):
        gone = subprocess.Popen(
            [sys.executable, "-m", "headwater._cli", "runs", *args, "--server", address],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        assert gone.stdout is not None
        gone.stdout.close()  # the reader leaves first: the first write meets a closed pipe
        _, stderr = gone.communicate(timeout=BOUND)
        assert (gone.returncode, stderr) == (0, b""), (args, stderr)
    # an id nothing has: said once (it was "get flow run 'zzzz': flow run 'zzzz' ...")
    for verb in ("show", "cancel", "logs"):
        missing = cli(env, "runs", verb, "zzzz", "--server", address)
        assert missing.returncode == 2, missing.stderr
        assert missing.stderr == "headwater: error: flow run 'zzzz' does not exist\n"
    assert "builtins.ConnectionError: pricing API timed out" in shown.stdout
    assert "traceback lines cut" in shown.stdout
    full = cli(env, "runs", "show", run_id[:8], "--server", address, "--full")
    assert "traceback lines cut" not in full.stdout
    assert len(full.stdout.splitlines()) > len(shown.stdout.splitlines())
    assert "in enrich" in full.stdout and "in enrich" not in shown.stdout  # the top frame
    # The traceback starts at the task function: Headwater's frames that called it
    # came first and took the place of the task's own in the trimmed view.
    assert "headwater_runtime" not in full.stdout
    data = json.loads(cli(env, "runs", "show", run_id, "--server", address, "--json").stdout)
    failed = {t["key"]: t for t in data["task_runs"]}["enrich[2]"]
    assert failed["failure"]["message"] == "pricing API timed out"
    assert {t["key"]: t["attempts"] for t in data["task_runs"]}["fetch"] == 2
    # runs list: filters and --json
    listed = json.loads(
        cli(env, "runs", "list", "--server", address, "--state", "failed", "--json").stdout
    )
    assert [r["id"] for r in listed] == [run_id] and listed[0]["duration"] is not None
    assert {k: listed[0][k] for k in ("attempt", "late", "late_reason", "parent_id")} == {
        "attempt": 1,
        "late": False,
        "late_reason": "",
        "parent_id": None,
    }
    assert (
        json.loads(
            cli(env, "runs", "list", "--server", address, "--state", "success", "--json").stdout
        )
        == []
    )
    plain = cli(env, "runs", "list", "--server", address, "--since", "1h").stdout
    assert plain.startswith(run_id[:8]) and "FAILED" in plain
    # why it failed, on the run's line (the first failed task, its error)
    assert plain.rstrip().endswith("  enrich[2]: FAILED (ConnectionError: pricing API timed out)")
    # runs logs: every record, one task's, one task run's
    logs = cli(env, "runs", "logs", run_id[:8], "--server", address).stdout
    assert "fetched 4 prices" in logs and "enriching 3" in logs
    # a task's escape sequence is shown, not sent to the operator's terminal
    assert "\x1b" not in logs and "\x07" not in logs
    assert "enriching 3 \\x1b]0;retitled\\x07" in logs
    only = cli(env, "runs", "logs", run_id[:8], "--server", address, "--task", "enrich").stdout
    assert "fetched" not in only and only.count("enriching") == 4
    one = cli(env, "runs", "logs", run_id, "--server", address, "--task", "enrich[1]").stdout
    assert one.count("enriching") == 1 and "enriching 2" in one
    with Client(address) as client:  # failures, as an embedded FlowRun lists them
        assert [t.key for t in client.wait(run_id).failures] == ["enrich[2]"]
        # a prefix of the id reads the same records (it found the run, then none: a
        # user trial); an ended run's wait with no time left still answers
        every = client.logs(run_id)
        assert len(every) > 4 and client.logs(run_id[:8]) == every
        assert client.wait(run_id[:8], timeout=0).state is FlowRunState.FAILED
    late = cli(env, "runs", "cancel", run_id[:8], "--server", address)
    assert late.stdout == f"{run_id}  FAILED  (it had already ended: nothing to cancel)\n"
    # fetch is not mapped: fetch[0] names no task run (it printed nothing, exit 0)
    unmapped = cli(env, "runs", "logs", run_id, "--server", address, "--task", "fetch[0]")
    assert unmapped.returncode == 2 and "task 'fetch' of flow run" in unmapped.stderr
    assert "is not mapped: its task run is 'fetch', not 'fetch[0]'" in unmapped.stderr
    # an element past the map's end is no task run either (it said "no log records")
    past = cli(env, "runs", "logs", run_id, "--server", address, "--task", "enrich[9]")
    assert past.returncode == 2, past.stderr
    assert "has 4 elements (enrich[0] to enrich[3]): no 'enrich[9]'" in past.stderr
    paged = cli(env, "runs", "logs", run_id, "--server", address, "--page-size", "1").stdout
    assert paged == logs
    followed = cli(env, "runs", "logs", run_id, "--server", address, "--follow").stdout
    assert followed == logs  # the run has ended: everything, then the end
    # a prefix every run shares is refused, naming the fix
    cli(env, "run", str(tmp_path / "cli_tasks.py:large"), "--server", address, "-p", "n=1")
    ambiguous = cli(env, "runs", "show", "", "--server", address)
    assert ambiguous.returncode == 2
    # a run whose tasks logged nothing: no records on stdout, a line saying so on stderr
    newest = json.loads(cli(env, "runs", "list", "--server", address, "--json").stdout)[0]
    quiet = cli(env, "runs", "logs", newest["id"], "--server", address)
    assert (quiet.returncode, quiet.stdout) == (0, "")
    assert f"no log records for flow run {newest['id']}" in quiet.stderr
    assert "docs/dask.md" in quiet.stderr


def test_a_run_whose_results_pass_4_mib_is_read_back_whole(
    tmp_path: Path, env: dict[str, str], cluster: Cluster
) -> None:
    _, address = start_server(cluster, tmp_path / "hw.db")
    start_worker(cluster, address, "w1", module="cli_tasks")
    done = cli(env, "run", str(tmp_path / "cli_tasks.py:large"), "--server", address)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout) == ["x" * 400_000] * 12
    run_id = done.stderr.split("flow run ", 1)[1].split(" ", 1)[0]
    shown = cli(env, "runs", "show", run_id[:8], "--server", address)
    assert shown.returncode == 0, shown.stderr
    assert json.loads(shown.stdout[shown.stdout.index("\n[\n") :]) == ["x" * 400_000] * 12


def test_a_result_json_cannot_hold_prints_as_embedded_and_json_output_stays_json(
    tmp_path: Path, env: dict[str, str], cluster: Cluster
) -> None:
    """A dict with tuple keys: `headwater run --server` printed SUCCESS, then a
    TypeError traceback, and exited 1; embedded it printed the repr."""
    _, address = start_server(cluster, tmp_path / "hw.db")
    start_worker(cluster, address, "w1", module="cli_tasks")
    target = str(tmp_path / "cli_tasks.py:tuple_keys")
    embedded = cli(env, "run", target)
    done = cli(env, "run", target, "--server", address)
    assert (embedded.returncode, done.returncode) == (0, 0), done.stderr
    assert done.stdout == "{('eu', '2026-01-02'): 3}\n"
    assert embedded.stdout.endswith(done.stdout)  # (after the task's print, embedded)
    assert "Traceback" not in done.stderr
    run_id = done.stderr.split("flow run ", 1)[1].split(" ", 1)[0]
    shown = cli(env, "runs", "show", run_id, "--server", address, "--json")
    assert shown.returncode == 0, shown.stderr
    assert json.loads(shown.stdout)["result"] == {"('eu', '2026-01-02')": 3}
    # A lone surrogate printed by the task: the line is kept, written as an escape (the
    # worker's TaskLog failed to encode and the task failed).
    logs = cli(env, "runs", "logs", run_id, "--server", address).stdout
    assert "read report-\\udcff.csv" in logs


def test_what_a_flow_body_prints_goes_to_stderr_and_stdout_stays_the_output(
    tmp_path: Path, env: dict[str, str], cluster: Cluster
) -> None:
    """A body's print() as its graph was built went to stdout before the result of
    `run --server` and the JSON of `graph` (`| jq` broke; an embedded run kept it off
    stdout). It goes to stderr for every command, as a task's output does."""
    _, address = start_server(cluster, tmp_path / "hw.db")
    start_worker(cluster, address, "w1", module="cli_tasks")
    target = str(tmp_path / "cli_tasks.py:talkative")
    for done in (cli(env, "run", target, "--server", address), cli(env, "run", target)):
        assert done.returncode == 0, done.stderr
        assert json.loads(done.stdout) == [0, 2]  # (nothing else on stdout)
        assert "building for n=2" in done.stderr
    graph = cli(env, "graph", target, "-p", "n=3", "--format", "json")
    assert graph.returncode == 0, graph.stderr
    assert len(json.loads(graph.stdout)["tasks"]) == 3
    assert "building for n=3" in graph.stderr


def test_a_parameter_over_a_servers_lower_limit_is_uploaded(
    tmp_path: Path, env: dict[str, str], cluster: Cluster
) -> None:
    """The SDK uploaded only parameters over a fixed 1 MiB: on a server with a lower
    --max-parameter-bytes, `run` and `schedules create` with a larger parameter were
    refused, advising PayloadService, which a CLI user cannot call (a trial). The
    client now asks the server its limit (GetServerInfo) and uploads what is over it.
    What must still go in the request (the elements of a list a task maps over) is
    refused in one clear line, with exit 2 ("a request the server refused", as --help
    says for bad input; it was 1, "failed")."""
    _, address = start_server(cluster, tmp_path / "hw.db", 0, "--max-parameter-bytes", "2000")
    start_worker(cluster, address, "w1", module="cli_tasks")
    greet = str(tmp_path / "cli_tasks.py:greet")
    done = cli(env, "run", greet, "--server", address, "-p", f"text={'x' * 3000}")
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout) == "X" * 3000
    scheduled = cli(
        env, "schedules", "create", greet, "--every", "1h", "--server", address,
        "-p", f"text={'x' * 3000}",
    )  # fmt: skip
    assert scheduled.returncode == 0, scheduled.stderr
    with Client(address) as client:
        (schedule,) = client.list_schedules()
        assert schedule.parameters == {"text": "x" * 3000}
    texts = json.dumps(["y" * 40] * 60)
    each = str(tmp_path / "cli_tasks.py:shout_each")
    for command in (["run", each], ["schedules", "create", each, "--every", "1h"]):
        got = cli(env, *command, "--server", address, "-p", f"texts={texts}")
        assert got.returncode == 2, (command, got.returncode, got.stderr)
        last = got.stderr.strip().splitlines()[-1]
        assert (
            "parameter 'texts' is" in last
            and "with its 60 elements" in last
            and ("over this server's limit max_parameter_bytes = 2000" in last)
        ), got.stderr


def test_a_task_no_worker_offers_says_why_it_waits(
    tmp_path: Path, env: dict[str, str], cluster: Cluster
) -> None:
    _, address = start_server(cluster, tmp_path / "hw.db")
    start_worker(cluster, address, "w1", module="cli_tasks")
    run = cluster.spawn(
        [
            sys.executable,
            "-m",
            "headwater._cli",
            "run",
            str(tmp_path / "cli_tasks.py:unservable"),
            "--server",
            address,
        ],
        "stderr",
    )
    reason = "waiting: no connected worker offers pricing.enrichh"
    run.wait_line(reason)  # run --server says it while it waits
    with Client(address) as client:
        (waiting,) = client.list_runs()
        shown = cli(env, "runs", "show", waiting.id[:8], "--server", address)
        assert f"pricing.enrichh: {reason}" in shown.stdout
        # Said once, as the reason reads (it already starts with "waiting").
        assert shown.stdout.count(reason) == 1, shown.stdout
        assert "waiting: waiting" not in shown.stdout, shown.stdout
        client.cancel(waiting.id)
    assert run.wait() == 130
    # A mapped task's 600 waiting children: one line for all, not a line each; runs
    # show lists them a line per task (600 rows with --all).
    wide = cluster.spawn(
        [
            sys.executable,
            "-m",
            "headwater._cli",
            "run",
            str(tmp_path / "cli_tasks.py:unservable_wide"),
            "--server",
            address,
            "-p",
            "n=600",
        ],
        "stderr",
    )
    wide.wait_line(f"pricing.enrichh (600 task runs): {reason}")
    with Client(address) as client:
        (waiting,) = [r for r in client.list_runs() if r.flow_name == "unservable_wide"]
        shown = cli(env, "runs", "show", waiting.id[:8], "--server", address)
        assert shown.stdout.count(reason) == 1, shown.stdout  # runs show: one line too
        assert f"pricing.enrichh (600 task runs): {reason}" in shown.stdout
        assert "(600 task runs: a line per task; --all lists each" in shown.stdout
        assert "pricing.enrichh[599]" not in shown.stdout and "600 SCHEDULED" in shown.stdout
        every = cli(env, "runs", "show", waiting.id[:8], "--all", "--server", address)
        assert "pricing.enrichh[599]" in every.stdout and "a line per task" not in every.stdout
        client.cancel(waiting.id)
    assert wide.wait() == 130
    said = [line for line in wide.lines if reason in line]
    assert len(said) == 1, wide.lines  # (a line per child: 25)


@pytest.mark.parametrize(
    ("stop", "detach"),
    [(signal.SIGINT, False), (signal.SIGINT, True), (signal.SIGTERM, False)],
    ids=["ctrl-c", "ctrl-c-detach", "sigterm"],
)
def test_ctrl_c_on_run_server_cancels_or_detaches_and_exits_130(
    tmp_path: Path, env: dict[str, str], cluster: Cluster, stop: signal.Signals, detach: bool
) -> None:
    """SIGTERM (a supervisor, `timeout`) is Ctrl-C: it used to end the CLI at once and
    leave the run RUNNING on the server."""
    _, address = start_server(cluster, tmp_path / "hw.db")
    start_worker(cluster, address, "w1", module="cli_tasks")
    args = [
        sys.executable,
        "-m",
        "headwater._cli",
        "run",
        str(tmp_path / "cli_tasks.py:slow"),
        "--server",
        address,
        *(["--detach"] if detach else []),
    ]
    run = cluster.spawn(args, "stderr")
    run.wait_line("wait_a_while: RUNNING")
    run.popen.send_signal(stop)
    assert run.wait() == 130
    assert any("flow run" in line for line in run.lines[2:]), run.lines  # the goodbye line
    assert not any("Traceback" in line for line in run.lines + run.other)
    with Client(address) as client:
        (left,) = client.list_runs()
        if detach:
            assert left.state is FlowRunState.RUNNING
            assert any(f"headwater runs watch {left.id[:8]}" in line for line in run.lines)
            (tmp_path / "release").write_text("go")
            assert client.wait(left.id).state is FlowRunState.SUCCESS
        else:
            ended = client.wait(left.id)
            assert ended.state is FlowRunState.CANCELLED
            how = "SIGTERM" if stop is signal.SIGTERM else "Ctrl-C"
            assert ended.message == f"cancelled from the CLI ({how})", ended.message
            assert any(f"cancelled flow run {left.id}" in line for line in run.lines)
            # and the summary an embedded run shows
            summary = f"flow run {left.id[:8]} of 'slow': CANCELLED"
            assert any(line.startswith(summary) for line in run.lines), run.lines


def test_embedded_run_prints_failures_and_keeps_task_logs(
    tmp_path: Path, env: dict[str, str]
) -> None:
    done = cli(env, "run", str(tmp_path / "cli_tasks.py:prices"))
    assert done.returncode == 1
    assert "enrich[2]: FAILED" in done.stderr
    assert "builtins.ConnectionError: pricing API timed out" in done.stderr
    assert 'raise ConnectionError("pricing API timed out")' in done.stderr
    assert "fetch" in done.stderr and "enrich" in done.stderr  # the summary table
    script = textwrap.dedent(
        """
        import cli_tasks
        run = cli_tasks.prices.run(n=2)
        for entry in run.logs:
            print(entry.key, entry.attempt, entry.level, entry.logger, entry.message)
        """
    )
    out = subprocess.run(
        [sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=BOUND
    )
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    # the fetch marker exists from the run above: fetch succeeds at once here
    assert "fetch 1 INFO stdout fetched 2 prices" in lines
    assert "enrich[0] 1 WARNING cli_tasks enriching 1 \x1b]0;retitled\x07" in lines


def test_graph_as_text_dot_and_mermaid(tmp_path: Path, env: dict[str, str]) -> None:
    target = str(tmp_path / "cli_tasks.py:prices")
    text = cli(env, "graph", target).stdout
    assert "flow prices" in text
    assert "enrich (cli_tasks.enrich)  [mapped over price]  <- fetch" in text
    # (the parameters a task takes too: --help says "what it takes its inputs from")
    assert "fetch (cli_tasks.fetch)  [retries=1]  <- parameter n\n" in text
    dot = cli(env, "graph", target, "--format", "dot").stdout
    assert dot.startswith('digraph "prices" {') and '"fetch" -> "enrich";' in dot
    mermaid = cli(env, "graph", target, "--format", "mermaid").stdout
    assert mermaid.splitlines()[0] == "flowchart LR" and "t0 --> t1" in mermaid
    raw = json.loads(cli(env, "graph", target, "--format", "json").stdout)
    assert [t["id"] for t in raw["tasks"]] == ["fetch", "enrich"]
