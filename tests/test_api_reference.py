"""The API reference (``make docs``) builds without a warning and documents the public
names, including those the lazy packages list only in their ``__init__.pyi``."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import pytest

ROOT = Path(__file__).resolve().parent.parent
BUILD = ROOT / "docs" / "build_api.py"


def _build_module() -> ModuleType:
    spec = importlib.util.spec_from_file_location("build_api", BUILD)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def reference(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The reference as ``make docs`` builds it (a subprocess: pdoc imports everything)."""
    out = tmp_path_factory.mktemp("api")
    done = subprocess.run(
        [sys.executable, str(BUILD), str(out)],
        capture_output=True,
        text=True,
        timeout=90,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    return out


def _page(reference: Path, module: str) -> str:
    return (reference / (module.replace(".", "/") + ".html")).read_text(encoding="utf-8")


@pytest.mark.parametrize(
    ("module", "names"),
    [
        # headwater, headwater.wire, .server and .tracing are lazy: their names load on
        # first access, so these are the ones a static look at the module would miss.
        ("headwater", ["flow", "task", "Client", "FlowRun", "remote_task", "DaskExecutor"]),
        ("headwater.wire", ["GraphSpec", "FailureInfo", "PayloadTransfer", "encode"]),
        ("headwater_runtime.server", ["start_server", "RunManager", "ServerSettings"]),
        ("headwater_runtime.tracing", ["configure_tracing", "RunTracer"]),
        ("headwater_runtime.engine", ["FlowRunEngine", "TaskRunRecord", "replay"]),
        ("headwater_runtime.embedded", ["EmbeddedRun", "ThreadExecutor", "Executor"]),
        ("headwater_runtime.store", ["Store", "SQLiteStore"]),
        ("headwater_runtime.dask", ["DaskExecutor", "run_attempt"]),
        ("headwater_runtime.execution", ["execute", "Skip"]),
    ],
)
def test_each_page_documents_its_public_names(
    reference: Path, module: str, names: list[str]
) -> None:
    page = _page(reference, module)
    for name in names:
        assert f'id="{name}"' in page, f"{module}.{name} is not in the reference"


def test_docstrings_are_rendered(reference: Path) -> None:
    page = _page(reference, "headwater")
    assert "state history and worker" in page  # Client.get's docstring


def test_every_public_client_method_is_on_its_page(reference: Path) -> None:
    """The operations methods (a mixin in a private module) were left out by pdoc:
    ``set_limit``, ``list_workers``, webhooks and ``retry`` had no entry (a trial)."""
    from headwater import Client

    page = _page(reference, "headwater")
    public = [n for n in dir(Client) if not n.startswith("_")]
    assert {"set_limit", "list_workers", "create_webhook", "retry"} <= set(public)
    missing = [n for n in public if f'id="Client.{n}"' not in page]
    assert missing == []


def test_only_the_known_pdoc_namedtuple_warning_is_tolerated() -> None:
    import headwater_runtime.engine  # noqa: F401  (the check looks classes up)

    build_api = _build_module()
    message = "Error parsing type annotation 'X' for headwater_runtime.engine.{}.__init__. "
    assert build_api._is_namedtuple_warning(message.format("StateEntry"))  # a NamedTuple
    assert not build_api._is_namedtuple_warning(message.format("TaskRunRecord"))
    assert not build_api._is_namedtuple_warning("Found 'flow' in headwater.__all__, but ...")


def test_the_build_reports_a_public_name_missing_from_its_page(tmp_path: Path) -> None:
    build_api = _build_module()
    (tmp_path / "pkg.html").write_text('<section id="present">', encoding="utf-8")
    assert build_api.missing_from_pages(tmp_path, {"pkg": ["present", "absent"]}) == ["pkg.absent"]
