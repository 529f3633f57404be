"""Side-by-side benchmark of the search's own workload: the CNNs a search trains, with the recipes it found for them.

Models (``--models``), each with its recipe (one epoch of it):

    9.7k, 28.7k, 68.6k  the committed finalists of studies/results/budgets{,-100k}, each with its own recipe from
                        those summaries (SGD with Nesterov momentum, one-cycle, batch 128, label smoothing, crop 2 +
                        flip)
    resnet              a residual CNN of the resnet space (studies/resnet.toml, 77.8k parameters: a 16-channel stem,
                        three stages of one basic block, 16-32-64 channels); no resnet finalist is committed, so it
                        takes the 68.6k finalist's recipe
    report              the report's CNN (row 16) with the report's protocol (AdamW, constant lr) at batch 128

Contenders, every measurement in a process of its own:

(a) textbook: torchvision's ``FashionMNIST`` (the IDX files archsearch's data layer keeps) with ``RandomCrop``,
    ``RandomHorizontalFlip``, ``ToTensor`` and ``Normalize`` through a ``DataLoader`` (shuffled, no workers), the plain
    ``nn.Sequential`` of ``build_model``, ``torch.optim.SGD`` (Nesterov) or ``AdamW`` with ``OneCycleLR``,
    ``CrossEntropyLoss(label_smoothing)``; K runs are K models trained one after another.
(b) tuned: the same model and recipe with the whole dataset in memory as one float tensor, normalised (and padded for
    the crop) once; each batch is one gather with per-image crop offsets and flips; K models one after another.
(c) archsearch: ``archsearch.engine.train`` with K seeds in the layout the engine chooses, and for the whole-process
    figure the CLI, ``archsearch train SPEC --seeds 42,... --epochs 1`` with the recipe as flags.
(d) fused (rate only): the same with the K runs forced into one fused model (grouped convolutions, channels-last),
    the layout every run of these models took before the engine chose one.

``--trials``: the K runs are K trials of one architecture, as ``search --fuse K`` trains them: run i has its own
learning rate (the recipe's times 0.7 + 0.15 i) and label smoothing (0.05 i), the batch size and schedule shared
((c) trains them in the layout the engine chooses: plain models on a CPU, one fused model on a GPU; (d) as one fused
model on any device; (a) and (b) one after another).
``--contenders`` measures a subset; without the tuned loop, each contender's ratio is to itself at the smallest K
("one trial at a time").
``--device cuda`` runs (c) and (d) on the GPU (the plain loops are CPU-only: measure them on a CPU).

Rate (always): model-steps/s over ``--steps`` steps, after ``--warmup`` steps per model for (a) and (b); the trainer
reports only at epoch ends, so (c) trains two epochs of a ``--steps``-batch subset and times the second (the first
is its warm-up; the end-of-epoch evaluation is on one batch of test images). Whole (``--whole``, slow): wall seconds
of a whole process training K runs for one full epoch and measuring test accuracy (start-up and data included).
Medians of ``--repeats`` interleaved repeats (the contenders' order rotated per repeat), all on ``--threads``
threads; the ratio is to the tuned loop (its rate, or its seconds over the contender's).

    python benchmarks/bench_search.py [--models 9.7k,28.7k,68.6k,resnet,report] [--k 1,2,4] [--steps 200]
                                      [--warmup 20] [--repeats 3] [--whole] [--threads T] [--trials]
                                      [--contenders textbook,tuned,archsearch,fused] [--device cpu] [--json]
    python benchmarks/bench_search.py --device cuda --contenders archsearch --models 9.7k,68.6k --k 1,8 --trials
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple

if TYPE_CHECKING:  # the probes import torch themselves, and only what their contender needs
    import torch
    from torch import nn

    from archsearch.core.protocol import Protocol

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(ROOT))

# fused: archsearch's runs as one fused model, how these models trained before the engine chose layouts
CONTENDERS = ("textbook", "tuned", "archsearch", "fused")
FIRST_SEED = 42
TRAIN_SIZE = 60000
MEAN, STD = 0.2860, 0.3530  # Fashion-MNIST's training pixels in [0, 1]: the Normalize a textbook loop applies
SUMMARIES = ("studies/results/budgets/summary.json", "studies/results/budgets-100k/summary.json")
FINALISTS = {
    "9.7k": "cnn:8c3p1-bn-8c3s2p1-bn-16c3p1-bn-p2-fc-d0.2-silu",
    "28.7k": "cnn:19c3p1-bn-19c3p1-bn-p2-38c3s2p1-bn-fc-d0.05-silu",
    "68.6k": "cnn:26c3p1-bn-26c3p1-bn-p2-52c3p1-bn-52c3s2p1-bn-fc-d0.1-silu",
}
RESNET = "cnn:16c3p1-bn-r16-bn-r32s2-bn-r64s2-bn-gap-fc-d0.1-relu"
MODELS = (*FINALISTS, "resnet", "report")
REPORT_ROW, REPORT_BATCH = 16, 128


# ---------------------------------------------------------------------------------------------- the models and recipes


def finalist_recipe(spec: str) -> dict[str, Any]:
    """The recipe the committed summaries record for finalist ``spec`` (the same in every summary but for epochs)."""
    recipes = []
    for name in SUMMARIES:
        summary = json.loads((ROOT / name).read_text())
        recipes += [f["recipe"] for f in summary["final"]["finalists"] if f["spec"] == spec]
    if not recipes:
        raise SystemExit(f"no committed finalist has spec {spec}")
    if any({**r, "epochs": 1} != {**recipes[0], "epochs": 1} for r in recipes):
        raise SystemExit(f"the summaries disagree on the recipe of {spec}")
    return recipes[0]


def workload(model: str) -> tuple[str, dict[str, Any]]:
    """``--models`` key -> (spec, protocol of one epoch, as a dict)."""
    from archsearch.core.protocol import Protocol

    if model == "report":
        from archsearch.study.report import report_rows

        return str(report_rows()[REPORT_ROW].spec), Protocol(epochs=1, batch_size=REPORT_BATCH).to_dict()
    spec = RESNET if model == "resnet" else FINALISTS[model]
    recipe = finalist_recipe(FINALISTS["68.6k"] if model == "resnet" else spec)
    return spec, Protocol.from_dict({**recipe, "epochs": 1}).to_dict()


def trial_recipes(p: Protocol, k: int) -> list[Protocol]:
    """``--trials``: K recipes of one architecture and batch size, run i with the learning rate ``p.lr`` times
    0.7 + 0.15 i and label smoothing 0.05 i."""
    return [p.with_(lr=p.lr * (0.7 + 0.15 * i), label_smoothing=0.05 * i) for i in range(k)]


# --------------------------------------------------------------------------------- (a) and (b): the probes' plain loops


class Loop(NamedTuple):
    epoch: Callable[[torch.Generator], Iterable[tuple[torch.Tensor, torch.Tensor]]]  # one shuffled epoch's batches
    accuracy: Callable[[nn.Module], float]  # on the test set


def textbook_loop(p: Protocol) -> Loop:
    import torch
    from torch.utils.data import DataLoader
    from torchvision import datasets, transforms

    from archsearch.data import default_data_dir

    root, normalize = str(default_data_dir()), [transforms.ToTensor(), transforms.Normalize((MEAN,), (STD,))]
    aug = [transforms.RandomCrop(28, padding=p.augment.crop)] if p.augment.crop else []
    aug += [transforms.RandomHorizontalFlip()] if p.augment.flip else []
    train = datasets.FashionMNIST(root, train=True, download=False, transform=transforms.Compose(aug + normalize))
    test = datasets.FashionMNIST(root, train=False, download=False, transform=transforms.Compose(normalize))

    def epoch(gen: torch.Generator) -> DataLoader[Any]:
        return DataLoader(train, batch_size=p.batch_size, shuffle=True, num_workers=0, generator=gen)

    @torch.no_grad()
    def accuracy(model: nn.Module) -> float:
        model.eval()
        right = sum(int((model(x).argmax(1) == y).sum()) for x, y in DataLoader(test, batch_size=1000))
        return right / len(test)

    return Loop(epoch, accuracy)


def tuned_loop(p: Protocol) -> Loop:
    import torch
    from torch.nn import functional as F
    from torchvision import datasets

    from archsearch.data import default_data_dir

    def tensors(train: bool) -> tuple[torch.Tensor, torch.Tensor]:
        ds = datasets.FashionMNIST(str(default_data_dir()), train=train, download=False)
        return (ds.data.unsqueeze(1).float() / 255 - MEAN) / STD, ds.targets

    (x, y), (test_x, test_y) = tensors(True), tensors(False)
    c, side = p.augment.crop, x.shape[-1]
    padded = F.pad(x, (c, c, c, c), value=-MEAN / STD)  # black, normalised: what RandomCrop pads a PIL image with
    ar = torch.arange(side)

    def epoch(gen: torch.Generator) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        for idx in torch.randperm(len(y), generator=gen).split(p.batch_size):
            if not p.augment.active:
                yield x[idx], y[idx]
                continue
            rows = torch.randint(0, 2 * c + 1, (len(idx), 1), generator=gen) + ar  # (B, side): each image's offset
            cols = torch.randint(0, 2 * c + 1, (len(idx), 1), generator=gen) + ar
            if p.augment.flip:
                cols = torch.where(torch.rand(len(idx), 1, generator=gen) < 0.5, cols.flip(1), cols)
            yield padded[idx[:, None, None], 0, rows[:, :, None], cols[:, None, :]].unsqueeze(1), y[idx]

    @torch.no_grad()
    def accuracy(model: nn.Module) -> float:
        model.eval()
        chunks = zip(test_x.split(1000), test_y.split(1000), strict=True)
        right = sum(int((model(xb).argmax(1) == yb).sum()) for xb, yb in chunks)
        return right / len(test_y)

    return Loop(epoch, accuracy)


def fit(
    model: nn.Module, p: Protocol, batches: Iterator[tuple[torch.Tensor, torch.Tensor]], warmup: int, steps: int
) -> float:
    """Train ``model`` for ``warmup + steps`` steps of ``batches`` (the one-cycle schedule spans them all); returns the
    seconds of the last ``steps``."""
    import torch
    from torch import nn

    if p.loss != "ce" or p.augment.erase or p.warmup_epochs or p.schedule not in ("constant", "onecycle"):
        raise SystemExit(f"the plain loops implement CE, crop, flip and the one-cycle schedule, not {p}")
    if p.optimizer == "sgd":
        nesterov = p.momentum > 0  # as archsearch's SGD
        opt: torch.optim.Optimizer = torch.optim.SGD(
            model.parameters(), lr=p.lr, momentum=p.momentum, nesterov=nesterov, weight_decay=p.weight_decay
        )
    else:
        opt = torch.optim.AdamW(model.parameters(), lr=p.lr, weight_decay=p.weight_decay)
    sched = None
    if p.schedule == "onecycle":  # archsearch's one-cycle: OneCycleLR's defaults, momentum held
        sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=p.lr, total_steps=warmup + steps, cycle_momentum=False)
    loss_fn = nn.CrossEntropyLoss(label_smoothing=p.label_smoothing)
    model.train()
    start = time.perf_counter()
    for i in range(warmup + steps):
        if i == warmup:
            start = time.perf_counter()
        x, y = next(batches)
        loss = loss_fn(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        if sched is not None:
            sched.step()
    return time.perf_counter() - start


def endless(loop: Loop, gen: torch.Generator) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    while True:
        yield from loop.epoch(gen)


def plain_probe(
    mode: str, contender: str, spec: str, recipes: list[Protocol], steps: int, warmup: int
) -> dict[str, Any]:
    """(a) or (b): K models (one per recipe) one after another; rate mode -> model-steps/s, whole mode -> their test
    accuracies."""
    import torch

    from archsearch.models import build_model, init_model, parse_spec

    k, seconds, accuracies = len(recipes), 0.0, []
    for seed, p in zip(range(FIRST_SEED, FIRST_SEED + k), recipes, strict=True):
        loop = (textbook_loop if contender == "textbook" else tuned_loop)(p)
        gen = torch.Generator().manual_seed(seed)  # draws the initialisation, then the shuffling and augmentation
        model = init_model(build_model(parse_spec(spec)), gen)
        if mode == "rate":
            seconds += fit(model, p, endless(loop, gen), warmup, steps)
        else:
            fit(model, p, iter(loop.epoch(gen)), 0, math.ceil(TRAIN_SIZE / p.batch_size))
            accuracies.append(loop.accuracy(model))
    return {"rate": k * steps / seconds} if mode == "rate" else {"accuracy": accuracies}


def archsearch_probe(
    spec: str, recipes: list[Protocol], steps: int, threads: int, fused: bool, device: str
) -> dict[str, Any]:
    """(c)'s rate in-process: two epochs of a ``steps``-batch subset, K runs (one per recipe) in the layout the engine
    chooses (or, ``fused``, as one fused model) on ``device``; the second epoch is timed."""
    from archsearch.data import Dataset, load_dataset
    from archsearch.engine import train
    from archsearch.engine.steps import StepPlan
    from archsearch.models import parse_spec

    p = recipes[0]
    data = load_dataset(device=device)
    n, (test_x, test_y) = steps * p.batch_size, data.evals["test"]
    sub = Dataset(data.train_x[:n], data.train_y[:n], {"test": (test_x[: p.batch_size], test_y[: p.batch_size])})
    marks: list[float] = []
    seeds = list(range(FIRST_SEED, FIRST_SEED + len(recipes)))
    result = train(
        parse_spec(spec), seeds, p.with_(epochs=2), sub, device=device, threads=threads,
        plan=StepPlan() if fused else None, recipes=[r.with_(epochs=2) for r in recipes],
        on_epoch=lambda _: marks.append(time.perf_counter()),
    )  # fmt: skip
    return {"rate": len(recipes) * steps / (marks[1] - marks[0]), "engine_step": result.engine_step}


def probe(argv: list[str]) -> dict[str, Any]:
    """``--probe MODE CONTENDER SPEC PROTOCOL_JSON K STEPS WARMUP THREADS TRIALS DEVICE``: one measurement, as one
    JSON line."""
    mode, contender, spec, protocol, *numbers, device = argv
    k, steps, warmup, threads, trials = map(int, numbers)
    import torch

    from archsearch.core.protocol import Protocol

    torch.set_num_threads(threads)
    p = Protocol.from_dict(json.loads(protocol))
    recipes = trial_recipes(p, k) if trials else [p] * k
    if contender in ("archsearch", "fused"):
        return archsearch_probe(spec, recipes, steps, threads, fused=contender == "fused", device=device)
    return plain_probe(mode, contender, spec, recipes, steps, warmup)


# ------------------------------------------------------------------------------------------ the parent: measure, report


def spawn(cmd: list[str]) -> subprocess.Popen[str]:
    from benchmarks.bench_engine import _env

    return subprocess.Popen(
        cmd, cwd=tempfile.gettempdir(), env=_env(ROOT), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )


def cli_flags(p: dict[str, Any]) -> list[str]:
    """``archsearch train``'s flags for recipe ``p``."""
    a = p["augment"]
    return [
        "--batch-size", str(p["batch_size"]), "--lr", repr(p["lr"]), "--weight-decay", repr(p["weight_decay"]),
        "--optimizer", p["optimizer"], "--momentum", repr(p["momentum"]), "--schedule", p["schedule"],
        "--warmup", repr(p["warmup_epochs"]), "--loss", p["loss"], "--label-smoothing", repr(p["label_smoothing"]),
        "--crop", str(a["crop"]), "--flip" if a["flip"] else "--no-flip", "--erase", repr(a["erase"]),
    ]  # fmt: skip


