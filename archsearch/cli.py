"""The command line: thin typer commands that parse options, call the study, export and results layers, and print.

No training logic lives here. User errors (``UserError``, bad options) print one line on stderr and exit with 2.
"""

from __future__ import annotations

import contextlib
import math
import sys
import time
from enum import StrEnum
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, TypeAlias

import typer

from archsearch import _console as console
from archsearch.core import interrupts, settings
from archsearch.core.errors import UserError
from archsearch.core.protocol import LOSSES, OPTIMIZERS, REPORT_FIRST_SEED, REPORT_PROTOCOL, SCHEDULES, Augment

__all__ = ["app", "main"]

app = typer.Typer(
    help="Architecture and hyperparameter search for small PyTorch models: reproduce the report's comparison on "
    "Fashion-MNIST, search beyond it, export the best model.\n\nExample: archsearch reproduce --quick --out q",
    no_args_is_help=True,
    add_completion=True,  # --install-completion / --show-completion for bash, zsh, fish and PowerShell
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
)


def _version(value: bool) -> None:
    if value:
        from archsearch import __version__

        console.print_lines([f"archsearch {__version__}"])
        raise typer.Exit()


@app.callback()
def _root(
    version: Annotated[
        bool, typer.Option("--version", callback=_version, is_eager=True, help="Print the version and exit.")
    ] = False,
) -> None:
    """Architecture and hyperparameter search for small PyTorch models."""


P = REPORT_PROTOCOL  # every default below is the report's protocol (archsearch.core.protocol)


def _choices(name: str, values: tuple[str, ...]) -> Any:
    return StrEnum(name, {v: v for v in values})


# Choices as str enums (typer shows and checks them), made from the lists the layers below keep; to the type checker
# they are the strings they hold.
if TYPE_CHECKING:
    Loss: TypeAlias = str
    LossChoice: TypeAlias = str
    Optimizer: TypeAlias = str
    Schedule: TypeAlias = str
    Sampler: TypeAlias = str
    Pruner: TypeAlias = str
else:
    from archsearch.study.search import PRUNERS, SAMPLERS

    Loss, LossChoice = _choices("Loss", LOSSES), _choices("LossChoice", (*LOSSES, "both"))
    Optimizer, Schedule = _choices("Optimizer", OPTIMIZERS), _choices("Schedule", SCHEDULES)
    Sampler, Pruner = _choices("Sampler", SAMPLERS), _choices("Pruner", PRUNERS)


class Format(StrEnum):
    torchscript = "torchscript"
    onnx = "onnx"


JsonOpt = Annotated[bool, typer.Option("--json", help="Print machine-readable JSON on stdout instead of tables.")]
DeviceOpt = Annotated[str | None, typer.Option(help="Torch device (cpu, cuda, cuda:1); default: CUDA if available.")]
DataDirOpt = Annotated[
    Path | None,
    typer.Option(
        help="Data root (Fashion-MNIST: holds FashionMNIST/raw); default: $ARCHSEARCH_DATA or the user cache."
    ),
]
DatasetOpt = Annotated[
    str,
    typer.Option(
        help="fashion-mnist, mnist, kmnist, emnist-balanced, cifar10, cifar100, svhn, digits, or folder:PATH "
        "(an image tree with one folder per class)."
    ),
]
ThreadsOpt = Annotated[int | None, typer.Option(min=1, help="CPU threads for torch; default: all usable cores.")]
StorageOpt = Annotated[
    str | None,
    typer.Option(
        help="Optuna storage URL: sqlite:///FILE.db (default sqlite:///archsearch.db), postgresql://…, "
        "journal:///FILE.log."
    ),
]
StudyOpt = Annotated[str | None, typer.Option(help="Study name; default derived from the protocol.")]


