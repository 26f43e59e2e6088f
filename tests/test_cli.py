"""The ``headwater`` command, run as users run it: a subprocess on a flow file."""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import socket
import sqlite3
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest

import headwater
from headwater_runtime.store import SQLiteStore

pytestmark = pytest.mark.e2e

GOOD = """
from headwater import flow, task


@task
def double(x: int) -> int:
    return 2 * x


@task
def label(name: str, value: int) -> str:
    return f"{name}={value}"


@flow
def pipeline(n: int = 2, name: str = "n") -> dict:
    doubled = double(n)
    return {"doubled": doubled, "label": label(name, doubled), "items": [1, 2]}
"""

FAILING = """
from headwater import flow, task


@task
def prepare() -> int:
    return 1


@task
def explode_step(x: int) -> int:
    raise RuntimeError("kaboom from the task")


@flow
def failing() -> int:
    return explode_step(prepare())
"""

TWO_FLOWS = """
from headwater import flow, task


@task
def one() -> int:
    return 1


@flow
def first() -> int:
    return one()


@flow(name="second_flow")
def second() -> int:
    return one()
"""

REQUIRED = """
from headwater import flow, task


@task
def double(x: int) -> int:
    return 2 * x


@flow
def needs_n(n: int) -> int:
    return double(n)
"""

BROKEN_DEFINITION = """
from headwater import flow, task


@task
def add(a: int, b: int) -> int:
    return a + b


@flow
def broken() -> int:
    return add(1)
"""


SUBFLOW_LIBRARY = """
from headwater import flow, task


@task
def clean(x: int) -> int:
    return x + 1


@flow
def cleaning(x: int = 1) -> int:
    return clean(x)
"""

USES_A_SUBFLOW = """
from headwater import flow, task
from shared import cleaning


@task
def double(x: int) -> int:
    return 2 * x


@flow
def etl(x: int = 1) -> int:
    return double(cleaning(x))


main = etl
"""


def write(tmp_path: Path, name: str, source: str) -> Path:
    path = tmp_path / name
    path.write_text(textwrap.dedent(source))
    return path


def headwater_cli(*args: str | Path, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "headwater._cli", *map(str, args)],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=cwd,
        check=False,
    )


def assert_usage_error(proc: subprocess.CompletedProcess[str], *fragments: str) -> None:
    assert proc.returncode == 2, (proc.returncode, proc.stdout, proc.stderr)
    assert "Traceback" not in proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith("headwater: error: "), lines[0]
    for fragment in fragments:
        assert fragment in lines[0], (fragment, lines[0])
    assert proc.stdout == ""


PRINTING = """
from headwater import flow, task


@task
def step(i: int) -> int:
    print(f"step {i} done")
    return i


@flow
def printing(n: int = 6) -> list[int]:
    return step.map(list(range(n)))
"""


def test_run_keeps_stdout_for_the_result_and_shows_task_prints_on_stderr(
    tmp_path: Path,
) -> None:
    """`headwater run ... | jq` works when tasks print (a newcomer's trial: their
    lines were on stdout, before the JSON)."""
    path = write(tmp_path, "printing.py", PRINTING)
    proc = headwater_cli("run", path, "--workers", "3")
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout) == [0, 1, 2, 3, 4, 5]
    assert all(f"step {i} done" in proc.stderr for i in range(6)), proc.stderr


def test_run_says_it_runs_here_when_a_server_is_in_the_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With HEADWATER_SERVER exported (the default --server of `runs`, `worker` and the
    rest), `headwater run` still runs in this process: a newcomer took the printed
    result for the server's run and found no run on the server. It says so on stderr;
    stdout keeps the result."""
    monkeypatch.setenv("HEADWATER_SERVER", "127.0.0.1:1")
    path = write(tmp_path, "printing.py", PRINTING)
    proc = headwater_cli("run", path, "--param", "n=2")
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout) == [0, 1]
    said = "headwater run: running in this process (HEADWATER_SERVER does not send a run"
    assert said in proc.stderr.splitlines()[0], proc.stderr
    monkeypatch.delenv("HEADWATER_SERVER")
    assert "HEADWATER_SERVER" not in headwater_cli("run", path, "--param", "n=2").stderr


def test_a_flow_target_module_is_found_in_the_current_directory(tmp_path: Path) -> None:
    """`headwater run shopc:daily` and `headwater graph mypkg.jobs:f` from the module's
    folder: the installed command (not `python -m`, which adds the folder itself)
    found them only with PYTHONPATH=., where `headwater worker --module shopc` did (a
    newcomer's trial; --help says FILE.py[:FLOW] or package.module[:FLOW])."""
    write(tmp_path, "shopc.py", GOOD)
    (tmp_path / "mypkg").mkdir()
    write(tmp_path, "mypkg/__init__.py", "")
    write(tmp_path, "mypkg/jobs.py", GOOD)
    command = Path(sys.executable).with_name("headwater")
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    for args in (["run", "shopc:pipeline"], ["graph", "--format", "json", "mypkg.jobs:pipeline"]):
        proc = subprocess.run(
            [str(command), *args],
            capture_output=True,
            text=True,
            timeout=60,
            cwd=tmp_path,
            env=env,
            check=False,
        )
        assert proc.returncode == 0, (args, proc.stderr)
    assert json.loads(proc.stdout)["name"] == "pipeline"


def test_an_embedded_runs_failures_start_with_the_root_cause_and_the_tasks_own_frames(
    tmp_path: Path,
) -> None:
    """The failed child of a map before the reduce its failure stopped (FlowRun.failures'
    order: the downstream TRIGGER_FAILED came first), and its traceback from the task
    function on: Headwater's own frames that called it came first and took the place of
    the task's in the trimmed view (a newcomer's trial)."""
    source = (
        "from headwater import flow, task\n\n@task\ndef flaky(x: int) -> int:\n"
        "    if x == 3:\n        raise ValueError(f'bad element {x}')\n    return x\n\n"
        "@task\ndef total(xs: list) -> int:\n    return sum(xs)\n\n"
        "@flow\ndef failing(n: int = 5) -> int:\n    return total(flaky.map(list(range(n))))\n"
    )
    proc = headwater_cli("run", write(tmp_path, "failing.py", source))
    assert proc.returncode == 1, proc.stderr
    err = proc.stderr
    assert err.index("flaky[3]: FAILED") < err.index("total: TRIGGER_FAILED"), err
    assert "raise ValueError(f'bad element {x}')" in err
    assert "traceback lines cut" not in err and "headwater_runtime" not in err, err


def test_run_prints_the_result_as_json_and_exits_0(tmp_path: Path) -> None:
    path = write(tmp_path, "good.py", GOOD)
    proc = headwater_cli("run", path)
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout) == {"doubled": 4, "label": "n=4", "items": [1, 2]}
    assert "SUCCESS" in proc.stderr
    assert "pipeline" in proc.stderr
    assert "Traceback" not in proc.stderr
    # A flow with no task: its last line has no empty "()" (a user trial).
    taskless = "from headwater import flow\n\n@flow\ndef a() -> int:\n    return 1\n"
    proc = headwater_cli("run", write(tmp_path, "taskless.py", taskless))
    assert (proc.returncode, proc.stdout) == (0, "1\n"), proc.stderr
    assert re.fullmatch(r"flow run \w{8} of 'a': SUCCESS in [\d.]+s\n", proc.stderr), proc.stderr


