"""The command line: thin typer commands that parse options, call into the modules and print with rich.

No training logic lives here. User errors (``UserError``, bad options) print one line on stderr and exit with 2.
"""

from __future__ import annotations

import sys
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.table import Table

from archsearch import progress
from archsearch.errors import UserError
from archsearch.jsonio import dumps

try:  # recent typer vendors click; older typer depends on it
    from typer._click import exceptions as click_exc
except ImportError:  # pragma: no cover
    from click import exceptions as click_exc  # type: ignore[no-redef]

__all__ = ["app", "main"]

app = typer.Typer(
    help="Architecture and hyperparameter search for small PyTorch models on Fashion-MNIST.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
)


def out() -> Console:
    """stdout console, created per use so redirection works; wide when not a terminal so tables are not cut."""
    return Console() if sys.stdout.isatty() else Console(width=200)


class Loss(StrEnum):
    ce = "ce"
    kl = "kl"


JsonOpt = Annotated[bool, typer.Option("--json", help="Print machine-readable JSON on stdout instead of tables.")]
DeviceOpt = Annotated[str | None, typer.Option(help="Torch device (cpu, cuda, cuda:1); default: CUDA if available.")]
DataDirOpt = Annotated[
    Path | None,
    typer.Option(help="Fashion-MNIST root (holds FashionMNIST/raw); default: $ARCHSEARCH_DATA or the user cache."),
]
ThreadsOpt = Annotated[int | None, typer.Option(min=1, help="CPU threads for torch; default: all cores.")]


def _emit_json(data: Any) -> None:
    sys.stdout.write(dumps(data))


def _setup_torch(threads: int | None, device: str | None) -> Any:
    import torch

    from archsearch.train import default_device, use_huge_pages

    use_huge_pages()  # before any tensor exists
    from archsearch import conv, gemm

    # A bad ARCHSEARCH_GEMM or ARCHSEARCH_CONV, or a required libxsmm or compiler that is missing, is refused here in
    # one line: the step would otherwise meet it only in a single-threaded worker, after the study was set up.
    gemm.backend()
    conv.backend()
    if threads:
        torch.set_num_threads(threads)
    import optuna

    optuna.logging.set_verbosity(optuna.logging.ERROR)  # the CLI reports progress and failures itself
    try:
        dev = torch.device(device) if device else default_device()
        torch.empty(0, device=dev)
    except (RuntimeError, AssertionError) as err:
        raise UserError(f"device {device!r} is not usable: {str(err).splitlines()[0]}") from None
    return dev


@app.command()
def models(json_: JsonOpt = False) -> None:
    """List the report's 17 architectures with built and reported parameter counts."""
    from archsearch.report import report_rows

    rows = [row.to_dict() for row in report_rows()]
    if json_:
        _emit_json(rows)
        return
    table = Table(title="The report's architectures (studies/report.toml)")
    for col in ("index", "label", "spec", "params", "reported", "match"):
        table.add_column(col, justify="right" if col in ("index", "params", "reported") else "left")
    for r in rows:
        ok = "yes" if r["params"] == r["reported_params"] else "NO"
        table.add_row(str(r["index"]), r["label"], r["spec"], f"{r['params']:,}", f"{r['reported_params']:,}", ok)
    out().print(table)


def _parse_seeds(text: str) -> list[int]:
    try:
        seeds = [int(s) for s in text.split(",") if s.strip()]
    except ValueError:
        raise UserError(f"cannot read seeds {text!r}; use e.g. 42,43,44") from None
    if not seeds or len(set(seeds)) != len(seeds):
        raise UserError(f"seeds must be a non-empty list of distinct integers, got {text!r}")
    return seeds


