"""`archsearch analyze`: what a finished (or running) study says, as plain data, tables, plots and Markdown.

Every number comes from the trials' user attributes written by :func:`archsearch.study.objective.run_trial`, so the
analysis needs no training, no data set and no GPU, and it works on any storage the other commands use.

Which accuracy: the analysis uses the accuracy the study *monitored* — validation accuracy for searches (what the
sampler saw, so choosing a model on it does not touch the test set), test accuracy for reproductions (the report's
protocol has no validation split). Test accuracy is shown beside it for every trial, for reporting only.

The questions answered, and why in this form:

- **Pareto front** over (accuracy ↑, parameters ↓): the trade-off every architecture comparison is really about. It
  is computed here, not taken from ``study.best_trials``, so that single-objective studies get one too.
- **Depth at similar size**: depth and parameter count move together, so depth is only compared *within* bands of
  similar parameter count. Bands have fixed log-spaced edges (powers of ``band_factor``, default 2): a trial's band
  depends on its own size only, so adding trials never reshuffles the others. Families (MLP, CNN) and losses are
  kept apart, since a CNN's "depth" counts conv layers.
- **Activation**: compared on otherwise identical architectures and protocols where the study has them (the
  report's rows 1–6); otherwise pooled over all trials, which the result says, because pooling mixes sizes.
- **Hyperparameter importance** (search studies): Optuna's PED-ANOVA, which copes with the conditional
  per-layer parameters of archsearch's spaces; skipped with a reason when there are too few trials to mean anything.
- **The report** (reproduce studies): :func:`archsearch.results.compare.compare` on the rows of
  :func:`archsearch.study.reproduce.collect_results`, i.e. exactly what ``archsearch reproduce`` reports.
"""

from __future__ import annotations

import math
import warnings
from collections import Counter
from collections.abc import Mapping, Sequence
from typing import Any

import optuna
from optuna.trial import FrozenTrial, TrialState

from archsearch.core.jsonio import plain
from archsearch.results.analysis import BAND_FACTOR, METRIC_NAMES, activation_effect, depth_effect, pareto_front
from archsearch.study.kinds import REPRODUCE, kind_of
from archsearch.study.records import STUDY_ATTR, TrialRecord

__all__ = ["MIN_IMPORTANCE_TRIALS", "analyze", "analyze_study", "trial_row"]

# PED-ANOVA compares the best trials with the rest; Optuna advises at least 5 trials in the "best" part, and with
# fewer than 10 trials in all the best part would be half the study: importances of nothing in particular.
MIN_IMPORTANCE_TRIALS = 10


# --------------------------------------------------------------------------------------------------- trials to rows


def trial_row(trial: FrozenTrial) -> dict[str, Any] | None:
    """One complete trial as a flat dict, or None if it lacks what ``run_trial`` records (then it is not ours)."""
    r = TrialRecord.from_trial(trial)
    judged, test = r.judged, r.split("test")
    if judged is None or test is None or r.spec is None or r.params is None or not math.isfinite(judged.accuracy):
        return None
    return {
        "number": r.number,
        "spec": r.spec,
        "kind": r.kind,
        "params": r.params,
        "depth": r.depth,
        "widths": r.widths,
        "activation": r.activation,
        "loss": r.protocol.get("loss"),
        "protocol": r.protocol,
        "monitor": r.monitor,
        "acc_mean": judged.accuracy,
        "acc_std": judged.accuracy_std,
        "acc_per_seed": judged.accuracy_per_seed,
        "test_acc_mean": test.accuracy,
        "test_acc_std": test.accuracy_std,
        "test_acc_per_seed": test.accuracy_per_seed,
        "seeds": r.seeds or None,
        "hyperparameters": r.sampled,
        "report_row": r.report_row,
        "seconds": r.seconds,
        "pareto": False,
    }


# ------------------------------------------------------------------------------------------------------ the analyses


def _importances(study: optuna.Study, rows: Sequence[Mapping[str, Any]]) -> tuple[dict[str, Any] | None, str | None]:
    """PED-ANOVA importances for the monitored accuracy and (multi-objective studies) for reaching the Pareto front.

    Returns (importances, None) or (None, the reason they were skipped). Importances are normalised to sum to 1
    here rather than by Optuna, which turns all-zero importances into equal shares that look like a finding.
    """
    from optuna.importance import PedAnovaImportanceEvaluator, get_param_importances

    n = len(rows)
    if n < MIN_IMPORTANCE_TRIALS:
        return None, f"too few complete trials for importances ({n} < {MIN_IMPORTANCE_TRIALS})"
    if not any(r["hyperparameters"] for r in rows):
        return None, "the trials have no hyperparameters"
    acc = {int(r["number"]): float(r["acc_mean"]) for r in rows}
    # Top 10% of trials against all, but never fewer than 5 trials in the top part (Optuna's advice).
    evaluator = PedAnovaImportanceEvaluator(target_quantile=min(0.5, max(0.1, 5 / n)))
    targets: dict[str, Any] = {"accuracy": lambda t: -acc.get(t.number, math.nan)}  # PED-ANOVA minimises
    if len(study.directions) > 1:
        targets["pareto"] = None  # Optuna ranks multi-objective trials by non-domination
    out: dict[str, Any] = {}
    for name, target in targets.items():
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # experimental-API and "importances may be inaccurate" warnings
                raw = get_param_importances(study, evaluator=evaluator, target=target, normalize=False)
        except (ValueError, RuntimeError, ZeroDivisionError) as err:
            return None, f"Optuna could not compute importances: {err}"
        total = sum(raw.values())
        out[name] = {k: (float(v) / total if total > 0 else 0.0) for k, v in raw.items()}
    if not any(v for values in out.values() for v in values.values()):
        return None, "no hyperparameter separates the best trials from the rest (all importances are 0)"
    return out, None