def _runtime(threads: int | None, device: str | None) -> Any:
    """Settle where training runs before anything else happens: huge pages (before any tensor exists), the native
    backends' settings (a bad ARCHSEARCH_GEMM/ARCHSEARCH_CONV or a missing required library is refused here, in one
    line, before any study is touched), the device, and Optuna's logging (the CLI reports progress itself)."""
    from archsearch.engine import check_backends, resolve_device, use_huge_pages

    use_huge_pages()
    check_backends()
    import optuna

    optuna.logging.set_verbosity(optuna.logging.ERROR)
    return resolve_device(device)


def _parse_seeds(text: str) -> list[int]:
    try:
        seeds = [int(s) for s in text.split(",") if s.strip()]
    except ValueError:
        raise UserError(f"cannot read seeds {text!r}; use e.g. 42,43,44") from None
    if not seeds or len(set(seeds)) != len(seeds):
        raise UserError(f"seeds must be a non-empty list of distinct integers, got {text!r}")
    return seeds


@app.command()
def models(json_: JsonOpt = False) -> None:
    """List the report's 17 architectures with built and reported parameter counts.

    Example: archsearch models --json
    """
    from archsearch.study import report_rows

    rows = [row.to_dict() for row in report_rows()]
    if json_:
        console.emit_json(rows)
        return
    table = [
        [str(r["index"]), r["label"], r["spec"], f"{r['params']:,}", f"{r['reported_params']:,}",
         "yes" if r["params"] == r["reported_params"] else "NO"]
        for r in rows
    ]  # fmt: skip
    headers = ["index", "label", "spec", "params", "reported", "match"]
    console.print_tables([("The report's architectures (studies/report.toml)", headers, table)])


@app.command()
def train(
    spec: Annotated[str, typer.Argument(help="Architecture, e.g. mlp:128-relu or cnn:6c5-p2-16c5-p2-fc128,64.")],
    seeds: Annotated[str, typer.Option(help="Comma-separated seeds; all train together, fused.")] = "42",
    epochs: Annotated[int, typer.Option(min=1, help="Epochs.")] = P.epochs,
    loss: Annotated[Loss, typer.Option(help="Loss: cross-entropy or KL divergence.")] = P.loss,
    batch_size: Annotated[int, typer.Option(min=1, help="Batch size.")] = P.batch_size,
    lr: Annotated[float, typer.Option(min=0.0, help="Learning rate (peak of the schedule).")] = P.lr,
    weight_decay: Annotated[float, typer.Option(min=0.0, help="Weight decay (decoupled for AdamW).")] = P.weight_decay,
    optimizer: Annotated[Optimizer, typer.Option(help="AdamW, or SGD with Nesterov momentum.")] = P.optimizer,
    momentum: Annotated[float, typer.Option(help="SGD's momentum.")] = P.momentum,
    schedule: Annotated[Schedule, typer.Option(help="Learning-rate schedule.")] = P.schedule,
    warmup: Annotated[float, typer.Option(min=0.0, help="Epochs of linear warm-up.")] = P.warmup_epochs,
    label_smoothing: Annotated[float, typer.Option(help="Label smoothing.")] = P.label_smoothing,
    crop: Annotated[int, typer.Option(help="Augmentation: random crop after padding by this many pixels.")] = 0,
    flip: Annotated[bool, typer.Option(help="Augmentation: random horizontal flip.")] = False,
    erase: Annotated[float, typer.Option(help="Augmentation: probability of random erasing.")] = 0.0,
    ema: Annotated[
        float, typer.Option(help="Average the weights with this decay per step (e.g. 0.99); evaluated and kept.")
    ] = P.ema,
    tta: Annotated[bool, typer.Option(help="Evaluate each image and its mirror (test-time augmentation).")] = P.tta,
    dataset: DatasetOpt = "fashion-mnist",
    device: DeviceOpt = None,
    data_dir: DataDirOpt = None,
    threads: ThreadsOpt = None,
    json_: JsonOpt = False,
) -> None:
    """Train one architecture outside Optuna and print its test metrics.

    Example: archsearch train cnn:6c5-p2-16c5-p2-fc128,64 --epochs 5 --seeds 42,43
    """
    from archsearch.core.protocol import Protocol
    from archsearch.data import load_dataset
    from archsearch.engine import train as run_training
    from archsearch.models import parse_spec
    from archsearch.results import train_tables

    parsed = parse_spec(spec)
    seed_list = _parse_seeds(seeds)
    protocol = Protocol.from_dict({
        "epochs": epochs, "batch_size": batch_size, "lr": lr, "weight_decay": weight_decay, "loss": str(loss),
        "optimizer": str(optimizer), "momentum": momentum, "schedule": str(schedule), "warmup_epochs": warmup,
        "label_smoothing": label_smoothing, "augment": Augment(crop=crop, flip=flip, erase=erase), "ema": ema,
        "tta": tta,
    })  # fmt: skip
    dev = _runtime(threads, device)
    from archsearch.data import dataset_info

    parsed.check(dataset_info(dataset).shape)  # a spec that cannot fit the images: refused before any loading
    data = load_dataset(data_dir, dataset=dataset, device=dev)
    with console.bar(enabled=not json_) as bar:
        task = bar.add_task(f"train {parsed}", total=None)
        result = run_training(
            parsed, seed_list, protocol, data, device=dev, threads=threads,
            on_step=lambda d, t: bar.update(task, completed=d, total=t),
        )  # fmt: skip
    if json_:
        console.emit_json(result.to_dict())
        return
    console.print_tables(train_tables(result.to_dict()))