def measure(
    mode: str, contender: str, spec: str, p: dict[str, Any], k: int, args: argparse.Namespace
) -> dict[str, Any]:
    """One measurement in a process of its own: {"rate": ...} or {"seconds": ..., "accuracy": [...]}."""
    from benchmarks.bench_engine import _result

    if mode == "rate" or contender != "archsearch":
        numbers = (k, args.steps, args.warmup, args.threads, int(args.trials))
        cmd = [sys.executable, __file__, "--probe", mode, contender, spec, json.dumps(p), *map(str, numbers)]
        cmd.append(args.device)
    else:
        seeds = ",".join(str(FIRST_SEED + i) for i in range(k))
        cmd = [sys.executable, "-m", "archsearch", "train", spec, "--seeds", seeds, "--epochs", "1", "--device", "cpu"]
        cmd += ["--threads", str(args.threads), *cli_flags(p), "--json"]
    if mode == "rate":
        return _result(spawn(cmd))
    start = time.perf_counter()
    proc = spawn(cmd)
    out, err = proc.communicate()
    seconds = time.perf_counter() - start
    if proc.returncode != 0:
        raise SystemExit(f"a measurement failed:\n{err.strip()[-2000:]}")
    result = json.loads(out)
    if contender == "archsearch":
        return {"seconds": seconds, "accuracy": [r["metrics"]["test"]["accuracy"] for r in result["runs"]]}
    return {"seconds": seconds, **result}


