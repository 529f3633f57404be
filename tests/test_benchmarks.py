"""The benchmark script keeps working (its numbers are measured, never asserted: timings are not tests)."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parent.parent / "benchmarks" / "bench_trainer.py"


@pytest.mark.slow
def test_benchmark_runs_and_reports_every_column() -> None:
    cmd = [
        sys.executable,
        str(SCRIPT),
        "--rows",
        "0",
        "--steps",
        "201",
        "--plain-steps",
        "5",
        "--repeats",
        "1",
        "--workers",
        "2",  # the workers layout and the workers estimate run too
        "--estimate-steps",
        "201",
        "--threads",
        "1",
        "--json",
    ]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    report = json.loads(proc.stdout)
    assert report["matmul_peak_gflops"] > 0 and report["full_reproduction_estimate_min"] > 0
    assert report["workers"] == 2 and report["full_reproduction_estimate_workers_min"] > 0
    (row,) = report["rows"]
    assert row["row"] == 0 and row["spec"] == "mlp:linear"
    keys = ("plain_steps_per_s", "archsearch_steps_per_s", "archsearch_workers_steps_per_s", "ratio", "gflops")
    for key in (*keys, "peak_pct", "executed_gflops"):
        assert row[key] > 0


def test_workers_estimate_schedules_rows_in_table_order() -> None:
    """The --workers estimate: each worker takes the next row when it is free, so a long last row finishes late."""
    spec = importlib.util.spec_from_file_location("bench_trainer", SCRIPT)
    assert spec is not None and spec.loader is not None
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    assert bench.makespan([3.0, 1.0, 1.0, 1.0], 2) == 3.0  # 3 | 1 + 1 + 1
    assert bench.makespan([1.0, 1.0, 5.0], 2) == 6.0  # the 5 waits for a worker: 1 + 5 | 1
    assert bench.makespan([2.0, 2.0], 1) == 4.0