@app.command()
def reproduce(
    models: Annotated[str, typer.Option(help="Report rows, e.g. 0,6,16 or 0-5; default all 17.")] = "all",
    runs: Annotated[int | None, typer.Option(min=1, help="Runs (seeds) per row; default 5 (--quick: 2).")] = None,
    epochs: Annotated[int | None, typer.Option(min=1, help="Epochs; default 50 (--quick: 2).")] = None,
    loss: Annotated[LossChoice, typer.Option(help="Loss; 'both' trains each row with CE and with KL.")] = "ce",
    seed: Annotated[int, typer.Option(help="First seed; runs use seed, seed+1, …")] = REPORT_FIRST_SEED,
    batch_size: Annotated[int, typer.Option(min=1, help="Batch size (report: 32).")] = P.batch_size,
    lr: Annotated[float, typer.Option(min=0.0, help="AdamW learning rate (report: 3e-4).")] = P.lr,
    weight_decay: Annotated[float, typer.Option(min=0.0, help="AdamW weight decay (report: 1e-3).")] = P.weight_decay,
    quick: Annotated[bool, typer.Option(help="A few-minute first look: 2 runs of 2 epochs.")] = False,
    workers: Annotated[
        int | None,
        typer.Option(
            min=1,
            help="Parallel worker processes on this machine (each gets cores/N threads); default: one per core on a "
            "CPU (the fastest layout), one on a GPU or with --threads.",
        ),
    ] = None,
    storage: StorageOpt = None,
    study_name: StudyOpt = None,
    out_dir: Annotated[
        Path | None, typer.Option("--out", help="Write results.json, REPORT.md and PNG plots here.")
    ] = None,
    device: DeviceOpt = None,
    data_dir: DataDirOpt = None,
    threads: ThreadsOpt = None,
    json_: JsonOpt = False,
) -> None:
    """Reproduce the report's table as fixed Optuna trials; rerun to resume.

    Example: archsearch reproduce --models 0,6,16 --runs 2 --epochs 5 --out results
    """
    from archsearch.results import reproduction_lines, reproduction_tables
    from archsearch.study import ReproduceConfig, parse_indexes, reproduce_study

    cfg = ReproduceConfig(
        indexes=tuple(parse_indexes(models)),
        losses=tuple(LOSSES) if loss == "both" else (str(loss),),
        runs=runs or (2 if quick else ReproduceConfig.runs),
        first_seed=seed,
        epochs=epochs or (2 if quick else P.epochs),
        batch_size=batch_size,
        lr=lr,
        weight_decay=weight_decay,
    )
    dev = _runtime(threads, device)
    with console.bar(enabled=not json_) as bar:
        result = reproduce_study(
            cfg, storage_url=storage, study_name=study_name, device=dev, threads=threads, workers=workers,
            data_dir=data_dir, out_dir=out_dir, hooks=console.trial_hooks(bar, "reproduce: trials"),
        )  # fmt: skip
    if json_:
        console.emit_json(result.to_dict())
        return
    console.print_tables(reproduction_tables(result.study, result.rows, result.meta))
    console.print_lines(reproduction_lines(result.comparisons, result.meta))
    if result.written:
        console.print_lines([f"wrote {', '.join(result.written)} to {out_dir}"])


