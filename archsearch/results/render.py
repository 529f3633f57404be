"""Tables, Markdown and plots of an analysis (the plain data of :func:`archsearch.study.analysis.analyze`).

Kept apart from the analysis itself: what a study says is computed once, in :mod:`archsearch.study.analysis`; how it is
shown — rich tables in the terminal, ``ANALYSIS.md``, PNG plots with matplotlib — lives here.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from archsearch.results.analysis import ACTIVATION_ORDER
from archsearch.results.tables import mean_std

__all__ = ["format_tables", "markdown", "write_analysis"]


# ------------------------------------------------------------------------------------------------- tables, Markdown


Table = tuple[str, list[str], list[list[str]]]


def format_tables(result: Mapping[str, Any]) -> list[Table]:
    """The analysis as (title, headers, rows) of strings: the CLI renders them with rich, Markdown reuses them."""
    monitor = result["monitor"]
    short = "val acc" if monitor == "val" else f"{monitor} acc"
    both = monitor != "test"  # searches: test accuracy beside the monitored one, for reporting only
    tables = [
        _trials_table(result, short, both),
        _front_table(result, short, both),
        _depth_table(result, short),
        _activation_table(result, short),
    ]
    if imp := result.get("importances"):
        tables.append(_importance_table(imp, short))
    if report := result.get("report"):
        tables += _report_tables(report)
    return tables


def _accs(r: Mapping[str, Any], both: bool) -> list[str]:
    """The judged accuracy (and, for searches, test accuracy beside it) as mean ± std over seeds."""
    out = [mean_std(r["acc_mean"], r["acc_std"], len(r["acc_per_seed"]))]
    return out + ([mean_std(r["test_acc_mean"], r["test_acc_std"], len(r["test_acc_per_seed"]))] if both else [])


def _trials_table(result: Mapping[str, Any], short: str, both: bool) -> Table:
    rows = result["rows"]
    multi_loss = len({r.get("loss") for r in rows}) > 1
    headers = ["trial", "spec", "params", "depth", "activation", *(["loss"] if multi_loss else []), short]
    headers += [*(["test acc"] if both else []), "Pareto"]
    body = []
    for r in sorted(rows, key=lambda r: -r["acc_mean"]):
        activation = str(r["activation"]) if r["depth"] else "–"  # mlp:linear has no hidden layer to activate
        line = [str(r["number"]), r["spec"], f"{r['params']:,}", str(r["depth"]), activation]
        line += [str(r.get("loss"))] if multi_loss else []
        body.append([*line, *_accs(r, both), "yes" if r["pareto"] else ""])
    title = f"Complete trials of {result['study']}, best first ({result['metric']}, mean ± std over seeds)"
    return title, headers, body


def _front_table(result: Mapping[str, Any], short: str, both: bool) -> Table:
    by_number = {r["number"]: r for r in result["rows"]}
    front = [by_number[n] for n in result["pareto_front"] if n in by_number]
    return (
        f"Pareto front: {result['metric']} (higher) against parameters (fewer)",
        ["trial", "spec", "params", short, *(["test acc"] if both else [])],
        [[str(r["number"]), r["spec"], f"{r['params']:,}", *_accs(r, both)] for r in front],
    )


def _depth_table(result: Mapping[str, Any], short: str) -> Table:
    rows = [
        [
            band["label"],
            str(d["depth"]),
            str(d["n_trials"]),
            str(d["n_runs"]),
            mean_std(d["mean"], d["std"], d["n_runs"]),
            d["best_spec"],
        ]
        for band in result["depth_effect"]
        for d in band["depths"]
    ]
    bands = f"bands of ×{result['band_factor']:g}; {result['metric']}, mean ± std over runs"
    return (
        f"Depth at similar parameter count ({bands})",
        ["band", "depth", "trials", "runs", short, "best trial's spec"],
        rows,
    )


def _activation_table(result: Mapping[str, Any], short: str) -> Table:
    act = result["activation_effect"]
    how = "same architecture and protocol" if act["mode"] == "matched" else "all trials pooled"
    rows = [
        [g["label"], a["activation"], str(a["n_trials"]), str(a["n_runs"]), mean_std(a["mean"], a["std"], a["n_runs"])]
        for g in act["groups"]
        for a in g["activations"]
    ]
    return (
        f"Activation ({how}; {result['metric']}, mean ± std over runs)",
        ["architecture", "activation", "trials", "runs", short],
        rows,
    )


def _importance_table(imp: Mapping[str, Any], short: str) -> Table:
    names, cols = list(imp["accuracy"]), ["accuracy"] + (["pareto"] if "pareto" in imp else [])
    return (
        "Hyperparameter importance (PED-ANOVA; share of the total, per target)",
        ["hyperparameter", short, *(["Pareto front (accuracy, params)"] if "pareto" in imp else [])],
        [[name] + [f"{imp[c].get(name, 0.0):.3f}" for c in cols] for name in names],
    )


def _report_tables(report: Mapping[str, Any]) -> list[Table]:
    results = [
        [
            str(r["index"]),
            r["label"],
            r["loss"],
            f"{r['params']:,}",
            mean_std(r["acc_mean"], r["acc_std"], r["n_runs"]),
            f"{r['reported_acc']:.4f}",
            f"{r['acc_diff']:+.4f}",
        ]
        for r in report["results"]
    ]
    steps = [
        [
            f"{c['section']} {c['title']}",
            c["loss"],
            s["claim"],
            f"{s['reported_diff']:+.4f}",
            f"{s['reproduced_diff']:+.4f}",
            "–" if s["p_value"] is None else f"{s['p_value']:.3f}",
            s["verdict"],
        ]
        for c in report["comparisons"]
        for s in c["steps"]
    ]
    return [
        ("Against the report (test accuracy, mean ± std over seeds)",
         ["row", "architecture", "loss", "params", "accuracy", "reported", "diff"], results),
        ("The report's comparisons (Welch's t-test on per-seed test accuracy)",
         ["section", "loss", "claim", "reported diff", "reproduced diff", "p", "verdict"], steps),
    ]  # fmt: skip


def _md_cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def _md_table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> list[str]:
    """A GitHub Markdown table; columns whose every cell is a number are right-aligned."""
    numeric = [all(re.match(r"^[+\-]?\d[\d,.]*( ± [\d.]+)?$", row[i]) for row in rows) for i in range(len(headers))]
    align = ["---:" if n and rows else "---" for n in numeric]
    lines = ["| " + " | ".join(map(_md_cell, headers)) + " |", "|" + "|".join(align) + "|"]
    lines += ["| " + " | ".join(map(_md_cell, row)) + " |" for row in rows]
    return lines


def markdown(result: Mapping[str, Any], images: Sequence[str] = ()) -> str:
    """ANALYSIS.md: a summary line, every table of :func:`format_tables`, the plots and the notes."""
    counts = ", ".join(f"{n} {state}" for state, n in sorted(result["counts"].items())) or "no trials"
    lines = [
        f"# Analysis of study `{result['study']}`",
        "",
        f"Kind: {result['kind']} · objectives: {', '.join(result['directions'])} · trials: {counts}.",
        "",
        f"Accuracies are **{result['metric']}** (the split the study monitored), mean ± std over seeds"
        + ("; test accuracy is shown beside it for reporting only." if result["monitor"] != "test" else "."),
        "",
    ]
    captions = {
        "accuracy_vs_params.png": "Accuracy against parameter count",
        "accuracy_vs_depth.png": "Accuracy against depth within parameter bands",
        "accuracy_by_activation.png": "Accuracy by activation",
        "importances.png": "Hyperparameter importances",
    }
    if images:
        lines += ["## Plots", ""]
        lines += [f"![{captions.get(name, name)}]({name})" for name in images]
        lines.append("")
    for title, headers, rows in format_tables(result):
        lines += [f"## {title}", ""]
        lines += _md_table(headers, rows) if rows else ["(nothing to compare)"]
        lines.append("")
    report = result.get("report")
    if report and report.get("deviations"):
        lines += ["Protocol deviations from the report: " + "; ".join(report["deviations"]), ""]
    if result.get("notes"):
        lines += ["## Notes", "", *[f"- {n}" for n in result["notes"]], ""]
    return "\n".join(lines)


# ------------------------------------------------------------------------------------------------------------ plots


def _params_plot(plt: Any, result: Mapping[str, Any], ylabel: str) -> Any:
    """Accuracy against parameter count, per model kind, with the Pareto front; None without trials."""
    rows = result["rows"]
    if not rows:
        return None
    fig, ax = plt.subplots(figsize=(9, 5.5))
    for kind in sorted({str(r["kind"]) for r in rows}):
        group = [r for r in rows if str(r["kind"]) == kind]
        ax.errorbar(
            [r["params"] for r in group], [r["acc_mean"] for r in group], yerr=[r["acc_std"] for r in group],
            fmt={"mlp": "o", "cnn": "s"}.get(kind, "^"), alpha=0.6, capsize=2,
            label=f"{kind.upper()} trials (± std over seeds)",
        )  # fmt: skip
    front = sorted((r for r in rows if r["pareto"]), key=lambda r: r["params"])
    ax.step(
        [r["params"] for r in front], [r["acc_mean"] for r in front], where="post", color="tab:red",
        marker="*", markersize=12, label="Pareto front (accuracy ↑, parameters ↓)",
    )  # fmt: skip
    for r in front if len(rows) > 25 else rows:
        tag = f"row {r['report_row']}" if r.get("report_row") is not None else f"#{r['number']}"
        ax.annotate(tag, (r["params"], r["acc_mean"]), textcoords="offset points", xytext=(4, 4), fontsize=8)
    ax.set(xscale="log", xlabel="parameters (count, log scale)", ylabel=ylabel)
    ax.set_title(f"{result['study']}: accuracy against parameter count")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(loc="lower right")
    return fig


def _depth_plot(plt: Any, result: Mapping[str, Any], ylabel: str) -> Any:
    """Accuracy against depth within parameter bands; None without bands."""
    from matplotlib.ticker import MaxNLocator

    bands = result["depth_effect"]
    if not bands:
        return None
    fig, ax = plt.subplots(figsize=(9, 5.5))
    for band in bands:
        ds = band["depths"]
        ax.errorbar(
            [d["depth"] for d in ds], [d["mean"] for d in ds], yerr=[d["std"] for d in ds],
            marker="o", capsize=3, label=band["label"],
        )  # fmt: skip
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set(xlabel="depth (hidden layers; CNN: conv + hidden fc layers)", ylabel=ylabel)
    ax.set_title(f"{result['study']}: accuracy against depth at similar parameter count (± std over runs)")
    ax.grid(True, alpha=0.3)
    ax.legend(title="parameter band")
    return fig


def _activation_plot(plt: Any, result: Mapping[str, Any], ylabel: str) -> Any:
    """Accuracy by activation, per architecture group; None without groups."""
    act = result["activation_effect"]
    if not act["groups"]:
        return None
    present = {x["activation"] for g in act["groups"] for x in g["activations"]}
    names = [a for a in ACTIVATION_ORDER if a in present] + sorted(present - set(ACTIVATION_ORDER))
    fig, ax = plt.subplots(figsize=(9, 5.5))
    width = 0.8 / len(act["groups"])
    lows, highs = [], []
    for i, g in enumerate(act["groups"]):
        stats = {a["activation"]: a for a in g["activations"]}
        xs = [j + (i - (len(act["groups"]) - 1) / 2) * width for j, n in enumerate(names) if n in stats]
        ys = [stats[n]["mean"] for n in names if n in stats]
        es = [stats[n]["std"] for n in names if n in stats]
        lows += [y - e for y, e in zip(ys, es, strict=True)]
        highs += [y + e for y, e in zip(ys, es, strict=True)]
        ax.bar(xs, ys, width=width, yerr=es, capsize=4, label=g["label"])
    ax.set_xticks(range(len(names)), names)
    # Bars from 0 would hide differences of a few tenths of a percent: zoom on the data (the axis says where).
    ax.set_ylim(max(0.0, min(lows) - 0.02), min(1.0, max(highs) + 0.01))
    how = "same architecture and protocol" if act["mode"] == "matched" else "all trials pooled"
    ax.set(xlabel="activation function", ylabel=ylabel)
    ax.set_title(f"{result['study']}: accuracy by activation ({how}; ± std over runs)")
    ax.grid(True, axis="y", alpha=0.3)
    ax.legend(title="architecture")
    return fig


def _importance_plot(plt: Any, result: Mapping[str, Any], ylabel: str) -> Any:
    """Hyperparameter importances (PED-ANOVA); None where none were computed."""
    metric = result["metric"]
    imp = result.get("importances")
    if not (imp and imp.get("accuracy")):
        return None
    names = list(imp["accuracy"])[::-1]  # most important on top
    series = [("accuracy", metric)] + ([("pareto", "Pareto front (accuracy, params)")] if "pareto" in imp else [])
    fig, ax = plt.subplots(figsize=(9, max(3.0, 0.45 * len(names) + 1.5)))
    height = 0.8 / len(series)
    for i, (key, label) in enumerate(series):
        ys = [j + (i - (len(series) - 1) / 2) * height for j in range(len(names))]
        ax.barh(ys, [imp[key].get(n, 0.0) for n in names], height=height, label=label)
    ax.set_yticks(range(len(names)), names)
    ax.set(xlabel="importance (PED-ANOVA, share of the total: sums to 1)", ylabel="hyperparameter")
    ax.set_title(f"{result['study']}: hyperparameter importance")
    ax.grid(True, axis="x", alpha=0.3)
    ax.legend(title="target")
    return fig


def _plots(result: Mapping[str, Any], out: Path) -> list[str]:
    import matplotlib

    matplotlib.use("Agg")  # files only: no display needed, and no GUI toolkit imported
    import matplotlib.pyplot as plt

    from archsearch.results.files import save_figure

    ylabel = f"{result['metric']} (fraction, mean over seeds)"
    written: list[str] = []
    for name, draw in (
        ("accuracy_vs_params.png", _params_plot),
        ("accuracy_vs_depth.png", _depth_plot),
        ("accuracy_by_activation.png", _activation_plot),
        ("importances.png", _importance_plot),
    ):
        fig = draw(plt, result, ylabel)
        if fig is not None:
            written.append(save_figure(fig, out / name))
    return written


def write_analysis(result: Mapping[str, Any], out_dir: str | Path) -> list[str]:
    """Write the PNG plots and ANALYSIS.md into ``out_dir``; returns the file names written.

    An out dir that cannot be created or written is a ``UserError`` before anything is written; the files are put
    in place all together or not at all (:func:`archsearch.results.files.output_dir`).
    """
    from archsearch.results.files import check_writable, output_dir

    out = Path(out_dir)
    check_writable(out)
    with output_dir(out) as tmp:
        images = _plots(result, tmp)
        (tmp / "ANALYSIS.md").write_text(markdown(result, images))
    return [*images, "ANALYSIS.md"]
