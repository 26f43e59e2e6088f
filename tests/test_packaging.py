"""Packaging: what a bare ``pip install headwater`` can do, and what the extras add."""

from __future__ import annotations

import os
import subprocess
import sys
import tomllib
from importlib.metadata import requires
from pathlib import Path

import pytest
from e2e_helpers import Cluster, start_server
from packaging.requirements import Requirement

from headwater import Client

TESTS = Path(__file__).resolve().parent
ROOT = TESTS.parent
ETL = str(TESTS.parent / "examples" / "etl.py")
BARE = [sys.executable, str(TESTS / "bare_python.py")]


def _bare(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*BARE, *args],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "PYTHONPATH": str(TESTS), **(env or {})},
        cwd=TESTS,
    )


def test_the_bare_requirements_are_grpc_protobuf_cloudpickle_pydantic_and_rich() -> None:
    """pydantic checks flow parameters (docs/flows.md), rich draws the CLI's progress and
    tables; nothing else joins the bare set."""
    bare = sorted(
        r.split(">")[0].split("=")[0].split("<")[0].strip()
        for r in requires("headwater") or []
        if "extra ==" not in r
    )
    assert bare == ["cloudpickle", "grpcio", "protobuf", "pydantic", "rich"]


def test_the_oldest_versions_venv_installs_exactly_the_declared_floors() -> None:
    """`make test-oldest` proves the floors only if requirements/oldest.txt pins every
    runtime requirement (the bare install and the server extra) at its floor."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    floors = {}
    for line in [*project["dependencies"], *project["optional-dependencies"]["server"]]:
        req = Requirement(line)
        (spec,) = req.specifier  # one lower bound each, no upper bound
        assert spec.operator == ">=", line
        floors[req.name] = spec.version
    pins = {}
    for raw in (ROOT / "requirements" / "oldest.txt").read_text().splitlines():
        line = raw.split("#")[0].strip()
        if line:
            req = Requirement(line)
            pins[req.name] = [s.version for s in req.specifier if s.operator == "=="]
    assert {name: pins.get(name) for name in floors} == {n: [v] for n, v in floors.items()}


def test_python_dash_m_headwater_is_the_cli() -> None:
    out = subprocess.run(
        [sys.executable, "-m", "headwater", "--version"],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    assert out.stdout.startswith("headwater ")


def test_a_bare_install_runs_a_flow_embedded() -> None:
    done = _bare("headwater", "run", ETL, "-p", "batches=3")
    assert done.returncode == 0, done.stderr
    assert "SUCCESS" in done.stderr


def test_a_bare_install_refuses_the_server_naming_the_extra() -> None:
    done = _bare("headwater", "server", "--port", "0")
    assert done.returncode == 2
    assert "pip install 'headwater[server]'" in done.stderr
    assert "Traceback" not in done.stderr


def test_a_bare_install_asked_to_trace_names_the_extra() -> None:
    flow = ETL
    done = _bare("headwater", "run", flow, env={"OTEL_TRACES_EXPORTER": "console"})
    assert done.returncode == 2
    assert "pip install 'headwater[otel]'" in done.stderr


@pytest.mark.e2e
def test_a_bare_install_submits_to_a_server_and_runs_a_worker(tmp_path: Path) -> None:
    """The server runs with its extra; the worker and the client are bare installs."""
    env = {**os.environ, "PYTHONPATH": str(TESTS)}
    cluster = Cluster(env)
    try:
        _, address = start_server(cluster, tmp_path / "hw.db")
        worker = cluster.spawn(
            [*BARE, "headwater", "worker", "--server", address, "--module", ETL],
            "stderr",
        )
        worker.wait_line("connected to")
        submit = cluster.spawn(
            [
                *BARE,
                "headwater",
                "run",
                ETL,
                "--server",
                address,
                "-p",
                "batches=2",
            ],
            "stdout",
        )
        assert submit.popen.wait(120) == 0, submit.other
        with Client(address) as client:
            (run,) = client.list_runs(flow_name="etl")
            assert run.state.name == "SUCCESS"
    finally:
        cluster.stop()


def test_the_readme_documents_every_environment_variable() -> None:
    """Settings are read in one place (headwater.wire.VARIABLES) and listed in the
    README's table, with the same words."""
    from headwater.wire import VARIABLES

    readme = (TESTS.parent / "README.md").read_text()
    for name, what in VARIABLES.items():
        assert f"| `{name}` | {what} |" in readme, name


@pytest.mark.e2e
def test_the_wheel_ships_the_stubs_the_lazy_packages_read_and_the_license(
    tmp_path: Path,
) -> None:
    """Packages that load lazily read their ``__init__.pyi`` at run time: a wheel
    without it would install and then fail on import."""
    import zipfile

    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "-w", str(tmp_path), "."],
        cwd=TESTS.parent,
        check=True,
        timeout=300,
    )
    (wheel,) = tmp_path.glob("headwater-*.whl")
    with zipfile.ZipFile(wheel) as archive:
        names = set(archive.namelist())
        lazy = [
            n for n in names if n.endswith("/__init__.py") and b"attach_stub(" in archive.read(n)
        ]
    assert {"headwater/__init__.py", "headwater/wire/__init__.py"} <= set(lazy)
    for init in lazy:
        assert init + "i" in names, f"{init}i is missing from the wheel"
    assert "headwater/py.typed" in names and "headwater_runtime/py.typed" in names
    assert any(n.endswith("licenses/LICENSE") for n in names)
