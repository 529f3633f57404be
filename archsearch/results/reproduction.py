"""A reproduction written out: results.json, REPORT.md (reproduced beside reported, the report's comparisons) and
its plots."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from archsearch.core.jsonio import dumps
from archsearch.results.compare import COMPARISONS, NOTES, against_reported
from archsearch.results.files import check_writable, output_dir, save_figure
from archsearch.results.stats import ALPHA
from archsearch.results.tables import mean_std

__all__ = ["markdown", "write_outputs"]


def _fmt_p(p: float | None) -> str:
    return "–" if p is None else f"{p:.3f}"


def markdown(results: Sequence[dict[str, Any]], comparisons: Sequence[dict[str, Any]], meta: dict[str, Any]) -> str:
    lines = [
        "# Reproduction of the report's table",
        "",
        f"Study `{meta.get('study')}` · {meta.get('runs')} run(s) per row (seeds {meta.get('seeds')}) · "
        f"{meta.get('epochs')} epoch(s) · batch {meta.get('batch_size')} · AdamW lr {meta.get('lr')}, "
        f"weight decay {meta.get('weight_decay')} · device {meta.get('device')}.",
        "",
    ]
    deviations = meta.get("deviations") or []
    lines.append(
        "Protocol: **the report's**."
        if not deviations
        else "Protocol deviates from the report: " + "; ".join(deviations)
    )
    lines += [
        "",
        "| row | architecture | params | loss | accuracy | reported | diff | precision | reported | recall | reported"
        " |",
        "|---:|---|---:|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in results:
        lines.append(
            f"| {r['index']} | {r['label']} (`{r['spec']}`) | {r['params']:,} | {r['loss']} | "
            f"{mean_std(r['acc_mean'], r['acc_std'], r['n_runs'])} | {r['reported_acc']:.4f} | {r['acc_diff']:+.4f} | "
            f"{mean_std(r['prec_mean'], r['prec_std'], r['n_runs'])} | {r['reported_prec']:.4f} | "
            f"{mean_std(r['rec_mean'], r['rec_std'], r['n_runs'])} | {r['reported_rec']:.4f} |"
        )
    lines += ["", "## Reproduced against reported accuracy", ""]
    lines.append("The report gives means only. For each row: the 95% t-interval of the reproduced mean, and whether")
    lines.append("the reported accuracy lies in it. Where it does not, the reproduction differs; the protocol was not")
    lines.append("tuned to match.")
    lines.append("")
    for d in against_reported(results):
        interval = "–" if d["interval"] is None else f"[{d['interval'][0]:.4f}, {d['interval'][1]:.4f}]"
        lines.append(f"- row {d['index']} ({d['loss']}): 95% interval {interval} → **{d['verdict']}**")
    lines += ["", "## The report's comparisons", "", f"Welch's t-test on per-seed test accuracy, alpha {ALPHA}.", ""]
    for c in comparisons:
        lines.append(f"### {c['section']} {c['title']}")
        lines.append("")
        lines.append(f"- claimed order (report): {' > '.join(map(str, c['claimed_order']))}")
        lines.append(f"- reproduced order: {' > '.join(map(str, c['reproduced_order']))}")
        for s in c["steps"]:
            lines.append(
                f"- {s['claim']}: reported {s['reported_diff']:+.4f}, reproduced {s['reproduced_diff']:+.4f}, "
                f"p = {_fmt_p(s['p_value'])} → **{s['verdict']}**"
            )
        lines.append("")
    lines += ["## Where the report's text and numbers disagree", "", *[f"- {n}" for n in NOTES], ""]
    return "\n".join(lines)


def _save(fig: Any, ax: Any, path: Path) -> str:
    ax.legend()
    return save_figure(fig, path)


def _plots(results: Sequence[dict[str, Any]], out: Path) -> list[str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    written = []
    by_index = {r["index"]: r for r in results}

    fig, ax = plt.subplots(figsize=(8, 5))
    for kind, marker in (("mlp", "o"), ("cnn", "s")):
        rs = [r for r in results if r["kind"] == kind]
        if rs:
            ax.errorbar(
                [r["params"] for r in rs], [r["acc_mean"] for r in rs], yerr=[r["acc_std"] for r in rs],
                fmt=marker, capsize=3, label=f"reproduced ({kind.upper()})",
            )  # fmt: skip
    ax.scatter(
        [r["params"] for r in results], [r["reported_acc"] for r in results], marker="x", c="k", label="reported"
    )
    for r in results:
        ax.annotate(str(r["index"]), (r["params"], r["acc_mean"]), textcoords="offset points", xytext=(4, 4))
    ax.set(xscale="log", xlabel="parameters (log scale)", ylabel="test accuracy (fraction)")
    ax.set_title("Test accuracy against parameter count")
    written.append(_save(fig, ax, out / "accuracy_vs_params.png"))

    acts = [by_index[i] for i in range(1, 7) if i in by_index]
    if acts:
        fig, ax = plt.subplots(figsize=(8, 5))
        xs = range(len(acts))
        ax.bar(xs, [r["acc_mean"] for r in acts], yerr=[r["acc_std"] for r in acts], capsize=4, label="reproduced")
        ax.scatter(xs, [r["reported_acc"] for r in acts], marker="x", c="k", zorder=3, label="reported")
        ax.set_xticks(list(xs), [r["activation"] for r in acts])
        lo = min(min(r["acc_mean"] - r["acc_std"] for r in acts), min(r["reported_acc"] for r in acts))
        ax.set_ylim(lo - 0.01, None)
        ax.set(xlabel="activation (one hidden layer of 128)", ylabel="test accuracy (fraction)")
        ax.set_title("Accuracy by activation (mean ± std over runs)")
        written.append(_save(fig, ax, out / "accuracy_by_activation.png"))

    groups = [g for section, _, gs in COMPARISONS if section == "2.5" for g in gs]
    series = [[by_index[i] for i in g if i in by_index] for g in groups]
    series = [s for s in series if len(s) >= 2]
    if series:
        fig, ax = plt.subplots(figsize=(8, 5))
        for s in series:
            s = sorted(s, key=lambda r: r["depth"])
            label = f"~{round(sum(r['params'] for r in s) / len(s), -3):,.0f} params"
            ax.errorbar(
                [r["depth"] for r in s], [r["acc_mean"] for r in s], yerr=[r["acc_std"] for r in s],
                marker="o", capsize=3, label=label,
            )  # fmt: skip
        ax.set(xlabel="hidden layers (depth)", ylabel="test accuracy (fraction)")
        ax.set_title("Accuracy against depth at about equal parameter count")
        written.append(_save(fig, ax, out / "accuracy_vs_depth.png"))
    return written


def write_outputs(
    out: Path, results: Sequence[dict[str, Any]], comparisons: Sequence[dict[str, Any]], meta: dict[str, Any]
) -> list[str]:
    """Write results.json, REPORT.md and the plots into ``out``, all of them or none (:func:`output_dir`)."""
    check_writable(out)
    payload = {
        "meta": meta,
        "rows": list(results),
        "against_reported": against_reported(results),
        "comparisons": list(comparisons),
        "notes": list(NOTES),
    }
    with output_dir(out) as tmp:
        (tmp / "results.json").write_text(dumps(payload))
        (tmp / "REPORT.md").write_text(markdown(results, comparisons, meta))
        plots = _plots(results, tmp) if results else []
    return ["results.json", "REPORT.md", *plots]
