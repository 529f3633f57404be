"""Results as plain tables — (title, headers, rows of strings) — and lines of text: what the CLI prints (with rich)
for a training run, a reproduction and a search. No rich here, so anything can render them."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from archsearch.results.compare import NOTES, against_reported

__all__ = [
    "Table",
    "mean_std",
    "reproduction_lines",
    "reproduction_tables",
    "search_lines",
    "search_tables",
    "train_tables",
]

Table = tuple[str, list[str], list[list[str]]]


def mean_std(mean: Any, std: Any, runs: int | None = None) -> str:
    """A mean over runs (seeds) as every table and report prints it: "0.7834 ± 0.0012" over two runs or more, "0.7834"
    alone over one (the studies record a std of 0.0 for one value, where it is undefined), "–" without a mean.
    ``runs``: how many runs the mean and std are over; None where the row does not say (then a std of None means
    one run)."""
    if mean is None:
        return "–"
    if std is None or (runs is not None and runs < 2):
        return f"{mean:.4f}"
    return f"{mean:.4f} ± {std:.4f}"


def _finalist_runs(r: Mapping[str, Any]) -> int | None:
    """How many runs a finalist's accuracies are over: its runs that did not diverge (else its seeds)."""
    runs = r.get("test_per_seed") or r.get("seeds")
    return len(runs) if isinstance(runs, list) else None


def train_tables(result: Mapping[str, Any]) -> list[Table]:
    """``archsearch train``: per seed, the test metrics."""
    p = result["protocol"]
    title = (
        f"{result['spec']} · {p['epochs']} epoch(s) · {result['seconds']:.1f} s · step {result['engine_step']} · "
        "test set"
    )
    rows = [
        [str(run["seed"]), *(f"{run['metrics']['test'][k]:.4f}" for k in ("accuracy", "precision", "recall", "f1")),
         str(run["diverged"])]
        for run in result["runs"]
    ]  # fmt: skip
    return [(title, ["seed", "accuracy", "precision", "recall", "f1", "diverged"], rows)]


def reproduction_tables(study: str, rows: Sequence[dict[str, Any]], meta: Mapping[str, Any]) -> list[Table]:
    title = f"Report reproduction · study {study} · {meta['runs']} run(s) × {meta['epochs']} epoch(s)"
    headers = ["row", "architecture", "params", "loss", "accuracy", "reported", "diff", "reported vs 95% CI",
               "precision", "recall"]  # fmt: skip
    out = []
    for r, d in zip(rows, against_reported(rows), strict=True):
        out.append([
            str(r["index"]), r["label"], f"{r['params']:,}", r["loss"],
            mean_std(r["acc_mean"], r["acc_std"], r["n_runs"]), f"{r['reported_acc']:.4f}", f"{r['acc_diff']:+.4f}",
            d["verdict"],
            f"{r['prec_mean']:.4f} (rep. {r['reported_prec']:.4f})",
            f"{r['rec_mean']:.4f} (rep. {r['reported_rec']:.4f})",
        ])  # fmt: skip
    return [(title, headers, out)]


def reproduction_lines(comparisons: Sequence[Mapping[str, Any]], meta: Mapping[str, Any]) -> list[str]:
    lines = [f"trained now: {meta['trained_now']} trial(s); failed: {meta['failed_now']}"]
    if meta["deviations"]:
        lines.append("protocol deviates from the report: " + "; ".join(meta["deviations"]))
    for c in comparisons:
        lines.append(f"\n{c['section']} {c['title']}: claimed {' > '.join(map(str, c['claimed_order']))}, "
                     f"reproduced {' > '.join(map(str, c['reproduced_order']))}")  # fmt: skip
        for s in c["steps"]:
            p = "–" if s["p_value"] is None else f"{s['p_value']:.3f}"
            lines.append(f"  {s['claim']}: reproduced diff {s['reproduced_diff']:+.4f}, Welch p = {p} → {s['verdict']}")
    lines.append("\nnotes:")
    lines += [f"  - {n}" for n in NOTES]
    return lines


def final_table(final: Mapping[str, Any]) -> Table:
    """The finalists: screening validation accuracy, then final validation and test accuracy over more seeds."""
    rows = [
        [str(r["source_trial"]), r["spec"], f"{r['params']:,}", f"{r['screen_val_acc']:.4f}",
         mean_std(r["val_acc"], r["val_acc_std"], _finalist_runs(r)),
         mean_std(r["test_acc"], r["test_acc_std"], _finalist_runs(r)), f"{r['epochs']} × {len(r['seeds'])}"]
        for r in final["finalists"]
    ]  # fmt: skip
    headers = ["trial", "spec", "params", "screen val", "final val", "final test", "epochs × seeds"]
    return (f"Finalists (study {final['study']})", headers, rows)


def search_tables(s: Mapping[str, Any]) -> list[Table]:
    shown = s["pareto_front"] or ([s["best"]] if s["best"] else [])
    title = "Pareto front (val accuracy vs parameters)" if s["pareto_front"] else "Best trial"
    rows = [
        [str(r["trial"]), r["spec"], f"{r['params']:,}", mean_std(r["val_acc"], r["val_acc_std"], r.get("n_runs")),
         mean_std(r["test_acc"], r["test_acc_std"], r.get("n_runs"))]
        for r in shown
    ]  # fmt: skip
    tables = [(title, ["trial", "spec", "params", "val acc", "test acc"], rows)]
    return [*tables, final_table(s["final"])] if s.get("final") else tables


def search_lines(s: Mapping[str, Any]) -> list[str]:
    lines = [f"study {s['study']}: {s['counts']} · ran now: {s['ran_now']}"]
    for budget, r in s["best_under"].items():
        if r:
            lines.append(
                f"best ≤ {int(budget):,} params: {r['spec']} ({r['params']:,}) val {r['val_acc']:.4f}, "
                f"test {r['test_acc']:.4f}"
            )
    rb, rn = s["report_best"], s["report_nearest_params"]
    lines.append(f"report's best: row {rb['index']} ({rb['params']:,} params) test {rb['acc']:.4f}")
    if rn:
        lines.append(f"report's row nearest in parameters: row {rn['index']} {rn['label']} ({rn['params']:,}) "
                     f"test {rn['acc']:.4f}")  # fmt: skip
    if s.get("final"):
        for budget, r in s["final"]["best_under"].items():
            if r:
                lines.append(
                    f"finalist ≤ {int(budget):,} params: {r['spec']} ({r['params']:,}) {r['epochs']} epochs × "
                    f"{len(r['seeds'])} seed(s): val {r['val_acc']:.4f}, "
                    f"test {mean_std(r['test_acc'], r['test_acc_std'], _finalist_runs(r))}"
                )
    lines.append(s["note"])
    return lines
