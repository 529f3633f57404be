"""One measurement in a process of its own, for bench_trainer.py: the trainer's steady model-steps/s on a report row,
or the textbook loop's whole-process run.

It runs under whichever archsearch is on PYTHONPATH, so the same probe times this checkout and an earlier revision
side by side (``bench_trainer.py --baseline DIR``); it knows the earlier layout too (archsearch.train before the
engine package).

    python benchmarks/_probe.py rate ROW STEPS THREADS [autograd]   -> {"rate": model-steps/s}
    python benchmarks/_probe.py plain ROW RUNS                      -> {"seconds": wall time of RUNS runs x 1 epoch}
"""

from __future__ import annotations

import gc
import json
import sys
import time
from typing import Any

RUNS, BATCH = 5, 32


def _rate(row: int, steps: int, threads: int, autograd: bool) -> float:
    import torch

    torch.set_num_threads(threads)
    try:  # this checkout
        from archsearch.core.protocol import Protocol
        from archsearch.data import Dataset, load_dataset
        from archsearch.engine import StepPlan, train
        from archsearch.study.report import report_rows

        extra: dict[str, Any] = {"threads": threads, "plan": StepPlan("autograd") if autograd else None}
    except ImportError:  # an earlier revision: one flat package, threads taken from torch
        from archsearch.report import report_rows  # type: ignore[no-redef]
        from archsearch.train import Protocol, train  # type: ignore[no-redef]

        from archsearch.data import Dataset, load_dataset  # type: ignore[no-redef]

        if autograd:
            raise SystemExit("the earlier revision has no autograd step") from None
        extra = {}
    data = load_dataset()
    x, y = data.evals["test"]
    sub = Dataset(data.train_x[: steps * BATCH], data.train_y[: steps * BATCH], {"test": (x[:BATCH], y[:BATCH])})
    marks: dict[int, float] = {}

    def mark(done: int, total: int) -> None:
        marks[done] = time.perf_counter()

    # Python's full collection of what torch and the dataset made (0.2-0.4 s, once) lands wherever allocations put
    # it: inside the measured steps for one revision, before them for another (row 6: 0.7x "slower" in a 400-step
    # window at equal steady speed). Both trees are measured with it done before training.
    gc.collect()
    gc.freeze()
    train(report_rows()[row].spec, list(range(RUNS)), Protocol(epochs=1), sub, on_step=mark, **extra)
    return RUNS * (steps - 200) / (marks[steps] - marks[200])


def _plain(row: int, runs: int) -> float:
    """The textbook loop's whole process: imports, the dataset through torchvision, then ``runs`` runs of one epoch."""
    start = time.perf_counter()
    import torch
    from torch.nn import functional as F
    from torch.utils.data import DataLoader
    from torchvision import datasets, transforms

    try:
        from archsearch.data import default_data_dir
        from archsearch.models import build_model, init_model
        from archsearch.study.report import report_rows
    except ImportError:
        from archsearch.report import report_rows  # type: ignore[no-redef]

        from archsearch.data import default_data_dir  # type: ignore[no-redef]
        from archsearch.models import build_model, init_model  # type: ignore[no-redef]

    ds = datasets.FashionMNIST(str(default_data_dir()), train=True, download=False, transform=transforms.ToTensor())
    spec = report_rows()[row].spec
    for seed in range(runs):
        loader = DataLoader(ds, batch_size=BATCH, shuffle=True, generator=torch.Generator().manual_seed(seed))
        model = init_model(build_model(spec), torch.Generator().manual_seed(seed))
        opt = torch.optim.AdamW(model.parameters(), lr=3e-4, weight_decay=1e-3)
        for xb, yb in loader:
            loss = F.cross_entropy(model(xb), yb)
            opt.zero_grad()
            loss.backward()
            opt.step()
    return time.perf_counter() - start


def main() -> None:
    mode, *args = sys.argv[1:]
    if mode == "rate":
        rate = _rate(int(args[0]), int(args[1]), int(args[2]), len(args) > 3 and args[3] == "autograd")
        print(json.dumps({"rate": rate}))
    elif mode == "plain":
        print(json.dumps({"seconds": _plain(int(args[0]), int(args[1]))}))
    else:
        raise SystemExit(f"unknown mode {mode!r}")


if __name__ == "__main__":
    main()