def summarise(cells: dict[tuple[str, int, str], list[dict[str, Any]]], key: str) -> list[dict[str, Any]]:
    """Per (model, K, contender): median, min and max of ``key`` over the repeats, and the ratio to the tuned loop (in
    speed: its rate over the tuned one's, or the tuned one's seconds over its)."""
    rows = []
    for (model, k, contender), samples in cells.items():
        values = [s[key] for s in samples]
        row = {"model": model, "k": k, "contender": contender, key: statistics.median(values)}
        row |= {f"{key}_min": min(values), f"{key}_max": max(values), "samples": values}
        row |= {name: samples[-1][name] for name in ("engine_step", "accuracy") if name in samples[-1]}
        rows.append(row)
    cell = {(r["model"], r["k"], r["contender"]): r[key] for r in rows}
    for row in rows:
        model, k, contender = row["model"], row["k"], row["contender"]
        if (model, k, "tuned") in cell:
            row["baseline"], base = "tuned", cell[(model, k, "tuned")]
        else:  # no tuned loop measured: the same contender one run at a time
            row["baseline"], base = "K=1", cell[(model, min(kk for m, kk, c in cell if m == model), contender)]
        row["ratio"] = row[key] / base if key == "rate" else base / row[key]
    return rows


def run_all(mode: str, args: argparse.Namespace, work: dict[str, tuple[str, dict[str, Any]]]) -> list[dict[str, Any]]:
    """Every (model, K, contender) ``args.repeats`` times, interleaved: each repeat measures every cell once, the
    contenders in an order rotated per repeat, so that a noisy moment or a drifting clock hits them alike."""
    cells: dict[tuple[str, int, str], list[dict[str, Any]]] = {}
    contenders = tuple(args.contenders) if mode == "rate" else tuple(c for c in args.contenders if c != "fused")
    # (the CLI has no switch for the layout: the whole-process figure has no fused contender)
    for repeat in range(args.repeats):
        turn = repeat % len(contenders)
        order = contenders[turn:] + contenders[:turn]
        for model, (spec, p) in work.items():
            for k in args.k:
                for contender in order:
                    result = measure(mode, contender, spec, p, k, args)
                    cells.setdefault((model, k, contender), []).append(result)
                    if not args.json:
                        print(f"{mode} {model} K={k} {contender}: {result}", file=sys.stderr)
    rows = summarise(
        {(m, k, c): cells[(m, k, c)] for m in work for k in args.k for c in contenders},
        "rate" if mode == "rate" else "seconds",
    )
    return rows