def test_a_run_that_fails_with_no_failed_task_says_why(tmp_path: Path) -> None:
    """Every task succeeded but the flow's result could not be built: the summary line
    said only "FAILED (1 SUCCESS)"."""
    source = (
        "from headwater import flow, task\n\n@task\ndef rows() -> dict:\n"
        "    return {'a': 1}\n\n@flow\ndef partial() -> int:\n    return rows()['b']\n"
    )
    proc = headwater_cli("run", write(tmp_path, "partial.py", source))
    assert proc.returncode == 1
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("flow run ") and " of 'partial': FAILED in " in last, last
    assert last.endswith("(1 SUCCESS): could not assemble the result: KeyError('b')"), last


def test_run_on_a_local_dask_cluster(tmp_path: Path) -> None:
    """Its stdout holds only the result: the LocalCluster's worker processes shared it,
    and what tasks printed there broke `| jq` (a user trial); it goes to stderr."""
    printing = GOOD.replace(
        "    return 2 * x\n",
        "    import os\n    print('printed by a task')\n"
        "    os.write(1, b'written to fd 1 by a task\\n')\n    return 2 * x\n",
    )
    assert "printed by a task" in printing
    path = write(tmp_path, "good.py", printing)
    proc = headwater_cli("run", path, "--dask", "local", "-p", "n=5")
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout) == {"doubled": 10, "label": "n=10", "items": [1, 2]}
    assert "SUCCESS" in proc.stderr
    assert "printed by a task" in proc.stderr and "written to fd 1 by a task" in proc.stderr


def test_a_task_failing_on_dask_shows_its_file_and_lines(tmp_path: Path) -> None:
    """The flow's module goes to the Dask workers by value, and cloudpickle names such
    code "<dynamic-code>": a failure's traceback read `File "<dynamic-code>", line 6, in
    boom` under a frame of Headwater's own, with no source lines. Now it names the file
    (a helper's and a nested function's frames too) and shows its lines."""
    source = (
        "from headwater import flow, task\n\n"
        "def check(x):\n"
        "    def inner(y):\n"
        "        if y > 1:\n"
        "            raise ValueError(f'bad {y}')\n"
        "        return y\n"
        "    return inner(x)\n\n"
        "@task\ndef boom(x: int, /) -> int:\n    return check(x)\n\n"
        "@flow\ndef main(n: int = 3) -> list:\n    return boom.map(list(range(n)))\n"
    )
    path = write(tmp_path, "dask_fails.py", source)
    proc = headwater_cli("run", path, "--dask", "local")
    assert proc.returncode == 1, proc.stderr
    err = proc.stderr
    assert "<dynamic-code>" not in err, err
    frames = [line.strip() for line in err.splitlines() if line.strip().startswith("File ")]
    file = str(tmp_path / "dask_fails.py")
    assert frames == [
        f'File "{file}", line 12, in boom',
        f'File "{file}", line 8, in check',
        f'File "{file}", line 6, in inner',
    ], err
    assert "raise ValueError(f'bad {y}')" in err and "ValueError: bad 2" in err


def test_dask_with_workers_or_server_is_a_usage_error(tmp_path: Path) -> None:
    path = write(tmp_path, "good.py", GOOD)
    assert_usage_error(headwater_cli("run", path, "--dask", "local", "--workers", "2"), "--workers")
    assert_usage_error(
        headwater_cli("run", path, "--dask", "local", "--server", "127.0.0.1:1"), "--server"
    )
    assert_usage_error(headwater_cli("run", path, "--dask", ""), "--dask expects")
    # (a mistyped one waited out Dask's 20 s connect timeout, then two tracebacks, exit 1)
    assert_usage_error(
        headwater_cli("run", path, "--dask", "lcoal"),
        "--dask expects 'local' or a scheduler address like tcp://HOST:PORT, got 'lcoal' "
        "(missing port number in address 'lcoal')",
    )
    # --workers and --max-concurrency size this process's pool: ignored on a server before
    for flags in (["--workers", "2"], ["--max-concurrency", "2"]):
        got = headwater_cli("run", path, *flags, "--server", "127.0.0.1:1")
        assert_usage_error(got, flags[0], "cannot be used with --server")
    # ...and the other way round: a server's flags without --server were ignored, and
    # the run went on in this process (a user trial took it for a server's run).
    got = headwater_cli("run", path, "--tls-ca", "ca.pem")
    assert_usage_error(got, "--tls-ca is for a run on a server; add --server HOST:PORT")
    got = headwater_cli("run", path, "--token", "t", "--tls")
    assert_usage_error(got, "--token and --tls are for a run on a server")