@app.command()
def search(
    space: Annotated[
        str | None,
        typer.Option(help="Space: mlp, cnn, resnet, fast, or a TOML file (see studies/*.toml); with --time: fast."),
    ] = None,
    time_: Annotated[
        str | None,
        typer.Option(
            "--time",
            help="Plan the whole search for this wall-clock budget (90s, 60m, 1h): a screen, then finalists with 2 "
            "seeds each, the best exported with --out. The screening and finalist options below are then planned.",
        ),
    ] = None,
    max_params: Annotated[
        int | None, typer.Option(min=1, help="With --time: the parameter budget of the models searched.")
    ] = None,
    out_dir: Annotated[
        Path | None,
        typer.Option("--out", help="With --time: write best/ (the exported model), summary.json and REPORT.md here."),
    ] = None,
    n_trials: Annotated[int, typer.Option(min=1, help="Target number of finished trials in the study.")] = 20,
    timeout: Annotated[float | None, typer.Option(min=1, help="Stop starting trials after this many seconds.")] = None,
    epochs: Annotated[int, typer.Option(min=1, help="Epochs per trial.")] = 10,
    runs: Annotated[int, typer.Option(min=1, help="Seeds per trial, trained together.")] = 1,
    fuse: Annotated[
        int | None,
        typer.Option(
            min=1,
            help="Trials of one architecture and batch size trained together, each with a recipe of its own (1: one "
            "trial at a time); default: one per CPU thread (up to 4) for CNN spaces on a CPU, else 1.",
        ),
    ] = None,
    seed: Annotated[int, typer.Option(help="Seed of the sampler, the validation split and the first run.")] = 42,
    sampler: Annotated[Sampler, typer.Option(help="Optuna sampler.")] = "tpe",
    pruner: Annotated[Pruner, typer.Option(help="Optuna pruner (per-epoch validation accuracy).")] = "median",
    objectives: Annotated[
        str, typer.Option(help="'accuracy' or 'accuracy,params' (maximise accuracy, minimise parameters).")
    ] = "accuracy",
    val_size: Annotated[
        int | None,
        typer.Option(min=1, help="Validation images held out of the training set; default a sixth, at most 10,000."),
    ] = None,
    train_size: Annotated[
        int | None, typer.Option(min=1, help="Train on this many of the other images (a cheaper screen).")
    ] = None,
    include_report: Annotated[
        bool, typer.Option(help="Start with the report's architectures that fit the space.")
    ] = False,
    workers: Annotated[
        int, typer.Option(min=1, help="Parallel worker processes on this machine (each gets cores/N threads).")
    ] = 1,
    finalists: Annotated[
        int, typer.Option(min=0, help="Then retrain the N best trials (overall and per budget) with more epochs/seeds.")
    ] = 0,
    final_epochs: Annotated[int | None, typer.Option(min=1, help="Finalists' epochs; default 3x --epochs.")] = None,
    final_runs: Annotated[int, typer.Option(min=1, help="Finalists' seeds, trained fused.")] = 2,
    budgets: Annotated[
        str, typer.Option(help="Parameter budgets the summary (and the finalists) look at, comma-separated.")
    ] = "10000,44374,100000",
    dataset: DatasetOpt = "fashion-mnist",
    storage: StorageOpt = None,
    study_name: StudyOpt = None,
    device: DeviceOpt = None,
    data_dir: DataDirOpt = None,
    threads: ThreadsOpt = None,
    json_: JsonOpt = False,
) -> None:
    """Search an architecture space with Optuna; the objective is validation accuracy, never test.

    Example: archsearch search --space cnn --n-trials 30 --epochs 5 --finalists 1 --final-epochs 20
    """
    if time_ is not None:
        _timed_search(time_, max_params, out_dir, space, dataset, seed, fuse, storage, study_name, device, data_dir,
                      threads, json_)  # fmt: skip
        return
    if space is None:
        raise UserError("search needs --space (mlp, cnn, resnet, fast or a TOML file), or --time for a planned search")
    if max_params is not None or out_dir is not None:
        raise UserError("--max-params and --out belong to a search with --time; a --space file sets max_params")
    from archsearch.results import search_lines, search_tables
    from archsearch.study import FinalConfig, SearchConfig, load_space, search_study

    sp = load_space(space)
    try:
        budget_list = tuple(int(b) for b in budgets.split(",") if b.strip())
    except ValueError:
        raise UserError(f"cannot read --budgets {budgets!r}; use e.g. 10000,44374,100000") from None
    cfg = SearchConfig(
        space=space, n_trials=n_trials, timeout=timeout, epochs=epochs, runs=runs, seed=seed,
        sampler=str(sampler), pruner=str(pruner), objectives=tuple(o.strip() for o in objectives.split(",")),
        val_size=val_size, train_size=train_size, include_report=include_report, budgets=budget_list,
        dataset=dataset, fuse=fuse,
    )  # fmt: skip
    final = None
    if finalists:
        final = FinalConfig(finalists, final_epochs or 3 * epochs, final_runs, seed, budget_list)
    dev = _runtime(threads, device)
    with console.bar(enabled=not json_) as bar:
        summary = search_study(
            cfg, sp, storage_url=storage, study_name=study_name, device=dev, threads=threads, workers=workers,
            data_dir=data_dir, hooks=console.trial_hooks(bar, "search: finished trials"), final=final,
        )  # fmt: skip
    if json_:
        console.emit_json(summary)
        return
    console.print_lines(search_lines(summary)[:1])
    console.print_tables(search_tables(summary))
    console.print_lines(search_lines(summary)[1:])