@app.command()
def train(
    spec: Annotated[str, typer.Argument(help="Architecture, e.g. mlp:128-relu or cnn:6c5-p2-16c5-p2-fc128,64.")],
    seeds: Annotated[str, typer.Option(help="Comma-separated seeds; all train together, fused.")] = "42",
    epochs: Annotated[int, typer.Option(min=1, help="Epochs.")] = 50,
    loss: Annotated[Loss, typer.Option(help="Loss: cross-entropy or KL divergence.")] = Loss.ce,
    batch_size: Annotated[int, typer.Option(min=1, help="Batch size.")] = 32,
    lr: Annotated[float, typer.Option(min=0.0, help="AdamW learning rate.")] = 3e-4,
    weight_decay: Annotated[float, typer.Option(min=0.0, help="AdamW weight decay.")] = 1e-3,
    device: DeviceOpt = None,
    data_dir: DataDirOpt = None,
    threads: ThreadsOpt = None,
    json_: JsonOpt = False,
) -> None:
    """Train one architecture outside Optuna and print its test metrics."""
    from archsearch.data import load_dataset
    from archsearch.spec import parse_spec
    from archsearch.train import Protocol
    from archsearch.train import train as run_training

    parsed = parse_spec(spec)
    seed_list = _parse_seeds(seeds)
    dev = _setup_torch(threads, device)
    data = load_dataset(data_dir, device=dev)
    protocol = Protocol(epochs=epochs, batch_size=batch_size, lr=lr, weight_decay=weight_decay, loss=loss.value)
    with progress.bar(enabled=not json_) as bar:
        task = bar.add_task(f"train {parsed}", total=None)
        result = run_training(
            parsed, seed_list, protocol, data, device=dev, on_step=lambda d, t: bar.update(task, completed=d, total=t)
        )
    if json_:
        _emit_json(result.to_dict())
        return
    table = Table(title=f"{parsed} · {epochs} epoch(s) · {result.seconds:.1f} s · test set")
    for col in ("seed", "accuracy", "precision", "recall", "f1", "diverged"):
        table.add_column(col, justify="right")
    for run in result.runs:
        m = run.metrics["test"]
        table.add_row(
            str(run.seed), *(f"{m[k]:.4f}" for k in ("accuracy", "precision", "recall", "f1")), str(run.diverged)
        )
    out().print(table)


class LossChoice(StrEnum):
    ce = "ce"
    kl = "kl"
    both = "both"


StorageOpt = Annotated[
    str | None,
    typer.Option(
        help="Optuna storage URL: sqlite:///FILE.db (default sqlite:///archsearch.db), postgresql://…, "
        "journal:///FILE.log."
    ),
]
WorkersOpt = Annotated[
    int, typer.Option(min=1, help="Parallel worker processes on this machine (each gets cores/N threads).")
]
StudyOpt = Annotated[str | None, typer.Option(help="Study name; default derived from the protocol.")]