def num(value: float) -> str:
    return f"{value:.0f}" if value >= 100 else f"{value:.3g}"


def print_tables(report: dict[str, Any]) -> None:
    print(f"{report['threads']} threads, torch {report['torch']}, medians of {report['repeats']} (min-max)")
    runs = "trials (a recipe each)" if report.get("trials") else "seeds"
    print(f"on {report.get('device', 'cpu')}, K runs are {runs}; model-steps/s over {report['steps']} steps after "
          f"{report['warmup']} warm-up steps per model (archsearch: after a first epoch of {report['steps']} steps); "
          "ratio: to the tuned loop, or without it to the contender at the smallest K")  # fmt: skip
    print("| model | K | contender | model-steps/s | ratio |")
    print("|---|---:|---|---:|---:|")
    for r in report["rate"]:
        step = f" ({r['engine_step']} step)" if "engine_step" in r else ""
        rate = f"{num(r['rate'])} ({num(r['rate_min'])}-{num(r['rate_max'])})"
        print(f"| {r['model']} | {r['k']} | {r['contender']}{step} | {rate} | {r['ratio']:.2f}x |")
    if report["whole"]:
        print("whole process, one epoch of K runs, seconds; ratio: the tuned loop's seconds over the contender's")
        print("| model | K | contender | seconds | ratio | test accuracy |")
        print("|---|---:|---|---:|---:|---|")
    for r in report["whole"]:
        acc = ", ".join(f"{a:.4f}" for a in r["accuracy"])
        secs = f"{r['seconds']:.1f} ({r['seconds_min']:.1f}-{r['seconds_max']:.1f})"
        print(f"| {r['model']} | {r['k']} | {r['contender']} | {secs} | {r['ratio']:.2f}x | {acc} |")
    for model, m in report["models"].items():
        print(f"{model}: `{m['spec']}`, {m['params']:,} parameters; {recipe_text(m['recipe'])}")