def parse_duration(text: str) -> float:
    """``90``, ``90s``, ``60m``, ``1.5h`` as seconds."""
    units = {"s": 1, "m": 60, "h": 3600}
    body, unit = (text[:-1], units[text[-1]]) if text and text[-1] in units else (text, 1)
    try:
        seconds = float(body) * unit
    except ValueError:
        raise UserError(f"cannot read --time {text!r}; use e.g. 90s, 60m or 1h") from None
    if not math.isfinite(seconds) or seconds <= 0:
        raise UserError(f"--time must be a positive duration, got {text!r}")
    return seconds


def _timed_search(
    time_: str, max_params: int | None, out_dir: Path | None, space: str | None, dataset: str, seed: int,
    fuse: int | None, storage: str | None, study_name: str | None, device: str | None, data_dir: Path | None,
    threads: int | None, json_: bool,
) -> None:  # fmt: skip
    from archsearch.results.budget import budget_lines, budget_tables
    from archsearch.study.timed import DEFAULT_SPACE, TimedConfig, timed_search

    started = time.monotonic()
    cfg = TimedConfig(parse_duration(time_), max_params, dataset, seed, space or DEFAULT_SPACE, fuse)
    dev = _runtime(threads, device)
    with console.bar(enabled=not json_) as bar:
        summary = timed_search(
            cfg, storage_url=storage, study_name=study_name, device=dev, threads=threads, data_dir=data_dir,
            hooks=console.trial_hooks(bar, "search: seconds of the budget"), out=out_dir, started=started,
        )  # fmt: skip
    if json_:
        console.emit_json(summary)
        return
    console.print_tables(budget_tables(summary))
    console.print_lines(budget_lines(summary))


