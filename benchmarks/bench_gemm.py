"""Side-by-side benchmark of the CPU step's products: torch (MKL) against libxsmm (archsearch.gemm), one thread.

For every linear layer of the measured report rows, with 5 fused runs at batch 32, it times the three products a step
computes — forward, weight gradient, input gradient — each the way the step forms it with either backend (with
libxsmm the forward is W @ h^T, its transpose of h counted in), interleaved, best of ``--repeats``, and prints
GFLOP/s of both and their ratio; then the same for a batch transpose. This is where `archsearch.gemm`'s claim comes
from; the trainer's end-to-end gain is `bench_trainer.py` with and without ``ARCHSEARCH_GEMM=torch``.

    python benchmarks/bench_gemm.py [--rows 6,10,15,16] [--repeats 5] [--calls 200] [--json]
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from typing import Any

import torch
from bench_trainer import BATCH, RUNS, Parser, at_least, best_seconds, report_rows_arg  # beside this script

from archsearch.engine.native import gemm
from archsearch.models import FusedModel
from archsearch.study.report import report_rows


def products(w: torch.Tensor, h: torch.Tensor, g: torch.Tensor) -> dict[str, tuple[Callable[[], object], ...]]:
    """name -> (torch's way, libxsmm's way) of the step's three products of one layer."""
    return {
        "forward": (
            lambda: torch.bmm(h, w.transpose(1, 2)),
            lambda: gemm.mm(w, gemm.transpose(h)),
        ),
        "weight gradient": (
            lambda: gemm.torch_mm(g, h, trans_p=True),
            lambda: gemm.mm(g, h, trans_p=True),
        ),
        "input gradient": (lambda: gemm.torch_mm(g, w), lambda: gemm.mm(g, w)),
    }


def main() -> int:
    parser = Parser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--rows", type=report_rows_arg, default="6,10,15,16", help="report rows, comma-separated (a CNN: its head)"
    )
    parser.add_argument("--repeats", type=at_least(1), default=5)
    parser.add_argument("--calls", type=at_least(1), default=200)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    if not gemm.libxsmm_available():
        print("bench_gemm.py: libxsmm is not available here (Debian: libxsmm-dev), nothing to compare", file=sys.stderr)
        return 2
    torch.set_num_threads(1)  # libxsmm's kernels are single-threaded, as the workers that use them
    rows = report_rows()
    results: list[dict[str, Any]] = []
    shapes = []
    for row in args.rows:
        model = FusedModel(rows[row].spec, RUNS)
        shapes += [(row, w.shape[2], w.shape[1]) for w in model.fc_weights]
    for row, n_in, n_out in shapes:
        w, h = torch.randn(RUNS, n_out, n_in), torch.randn(RUNS, BATCH, n_in)
        g = torch.randn(RUNS, BATCH, n_out)
        flops = 2 * RUNS * BATCH * n_in * n_out
        for name, (torch_way, xsmm_way) in products(w, h, g).items():
            t_torch = best_seconds(torch_way, args.calls, args.repeats)
            t_xsmm = best_seconds(xsmm_way, args.calls, args.repeats)
            results.append(
                {
                    "row": row,
                    "layer": f"{n_in}->{n_out}",
                    "product": name,
                    "torch_gflops": flops / t_torch / 1e9,
                    "libxsmm_gflops": flops / t_xsmm / 1e9,
                    "ratio": t_torch / t_xsmm,
                }
            )
    x = torch.randn(RUNS, BATCH, 784)
    t_torch = best_seconds(lambda: x.transpose(1, 2).contiguous(), args.calls, args.repeats)
    t_xsmm = best_seconds(lambda: gemm.transpose(x), args.calls, args.repeats)
    transpose = {"shape": list(x.shape), "torch_us": t_torch * 1e6, "libxsmm_us": t_xsmm * 1e6}
    report = {"torch": torch.__version__, "threads": 1, "products": results, "transpose": transpose}
    if args.json:
        print(json.dumps(report, indent=2))
        return 0
    print("| row | layer | product | torch GFLOP/s | libxsmm GFLOP/s | ratio |")
    print("|---:|---|---|---:|---:|---:|")
    for r in results:
        print(
            f"| {r['row']} | {r['layer']} | {r['product']} | {r['torch_gflops']:.0f} | {r['libxsmm_gflops']:.0f} | "
            f"{r['ratio']:.2f}× |"
        )
    us = f"torch {transpose['torch_us']:.0f} µs, libxsmm {transpose['libxsmm_us']:.0f} µs"
    print(f"transpose of a (5, 32, 784) batch: {us}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
