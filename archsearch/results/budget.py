"""What `archsearch search --time --out DIR` writes beside the exported model: ``summary.json``, ``REPORT.md`` and
two plots (validation accuracy over the budget's time; the screen's trials against their parameter counts)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from archsearch.core.jsonio import dumps
from archsearch.results.tables import mean_std

__all__ = ["budget_lines", "budget_markdown", "budget_tables", "write_budget_report"]

TIME_PLOT, PARAMS_PLOT = "accuracy-over-time.png", "screen-vs-params.png"
Table = tuple[str, list[str], list[list[str]]]


def _acc(row: Mapping[str, Any], key: str) -> str:
    values = row.get(f"{key}_per_seed") or []
    return mean_std(row.get(key), row.get(f"{key}_std"), len(values) or None)


def _finalist_cells(r: Mapping[str, Any]) -> list[str]:
    seconds = f"{r['seconds']:,.0f}" if r.get("seconds") else "–"
    seeds = str(len(r.get("seeds") or []))
    return [str(r["trial"]), str(r["spec"]), f"{r['params']:,}", seeds, str(r["epochs"]), _acc(r, "val_acc"),
            _acc(r, "test_acc"), seconds]  # fmt: skip


def budget_tables(summary: Mapping[str, Any]) -> list[Table]:
    """The finalists, best mean validation accuracy first (the CLI prints them with rich, REPORT.md as Markdown)."""
    headers = ["trial", "spec", "params", "seeds", "epochs", "val (mean ± std)", "test (mean ± std)", "seconds"]
    body = [_finalist_cells(r) for r in summary["finalists"]]
    return [("Finalists, best mean validation accuracy first (test accuracy chose nothing)", headers, body)]


def budget_lines(summary: Mapping[str, Any]) -> list[str]:
    """The verdict in words: the winner, its test accuracy over its seeds, the runner-up, the time spent."""
    best = summary["best"]
    lines = [
        f"best: {best['spec']} ({best['params']:,} parameters), val {_acc(best, 'val_acc')}, "
        f"test {_acc(best, 'test_acc')} over seeds {best.get('seeds')}",
        f"time: {summary['seconds']:,.0f} s of a {summary['time_budget_s']:,.0f} s budget",
    ]
    p = summary.get("welch_p")
    if summary.get("runner_up") is not None and p is not None:
        verdict = "distinguishable" if summary.get("distinguishable") else "not distinguishable"
        lines.append(f"runner-up {summary['runner_up']['spec']}: {verdict} from the winner (Welch p = {p:.3g})")
    return lines


def _md_table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> list[str]:
    out = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    return out + ["| " + " | ".join(c.replace("|", "\\|") for c in row) + " |" for row in rows]


def budget_markdown(summary: Mapping[str, Any], images: Sequence[str] = ()) -> str:
    screen = summary["screen"]
    counts = ", ".join(f"{n} {state}" for state, n in screen["counts"].items())
    budget = f"at most {summary['max_params']:,} parameters" if summary.get("max_params") else "no parameter budget"
    subset = f"{screen['train_images']:,}" if screen["train_images"] else "all the"
    lines = [
        f"# A {summary['time_budget_s']:,.0f}-second search of `{summary['space']}` on {summary['dataset']}",
        "",
        f"{budget}; seed {summary['seed']}; {summary['seconds']:,.0f} s of wall time from start to exported model.",
        "",
        *(f"- {line}" for line in budget_lines(summary)),
        "",
        f"**Screen**: {screen['epochs']} epochs per trial on {subset} training images, successive halving over epochs, "
        f"{screen['val_images']:,} validation images held out; trials: {counts}.",
        "",
        f"**Finalists**: {summary['final_epochs']} epochs on every training image, each seed its own run.",
        "",
    ]
    for title, headers, rows in budget_tables(summary):
        lines += [f"## {title}", "", *_md_table(headers, rows), ""]
    lines += [f"![{name}]({name})" for name in images]
    lines += ["", summary["note"], ""]
    return "\n".join(lines)


def _plots(summary: Mapping[str, Any], out: Path) -> list[str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from archsearch.results.files import save_figure

    screen = [r for r in summary["screen"]["trials"] if r.get("end_s") is not None]
    finals = [r for r in summary["finalists"] if r.get("end_s") is not None]
    written = []
    fig, ax = plt.subplots(figsize=(8, 4.5))
    done = [r for r in screen if r["state"] == "complete"]
    ax.scatter([r["end_s"] / 60 for r in screen], [r["val_acc"] for r in screen], s=12, alpha=0.5,
               label="screen trial (its last epoch)")  # fmt: skip
    best, xs, ys = 0.0, [], []
    for r in sorted(done, key=lambda r: r["end_s"]):
        best = max(best, r["val_acc"])
        xs.append(r["end_s"] / 60)
        ys.append(best)
    ax.step(xs, ys, where="post", label="best complete screen trial")
    ax.errorbar([r["end_s"] / 60 for r in finals], [r["val_acc"] for r in finals],
                yerr=[r["val_acc_std"] or 0 for r in finals], fmt="s", capsize=3,
                label="finalist (mean ± std)")  # fmt: skip
    ax.axvline(summary["time_budget_s"] / 60, color="grey", linestyle=":", label="budget")
    ax.set(xlabel="minutes since the first trial", ylabel="validation accuracy")
    ax.legend(loc="lower right")
    written.append(save_figure(fig, out / TIME_PLOT))
    fig, ax = plt.subplots(figsize=(8, 4.5))
    for state, marker in (("complete", "o"), ("pruned", "x")):
        group = [r for r in summary["screen"]["trials"] if r["state"] == state]
        ax.scatter([r["params"] for r in group], [r["val_acc"] for r in group], marker=marker, alpha=0.6,
                   label=f"{state} (after its last epoch)")  # fmt: skip
    ax.set(xscale="log", xlabel="parameters", ylabel="validation accuracy (screen)")
    ax.legend(loc="lower right")
    written.append(save_figure(fig, out / PARAMS_PLOT))
    return written


def write_budget_report(summary: Mapping[str, Any], out: Path) -> list[str]:
    """Write ``summary.json``, the plots and ``REPORT.md`` into the folder ``out``; returns the file names."""
    images = _plots(summary, out)
    (out / "summary.json").write_text(dumps(summary))
    (out / "REPORT.md").write_text(budget_markdown(summary, images))
    return ["summary.json", "REPORT.md", *images]