@app.command()
def worker(
    study: Annotated[str, typer.Option(help="The study to join (made by reproduce or search).")],
    storage: StorageOpt = None,
    models: Annotated[
        str | None, typer.Option(help="Reproduce studies: train only these report rows (default: all queued).")
    ] = None,
    device: DeviceOpt = None,
    data_dir: DataDirOpt = None,
    threads: ThreadsOpt = None,
    json_: JsonOpt = False,
) -> None:
    """Join a study from any machine and train until it has nothing left to do.

    Example: archsearch worker --study search-cnn --storage postgresql://user:pw@host/db
    """
    from archsearch.study import parse_indexes, run_worker

    rows = parse_indexes(models) if models else None
    dev = _runtime(threads, device)
    with console.bar(enabled=not json_) as bar:
        result = run_worker(
            storage, study, device=dev, data_dir=data_dir, hooks=console.trial_hooks(bar), models=rows, threads=threads
        )
    if json_:
        console.emit_json(result)
    else:
        console.print_lines([f"worker done: {result}"])


@app.command()
def export(
    study: Annotated[str, typer.Option(help="Study name.")],
    out_dir: Annotated[Path, typer.Option("--out", help="Directory for model.safetensors and config.json.")],
    storage: StorageOpt = None,
    trial: Annotated[
        int | None, typer.Option(help="Trial number; default the best (required if multi-objective).")
    ] = None,
    seed: Annotated[int | None, typer.Option(help="Which run (seed) of the trial; default the best one.")] = None,
    format_: Annotated[
        list[Format] | None, typer.Option("--format", help="Also write torchscript and/or onnx.")
    ] = None,
    json_: JsonOpt = False,
) -> None:
    """Export a trial's trained model as safetensors + config.json, loadable without Optuna.

    Example: archsearch export --study search-cnn --out best
    """
    from archsearch.study import ParetoChoiceNeeded, export_trial

    try:
        result = export_trial(storage, study, out_dir, trial, seed, [str(f) for f in format_ or []])
    except ParetoChoiceNeeded as err:
        if not json_:
            rows = [[str(p["number"]), str(p["spec"]), ", ".join(f"{v:g}" for v in p["values"])] for p in err.front]
            console.print_tables([("Pareto front: choose one with --trial", ["trial", "spec", "values"], rows)])
        raise
    if json_:
        console.emit_json(result)
        return
    cfg = result["config"]
    src = cfg.get("source", {})
    console.print_lines([f"exported trial {src.get('trial')} seed {cfg.get('seed')} ({cfg.get('spec')}) to "
                         f"{result['out']}: {', '.join(result['files'])}"])  # fmt: skip


@app.command()
def evaluate(
    directory: Annotated[Path, typer.Argument(help="An exported checkpoint directory.")],
    data_dir: DataDirOpt = None,
    threads: ThreadsOpt = None,
    json_: JsonOpt = False,
) -> None:
    """Rebuild an exported model and recompute its test metrics; they must equal the recorded ones.

    Example: archsearch evaluate best
    """
    from archsearch.engine import torch_threads
    from archsearch.export import evaluate_checkpoint

    with torch_threads(threads):
        result = evaluate_checkpoint(directory, data_dir)
    if json_:
        console.emit_json(result)
        return
    m, rec = result["metrics"], result.get("recorded") or {}
    rows = [[k, f"{m[k]:.6f}", f"{rec[k]:.6f}" if k in rec else "–"] for k in ("accuracy", "precision", "recall", "f1")]
    console.print_tables([(f"{result['spec']} seed {result['seed']} · test set", ["metric", "now", "recorded"], rows)])
    console.print_lines(
        ["matches the study's record exactly" if result["matches_recorded"] else "DIFFERS from the record"]
    )