def _report_comparison(
    study: optuna.Study, rows: Sequence[Mapping[str, Any]]
) -> tuple[dict[str, Any] | None, str | None]:
    """The reproduction against the report: ``collect_results`` rows and ``compare`` verdicts, per loss."""
    from archsearch.results.compare import compare
    from archsearch.study import reproduce as rep
    from archsearch.study.report import report_rows

    n_rows = len(report_rows())
    usable = {int(r["number"]) for r in rows}
    trials = [
        t
        for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
        if t.number in usable
        and isinstance(t.params.get("row"), int)
        and 0 <= t.params["row"] < n_rows
        and isinstance(t.params.get("loss"), str)
    ]
    if not trials:
        return None, "no complete trial of a report row"
    indexes = sorted({t.params["row"] for t in trials})
    losses = sorted({t.params["loss"] for t in trials}, key=lambda s: (s != "ce", s))
    cfg = rep.ReproduceConfig(indexes=tuple(indexes), losses=tuple(losses))
    try:
        results = rep.collect_results(trials, cfg)
    except (KeyError, TypeError) as err:
        return None, f"a report trial lacks the recorded metric {err}"
    comparisons = [{"loss": loss, **c} for loss in losses for c in compare([r for r in results if r["loss"] == loss])]
    return {
        "results": results,
        "comparisons": comparisons,
        "deviations": list(study.user_attrs.get("deviations_from_report") or []),
    }, None


def analyze(study: optuna.Study, band_factor: float = BAND_FACTOR) -> dict[str, Any]:
    """The whole analysis of an open study, as plain JSON-ready data (see the module docstring for the why)."""
    meta = study.user_attrs.get(STUDY_ATTR)
    study_kind = kind_of(study)
    kind = study_kind.name if study_kind is not None else "other"
    trials = study.get_trials(deepcopy=False)
    counts = Counter(t.state.name.lower() for t in trials)
    rows, skipped = [], []
    for t in trials:
        if t.state == TrialState.COMPLETE:
            row = trial_row(t)
            if row is None:
                skipped.append(t.number)
            else:
                rows.append(row)
    rows.sort(key=lambda r: r["number"])
    front = pareto_front(rows)
    on_front = set(front)
    for r in rows:
        r["pareto"] = r["number"] in on_front
    monitors = Counter(r["monitor"] for r in rows)
    monitor = monitors.most_common(1)[0][0] if monitors else (study_kind.monitor if study_kind else "test")
    notes = []
    if skipped:
        notes.append(f"complete trials without archsearch's metrics were left out: {skipped}")
    if len(monitors) > 1:
        notes.append(f"trials monitored different splits ({dict(monitors)}); accuracies are not all comparable")

    importances: dict[str, Any] | None = None
    reason: str | None = "importances are computed for search studies only"
    report: dict[str, Any] | None = None
    if study_kind is REPRODUCE:  # its Optuna parameters (report row, loss) are labels, not hyperparameters
        report, report_note = _report_comparison(study, rows)
        if report_note:
            notes.append(report_note)
    else:
        importances, reason = _importances(study, rows)
        if reason:
            notes.append(reason)
    return plain(
        {
            "study": study.study_name,
            "kind": kind,
            "meta": meta,
            "directions": [d.name.lower() for d in study.directions],
            "monitor": monitor,
            "metric": METRIC_NAMES.get(monitor, f"{monitor} accuracy"),
            "counts": dict(counts),
            "n_complete": len(rows),
            "rows": rows,
            "pareto_front": front,
            "band_factor": band_factor,
            "depth_effect": depth_effect(rows, band_factor),
            "activation_effect": activation_effect(rows),
            "importances": importances,
            "importance_note": reason,
            "report": report,
            "notes": notes,
        }
    )


def analyze_study(storage_url: str | None, study_name: str, band_factor: float = BAND_FACTOR) -> dict[str, Any]:
    """Open ``study_name`` in ``storage_url`` (as every command does) and :func:`analyze` it.

    An unknown name is a ``UserError`` that lists the studies the storage holds, so a typo is fixed in one step; a
    missing SQLite or journal file is one too (opening it would silently create an empty database).
    """
    from archsearch.study.storage import load_existing_study

    return analyze(load_existing_study(storage_url, study_name), band_factor)