def test_an_unreachable_dask_scheduler_is_exit_3_try_again(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """A scheduler that cannot be reached is like a server that cannot be: exit 3, one
    line (it was 1, "the flow run failed"). In this process, with a short connect
    timeout (the CLI's is 10 s)."""
    from headwater import _cli
    from headwater_runtime.dask import DaskExecutor

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))  # bound, never listening: connections are refused
        address = f"tcp://127.0.0.1:{sock.getsockname()[1]}"
        monkeypatch.setattr(
            _cli, "dask_executor", lambda where: DaskExecutor(where, connect_timeout=0.5)
        )
        path = write(tmp_path, "good.py", GOOD)
        previous = signal.getsignal(signal.SIGTERM)  # `run` takes SIGTERM as Ctrl-C
        try:
            assert _cli.main(["run", str(path), "--dask", address]) == 3
        finally:
            signal.signal(signal.SIGTERM, previous)
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith(f"headwater: error: cannot reach the Dask scheduler at {address}")


def test_worker_dask_needs_local_or_an_address() -> None:
    for given in ("", "tcp://scheduler"):
        proc = headwater_cli("worker", "--server", "127.0.0.1:1", "--module", "x", "--dask", given)
        assert_usage_error(proc, "--dask expects 'local' or a scheduler address")


def test_param_values_are_converted_to_their_annotations(tmp_path: Path) -> None:
    path = write(tmp_path, "good.py", GOOD)
    proc = headwater_cli("run", path, "--param", "n=3", "-p", "name=bob")
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout) == {"doubled": 6, "label": "bob=6", "items": [1, 2]}
    # `n: int`: a JSON string "3" is converted to 3; `name: str` keeps "123" as text.
    proc = headwater_cli("run", path, "--param", 'n="3"', "-p", "name=123")
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["label"] == "123=6"


UNANNOTATED = """
from headwater import flow, task


@task
def double(x):
    return x * 2


@flow
def pipeline(n=2):
    return double(n)
"""


def test_unannotated_param_values_are_parsed_as_json_else_kept_as_strings(
    tmp_path: Path,
) -> None:
    path = write(tmp_path, "loose.py", UNANNOTATED)
    proc = headwater_cli("run", path, "--param", "n=3")
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout) == 6
    # A JSON string stays a string: "3" * 2 == "33"; so does text that is not JSON.
    proc = headwater_cli("run", path, "--param", 'n="3"')
    assert json.loads(proc.stdout) == "33"
    proc = headwater_cli("run", path, "--param", "n=ab")
    assert json.loads(proc.stdout) == "abab"


def test_run_with_flow_name_picks_one_of_several(tmp_path: Path) -> None:
    path = write(tmp_path, "two.py", TWO_FLOWS)
    proc = headwater_cli("run", f"{path}:first")
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout) == 1
    # The flow's own name works too.
    proc = headwater_cli("run", f"{path}:second_flow")
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout) == 1


def test_failing_flow_exits_1_and_names_the_failed_task(tmp_path: Path) -> None:
    path = write(tmp_path, "failing.py", FAILING)
    proc = headwater_cli("run", path)
    assert proc.returncode == 1, (proc.stdout, proc.stderr)
    assert "FAILED" in proc.stderr
    assert "explode_step" in proc.stderr
    assert "kaboom from the task" in proc.stderr
    assert proc.stdout == ""


def test_a_run_over_its_flows_timeout_exits_1_saying_so(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        "bounded.py",
        """
        import time
        from headwater import flow, task

        @task
        def nap() -> None:
            for _ in range(1000):  # interrupted at the deadline; bounded either way
                time.sleep(0.01)

        @flow(timeout=0.3)
        def bounded() -> None:
            return nap()
        """,
    )
    proc = headwater_cli("run", path)
    assert proc.returncode == 1, (proc.stdout, proc.stderr)
    last = proc.stderr.strip().splitlines()[-1]
    assert "FAILED" in last and last.endswith(": the flow run exceeded its timeout of 0.3s")


def test_unknown_param_is_a_usage_error(tmp_path: Path) -> None:
    path = write(tmp_path, "good.py", GOOD)
    assert_usage_error(headwater_cli("run", path, "--param", "nope=1"), "'nope'")


def test_malformed_param_is_a_usage_error(tmp_path: Path) -> None:
    path = write(tmp_path, "good.py", GOOD)
    assert_usage_error(headwater_cli("run", path, "--param", "n"), "KEY=VALUE")
    # the same key twice: the last one won, silently (a user trial)
    twice = headwater_cli("run", path, "-p", "n=2", "--param", "n=3")
    assert_usage_error(twice, "--param n is given twice (n=2, n=3): give it once")


def test_missing_required_param_is_a_usage_error(tmp_path: Path) -> None:
    path = write(tmp_path, "required.py", REQUIRED)
    assert_usage_error(headwater_cli("run", path), "'n'")


def test_missing_file_is_a_usage_error(tmp_path: Path) -> None:
    missing = tmp_path / "does_not_exist.py"
    assert_usage_error(headwater_cli("run", missing), "does_not_exist.py")
    assert_usage_error(headwater_cli("graph", missing), "does_not_exist.py")


def test_file_without_a_flow_is_a_usage_error(tmp_path: Path) -> None:
    path = write(tmp_path, "plain.py", "X = 1\n")
    assert_usage_error(headwater_cli("run", path), "no @flow")