@app.command()
def predict(
    directory: Annotated[Path, typer.Argument(help="An exported checkpoint directory.")],
    images: Annotated[list[Path], typer.Argument(help="Images (28x28 grayscale; others are resized).")],
    json_: JsonOpt = False,
) -> None:
    """Classify images with an exported model.

    Example: archsearch predict best shoe.png shirt.png
    """
    from archsearch.export import predict_images

    results = predict_images(directory, images)
    if json_:
        console.emit_json(results)
        return
    for r in results:
        for w in r["warnings"]:
            sys.stderr.write(f"archsearch: warning: {r['path']}: {w}\n")
    rows = [[str(r["path"]), r["class"], f"{r['probability']:.3f}"] for r in results]
    console.print_tables([("Predictions", ["image", "class", "probability"], rows)])


@app.command()
def analyze(
    study: Annotated[str, typer.Option(help="Study name (reproduce or search).")],
    storage: StorageOpt = None,
    out_dir: Annotated[Path | None, typer.Option("--out", help="Write PNG plots and ANALYSIS.md here.")] = None,
    json_: JsonOpt = False,
) -> None:
    """Effects of depth, parameter count and activation in a study; importances for searches.

    Example: archsearch analyze --study report --out analysis
    """
    from archsearch.results import check_writable, format_tables, write_analysis
    from archsearch.study import analyze_study

    if out_dir is not None:
        check_writable(out_dir)
    result = analyze_study(storage, study)
    written = write_analysis(result, out_dir) if out_dir is not None else []
    if json_:
        console.emit_json(result)
        return
    console.print_tables(format_tables(result))
    if written:
        console.print_lines([f"wrote {', '.join(written)} to {out_dir}"])


