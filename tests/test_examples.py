"""The examples run, as a user runs them, and give the results they promise."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.e2e

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


def run(args: list[str], cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(args, capture_output=True, text=True, timeout=60, cwd=cwd, check=False)


def test_quickstart_script(tmp_path: Path) -> None:
    proc = run([sys.executable, str(EXAMPLES / "quickstart.py")], cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert "quickstart: SUCCESS" in proc.stdout
    assert "(10 mapped runs)" in proc.stdout
    assert "'total': 135" in proc.stdout
    assert "'scaled': [0, 3, 6, 9, 12, 15, 18, 21, 24, 27]" in proc.stdout


def test_quickstart_with_the_cli(tmp_path: Path) -> None:
    proc = run(
        [sys.executable, "-m", "headwater._cli", "run", str(EXAMPLES / "quickstart.py")],
        cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout) == {"scaled": [3 * i for i in range(10)], "total": 135}


def test_etl_script(tmp_path: Path) -> None:
    proc = run([sys.executable, str(EXAMPLES / "etl.py")], cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert "etl: SUCCESS" in proc.stdout
    assert "rows written: 50" in proc.stdout
    # Batches 1 and 4 fail their first call and succeed on retry.
    assert "retried: ['transform[1]', 'transform[4]']" in proc.stdout


def test_etl_with_the_cli(tmp_path: Path) -> None:
    proc = run(
        [
            sys.executable,
            "-m",
            "headwater._cli",
            "run",
            str(EXAMPLES / "etl.py"),
            "--param",
            "batches=8",
        ],
        cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout) == 80
    assert "SUCCESS" in proc.stderr


def test_etl_without_retries_fails_and_still_cleans_up(tmp_path: Path) -> None:
    """With the flaky step's retries switched off the run fails, but cleanup runs."""
    code = (
        f"import sys; sys.path.insert(0, {str(EXAMPLES)!r}); import etl; "
        "etl.transform = etl.transform.with_options(retries=0); "
        "run = etl.etl.run(batches=3); "
        "print(run.state.name, run.task_run('cleanup').state.name, "
        "run.task_run('load').state.name)"
    )
    proc = run([sys.executable, "-c", code], cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split() == ["FAILED", "SUCCESS", "TRIGGER_FAILED"]


def test_the_node_worker_example_flow_says_it_needs_a_server(tmp_path: Path) -> None:
    """It runs for real in tests/test_e2e_polyglot.py; embedded it must refuse clearly."""
    example = EXAMPLES / "node_worker" / "flow.py"
    proc = run([sys.executable, "-m", "headwater._cli", "run", str(example)], cwd=tmp_path)
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr
    assert "'images.resize'" in proc.stderr and "--server HOST:PORT" in proc.stderr


def test_dask_pipeline_script(tmp_path: Path) -> None:
    """Map/reduce on a LocalCluster: progress per task run, then the dataset's summary,
    which must match the same statistics computed here with numpy."""
    import numpy as np

    proc = run([sys.executable, str(EXAMPLES / "dask_pipeline.py"), "3"], cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout
    assert "dask_pipeline: SUCCESS" in out
    # 1 seeds task + 3 generate + 3 summarise + combine, each reported as it finished.
    assert out.count(" SUCCESS\n") == 8, out
    assert "generate[2]" in out and "summarise[2]" in out and "combine" in out
    assert "600,000 rows in 3 partitions" in out
    data = np.concatenate(
        [
            np.random.default_rng(1000 + i).normal(loc=np.arange(4), scale=1.0, size=(200_000, 4))
            for i in range(3)
        ]
    )
    for j, name in enumerate("abcd"):
        assert f"  {name}: mean {data[:, j].mean():+.4f}  std {data[:, j].std():.4f}" in out, out
