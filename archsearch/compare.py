"""The report's comparisons (sections 2.3–2.7) checked against reproduced results, and the written report.

For each comparison we take the report's claimed ordering (by its reported accuracy), the reproduced ordering (by
mean test accuracy) and, for each claimed step "a beats b", Welch's unequal-variance t-test on the per-seed test
accuracies of a and b (two-sided, alpha 0.05). A step is *supported* when a's mean is higher and p < 0.05,
*reversed* when b's is higher and p < 0.05, and *within noise* otherwise.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from archsearch.errors import UserError
from archsearch.jsonio import dumps

__all__ = [
    "COMPARISONS",
    "NOTES",
    "against_reported",
    "check_writable",
    "compare",
    "markdown",
    "save_figure",
    "welch",
    "write_outputs",
]

ALPHA = 0.05
# (section, title, groups of report rows compared within themselves)
COMPARISONS: tuple[tuple[str, str, tuple[tuple[int, ...], ...]], ...] = (
    ("2.3", "Activation functions (128 hidden units)", ((1, 2, 3, 4, 5, 6),)),
    ("2.4", "Number of parameters (one layer, ReLU)", ((12, 0, 6, 9),)),
    ("2.5", "Depth at about equal parameter count", ((6, 7, 8), (9, 10, 11), (13, 15))),
    ("2.6", "Encoder-shaped structures", ((12, 13, 14, 15),)),
    ("2.7", "The CNN against the best MLPs", ((16, 10, 11, 15),)),
)
NOTES = (
    "Row 15's text omits a 10-unit hidden layer: only [512, 256, 64, 256, 10] has the reported 569,016 parameters.",
    "Row 16's text gives the second conv a 10x10 kernel (20,854 parameters); only 5x5 gives the reported 44,374.",
    "The test set is balanced, so whole-test-set macro recall equals accuracy; the report's recall never does, so "
    "its precision and recall were not whole-test-set macro metrics. Reproduced values are.",
)


def welch(a: Sequence[float], b: Sequence[float]) -> float | None:
    """Two-sided p-value of Welch's t-test; None with fewer than two runs on a side (no variance to test with)."""
    if len(a) < 2 or len(b) < 2:
        return None
    from scipy import stats

    if len(set(a)) == 1 and len(set(b)) == 1:
        return 0.0 if a[0] != b[0] else 1.0
    return float(stats.ttest_ind(a, b, equal_var=False).pvalue)


def _verdict(a: dict[str, Any], b: dict[str, Any]) -> tuple[str, float | None]:
    p = welch(a["acc_per_seed"], b["acc_per_seed"])
    if p is None:
        return "untestable (one run)", None
    if p < ALPHA:
        return ("supported" if a["acc_mean"] > b["acc_mean"] else "reversed"), p
    return "within noise", p


def compare(results: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """Every comparison whose rows (at least two) were reproduced."""
    by_index = {r["index"]: r for r in results if r.get("loss", "ce") == results[0].get("loss", "ce")}
    out = []
    for section, title, groups in COMPARISONS:
        for group in groups:
            present = [by_index[i] for i in group if i in by_index]
            if len(present) < 2:
                continue
            claimed = sorted(present, key=lambda r: -r["reported_acc"])
            reproduced = sorted(present, key=lambda r: -r["acc_mean"])
            steps = []
            for a, b in itertools.pairwise(claimed):
                verdict, p = _verdict(a, b)
                steps.append(
                    {
                        "claim": f"{a['index']} > {b['index']}",
                        "reported_diff": a["reported_acc"] - b["reported_acc"],
                        "reproduced_diff": a["acc_mean"] - b["acc_mean"],
                        "p_value": p,
                        "verdict": verdict,
                    }
                )
            out.append(
                {
                    "section": section,
                    "title": title,
                    "claimed_order": [r["index"] for r in claimed],
                    "reproduced_order": [r["index"] for r in reproduced],
                    "steps": steps,
                }
            )
    return out


def against_reported(results: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per row: the 95% t-interval of the reproduced mean accuracy, and whether the reported value lies inside it.
    The report gives no spread, so this is the honest test available: is its number one our runs could give?"""
    from scipy import stats

    out = []
    for r in results:
        n = len(r["acc_per_seed"])
        if n < 2:
            out.append(
                {"index": r["index"], "loss": r.get("loss"), "interval": None, "verdict": "one run, no interval"}
            )
            continue
        half = float(stats.t.ppf(0.975, n - 1)) * r["acc_std"] / math.sqrt(n)
        lo, hi = r["acc_mean"] - half, r["acc_mean"] + half
        rep = r["reported_acc"]
        verdict = "consistent" if lo <= rep <= hi else ("reproduced higher" if rep < lo else "reproduced lower")
        out.append({"index": r["index"], "loss": r.get("loss"), "interval": [lo, hi], "verdict": verdict})
    return out


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
            f"{r['acc_mean']:.4f} ± {r['acc_std']:.4f} | {r['reported_acc']:.4f} | {r['acc_diff']:+.4f} | "
            f"{r['prec_mean']:.4f} ± {r['prec_std']:.4f} | {r['reported_prec']:.4f} | "
            f"{r['rec_mean']:.4f} ± {r['rec_std']:.4f} | {r['reported_rec']:.4f} |"
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


def save_figure(fig: Any, path: Path) -> str:
    """Save a matplotlib figure as PNG, whole (temporary file, then rename), and close it; returns the file name."""
    import matplotlib.pyplot as plt

    fig.tight_layout()
    tmp = path.with_name(f".{path.name}.tmp")
    fig.savefig(tmp, dpi=120, format="png")
    plt.close(fig)
    tmp.replace(path)
    return path.name


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
    """Write results.json, REPORT.md and the plots into ``out``; each file is written whole (temp file, rename)."""
    check_writable(out)
    payload = {
        "meta": meta,
        "rows": list(results),
        "against_reported": against_reported(results),
        "comparisons": list(comparisons),
        "notes": list(NOTES),
    }
    _atomic_write(out / "results.json", dumps(payload))
    _atomic_write(out / "REPORT.md", markdown(results, comparisons, meta))
    return ["results.json", "REPORT.md", *(_plots(results, out) if results else [])]


def check_writable(out: Path) -> None:
    """Fail early (before any training) if ``out`` cannot be created or written."""
    try:
        out.mkdir(parents=True, exist_ok=True)
        probe = out / ".archsearch-write-test"
        probe.write_text("")
        probe.unlink()
    except OSError as err:
        raise UserError(f"cannot write to --out {out}: {err.strerror or err}") from None


def _atomic_write(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text)
    tmp.replace(path)