def recipe_text(p: dict[str, Any]) -> str:
    a = p["augment"]
    aug = "+".join(
        [f"crop {a['crop']}"] * bool(a["crop"]) + ["flip"] * a["flip"] + [f"erase {a['erase']}"] * bool(a["erase"])
    )
    return (
        f"{p['optimizer']} lr {p['lr']:.4g} wd {p['weight_decay']:.3g} {p['schedule']} batch {p['batch_size']} "
        f"label smoothing {p['label_smoothing']:g}, {aug or 'no augmentation'}"
    )


def models_arg(text: str) -> list[str]:
    models = text.split(",")
    if not all(m in MODELS for m in models):
        raise argparse.ArgumentTypeError(f"models are {', '.join(MODELS)}, comma-separated; got {text!r}")
    return models


def contenders_arg(text: str) -> list[str]:
    chosen = text.split(",")
    if not chosen or not all(c in CONTENDERS for c in chosen) or len(set(chosen)) != len(chosen):
        raise argparse.ArgumentTypeError(f"contenders are {', '.join(CONTENDERS)}, comma-separated; got {text!r}")
    return [c for c in CONTENDERS if c in chosen]


def ks_arg(text: str) -> list[int]:
    try:
        ks = [int(s) for s in text.split(",")]
    except ValueError:
        ks = [0]
    if not all(k >= 1 for k in ks):
        raise argparse.ArgumentTypeError(f"K is a comma-separated list of positive run counts; got {text!r}")
    return ks