@app.command()
def reproduce(
    models: Annotated[str, typer.Option(help="Report rows, e.g. 0,6,16 or 0-5; default all 17.")] = "all",
    runs: Annotated[int | None, typer.Option(min=1, help="Runs (seeds) per row; default 5 (--quick: 2).")] = None,
    epochs: Annotated[int | None, typer.Option(min=1, help="Epochs; default 50 (--quick: 2).")] = None,
    loss: Annotated[LossChoice, typer.Option(help="Loss; 'both' trains each row with CE and with KL.")] = LossChoice.ce,
    seed: Annotated[int, typer.Option(help="First seed; runs use seed, seed+1, …")] = 42,
    batch_size: Annotated[int, typer.Option(min=1, help="Batch size (report: 32).")] = 32,
    lr: Annotated[float, typer.Option(min=0.0, help="AdamW learning rate (report: 3e-4).")] = 3e-4,
    weight_decay: Annotated[float, typer.Option(min=0.0, help="AdamW weight decay (report: 1e-3).")] = 1e-3,
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
    """Reproduce the report's table as fixed Optuna trials; rerun to resume."""
    from archsearch import compare
    from archsearch import reproduce as rep
    from archsearch.artifacts import artifact_store
    from archsearch.data import default_data_dir, ensure_raw_files, load_dataset
    from archsearch.report import parse_indexes
    from archsearch.storage import DEFAULT_STORAGE, open_storage
    from archsearch.workers import default_workers, spawn_workers, wait_workers

    cfg = rep.ReproduceConfig(
        indexes=tuple(parse_indexes(models)),
        losses=("ce", "kl") if loss is LossChoice.both else (loss.value,),
        runs=runs or (2 if quick else 5),
        first_seed=seed,
        epochs=epochs or (2 if quick else 50),
        batch_size=batch_size,
        lr=lr,
        weight_decay=weight_decay,
    )
    if out_dir is not None:
        compare.check_writable(out_dir)
    dev = _setup_torch(threads, device)
    ensure_raw_files(data_dir or default_data_dir())  # missing data fails before the study is touched
    store = open_storage(storage)
    name = study_name or cfg.default_study_name()
    study = rep.open_reproduce_study(store, name, cfg)
    todo = rep.pending(study, cfg)
    if workers is None:
        workers = default_workers(dev, threads, len(todo))
    with progress.bar(enabled=not json_ and bool(todo)) as bar:
        overall = bar.add_task(f"study {name}: trials", total=len(todo))
        if todo and workers > 1:
            procs = spawn_workers(
                workers, storage or DEFAULT_STORAGE, name, device=device, data_dir=data_dir, models=models
            )
            wait_workers(procs, lambda: bar.update(overall, completed=len(todo) - len(rep.pending(study, cfg))))
            stats = rep.Stats()
        elif todo:
            data = load_dataset(data_dir, device=dev)
            hooks = _trial_hooks(bar, overall)
            stats = rep.run_reproduce(study, cfg, data, device=dev, hooks=hooks, artifact_store=artifact_store(storage))
        else:
            stats = rep.Stats()
    results = rep.collect_results(study, cfg)
    comparisons = compare.compare(results)
    trained_now = len(stats.trained) if workers == 1 else len(todo) - len(rep.pending(study, cfg))
    meta = {**rep.config_dict(cfg), "study": name, "storage": storage or DEFAULT_STORAGE, "device": str(dev),
            "trained_now": trained_now, "failed_now": len(stats.failed), "workers": workers}  # fmt: skip
    written = compare.write_outputs(out_dir, results, comparisons, meta) if out_dir is not None else []
    if json_:
        _emit_json({"meta": meta, "rows": results, "comparisons": comparisons, "notes": list(compare.NOTES)})
        return
    _print_reproduction(name, results, comparisons, meta)
    if written:
        out().print(f"wrote {', '.join(written)} to {out_dir}")


def _print_reproduction(name: str, results: list[dict[str, Any]], comparisons: list[dict[str, Any]], meta: Any) -> None:
    from archsearch.compare import NOTES, against_reported

    con = out()
    table = Table(title=f"Report reproduction · study {name} · {meta['runs']} run(s) × {meta['epochs']} epoch(s)")
    cols = ("row", "architecture", "params", "loss", "accuracy", "reported", "diff", "reported vs 95% CI")
    for col in (*cols, "precision", "recall"):
        table.add_column(col, justify="left" if col in ("architecture", "loss", "reported vs 95% CI") else "right")
    for r, d in zip(results, against_reported(results), strict=True):
        table.add_row(
            str(r["index"]), r["label"], f"{r['params']:,}", r["loss"],
            f"{r['acc_mean']:.4f} ± {r['acc_std']:.4f}", f"{r['reported_acc']:.4f}", f"{r['acc_diff']:+.4f}",
            d["verdict"], f"{r['prec_mean']:.4f} (rep. {r['reported_prec']:.4f})",
            f"{r['rec_mean']:.4f} (rep. {r['reported_rec']:.4f})",
        )  # fmt: skip
    con.print(table)
    con.print(f"trained now: {meta['trained_now']} trial(s); failed: {meta['failed_now']}")
    if meta["deviations"]:
        con.print("protocol deviates from the report: " + "; ".join(meta["deviations"]))
    for c in comparisons:
        con.print(f"\n[bold]{c['section']} {c['title']}[/bold]: claimed {' > '.join(map(str, c['claimed_order']))}, "
                  f"reproduced {' > '.join(map(str, c['reproduced_order']))}")  # fmt: skip
        for s in c["steps"]:
            p = "–" if s["p_value"] is None else f"{s['p_value']:.3f}"
            con.print(f"  {s['claim']}: reproduced diff {s['reproduced_diff']:+.4f}, Welch p = {p} → {s['verdict']}")
    con.print("\nnotes:")
    for n in NOTES:
        con.print(f"  - {n}")


class Sampler(StrEnum):
    tpe = "tpe"
    random = "random"
    grid = "grid"
    cmaes = "cmaes"
    nsga2 = "nsga2"


class Pruner(StrEnum):
    median = "median"
    hyperband = "hyperband"
    none = "none"


@app.command()
def search(
    space: Annotated[str, typer.Option(help="Space: mlp, cnn, or a TOML file (see studies/*.toml).")],
    n_trials: Annotated[int, typer.Option(min=1, help="Target number of finished trials in the study.")] = 20,
    timeout: Annotated[float | None, typer.Option(min=1, help="Stop starting trials after this many seconds.")] = None,
    epochs: Annotated[int, typer.Option(min=1, help="Epochs per trial.")] = 10,
    runs: Annotated[int, typer.Option(min=1, help="Seeds per trial, trained fused.")] = 1,
    seed: Annotated[int, typer.Option(help="Seed of the sampler, the validation split and the first run.")] = 42,
    sampler: Annotated[Sampler, typer.Option(help="Optuna sampler.")] = Sampler.tpe,
    pruner: Annotated[Pruner, typer.Option(help="Optuna pruner (per-epoch validation accuracy).")] = Pruner.median,
    objectives: Annotated[
        str, typer.Option(help="'accuracy' or 'accuracy,params' (maximise accuracy, minimise parameters).")
    ] = "accuracy",
    val_size: Annotated[int, typer.Option(min=1, help="Validation images held out of the training set.")] = 10000,
    include_report: Annotated[
        bool, typer.Option(help="Start with the report's architectures that fit the space.")
    ] = False,
    workers: WorkersOpt = 1,
    storage: StorageOpt = None,
    study_name: StudyOpt = None,
    device: DeviceOpt = None,
    data_dir: DataDirOpt = None,
    threads: ThreadsOpt = None,
    json_: JsonOpt = False,
) -> None:
    """Search an architecture space with Optuna; the objective is validation accuracy, never test."""
    from archsearch import search as srch
    from archsearch.artifacts import artifact_store
    from archsearch.data import default_data_dir, ensure_raw_files, load_dataset
    from archsearch.spaces import load_space
    from archsearch.storage import DEFAULT_STORAGE, open_storage
    from archsearch.workers import spawn_workers, wait_workers

    sp = load_space(space)
    cfg = srch.SearchConfig(
        space=space, n_trials=n_trials, timeout=timeout, epochs=epochs, runs=runs, seed=seed,
        sampler=sampler.value, pruner=pruner.value, objectives=tuple(o.strip() for o in objectives.split(",")),
        val_size=val_size, include_report=include_report,
    )  # fmt: skip
    srch.check_config(cfg, sp)
    dev = _setup_torch(threads, device)
    ensure_raw_files(data_dir or default_data_dir())
    store = open_storage(storage)
    name = study_name or f"search-{sp.name}"
    study = srch.open_search_study(store, name, sp, cfg)
    with progress.bar(enabled=not json_) as bar:
        done0 = srch.finished_trials(study)
        overall = bar.add_task(f"study {name}: finished trials", total=n_trials, completed=min(done0, n_trials))

        def tick(*_: Any) -> None:
            bar.update(overall, completed=min(srch.finished_trials(study), n_trials))

        if workers > 1:
            procs = spawn_workers(workers, storage or DEFAULT_STORAGE, name, device=device, data_dir=data_dir)
            wait_workers(procs, tick)
            ran = srch.finished_trials(study) - done0
        else:
            data = load_dataset(data_dir, val_size=val_size, split_seed=seed, device=dev)
            hooks = _trial_hooks(bar)
            ran = srch.run_search(
                study, sp, cfg, data, device=dev, hooks=hooks, callbacks=[tick], artifact_store=artifact_store(storage)
            )
    summary = srch.search_summary(study)
    summary["ran_now"] = ran
    if json_:
        _emit_json(summary)
        return
    _print_search(summary)


def _print_search(s: dict[str, Any]) -> None:
    con = out()
    con.print(f"study {s['study']}: {s['counts']} · ran now: {s['ran_now']}")
    shown = s["pareto_front"] or ([s["best"]] if s["best"] else [])
    table = Table(title="Pareto front (val accuracy vs parameters)" if s["pareto_front"] else "Best trial")
    for col in ("trial", "spec", "params", "val acc", "test acc"):
        table.add_column(col, justify="left" if col == "spec" else "right")
    for r in shown:
        table.add_row(
            str(r["trial"]), r["spec"], f"{r['params']:,}", f"{r['val_acc']:.4f} ± {r['val_acc_std']:.4f}",
            f"{r['test_acc']:.4f} ± {r['test_acc_std']:.4f}",
        )  # fmt: skip
    con.print(table)
    for key, label in (("best_under_44374", "best ≤ 44,374 params"), ("best_under_100000", "best ≤ 100,000 params")):
        r = s[key]
        if r:
            con.print(f"{label}: {r['spec']} ({r['params']:,}) val {r['val_acc']:.4f}, test {r['test_acc']:.4f}")
    rb, rn = s["report_best"], s["report_nearest_params"]
    con.print(f"report's best: row {rb['index']} ({rb['params']:,} params) test {rb['acc']:.4f}")
    if rn:
        con.print(f"report's row nearest in parameters: row {rn['index']} {rn['label']} ({rn['params']:,}) "
                  f"test {rn['acc']:.4f}")  # fmt: skip
    con.print(s["note"])


def _trial_hooks(bar: Any, overall: Any = None) -> Any:
    """Progress of the trial in training (steps with ETA, epoch accuracy); ``overall`` advances per trial."""
    from archsearch.objective import Hooks

    current = bar.add_task("", total=None, visible=False)

    def on_epoch(r: Any) -> None:
        bar.update(current, description=f"  epoch {r.epoch}/{r.epochs} {r.monitor} acc {r.mean_accuracy:.4f}")

    return Hooks(
        on_trial=lambda label: bar.update(current, description=f"  {label}", completed=0, total=None, visible=True),
        on_step=lambda d, t: bar.update(current, completed=d, total=t),
        on_epoch=on_epoch,
        on_result=lambda trial, result: bar.advance(overall) if overall is not None else None,
    )


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
    """Join a study from any machine and train until it has nothing left to do."""
    from archsearch.data import default_data_dir, ensure_raw_files
    from archsearch.report import parse_indexes
    from archsearch.workers import run_worker

    rows = parse_indexes(models) if models else None
    dev = _setup_torch(threads, device)
    ensure_raw_files(data_dir or default_data_dir())
    with progress.bar(enabled=not json_) as bar:
        result = run_worker(storage, study, device=dev, data_dir=data_dir, hooks=_trial_hooks(bar), models=rows)
    if json_:
        _emit_json(result)
    else:
        out().print(f"worker done: {result}")


def _print_tables(tables: list[tuple[str, list[str], list[list[str]]]]) -> None:
    con = out()
    for title, headers, rows in tables:
        table = Table(title=title)
        for h in headers:
            table.add_column(h)
        for r in rows:
            table.add_row(*r)
        con.print(table)


class Format(StrEnum):
    torchscript = "torchscript"
    onnx = "onnx"


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
    """Export a trial's trained model as safetensors + config.json, loadable without Optuna."""
    from archsearch.export import ParetoChoiceNeeded, export_trial

    try:
        result = export_trial(storage, study, out_dir, trial, seed, [f.value for f in format_ or []])
    except ParetoChoiceNeeded as err:
        if not json_:
            rows = [[str(p["number"]), str(p["spec"]), ", ".join(f"{v:g}" for v in p["values"])] for p in err.front]
            _print_tables([("Pareto front: choose one with --trial", ["trial", "spec", "values"], rows)])
        raise
    if json_:
        _emit_json(result)
        return
    cfg = result["config"]
    src = cfg.get("source", {})
    out().print(f"exported trial {src.get('trial')} seed {cfg.get('seed')} ({cfg.get('spec')}) to {result['out']}: "
                f"{', '.join(result['files'])}")  # fmt: skip


@app.command()
def evaluate(
    directory: Annotated[Path, typer.Argument(help="An exported checkpoint directory.")],
    data_dir: DataDirOpt = None,
    threads: ThreadsOpt = None,
    json_: JsonOpt = False,
) -> None:
    """Rebuild an exported model and recompute its test metrics; they must equal the recorded ones."""
    from archsearch.checkpoint import evaluate_checkpoint

    _setup_torch(threads, "cpu")
    result = evaluate_checkpoint(directory, data_dir)
    if json_:
        _emit_json(result)
        return
    m, rec = result["metrics"], result.get("recorded") or {}
    rows = [[k, f"{m[k]:.6f}", f"{rec[k]:.6f}" if k in rec else "–"] for k in ("accuracy", "precision", "recall", "f1")]
    _print_tables([(f"{result['spec']} seed {result['seed']} · test set", ["metric", "now", "recorded"], rows)])
    out().print("matches the study's record exactly" if result["matches_recorded"] else "DIFFERS from the record")


@app.command()
def predict(
    directory: Annotated[Path, typer.Argument(help="An exported checkpoint directory.")],
    images: Annotated[list[Path], typer.Argument(help="Images (28x28 grayscale; others are resized).")],
    json_: JsonOpt = False,
) -> None:
    """Classify images with an exported model."""
    from archsearch.checkpoint import predict_images

    results = predict_images(directory, images)
    if json_:
        _emit_json(results)
        return
    for r in results:
        for w in r["warnings"]:
            sys.stderr.write(f"archsearch: warning: {r['path']}: {w}\n")
    rows = [[str(r["path"]), r["class"], f"{r['probability']:.3f}"] for r in results]
    _print_tables([("Predictions", ["image", "class", "probability"], rows)])


@app.command()
def analyze(
    study: Annotated[str, typer.Option(help="Study name (reproduce or search).")],
    storage: StorageOpt = None,
    out_dir: Annotated[Path | None, typer.Option("--out", help="Write PNG plots and ANALYSIS.md here.")] = None,
    json_: JsonOpt = False,
) -> None:
    """Effects of depth, parameter count and activation in a study; importances for searches."""
    from archsearch.analysis_report import format_tables, write_analysis
    from archsearch.analyze import analyze_study
    from archsearch.compare import check_writable

    if out_dir is not None:
        check_writable(out_dir)
    result = analyze_study(storage, study)
    written = write_analysis(result, out_dir) if out_dir is not None else []
    if json_:
        _emit_json(result)
        return
    _print_tables(format_tables(result))
    if written:
        out().print(f"wrote {', '.join(written)} to {out_dir}")


@app.command()
def dashboard(
    storage: StorageOpt = None,
    host: Annotated[str, typer.Option(help="Address to bind; localhost unless you mean otherwise.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(min=1, max=65535, help="Port.")] = 8080,
) -> None:
    """Serve optuna-dashboard for the storage and its artifacts (weights)."""
    from archsearch.dashboard import serve

    serve(storage, host=host, port=port, on_ready=lambda url: out().print(f"optuna-dashboard: {url}  (Ctrl-C stops)"))


def main(argv: list[str] | None = None) -> int:
    """Entry point: run the app, turning user errors into one line on stderr and exit code 2."""
    command = typer.main.get_command(app)
    try:
        command.main(args=argv, prog_name="archsearch", standalone_mode=False)
    except typer.Exit as err:
        return err.exit_code
    except click_exc.NoArgsIsHelpError as err:
        sys.stderr.write((err.ctx.get_help() if err.ctx else str(err)) + "\n")
        return 2
    except (UserError, click_exc.ClickException) as err:
        message = err.format_message() if isinstance(err, click_exc.ClickException) else str(err)
        sys.stderr.write(f"archsearch: error: {' '.join(message.split())}\n")
        return 2
    except (typer.Abort, KeyboardInterrupt):
        sys.stderr.write("archsearch: interrupted\n")
        return 130
    return 0
