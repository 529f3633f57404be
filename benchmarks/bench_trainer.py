"""Side-by-side benchmark: the plain PyTorch loop against the archsearch trainer, in one run, on this machine.

(a) plain: torchvision ``FashionMNIST`` + ``ToTensor`` through a ``DataLoader`` (batch 32, shuffled), one model per
    run, default ``torch.optim.AdamW`` — the way tutorials and Optuna's PyTorch example train.
(b) archsearch: the 5 runs of a report row fused into one model, whole-dataset tensors, fused AdamW (on a GPU also
    without CUDA graphs, to show what replaying the captured step gains).

For each measured row it prints model-steps per second of both, their ratio, the archsearch trainer's achieved
GFLOP/s and its share of the matrix-multiply peak measured in the same run, and finally the estimated wall time of the
full reproduction (17 rows × 5 runs × 50 epochs), from a short measurement of every row (``--estimate-rows``: of
some rows only, as the tests do to keep the plumbing check short).

    python benchmarks/bench_trainer.py [--rows 6,10,15,16] [--repeats 3] [--workers N] [--threads N] [--device D]
                                       [--json]

On a GPU both loops run there (the plain loop moves each batch to the device, as tutorials do) and the peak is a
float32 matmul's on the GPU (TF32 off, as in training).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from collections.abc import Callable
from functools import partial
from typing import Any, NoReturn

import torch
from torch.nn import functional as F

from archsearch.core.protocol import Protocol
from archsearch.data import Dataset, default_data_dir, ensure_raw_files, load_dataset
from archsearch.engine import StepPlan, default_device, torch_threads, train, usable_cores, use_huge_pages
from archsearch.engine.native import gemm
from archsearch.engine.optim import AdamW
from archsearch.models import Conv, FusedModel, build_model, init_model, macs_per_sample
from archsearch.study.report import report_rows
from archsearch.study.workers import default_workers

RUNS, EPOCHS, BATCH, TRAIN_SIZE = 5, 50, 32, 60000


def sync(device: torch.device) -> None:
    """Wait for the device's queued kernels: a GPU timing must end when the work ends, not when it is queued."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def matmul_peak(device: torch.device, seconds: float = 2.0) -> float:
    """Best observed GFLOP/s of a float32 n×n matmul: the machine's practical peak for these kernels."""
    n, calls = (8192, 10) if device.type == "cuda" else (2048, 1)
    a, b = torch.randn(n, n, device=device), torch.randn(n, n, device=device)
    torch.mm(a, b)
    best, end = 0.0, time.perf_counter() + seconds
    while time.perf_counter() < end:
        sync(device)
        t = time.perf_counter()
        for _ in range(calls):
            torch.mm(a, b)
        sync(device)
        best = max(best, calls * 2 * n**3 / (time.perf_counter() - t) / 1e9)
    return best


def plain_steps_per_s(spec: Any, steps: int, device: torch.device) -> float:
    """Model-steps per second of the textbook loop (one model)."""
    from torch.utils.data import DataLoader
    from torchvision import datasets, transforms

    ds = datasets.FashionMNIST(str(default_data_dir()), train=True, download=False, transform=transforms.ToTensor())
    loader = DataLoader(ds, batch_size=BATCH, shuffle=True, generator=torch.Generator().manual_seed(0))
    model = init_model(build_model(spec), torch.Generator().manual_seed(0)).to(device)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-4, weight_decay=1e-3)
    it = iter(loader)
    for i in range(steps + 20):  # 20 warm-up steps
        if i == 20:
            sync(device)
            start = time.perf_counter()
        x, y = next(it)
        loss = F.cross_entropy(model(x.to(device)), y.to(device))
        opt.zero_grad()
        loss.backward()
        opt.step()
    sync(device)
    return steps / (time.perf_counter() - start)


def fused_timing(
    spec: Any,
    steps: int,
    data: Dataset,
    full_eval: bool = False,
    cuda_graphs: bool = True,
    plan: StepPlan | None = None,
) -> tuple[float, float]:
    """The archsearch trainer with RUNS runs fused, one epoch of ``steps`` batches, on the device ``data`` is on.

    Returns (model-steps per second over the steps after the 200th, in steady state like the plain loop's timing;
    seconds the run spent outside those steady steps: setup, evaluation, final metrics). With ``full_eval`` the epoch's
    evaluation is on the whole 10,000-image test set, as in a reproduction.
    """
    assert steps > 200
    x, y = data.train_x, data.train_y
    evals = data.evals if full_eval else {"test": (data.evals["test"][0][:BATCH], data.evals["test"][1][:BATCH])}
    marks: dict[int, float] = {}

    def mark(done: int, total: int) -> None:
        sync(x.device)
        marks[done] = time.perf_counter()

    sub = Dataset(x[: steps * BATCH], y[: steps * BATCH], evals)
    result = train(
        spec, list(range(RUNS)), Protocol(epochs=1), sub, threads=torch.get_num_threads(), on_step=mark,
        cuda_graphs=cuda_graphs, plan=plan,
    )  # fmt: skip
    rate = RUNS * (steps - 200) / (marks[steps] - marks[200])
    return rate, result.seconds - RUNS * steps / rate