def parse_args() -> argparse.Namespace:
    from archsearch.engine import usable_cores
    from benchmarks.bench_trainer import Parser, at_least

    parser = Parser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", type=models_arg, default=",".join(MODELS), help="comma-separated models")
    parser.add_argument("--k", type=ks_arg, default="1,2,4", help="runs per measurement, comma-separated")
    parser.add_argument("--steps", type=at_least(1), default=200, help="timed steps per model (rate)")
    parser.add_argument("--warmup", type=at_least(0), default=20, help="warm-up steps per model, (a) and (b)")
    parser.add_argument("--repeats", type=at_least(1), default=3, help="interleaved repeats (medians)")
    parser.add_argument("--whole", action="store_true", help="also the whole-process seconds of one epoch (slow)")
    parser.add_argument("--threads", type=at_least(1), default=usable_cores(), help="threads of every contender")
    parser.add_argument("--trials", action="store_true", help="K runs are K trials, each its own recipe")
    parser.add_argument("--contenders", type=contenders_arg, default=",".join(CONTENDERS), help="a subset to measure")
    parser.add_argument("--device", default="cpu", help="where archsearch's contenders train (cpu, cuda)")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    if args.device != "cpu" and set(args.contenders) & {"textbook", "tuned"}:
        parser.error("argument --device: the plain loops run on the CPU only; add --contenders archsearch,fused")
    if args.whole and (args.device != "cpu" or args.trials):
        parser.error("argument --whole: the whole-process figure (archsearch train) is of seeds on the CPU only")
    if args.steps * REPORT_BATCH > TRAIN_SIZE:  # archsearch's rate trains on a subset of that many batches
        parser.error(f"argument --steps: at most {TRAIN_SIZE // REPORT_BATCH} (one epoch at batch 128)")
    return args


def main() -> int:
    if sys.argv[1:2] == ["--probe"]:
        print(json.dumps(probe(sys.argv[2:])))
        return 0
    args = parse_args()
    import torch

    from archsearch.data import default_data_dir, ensure_raw_files
    from archsearch.models import count_params, parse_spec

    ensure_raw_files(default_data_dir())  # once here: the probes' torchvision reads the verified IDX files
    work = {m: workload(m) for m in args.models}
    models = {m: {"spec": s, "params": count_params(parse_spec(s)), "recipe": p} for m, (s, p) in work.items()}
    report = {
        "threads": args.threads, "torch": torch.__version__, "steps": args.steps, "warmup": args.warmup,
        "device": args.device, "trials": args.trials,
        "repeats": args.repeats, "models": models, "rate": run_all("rate", args, work),
        "whole": run_all("whole", args, work) if args.whole else [],
    }  # fmt: skip
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        print_tables(report)
    return 0


if __name__ == "__main__":
    sys.exit(main())