def test_several_flows_without_a_name_is_a_usage_error(tmp_path: Path) -> None:
    path = write(tmp_path, "two.py", TWO_FLOWS)
    proc = headwater_cli("run", path)
    assert_usage_error(proc, "first", "second", ":NAME")
    assert_usage_error(headwater_cli("graph", path), ":NAME")


def test_a_file_with_one_flow_of_its_own_runs_it_without_a_name(tmp_path: Path) -> None:
    """Another name for the flow (``main = report``) and a flow imported to be called as
    a subflow made "defines several flows": the file's own flow is the one to run.
    Two flows of its own still need a name (listed once each)."""
    write(tmp_path, "shared.py", SUBFLOW_LIBRARY)
    path = write(tmp_path, "uses.py", USES_A_SUBFLOW)
    proc = headwater_cli("run", path, "-p", "x=3", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "8"  # double(cleaning(3)) = 2 * (3 + 1)
    two = write(tmp_path, "two_more.py", TWO_FLOWS + "\nmain = first\n")
    assert_usage_error(headwater_cli("run", two), "(first, second)", ":NAME")


def test_unknown_flow_name_is_a_usage_error(tmp_path: Path) -> None:
    path = write(tmp_path, "two.py", TWO_FLOWS)
    assert_usage_error(headwater_cli("run", f"{path}:third"), "'third'")


def test_flow_definition_error_is_a_usage_error(tmp_path: Path) -> None:
    path = write(tmp_path, "broken.py", BROKEN_DEFINITION)
    assert_usage_error(headwater_cli("run", path), "'add'", "'b'")
    assert_usage_error(headwater_cli("graph", path), "'add'", "'b'")


BODY_RAISES = """
from headwater import flow, task

@task
def inc(x: int) -> int:
    return x + 1

@flow
def wide(n: int = 3) -> list[int]:
    return inc.map(list(range(n)))

@flow
def refuses(x: str = "a") -> int:
    if x == "a":
        raise RuntimeError("refused x\\nsecond line")
    return inc(1)
"""


def test_an_error_the_flow_body_raises_while_building_is_one_line(tmp_path: Path) -> None:
    """The flow body's own error while its graph is built (nothing ran): one line
    naming the flow, the body's line and the error, exit 2, in `run` and `graph`; it
    printed ~30 lines of Headwater's frames and exited 1 ("failed", a user trial). In
    Python the body's exception itself is raised, as before."""
    path = write(tmp_path, "body.py", BODY_RAISES)
    huge = headwater_cli("run", f"{path}:wide", "-p", "n=99999999999999999999999999")
    assert_usage_error(huge, "flow 'wide', ", "body.py:10: its body raised OverflowError: ")
    said = ("flow 'refuses', ", "body.py:15: its body raised RuntimeError: refused x second line")
    assert_usage_error(headwater_cli("run", f"{path}:refuses"), *said)
    assert_usage_error(headwater_cli("graph", f"{path}:refuses"), *said)
    assert headwater_cli("run", f"{path}:refuses", "-p", "x=b").returncode == 0
    from headwater._loader import load_file

    module = load_file(str(path))
    with pytest.raises(RuntimeError, match="refused x"):
        module.refuses()


def test_graph_prints_the_flow_graph_as_json(tmp_path: Path) -> None:
    path = write(tmp_path, "good.py", GOOD)
    proc = headwater_cli("graph", path, "--format", "json")
    assert proc.returncode == 0, proc.stderr
    graph = json.loads(proc.stdout)
    assert graph["name"] == "pipeline"
    tasks = {t["id"]: t for t in graph["tasks"]}
    assert set(tasks) == {"double", "label"}
    # A script's tasks are typed by its file stem.
    assert tasks["double"]["taskType"] == "good.double"
    assert tasks["label"]["inputs"]["value"]["taskOutput"]["taskId"] == "double"
    assert tasks["label"]["inputs"]["name"]["parameter"] == "name"
    assert [p["name"] for p in graph["parameters"]] == ["n", "name"]
    assert sorted(graph["referenceTaskIds"]) == ["double", "label"]


def test_graph_json_parses_back_into_a_flow_graph(tmp_path: Path) -> None:
    from google.protobuf import json_format

    from headwater.v1 import graph_pb2
    from headwater.wire import graph_from_proto

    path = write(tmp_path, "good.py", GOOD)
    proc = headwater_cli("graph", path, "--format", "json")
    assert proc.returncode == 0, proc.stderr
    msg = json_format.Parse(proc.stdout, graph_pb2.FlowGraph())
    graph = graph_from_proto(msg)
    assert [t.id for t in graph.tasks] == ["double", "label"]


def test_commands_on_a_database_refuse_a_wrong_one_in_one_line(tmp_path: Path) -> None:
    """A mistyped --db is not a new, empty database (prune and tokens list made one;
    tokens create, which makes the first admin of a new server, says it did); a file
    that is not a database, or an unsupported URL, is one line, not a traceback."""
    missing = tmp_path / "typo" / "headwatr.db"
    assert_usage_error(
        headwater_cli("prune", "--db", missing, "--dry-run"), "no Headwater database"
    )
    assert_usage_error(headwater_cli("tokens", "list", "--db", missing), "no Headwater database")
    assert not missing.parent.exists()
    assert_usage_error(
        headwater_cli("prune", "--db", "mysql://x/y"), "mysql:// databases are not supported"
    )
    not_a_db = write(tmp_path, "notes.db", "just text, not SQLite\n" * 200)
    proc = headwater_cli("prune", "--db", not_a_db, "--dry-run")
    assert proc.returncode == 1 and "Traceback" not in proc.stderr, proc.stderr
    assert proc.stderr.strip().splitlines() == [
        f"headwater: error: cannot open the database {not_a_db}: file is not a database "
        "(it is not a SQLite database, or a damaged one: check the path)"
    ]
    # Another program's SQLite database: refused, and left as it was (prune --dry-run
    # wrote Headwater's 23 tables into it).
    # (It was switched to WAL mode before the refusal: its bytes changed.)
    foreign = tmp_path / "other.db"
    with contextlib.closing(sqlite3.connect(foreign)) as db:
        db.execute("CREATE TABLE t (x)")
    before = foreign.read_bytes()
    for command in (["prune", "--dry-run"], ["tokens", "list"]):
        proc = headwater_cli(*command, "--db", foreign)
        assert proc.returncode == 1 and "Traceback" not in proc.stderr, proc.stderr
        assert proc.stderr.startswith(f"headwater: error: {foreign} is not a Headwater database")
    assert foreign.read_bytes() == before
    assert sorted(p.name for p in tmp_path.glob("other.db*")) == ["other.db"]
    # The same in WAL mode: refused, and no -wal or -shm file left beside it.
    wal = tmp_path / "other-wal.db"
    with contextlib.closing(sqlite3.connect(wal)) as db:
        db.execute("PRAGMA journal_mode=WAL")
        db.execute("CREATE TABLE t (x)")
    before = wal.read_bytes()
    proc = headwater_cli("prune", "--dry-run", "--db", wal)
    assert proc.returncode == 1 and "is not a Headwater database" in proc.stderr, proc.stderr
    assert wal.read_bytes() == before
    assert sorted(p.name for p in tmp_path.glob("other-wal.db*")) == ["other-wal.db"]
    # An empty file is no database either, as a missing one (it became a 4 KB one).
    empty = write(tmp_path, "empty.db", "")
    for command in (["prune", "--dry-run"], ["tokens", "list"]):
        assert_usage_error(headwater_cli(*command, "--db", empty), "the file is empty")
    assert empty.stat().st_size == 0
    # A database of an older schema (a server of the previous version runs on it): a
    # prune (a dry run too) or tokens list refuse it instead of migrating it under
    # that server, which would then refuse to start again.
    older = tmp_path / "older.db"
    SQLiteStore(older).close()
    with sqlite3.connect(older) as db:
        db.execute("UPDATE meta SET value='2' WHERE key='schema_version'")
    # tokens create too: it makes a new database, it does not migrate an existing one.
    create = ["tokens", "create", "--role", "admin", "--name", "x"]
    for command in (["prune", "--dry-run"], ["tokens", "list"], create):
        proc = headwater_cli(*command, "--db", older)
        assert proc.returncode == 1, proc.stderr
        assert f"database {older} has schema version 2, and this Headwater uses" in proc.stderr
        assert "start a server of this version on it, which migrates it" in proc.stderr
    with sqlite3.connect(older) as db:
        assert db.execute("SELECT value FROM meta WHERE key='schema_version'").fetchone() == ("2",)
        db.execute("UPDATE meta SET value='99' WHERE key='schema_version'")
    proc = headwater_cli("prune", "--dry-run", "--db", older)
    assert "it was written by a newer Headwater" in proc.stderr, proc.stderr
    made = headwater_cli("tokens", "create", "--db", missing, "--role", "admin", "--name", "me")
    assert made.returncode == 0 and made.stdout.startswith("hwt_"), made.stderr
    assert f"created a new database at {missing}" in made.stderr and missing.is_file()
    empty = tmp_path / "empty.db"  # (touched by a script first): made a database too
    empty.touch()
    made = headwater_cli("tokens", "create", "--db", empty, "--role", "admin", "--name", "me")
    assert made.returncode == 0 and f"created a new database at {empty}" in made.stderr
    again = headwater_cli("tokens", "create", "--db", empty, "--role", "admin", "--name", "you")
    assert again.returncode == 0 and "new database" not in again.stderr, again.stderr


def test_bad_addresses_and_counts_are_usage_errors(tmp_path: Path) -> None:
    path = write(tmp_path, "good.py", GOOD)
    assert_usage_error(headwater_cli("runs", "list", "--server", "garbage"), "'garbage'")
    assert_usage_error(headwater_cli("run", path, "--server", "h:x"), "'h:x' is not HOST:PORT")
    proc = headwater_cli("runs", "list", "--limit", "0", "--server", "127.0.0.1:1")
    assert proc.returncode == 2 and "argument --limit: must be at least 1, got 0" in proc.stderr
    # Numbers too large for what they size: one line each (they were tracebacks).
    for args, said in [
        (["runs", "list", "--since", "1e300"], "--since must be at most 100 years"),
        (["limits", "set", "t", "--concurrency", "99999999999999999999"], "--concurrency must"),
        (["limits", "set", "t", "--rate", "1/1e300"], "--rate expects a rate"),
    ]:
        assert_usage_error(headwater_cli(*args, "--server", "127.0.0.1:1"), said)
    proc = headwater_cli("runs", "list", "--limit", "99999999999999999999", "--server", "h:1")
    assert proc.returncode == 2 and "--limit: must be at most 2,147,483,647" in proc.stderr
    for flag in ("--workers", "--max-concurrency"):
        proc = headwater_cli("run", path, flag, "0")
        assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr
        assert f"argument {flag}: must be at least 1, got 0" in proc.stderr


def test_help_lists_the_commands() -> None:
    proc = headwater_cli("--help")
    assert proc.returncode == 0, proc.stderr
    assert "run" in proc.stdout
    assert "graph" in proc.stdout
    proc = headwater_cli("run", "--help")
    assert proc.returncode == 0, proc.stderr
    assert "--param" in proc.stdout


def test_each_runs_action_has_its_own_help_and_flags() -> None:
    """`headwater runs ACTION --help` shows that action's flags only (it showed every
    action's); a flag of another action, or a missing run id, is a usage error."""
    runs = headwater_cli("runs", "--help")
    assert runs.returncode == 0, runs.stderr
    for action in ("list", "show", "watch", "cancel", "retry", "logs"):
        assert f"    {action} " in runs.stdout, runs.stdout
    watch = headwater_cli("runs", "watch", "--help")
    assert watch.returncode == 0, watch.stderr
    assert "--full" in watch.stdout and "--server" in watch.stdout
    assert "--follow" not in watch.stdout and "--flow" not in watch.stdout
    logs = headwater_cli("runs", "logs", "--help")
    assert "--follow" in logs.stdout and "--page-size" in logs.stdout
    assert "--reason" not in logs.stdout
    wrong = headwater_cli("runs", "list", "--follow", "--server", "127.0.0.1:1")
    assert wrong.returncode == 2 and "unrecognized arguments: --follow" in wrong.stderr
    # With the usage line of the command given (it was the top one: "headwater [-h]").
    assert wrong.stderr.startswith("usage: headwater runs list ")
    assert "headwater runs list: error:" in wrong.stderr
    missing = headwater_cli("runs", "show", "--server", "127.0.0.1:1")
    assert missing.returncode == 2 and "required: run_id" in missing.stderr


def test_version() -> None:
    proc = headwater_cli("--version")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == f"headwater {headwater.__version__}"


def test_console_script_is_installed(tmp_path: Path) -> None:
    script = Path(sys.executable).with_name("headwater")
    if not script.exists():
        pytest.skip(f"no console script next to {sys.executable} (not an installed venv)")
    path = write(tmp_path, "good.py", GOOD)
    proc = subprocess.run(
        [str(script), "run", str(path), "--param", "n=5"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["doubled"] == 10


@pytest.mark.parametrize(
    ("source", "fragment"),
    [
        ("def broken(:\n", "SyntaxError"),
        ("import no_such_module_anywhere\n", "ModuleNotFoundError"),
        ("raise RuntimeError('config missing')\n", "RuntimeError: config missing"),
    ],
)
def test_a_file_that_fails_to_import_is_a_usage_error(
    tmp_path: Path, source: str, fragment: str
) -> None:
    path = write(tmp_path, "bad.py", source)
    assert_usage_error(headwater_cli("run", path, cwd=tmp_path), "cannot import", fragment)


def test_a_file_named_like_a_taken_module_or_a_folder_is_a_usage_error(tmp_path: Path) -> None:
    """A flow file named like a standard library module (``random.py``, ``types.py``)
    or an imported package (``grpc.py``) is refused naming the module: imported under
    that name it replaced the real one, and a worker serving ``types.py`` failed inside
    grpc, ``run random.py --server`` inside tempfile (a user trial). A folder is named
    as one, not as missing. (Run from another folder: ``python -m`` would put this
    one first on the path and import random.py before Headwater runs at all.)"""
    for stem in ("random", "types", "grpc"):
        path = write(tmp_path, f"{stem}.py", GOOD)
        said = (
            "named like the standard library's module"
            if stem != "grpc"
            else ("named like the module 'grpc' already imported from")
        )
        assert_usage_error(headwater_cli("run", path), said, "rename the file")
        worker = headwater_cli("worker", "--server", "127.0.0.1:1", path)
        assert_usage_error(worker, said)
    folder = tmp_path / "flows"
    folder.mkdir()
    said = f"{folder} is a folder: give a Python file (.py) in it"
    assert_usage_error(headwater_cli("run", str(folder)), said)
    assert_usage_error(headwater_cli("worker", "--server", "127.0.0.1:1", str(folder)), said)
    # The same flow under a name of its own runs.
    assert headwater_cli("run", write(tmp_path, "mine.py", GOOD)).returncode == 0


def test_output_into_a_closed_pipe_ends_quietly(tmp_path: Path) -> None:
    """`headwater graph big.py | head -c 100`: the reader leaves early; no traceback."""
    flow_file = tmp_path / "big.py"
    flow_file.write_text(
        "from headwater import flow, task\n\n"
        "@task\ndef step(i):\n    return i\n\n"
        "@flow\ndef big():\n    return [step(i) for i in range(3000)]\n"
    )
    proc = subprocess.Popen(
        [sys.executable, "-m", "headwater._cli", "graph", str(flow_file)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        cwd=tmp_path,
    )
    assert proc.stdout is not None and proc.stderr is not None
    assert len(proc.stdout.read(100)) == 100
    proc.stdout.close()  # the reader goes away while most of the graph is unwritten
    stderr = proc.stderr.read().decode()
    proc.stderr.close()
    assert proc.wait(60) == 0, stderr
    assert "Traceback" not in stderr and "BrokenPipe" not in stderr


VALUES = """
from headwater import flow, task


@task
def write(path: str) -> str:
    return "wrote " + path


@flow
def paths(out_dir: str = "/tmp", n: int = 1) -> list[str]:
    if n > 8:
        return [write(f"{out_dir}/big.sqlite")]
    return [write(f"{out_dir}/part-{i}") for i in range(n)]
"""


def test_run_builds_the_graph_for_the_values_and_refuses_bad_ones(tmp_path: Path) -> None:
    path = write(tmp_path, "values.py", VALUES)
    proc = headwater_cli("run", path, "-p", "n=2", "-p", "out_dir=/d")
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout) == ["wrote /d/part-0", "wrote /d/part-1"]
    proc = headwater_cli("run", path, "-p", "n=abc")
    assert proc.returncode == 2
    assert proc.stdout == ""
    assert proc.stderr.strip().splitlines() == [
        "headwater: error: flow 'paths': parameter 'n' expects int, got 'abc' "
        "(Input should be a valid integer, unable to parse string as an integer)"
    ]


def test_graph_takes_parameter_values(tmp_path: Path) -> None:
    path = write(tmp_path, "values.py", VALUES)
    proc = headwater_cli("graph", path, "-p", "n=9", "--format", "json")
    assert proc.returncode == 0, proc.stderr
    graph = json.loads(proc.stdout)
    assert graph["valueDependent"] is True and len(graph["parametersDigest"]) == 64
    assert [t["id"] for t in graph["tasks"]] == ["write"]
    proc = headwater_cli("graph", path, "-p", "n=3", "--format", "json")
    graph = json.loads(proc.stdout)
    assert [t["id"] for t in graph["tasks"]] == ["write", "write-2", "write-3"]


def test_ctrl_c_while_the_cli_is_imported_is_a_quiet_interrupt() -> None:
    """Importing the CLI takes most of a second; a Ctrl-C then printed an import
    traceback. A finder that raises KeyboardInterrupt for headwater._cli stands in for
    the key press, at a known moment."""
    script = (
        "import sys\n"
        "class Press:\n"
        "    def find_spec(self, name, path=None, target=None):\n"
        "        if name == 'headwater._cli':\n"
        "            raise KeyboardInterrupt\n"
        "sys.meta_path.insert(0, Press())\n"
        "from headwater._entry import main\n"
        "raise SystemExit(main())\n"
    )
    proc = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=60
    )
    assert proc.returncode == 130
    assert proc.stderr == "headwater: interrupted\n"


def test_listings_print_local_time_like_runs_list_and_audit(tmp_path: Path) -> None:
    """`tokens list` printed UTC with a Z (as did `schedules list` and `workers list`)
    where `runs list`, `runs logs` and `audit` print local time: one convention now,
    local time (UTC in --json)."""
    import os
    from datetime import UTC, datetime, timedelta

    db = tmp_path / "hw.db"
    made = headwater_cli("tokens", "create", "--db", db, "--role", "admin", "--name", "me")
    assert made.returncode == 0, made.stderr
    env = {**os.environ, "TZ": "XYZ-05:45"}  # 5 h 45 min east of UTC
    proc = subprocess.run(
        [sys.executable, "-m", "headwater._cli", "tokens", "list", "--db", str(db)],
        capture_output=True, text=True, timeout=60, check=False, env=env,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    (line,) = proc.stdout.splitlines()
    stamp = line.split("created ", 1)[1][:19]
    printed = datetime.strptime(stamp, "%Y-%m-%d %H:%M:%S").replace(tzinfo=UTC)
    now_there = datetime.now(UTC) + timedelta(hours=5, minutes=45)
    assert abs(printed - now_there) < timedelta(minutes=5), (stamp, line)
    assert "Z " not in line


def test_a_negative_duration_gets_the_flags_own_message() -> None:
    """argparse took `-5s` for an option and answered "expected one argument"; the
    value now reaches the flag, which says what it expects."""
    from headwater._cli import _negative_values

    proc = headwater_cli("runs", "list", "--since", "-1h", "--server", "127.0.0.1:1")
    assert_usage_error(proc, "--since expects a duration", "got '-1h'")
    assert "expected one argument" not in proc.stderr
    assert _negative_values(["--every", "-5s", "--limit", "-1", "--", "-5s"]) == [
        "--every=-5s",
        "--limit",
        "-1",
        "--",
        "-5s",
    ]


def test_tokens_on_a_database_that_cannot_be_written_is_one_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """A database file the user may read but not write (a read-only file, for someone
    without root's override): ``tokens create`` says so in one line, exit status 1; it
    printed a traceback (a user trial)."""
    from headwater import _cli_tokens
    from headwater._cli import main
    from headwater_runtime.store import SQLiteStore, StoreUnavailable

    class ReadOnly(SQLiteStore):
        def add_credential(self, row: Any) -> None:
            raise StoreUnavailable(
                "cannot write to the database: attempt to write a readonly database"
            )

    db = tmp_path / "ro.db"
    SQLiteStore(db).close()
    monkeypatch.setattr(_cli_tokens, "open_database", lambda path, create=False: ReadOnly(path))
    code = main(["tokens", "create", "--db", str(db), "--role", "admin", "--name", "me"])
    err = capsys.readouterr().err
    assert code == 1 and "Traceback" not in err
    assert err.strip() == (
        f"headwater: error: could not change the credentials in {db}: cannot write to the "
        "database: attempt to write a readonly database"
    )


@pytest.mark.parametrize(
    "command",
    [["tokens", "create", "--role", "admin", "--name", "me"], ["prune", "--dry-run"]],
)
def test_an_empty_db_is_a_usage_error(
    command: list[str], capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """``--db ""`` (an unset variable in a script) is named as empty; tokens opened it as
    the directory "." and refused it as a directory, prune went on to the default
    database (user trials)."""
    from headwater._cli import main

    monkeypatch.setenv("HEADWATER_DB", "/nonexistent/should-not-be-used.db")
    code = main([*command, "--db", ""])
    err = capsys.readouterr().err
    assert code == 2
    assert err.strip() == (
        "headwater: error: --db is empty: give a SQLite file path or a postgresql:// URL"
    )


def test_a_commands_argument_may_follow_its_options(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """``headwater tokens revoke --db DB NAME`` (options first, as users write them) was
    "unrecognized arguments: NAME"; ``tokens revoke NAME --db DB`` worked. Both work; a
    second argument is still refused."""
    from headwater._cli import main

    db = str(tmp_path / "hw.db")
    for name in ("a", "b"):
        assert main(["tokens", "create", "--db", db, "--name", name, "--role", "admin"]) == 0
    assert main(["tokens", "revoke", "--db", db, "a"]) == 0
    assert main(["tokens", "revoke", "b", "--db", db]) == 0
    out = capsys.readouterr().out
    assert "revoked a " in out and "revoked b " in out
    with pytest.raises(SystemExit) as refused:
        main(["tokens", "revoke", "--db", db, "a", "b"])
    assert refused.value.code == 2
    assert "unrecognized arguments: a b" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("args", "said"),
    [
        (
            ["webhooks", "create", "http://hooks.example/x", "--state", "PENDING"],
            "--state 'PENDING' is not a state a webhook fires for "
            "(RUNNING, SUCCESS, FAILED, CANCELLED)",
        ),
        (["webhooks", "list", "--state", "FAILED"], "--state: only for 'webhooks create'"),
        (["webhooks", "delete", "0df2", "--late"], "--late: only for 'webhooks create'"),
        (["webhooks", "list", "0df2"], "'webhooks list' takes no URL or id"),
    ],
)
def test_webhooks_flags_that_would_change_nothing_are_usage_errors(
    args: list[str], said: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """`webhooks list --state FAILED` listed every webhook (the flag is create's), and
    `--state PENDING` was offered by the CLI's message, then refused by the server (a
    user trial): both are refused at once, with no server needed."""
    from headwater._cli import main

    assert main([*args, "--server", "127.0.0.1:9"]) == 2
    assert capsys.readouterr().err.strip() == f"headwater: error: {said}"


def test_an_id_prefix_is_case_blind_and_an_ambiguous_one_names_its_matches() -> None:
    from headwater._client_ops import whole_id

    ids = ["0df2aa" + "0" * 26, "0df2bb" + "0" * 26, "1a" + "0" * 30]
    assert whole_id("0DF2A", lambda: ids, "webhook") == ids[0]
    with pytest.raises(ValueError) as info:
        whole_id("0df2", lambda: ids, "webhook")
    assert str(info.value) == (
        f"webhook id prefix '0df2' is ambiguous: 2 match ({ids[0]}, {ids[1]}): give more of the id"
    )
    assert whole_id("ff", lambda: ids, "webhook") == "ff"  # the server says it is unknown


def test_http_port_off_serves_no_web_ui_as_the_variable_and_file_take_it(tmp_path: Path) -> None:
    """``HEADWATER_HTTP_PORT=off`` and ``http_port = "off"`` turned the web UI off, the
    flag refused it: "argument --http-port: invalid int value: 'off'"."""
    server = subprocess.Popen(
        [sys.executable, "-m", "headwater._cli", "server", "--port", "0", "--http-port", "off",
         "--db", str(tmp_path / "hw.db")],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip
    try:
        assert server.stdout is not None
        for line in server.stdout:
            if "listening on" in line:
                break
        server.send_signal(signal.SIGTERM)
        rest, _ = server.communicate(timeout=60)
    finally:
        if server.poll() is None:
            server.kill()
            server.wait(30)
    assert server.returncode == 0 and "web UI" not in rest, rest
    bad = headwater_cli("server", "--http-port", "x", "--db", tmp_path / "hw.db")
    assert bad.returncode == 2 and "Traceback" not in bad.stderr
    assert "argument --http-port: must be a port 0..65535 or off, got 'x'" in bad.stderr


_flaky_calls: list[int] = []


@headwater.task(retries=1, retry_delay=0.2)
def _flaky_once() -> int:
    _flaky_calls.append(1)
    if len(_flaky_calls) == 1:
        raise ValueError("first attempt fails")
    return 1


@headwater.flow
def _flaky_flow() -> int:
    return _flaky_once()


def test_an_embedded_summarys_task_time_adds_up_its_attempts() -> None:
    """The summary's task time ran from a task run's first start to its end, the
    pause before its retry included (a user trial)."""
    _flaky_calls.clear()
    record = _flaky_flow.run().task_runs["_flaky_once"]
    assert record.attempt == 2 and len(record.attempts) == 2
    spans = [a.duration for a in record.attempts]
    assert record.run_seconds == sum(s for s in spans if s is not None)
    assert record.ended_at - record.started_at - record.run_seconds >= 0.19  # the retry's pause


NAPPING = """
import time
from headwater import flow, task

@task
def nap(i: int) -> int:
    print("napping", flush=True)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        time.sleep(0.02)
    return i

@flow
def slow() -> list[int]:
    return nap.map([1, 2])
"""


@pytest.mark.parametrize("stop", [signal.SIGINT, signal.SIGTERM])
def test_an_interrupted_embedded_run_is_cancelled_summarised_and_exits_130(
    tmp_path: Path, stop: signal.Signals
) -> None:
    """Ctrl-C or SIGTERM: the run is cancelled, its summary shown, exit 130 (the run
    raises FlowRunInterrupted now; the command takes the run from it), no traceback."""
    path = write(tmp_path, "napping.py", NAPPING)
    proc = subprocess.Popen(
        [sys.executable, "-m", "headwater._cli", "run", str(path)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        # (a SIGINT of its own: started in the background it could be ignored)
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    try:
        assert proc.stderr is not None
        for line in proc.stderr:  # the tasks' output goes to stderr
            if "napping" in line:
                break
        proc.send_signal(stop)
        out, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 130, err
    assert "Traceback" not in err
    assert re.search(r"flow run \w{8} of 'slow': CANCELLED in [\d.]+s \(2 CANCELLED", err), err
    assert out == ""


def test_a_database_server_that_does_not_answer_is_exit_3_try_again(
    capsys: pytest.CaptureFixture[str],
) -> None:
    """`prune` (or `tokens`) at a PostgreSQL URL where nothing listens exited 1, as for
    a refused password: a cron wrapper could not tell a moment's outage from a real
    error (a trial). Exit 3, as for a server that cannot be reached."""
    pytest.importorskip("psycopg")
    from headwater import _cli

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))  # bound, never listening: connections are refused
        url = f"postgresql://headwater@127.0.0.1:{sock.getsockname()[1]}/headwater"
        assert _cli.main(["prune", "--db", url, "--dry-run"]) == 3
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("headwater: error: cannot connect to the database")