def _worker_timing(args: tuple[int, int, bool, str]) -> tuple[float, float]:
    """``fused_timing`` of report row ``row`` in a single-threaded pool process, as a ``--workers`` process trains."""
    row, steps, full_eval, device = args
    torch.set_num_threads(1)
    return fused_timing(report_rows()[row].spec, steps, _worker_data(device), full_eval)


_DATA: Dataset | None = None


def _worker_data(device: str) -> Dataset:
    global _DATA
    if _DATA is None:
        _DATA = load_dataset(device=device)
    return _DATA


def _warm_worker(device: str) -> int:
    return len(_worker_data(device).train_y)


def row_seconds(rate: float, outside: float) -> float:
    """Seconds a whole row takes (RUNS runs, EPOCHS epochs) at ``rate`` model-steps/s, plus ``outside`` per epoch."""
    return EPOCHS * (RUNS * (TRAIN_SIZE // BATCH) / rate + outside)


def makespan(seconds: list[float], workers: int) -> float:
    """Wall time of rows taken in table order by ``workers`` processes, each taking the next row as soon as it is free
    (as reproduce's workers claim queued trials)."""
    free = [0.0] * workers
    for s in seconds:
        free[free.index(min(free))] += s
    return max(free)


def workers_steps_per_s(pool: Any, row: int, steps: int, workers: int, device: str) -> float:
    """Aggregate model-steps/s of ``workers`` single-threaded processes training at once (``--workers N``)."""
    return float(sum(rate for rate, _ in pool.map(_worker_timing, [(row, steps, False, device)] * workers)))


def executed_flops_per_sample(spec: Any) -> int:
    """FLOPs one training sample really costs: 6·MAC minus the first layer's input gradient, which nobody computes."""
    first = spec.layers[0] if spec.layers else None
    shape = spec.shapes()[0]
    if isinstance(first, Conv):
        first_macs = first.macs(shape)
    else:
        first_macs = shape.features * (spec.hidden[0] if spec.hidden else 10)
    return 6 * macs_per_sample(spec) - 2 * first_macs


def best_seconds(fn: Any, calls: int = 50, repeats: int = 3) -> float:
    """Fastest of ``repeats`` timings of ``calls`` calls, per call: the kernel's rate with warm caches."""
    fn()
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        for _ in range(calls):
            fn()
        best = min(best, (time.perf_counter() - start) / calls)
    return best


def kernel_ceiling(spec: Any, device: torch.device) -> float | None:
    """Model-steps/s one single-threaded CPU worker would reach if an MLP step were nothing but its kernels.

    Times, with warm caches, exactly the kernels a step runs (per layer the forward product, the weight-gradient
    product and, after the first layer, the input-gradient product — through libxsmm where the workers use it
    (archsearch.gemm), else torch's ``baddbmm``/``bmm`` —; then the fused AdamW over all parameters) and adds them up:
    no Python, no activations, no transposes, no data gathering. The trainer cannot beat this on this machine.
    """
    if spec.kind == "cnn" or device.type != "cpu":
        return None
    with torch_threads(1):
        model = FusedModel(spec, RUNS)
        seconds, rows = 0.0, BATCH
        xsmm = gemm.libxsmm_available()
        mm = gemm.mm if xsmm else gemm.torch_mm
        for i, (w, b) in enumerate(zip(model.fc_weights, model.fc_biases, strict=True)):
            w, b = w.detach().normal_(), b.detach()
            h, g = torch.randn(RUNS, rows, w.shape[2]), torch.randn(RUNS, rows, w.shape[1])
            if xsmm:  # the forward as the step forms it with libxsmm: W @ h^T
                seconds += best_seconds(partial(gemm.mm, w, h.transpose(1, 2).contiguous()))
            else:
                seconds += best_seconds(partial(torch.baddbmm, b, h, w.transpose(1, 2)))
            seconds += best_seconds(partial(mm, g, h, trans_p=True))
            if i > 0:
                seconds += best_seconds(partial(mm, g, w))
        params = [p.detach() for p in model.parameters()]
        for p in params:
            p.grad = torch.randn_like(p) * 1e-3
        opt = AdamW(params, lr=3e-4, weight_decay=1e-3)
        seconds += best_seconds(opt.step, calls=20)
        return RUNS / seconds


class Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        """Bad input: one line and exit code 2, as the archsearch CLI answers (argparse would add its usage)."""
        self.exit(2, f"{self.prog}: error: {message}\n")


def at_least(low: int) -> Callable[[str], int]:
    def parse(text: str) -> int:
        value = int(text)  # argparse turns the ValueError into "invalid value" with the option's name
        if value < low:
            raise argparse.ArgumentTypeError(f"must be at least {low}, got {value}")
        return value

    parse.__name__ = "int"
    return parse


def report_rows_arg(text: str) -> list[int]:
    try:
        rows = [int(s) for s in text.split(",")]
    except ValueError:
        rows = [-1]
    if not all(0 <= r < len(report_rows()) for r in rows):
        last = len(report_rows()) - 1
        raise argparse.ArgumentTypeError(f"report rows are 0 to {last}, comma-separated; got {text!r}")
    return rows


def main() -> int:
    parser = Parser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=report_rows_arg, default="6,10,15,16", help="report rows, comma-separated")
    # the first 200 steps of a timing are its warm-up, so a timing needs more
    parser.add_argument("--steps", type=at_least(201), default=600, help="steps per archsearch run (200 warm up)")
    parser.add_argument("--plain-steps", type=at_least(1), default=300, help="timed steps per plain-loop measurement")
    parser.add_argument("--repeats", type=at_least(1), default=3, help="measurements of each kind per row (medians)")
    parser.add_argument("--estimate-steps", type=at_least(201), default=400, help="steps per row, full estimate")
    parser.add_argument(
        "--estimate-rows", type=report_rows_arg, default=None, help="rows the estimate covers (default: all 17)"
    )
    parser.add_argument("--threads", type=at_least(1), default=None)
    parser.add_argument(
        "--workers",
        type=at_least(1),
        default=None,
        help="processes for the workers layout; default: cores (CPU), 1 (GPU)",
    )
    parser.add_argument("--device", default=None, help="torch device; default: CUDA if available")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    try:
        device = torch.device(args.device) if args.device else default_device()
        if device.type == "cuda" and not torch.cuda.is_available():
            raise RuntimeError("CUDA is not available here")
    except RuntimeError as exc:
        parser.error(f"argument --device: {exc}")
    use_huge_pages()  # as the CLI does, before any tensor exists (the spawned workers inherit it)
    if args.threads:
        torch.set_num_threads(args.threads)
    gpu = device.type == "cuda"
    if args.workers is None:  # one GPU time-slices between processes: 4 workers measured 0.94-1.07x of one on an H200
        args.workers = 1 if gpu else usable_cores()
    ensure_raw_files(default_data_dir())
    data = load_dataset(device=device)
    rows = report_rows()
    peak = matmul_peak(device)
    measured: list[dict[str, Any]] = []
    import multiprocessing as mp

    with mp.get_context("spawn").Pool(args.workers) as pool:
        pool.map(_warm_worker, [str(device)] * args.workers)  # start-up (imports, data) must not overlap a measurement
        for i in args.rows:
            spec = rows[i].spec
            plains, fuseds, eagers, parallels = [], [], [], []
            for _ in range(args.repeats):  # interleaved, so that a noisy moment hits every kind alike
                plains.append(plain_steps_per_s(spec, args.plain_steps, device))
                fuseds.append(fused_timing(spec, args.steps, data)[0])
                if gpu:
                    eagers.append(fused_timing(spec, args.steps, data, cuda_graphs=False)[0])
                if args.workers > 1:
                    parallels.append(workers_steps_per_s(pool, i, args.steps, args.workers, str(device)))
            plain, fused = statistics.median(plains), statistics.median(fuseds)
            parallel = statistics.median(parallels) if parallels else fused
            best = max(fused, parallel)
            ceiling = kernel_ceiling(spec, device)
            ceiling_workers = ceiling * max(args.workers, 1) if ceiling else None
            gflops = best * 6 * macs_per_sample(spec) * BATCH / 1e9  # the usual count: forward 2·MAC, backward 4·MAC
            executed = best * executed_flops_per_sample(spec) * BATCH / 1e9
            measured.append(
                {
                    "row": i,
                    "spec": str(spec),
                    "plain_steps_per_s": plain,
                    "archsearch_steps_per_s": fused,
                    "archsearch_workers_steps_per_s": parallel,
                    # GPU only: the same trainer launching every kernel from Python instead of replaying a CUDA graph
                    "archsearch_no_graphs_steps_per_s": statistics.median(eagers) if eagers else None,
                    "ratio": fused / plain,
                    "ratio_best": best / plain,
                    "gflops": gflops,
                    "peak_pct": 100 * gflops / peak,
                    "executed_gflops": executed,
                    "executed_peak_pct": 100 * executed / peak,
                    "samples": {"plain": plains, "archsearch": fuseds, "no_graphs": eagers, "workers": parallels},
                    # what the kernels alone allow (MLPs): N single-threaded workers each at kernel_ceiling()
                    "kernel_ceiling_steps_per_s": ceiling_workers,
                    "kernel_ceiling_ratio": ceiling_workers / plain if ceiling_workers else None,
                }
            )
            if not args.json:
                m = measured[-1]
                print(
                    f"row {i:2d} {m['spec']:34s} plain {plain:6.0f}/s  archsearch {fused:6.0f}/s "
                    f"({args.workers} workers {parallel:6.0f}/s)  x{m['ratio_best']:5.1f}  {gflops:6.1f} GFLOP/s = "
                    f"{m['peak_pct']:4.1f}% of peak",
                    file=sys.stderr,
                )
        # Full reproduction: every row's steady rate plus, per epoch, everything outside the steps (evaluation on
        # the 10,000 test images, and setup and final metrics counted every epoch though they happen once: an
        # overestimate).
        # With --workers N, each row measured in N single-threaded workers at once (as they share the machine in a
        # reproduction), then the rows scheduled on N workers in table order.
        single, per_worker = [], []
        estimate_rows = args.estimate_rows if args.estimate_rows is not None else list(range(len(rows)))
        for row in estimate_rows:
            single.append(row_seconds(*fused_timing(rows[row].spec, args.estimate_steps, data, full_eval=True)))
            if args.workers > 1:
                timings = pool.map(_worker_timing, [(row, args.estimate_steps, True, str(device))] * args.workers)
                per_worker.append(statistics.mean(row_seconds(*t) for t in timings))
    peak = max(peak, matmul_peak(device))  # measured again at the end: the higher (stricter) one counts
    for m in measured:
        m["peak_pct"], m["executed_peak_pct"] = 100 * m["gflops"] / peak, 100 * m["executed_gflops"] / peak
    total_s = sum(single)
    workers_s = makespan(per_worker, args.workers) if per_worker else total_s
    report = {
        "device": torch.cuda.get_device_name(device) if gpu else "cpu",
        "threads": torch.get_num_threads(),
        "workers": args.workers,
        "repeats": args.repeats,
        "torch": torch.__version__,
        "gemm": gemm.backend(),  # how single-threaded workers multiply (archsearch.gemm)
        "matmul_peak_gflops": peak,
        "rows": measured,
        "estimate_rows": estimate_rows,  # the rows the reproduction estimate covers
        "full_reproduction_estimate_min": total_s / 60,
        "full_reproduction_estimate_workers_min": workers_s / 60,
    }
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        where = report["device"] if gpu else f"{report['threads']} thread(s)"
        print(
            f"float32 matmul peak {peak:.0f} GFLOP/s on {where}, torch {torch.__version__}, workers' products: "
            f"{report['gemm']}"
        )
        w = args.workers
        print(
            f"| row | spec | plain | archsearch, 1 process | archsearch, {w} workers | ratio | GFLOP/s | % of peak "
            f"| executed GFLOP/s | % of peak | {'1 process, no CUDA graphs' if gpu else 'kernel ceiling'} |"
        )
        print("|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
        for m in measured:
            c, eager = m["kernel_ceiling_steps_per_s"], m["archsearch_no_graphs_steps_per_s"]
            last = f"{c:.0f} ({m['kernel_ceiling_ratio']:.1f}×)" if c else f"{eager:.0f}" if eager else "—"
            print(
                f"| {m['row']} | `{m['spec']}` | {m['plain_steps_per_s']:.0f} | {m['archsearch_steps_per_s']:.0f} | "
                f"{m['archsearch_workers_steps_per_s']:.0f} | {m['ratio_best']:.1f}× | {m['gflops']:.1f} | "
                f"{m['peak_pct']:.1f}% | {m['executed_gflops']:.1f} | {m['executed_peak_pct']:.1f}% | {last} |"
            )
        print(f"(model-steps/s, medians of {args.repeats}; ratio and GFLOP/s for the faster archsearch layout)")
        print(
            f"estimated full reproduction ({len(estimate_rows)} rows × {RUNS} runs × {EPOCHS} epochs): "
            f"{total_s / 60:.0f} min in one "
            f"process, {report['full_reproduction_estimate_workers_min']:.0f} min with --workers {w}"
            + (" (reproduce's default here)" if w == default_workers(device, None, len(rows)) else "")
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
