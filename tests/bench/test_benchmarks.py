"""The benchmark script keeps working (its numbers are measured, never asserted: timings are not tests)."""

from __future__ import annotations

import importlib.util
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "bench_trainer.py"
GPU_CHECKS = SCRIPT.with_name("gpu_checks.sh")


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
        "--estimate-rows",
        "0,16",  # one MLP and the CNN: the estimate's plumbing, not all 17 rows' minutes
        "--threads",
        "1",
        "--json",
    ]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    report = json.loads(proc.stdout)
    assert report["matmul_peak_gflops"] > 0 and report["full_reproduction_estimate_min"] > 0
    assert report["workers"] == 2 and report["full_reproduction_estimate_workers_min"] > 0
    assert report["estimate_rows"] == [0, 16]
    (row,) = report["rows"]
    assert row["row"] == 0 and row["spec"] == "mlp:linear"
    keys = ("plain_steps_per_s", "archsearch_steps_per_s", "archsearch_workers_steps_per_s", "ratio", "gflops")
    for key in (*keys, "peak_pct", "executed_gflops"):
        assert row[key] > 0


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--estimate-steps", "200"], "argument --estimate-steps: must be at least 201, got 200"),
        (["--rows", "6,17"], "argument --rows: report rows are 0 to 16, comma-separated; got '6,17'"),
        (["--rows", "six"], "argument --rows: report rows are 0 to 16, comma-separated; got 'six'"),
        (["--estimate-rows", "0,20"], "argument --estimate-rows: report rows are 0 to 16, comma-separated; got '0,20'"),
        (["--workers", "0"], "argument --workers: must be at least 1, got 0"),
        (["--device", "nowhere"], "argument --device: "),
    ],
)
def test_bad_arguments_get_one_line_and_exit_code_2(args: list[str], message: str) -> None:
    """Refused before anything is loaded or measured: --estimate-steps 0 used to end in an AssertionError (a traceback)
    after the rows had been measured."""
    proc = subprocess.run([sys.executable, str(SCRIPT), *args], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and proc.stdout == ""
    assert proc.stderr.count("\n") == 1 and proc.stderr.startswith(f"bench_trainer.py: error: {message}")
    assert "Traceback" not in proc.stderr


def test_workers_estimate_schedules_rows_in_table_order() -> None:
    """The --workers estimate: each worker takes the next row when it is free, so a long last row finishes late."""
    spec = importlib.util.spec_from_file_location("bench_trainer", SCRIPT)
    assert spec is not None and spec.loader is not None
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    assert bench.makespan([3.0, 1.0, 1.0, 1.0], 2) == 3.0  # 3 | 1 + 1 + 1
    assert bench.makespan([1.0, 1.0, 5.0], 2) == 6.0  # the 5 waits for a worker: 1 + 5 | 1
    assert bench.makespan([2.0, 2.0], 1) == 4.0


@pytest.mark.slow
def test_gpu_checks_script_runs_its_four_stages(tmp_path: Path) -> None:
    """The GPU checks' plumbing (tests, benchmark, fused trials, timed reproduction), on the CPU with tiny settings."""
    env = {
        **os.environ,
        "PY": sys.executable,
        "DEVICE": "cpu",
        "OUT": str(tmp_path),
        "ROWS": "0",
        "STEPS": "201",
        "PLAIN_STEPS": "5",
        "EST_STEPS": "201",
        "EST_ROWS": "0",
        "REPEATS": "1",
        "REPRO_ARGS": "--models 0 --runs 1 --epochs 1",
        "SEARCH_MODELS": "9.7k",
        "SEARCH_K": "1,2",
        "SEARCH_STEPS": "3",
    }
    proc = subprocess.run(["bash", str(GPU_CHECKS)], env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    log = (tmp_path / "run.log").read_text()
    # no CUDA here: the GPU tests are collected and all skipped for that reason (no failure, no collection error)
    assert re.search(r"^\d+ skipped, \d+ deselected in ", log, re.M) and "needs a CUDA device" in log
    assert "reproduce exit 0" in log
    bench = json.loads((tmp_path / "bench.json").read_text())
    assert bench["device"] == "cpu" and bench["rows"][0]["archsearch_steps_per_s"] > 0
    assert bench["estimate_rows"] == [0]
    search = json.loads((tmp_path / "search.json").read_text())
    assert search["trials"] and {(r["contender"], r["k"]) for r in search["rate"]} == {
        (c, k) for c in ("archsearch", "fused") for k in (1, 2)
    }
    assert re.search(r"^9\.7k\s+K=2 fused .* of one trial at a time$", log, re.M)
    repro = json.loads((tmp_path / "repro.json").read_text())
    assert [r["index"] for r in repro["rows"]] == [0] and repro["rows"][0]["n_runs"] == 1
    assert (tmp_path / "repro.db").is_file() and (tmp_path / "report" / "REPORT.md").is_file()


def test_gemm_benchmark_compares_both_backends_on_every_product() -> None:
    from archsearch.engine.native import gemm

    if not gemm.libxsmm_available():
        pytest.skip("no libxsmm")
    script = SCRIPT.with_name("bench_gemm.py")
    cmd = [sys.executable, str(script), "--rows", "6", "--calls", "3", "--repeats", "1", "--json"]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    report = json.loads(proc.stdout)
    products = report["products"]
    assert [(p["layer"], p["product"]) for p in products] == [
        (layer, product)
        for layer in ("784->128", "128->10")
        for product in ("forward", "weight gradient", "input gradient")
    ]
    assert all(p["torch_gflops"] > 0 and p["libxsmm_gflops"] > 0 and p["ratio"] > 0 for p in products)
    assert report["transpose"]["libxsmm_us"] > 0
    bad = subprocess.run([sys.executable, str(script), "--rows", "99"], capture_output=True, text=True, timeout=120)
    assert bad.returncode == 2 and bad.stderr.startswith("bench_gemm.py: error: argument --rows: report rows are 0")
    assert bad.stderr.count("\n") == 1


@pytest.mark.slow
def test_engine_benchmark_measures_both_trees_and_autograd() -> None:
    """Plumbing only (timings are never asserted): this checkout as its own baseline, one row, one repeat."""
    script = SCRIPT.with_name("bench_engine.py")
    root = SCRIPT.parent.parent
    cmd = [sys.executable, str(script), "--rows", "0", "--steps", "201", "--repeats", "1", "--baseline", str(root),
           "--no-whole", "--json"]  # fmt: skip
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr
    (row,) = json.loads(proc.stdout)["rows"]
    for key in ("before_workers", "before_process", "after_workers", "after_process", "autograd_workers"):
        assert row[key] > 0
    bad = subprocess.run([sys.executable, str(script), "--baseline", "/nonexistent"], capture_output=True, text=True)
    assert bad.returncode == 2 and "holds no archsearch package" in bad.stderr


@pytest.mark.slow
def test_search_benchmark_measures_every_contender_and_k() -> None:
    """Plumbing only (timings are never asserted): one model, K = 1 and 2, a few steps, one repeat."""
    script = SCRIPT.with_name("bench_search.py")
    cmd = [sys.executable, str(script), "--models", "9.7k", "--k", "1,2", "--steps", "4", "--warmup", "2",
           "--repeats", "1", "--threads", "1", "--json"]  # fmt: skip
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    report = json.loads(proc.stdout)
    assert report["models"]["9.7k"]["params"] == 9714 and report["models"]["9.7k"]["recipe"]["optimizer"] == "sgd"
    rows = {(r["contender"], r["k"]): r for r in report["rate"]}
    assert set(rows) == {(c, k) for c in ("textbook", "tuned", "archsearch", "fused") for k in (1, 2)}
    for (_, k), row in rows.items():
        assert row["model"] == "9.7k" and row["rate"] > 0 and len(row["samples"]) == 1
        assert row["ratio"] == pytest.approx(row["rate"] / rows[("tuned", k)]["rate"])
    assert report["whole"] == []
    bad = subprocess.run([sys.executable, str(script), "--models", "9.7k,99k"], capture_output=True, text=True)
    assert bad.returncode == 2 and bad.stderr.startswith("bench_search.py: error: argument --models: models are ")


@pytest.mark.slow
def test_search_benchmark_measures_fused_trials_against_one_at_a_time() -> None:
    """``--trials`` without the plain loops (the GPU check's form, here on the CPU): each K against K = 1."""
    script = SCRIPT.with_name("bench_search.py")
    cmd = [sys.executable, str(script), "--models", "9.7k", "--k", "1,2", "--steps", "4", "--repeats", "1",
           "--threads", "1", "--trials", "--contenders", "archsearch", "--json"]  # fmt: skip
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    report = json.loads(proc.stdout)
    assert report["trials"] is True and report["device"] == "cpu"
    one, two = sorted(report["rate"], key=lambda r: r["k"])
    assert (one["k"], two["k"]) == (1, 2) and {one["contender"], two["contender"]} == {"archsearch"}
    assert one["baseline"] == two["baseline"] == "K=1" and one["ratio"] == 1.0
    assert two["ratio"] == pytest.approx(two["rate"] / one["rate"])
    for args, message in [
        (["--device", "cuda"], "argument --device: the plain loops run on the CPU only"),
        (["--whole", "--trials"], "argument --whole: the whole-process figure"),
        (["--contenders", "tuned,best"], "argument --contenders: contenders are "),
    ]:
        bad = subprocess.run([sys.executable, str(script), *args], capture_output=True, text=True)
        assert bad.returncode == 2 and bad.stderr.startswith(f"bench_search.py: error: {message}"), bad.stderr