@app.command()
def dashboard(
    storage: StorageOpt = None,
    host: Annotated[str, typer.Option(help="Address to bind; localhost unless you mean otherwise.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(min=1, max=65535, help="Port.")] = 8080,
    artifact_dir: Annotated[
        Path | None, typer.Option(help="Trial weights' artifact store; default: beside the storage.")
    ] = None,
) -> None:
    """Serve optuna-dashboard for the storage and its artifacts (weights).

    Example: archsearch dashboard --storage sqlite:///archsearch.db --port 8080
    """
    from archsearch.study import serve

    with contextlib.suppress(KeyboardInterrupt):
        serve(
            storage, host=host, port=port, artifact_dir=artifact_dir,
            on_ready=lambda url: console.print_lines([f"optuna-dashboard: {url}  (Ctrl-C stops)"]),
        )  # fmt: skip
    raise typer.Exit(0)  # Ctrl-C (or SIGTERM) is how a server is meant to stop: not an interruption of work


EXTRAS = {"dashboard": "optuna_dashboard", "postgres": "psycopg", "onnx": "onnxscript", "digits": "sklearn"}
# The steps of `doctor --json` ("python+cconv", ...) in words, for its first screen
STEP_WORDS = {"c": "all in C", "python": "hand-written", "autograd": "torch autograd", "cconv": "C first layer",
              "graphs": "CUDA graph"}  # fmt: skip


@app.command()
def doctor(json_: JsonOpt = False) -> None:
    """What this installation trains with: torch, CUDA, the fast CPU kernels (or why torch computes instead), the
    step each kind of model takes, which datasets are here and where, which optional extras are installed.
    --json says it all, with the settings' names (ARCHSEARCH_GEMM, ARCHSEARCH_CONV, ARCHSEARCH_DATA, ...) and how to
    get each missing dataset.

    Example: archsearch doctor
    """
    import importlib.util

    from archsearch import __version__
    from archsearch.data import DEFAULT_DATASET, default_data_dir, describe_datasets, downloads_allowed
    from archsearch.engine import describe_runtime
    from archsearch.engine.doctor import plain_reason

    report: dict[str, Any] = {"archsearch": __version__, **describe_runtime()}
    report["data_dir"] = str(default_data_dir())
    report["datasets"] = describe_datasets(default_data_dir())
    report["extras"] = {name: importlib.util.find_spec(module) is not None for name, module in EXTRAS.items()}
    if json_:
        console.emit_json(report)
        return
    # The first screen, in words: the lines 1-3 are what `.ci/setup` shows after installing
    torch_too = "everything" if report["first_conv"] == "torch" else "the matrix products"
    lines = [
        f"archsearch {report['archsearch']} · torch {report['torch']} · CUDA: {report['cuda'] or 'none'} · "
        f"{report['cores']} usable core(s)",
        "fast CPU kernels: libxsmm found, C kernels built"
        if report["products"] == "libxsmm"
        else f"fast CPU kernels: not available: {plain_reason(report['products_why_not'] or 'unknown')}; "
        f"torch computes {torch_too} (slower)",
        "a CNN's first layer: the C kernel"
        if report["first_conv"] == "native"
        else f"a CNN's first layer: torch ({plain_reason(report['first_conv_why_not'] or 'unknown')})",
    ]
    counts = " / ".join(next(iter(report["steps_on_cpu"].values()), {}))
    lines.append(f"how each kind of model trains on the CPU ({counts}):")
    for label, by in report["steps_on_cpu"].items():
        words = [" + ".join(STEP_WORDS.get(part, part) for part in step.split("+")) for step in by.values()]
        lines.append(f"  {label}: {' / '.join(words)}")
    lines.append(f"data folder: {report['data_dir']}")
    missing = []
    for d in report["datasets"]:
        if d["present"]:
            lines.append(f"  {d['name']}: found ({d['path']}" + (f", {d['source']})" if d["source"] else ")"))
        elif d["name"] == DEFAULT_DATASET:  # the one every command trains on by default: how to get it, in full
            lines.append(f"  {d['name']}: not here — {d['how']}")
        else:
            extra = d["name"] in EXTRAS and not d["downloads"]  # digits: scikit-learn's
            missing.append(f"{d['name']} (pip install 'archsearch[{d['name']}]')" if extra else d["name"])
    if missing:
        how = (
            "downloaded on first use, or put in the data folder"
            if downloads_allowed(True)
            else "put in the data folder"
        )
        lines.append(f"  not here ({how}; see `archsearch doctor --json`): {', '.join(missing)}")
    lines.append("extras: " + ", ".join(f"{k} {'yes' if v else 'no'}" for k, v in report["extras"].items()))
    console.print_lines(lines)


def main(argv: list[str] | None = None) -> int:
    """Entry point: run the app, turning user errors into one line on stderr and exit code 2."""
    args = sys.argv[1:] if argv is None else argv
    command = typer.main.get_command(app)
    if not args:
        with typer.Context(command, info_name="archsearch") as ctx:
            sys.stderr.write(command.get_help(ctx) + "\n")
        return 2
    with interrupts.handled(exiting=argv is None):  # argv None: the program itself, not a caller in Python
        try:
            with settings.using(settings.Settings.from_env()):  # the environment, read once for the command
                code = command.main(args=args, prog_name="archsearch", standalone_mode=False)
        except typer.Exit as err:
            return int(err.exit_code)
        except KeyboardInterrupt:  # typer returns a KeyboardInterrupt as the exit code 130; this is in case it raises
            code = 130
        except (UserError, typer.TyperException) as err:
            # click's usage errors (typer.TyperException's subclasses) format their own message
            message = err.format_message() if hasattr(err, "format_message") else str(err)
            sys.stderr.write(f"archsearch: error: {' '.join(str(message).split())}\n")
            return 2
        if code == 130:  # a KeyboardInterrupt (a signal: interrupts.Interrupted), which typer returns as 130
            sys.stderr.write(interrupts.stopped_line() + "\n")
            return interrupts.exit_code()
    return code if isinstance(code, int) else 0  # typer returns a typer.Exit's code
