"""Side-by-side benchmark of the engine, every measurement in processes of its own, interleaved in one run:

(a) this checkout's trainer against an earlier revision's (``--baseline DIR``, a checkout of it), model-steps/s on
    the same report rows, in reproduce's default layout (one single-threaded worker per core, all at once) and in
    one process on every core;
(b) the general autograd step on the same rows, in both layouts (what any spec the accelerators do not know gets);
(c) the number a user sees: the wall time of ``archsearch train SPEC --seeds 42,...,46 --epochs 1`` (a whole process:
    start-up, data, compiling nothing when the kernels are cached, 1,875 steps of 5 fused runs, final metrics) against
    the textbook loop's whole process for the same 5 x 1,875 steps (torchvision's dataset through a DataLoader, one
    model per run); with libxsmm where it is installed, and with ``ARCHSEARCH_GEMM=torch``, what an install by pip
    alone gets.

    python benchmarks/bench_engine.py [--rows 6,10,15,16] [--baseline DIR] [--whole-rows 6,15] [--repeats 3] [--json]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
PROBE = HERE / "_probe.py"
sys.path.insert(0, str(ROOT))

from benchmarks.bench_trainer import Parser, at_least, report_rows_arg  # noqa: E402


def _env(tree: Path, **extra: str) -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(tree), "THP_MEM_ALLOC_ENABLE": "1", **extra}


def _probe(tree: Path, *args: str, **env: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, str(PROBE), *args], cwd=tempfile.gettempdir(), env=_env(tree, **env),
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip


def _result(proc: subprocess.Popen[str]) -> dict[str, Any]:
    out, err = proc.communicate()
    if proc.returncode != 0:
        raise SystemExit(f"a measurement failed:\n{err.strip()[-2000:]}")
    result: dict[str, Any] = json.loads(out.strip().splitlines()[-1])
    return result


def rate(tree: Path, row: int, steps: int, workers: int, threads: int, autograd: bool = False) -> float:
    """Model-steps/s of ``workers`` processes training report row ``row`` at once (``threads`` each), summed."""
    mode = ["autograd"] if autograd else []
    procs = [_probe(tree, "rate", str(row), str(steps), str(threads), *mode) for _ in range(workers)]
    return sum(float(_result(p)["rate"]) for p in procs)


def whole_train(spec: str, **env: str) -> float:
    """Wall seconds of ``archsearch train SPEC --seeds 42..46 --epochs 1`` in this checkout."""
    start = time.perf_counter()
    cmd = [sys.executable, "-m", "archsearch", "train", spec, "--seeds", "42,43,44,45,46", "--epochs", "1", "--json"]
    proc = subprocess.run(cmd, cwd=tempfile.gettempdir(), env=_env(ROOT, **env), capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"archsearch train failed:\n{proc.stderr.strip()[-2000:]}")
    return time.perf_counter() - start


def main() -> int:
    parser = Parser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=report_rows_arg, default="6,10,15,16", help="report rows, comma-separated")
    parser.add_argument("--baseline", type=Path, default=None, help="a checkout of the earlier revision")
    parser.add_argument("--whole-rows", type=report_rows_arg, default="6,15", help="rows of the whole-process figure")
    parser.add_argument("--no-whole", action="store_true", help="skip the whole-process figure")
    parser.add_argument("--steps", type=at_least(201), default=600, help="steps per measurement (200 warm up)")
    parser.add_argument("--repeats", type=at_least(1), default=3, help="measurements of each kind (medians)")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    if args.baseline is not None and not (args.baseline / "archsearch").is_dir():
        parser.error(f"argument --baseline: {args.baseline} holds no archsearch package")
    sys.path.insert(0, str(ROOT))
    from archsearch.engine import usable_cores
    from archsearch.study.report import report_rows

    cores = usable_cores()
    trees = {"after": ROOT, **({"before": args.baseline} if args.baseline else {})}
    rows: list[dict[str, Any]] = []
    for row in args.rows:
        samples: dict[str, list[float]] = {}
        for _ in range(args.repeats):  # interleaved: a noisy moment hits every kind alike
            for name, tree in trees.items():
                samples.setdefault(f"{name}_workers", []).append(rate(tree, row, args.steps, cores, 1))
                samples.setdefault(f"{name}_process", []).append(rate(tree, row, args.steps, 1, cores))
            samples.setdefault("autograd_workers", []).append(rate(ROOT, row, args.steps, cores, 1, autograd=True))
            samples.setdefault("autograd_process", []).append(rate(ROOT, row, args.steps, 1, cores, autograd=True))
        medians = {key: statistics.median(values) for key, values in samples.items()}
        rows.append({"row": row, "spec": str(report_rows()[row].spec), **medians, "samples": samples})
        if not args.json:
            print(f"row {row}: " + ", ".join(f"{k} {v:.0f}" for k, v in medians.items()), file=sys.stderr)
    whole: list[dict[str, Any]] = []
    for row in [] if args.no_whole else args.whole_rows:
        spec = str(report_rows()[row].spec)
        times: dict[str, list[float]] = {"archsearch": [], "archsearch_torch_products": [], "plain": []}
        for _ in range(max(1, args.repeats - 1)):
            times["archsearch"].append(whole_train(spec))
            times["archsearch_torch_products"].append(whole_train(spec, ARCHSEARCH_GEMM="torch"))
            times["plain"].append(float(_result(_probe(ROOT, "plain", str(row), "5"))["seconds"]))
        m = {k: statistics.median(v) for k, v in times.items()}
        whole.append({"row": row, "spec": spec, "seconds": m, "samples": times,
                      "ratio": m["plain"] / m["archsearch"],
                      "ratio_torch_products": m["plain"] / m["archsearch_torch_products"]})  # fmt: skip
        if not args.json:
            print(f"whole process row {row}: {m}", file=sys.stderr)
    report = {"cores": cores, "steps": args.steps, "repeats": args.repeats, "rows": rows, "whole_process": whole}
    if args.json:
        print(json.dumps(report, indent=2))
        return 0
    before = "before" in trees
    print(f"model-steps/s, medians of {args.repeats}; {cores} single-threaded workers, or 1 process on {cores} threads")
    head = "| row | spec | " + ("before, workers | before, 1 process | " if before else "")
    print(head + "after, workers | after, 1 process | autograd, workers | autograd, 1 process |")
    for r in rows:
        cells = [f"{r['before_workers']:.0f}", f"{r['before_process']:.0f}"] if before else []
        cells += [f"{r[k]:.0f}" for k in ("after_workers", "after_process", "autograd_workers", "autograd_process")]
        if before:
            cells[2] += f" ({r['after_workers'] / r['before_workers']:.2f}x)"
            cells[3] += f" ({r['after_process'] / r['before_process']:.2f}x)"
        print(f"| {r['row']} | `{r['spec']}` | " + " | ".join(cells) + " |")
    print("whole process, seconds (archsearch train --seeds 42..46 --epochs 1 vs the plain loop's 5 x 1,875 steps):")
    for w in whole:
        s = w["seconds"]
        print(f"| {w['row']} | `{w['spec']}` | plain {s['plain']:.1f} | archsearch {s['archsearch']:.1f} "
              f"({w['ratio']:.1f}x) | without libxsmm {s['archsearch_torch_products']:.1f} "
              f"({w['ratio_torch_products']:.1f}x) |")  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
