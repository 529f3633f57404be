"""What a set of trials says, as plain data: the Pareto front, depth at similar size, activation effects.

Works on rows (one dict per complete trial, as :func:`archsearch.study.analysis.trial_row` makes them), so it needs
no study, no training and no Optuna. Why these questions, and in this form, is in archsearch.study.analysis.
"""

from __future__ import annotations

import json
import math
import statistics
from collections import defaultdict
from collections.abc import Mapping, Sequence
from typing import Any

from archsearch.core.errors import UserError

__all__ = ["ACTIVATION_ORDER", "BAND_FACTOR", "METRIC_NAMES", "activation_effect", "depth_effect", "pareto_front"]

BAND_FACTOR = 2.0
ACTIVATION_ORDER = ("sigmoid", "tanh", "hardtanh", "mish", "leakyrelu", "relu", "gelu", "silu", "elu")
METRIC_NAMES = {"val": "validation accuracy", "test": "test accuracy"}


def pareto_front(rows: Sequence[Mapping[str, Any]]) -> list[int]:
    """Trial numbers not dominated in (``acc_mean`` max, ``params`` min), sorted by parameter count.

    A trial is dominated when another is at least as accurate with at most as many parameters, and strictly better
    in one of the two; exact ties both stay on the front (as in Optuna). Sort and sweep: O(n log n).
    """
    by_params: dict[int, list[Mapping[str, Any]]] = defaultdict(list)
    for r in rows:
        by_params[int(r["params"])].append(r)
    front: list[int] = []
    best_smaller = -math.inf  # the best accuracy of any model with fewer parameters
    for params in sorted(by_params):
        group = by_params[params]
        top = max(float(r["acc_mean"]) for r in group)
        if top > best_smaller:
            front += sorted(int(r["number"]) for r in group if float(r["acc_mean"]) == top)
        best_smaller = max(best_smaller, top)
    return front


def _stats(values: Sequence[float]) -> dict[str, Any]:
    return {
        "n_runs": len(values),
        "mean": statistics.fmean(values) if values else math.nan,
        "std": statistics.stdev(values) if len(values) > 1 else 0.0,
    }


def _group_stats(rows: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """Mean ± std over every run (seed) of the given trials, and which trial was best."""
    values = [v for r in rows for v in r["acc_per_seed"]]
    best = max(rows, key=lambda r: r["acc_mean"])
    return {
        "n_trials": len(rows),
        **_stats(values),
        "trials": sorted(int(r["number"]) for r in rows),
        "best_trial": int(best["number"]),
        "best_spec": best["spec"],
    }


def _band(params: int, factor: float) -> tuple[int, int]:
    """The fixed log-spaced band [factor**k, factor**(k+1)) holding ``params``, as integer bounds."""
    k = math.floor(math.log(max(params, 1)) / math.log(factor) + 1e-9)
    return math.ceil(factor**k), math.ceil(factor ** (k + 1))


def _compact(n: float) -> str:
    for div, suffix in ((1e6, "M"), (1e3, "k")):
        if n >= div:
            return f"{n / div:.3g}{suffix}"
    return f"{n:.0f}"


def depth_effect(rows: Sequence[Mapping[str, Any]], band_factor: float = BAND_FACTOR) -> list[dict[str, Any]]:
    """Per (family, loss, parameter band) holding at least two depths: accuracy per depth, mean ± std over runs."""
    if band_factor <= 1:
        raise UserError(f"the band factor must be above 1, got {band_factor}")
    groups: dict[tuple[str, str, int, int], list[Mapping[str, Any]]] = defaultdict(list)
    for r in rows:
        if isinstance(r.get("depth"), int):
            low, high = _band(int(r["params"]), band_factor)
            groups[(str(r.get("kind")), str(r.get("loss")), low, high)].append(r)
    losses = {key[1] for key in groups}
    out = []
    for (kind, loss, low, high), members in sorted(groups.items(), key=lambda kv: (kv[0][2], kv[0][0], kv[0][1])):
        by_depth: dict[int, list[Mapping[str, Any]]] = defaultdict(list)
        for r in members:
            by_depth[int(r["depth"])].append(r)
        if len(by_depth) < 2:
            continue
        label = f"{kind} {_compact(low)}–{_compact(high)} params" + (f" ({loss})" if len(losses) > 1 else "")
        depths = [{"depth": d, **_group_stats(by_depth[d])} for d in sorted(by_depth)]
        out.append(
            {
                "kind": kind,
                "loss": loss,
                "low": low,
                "high": high,
                "label": label,
                "depths": depths,
                "best_depth": max(depths, key=lambda d: d["mean"])["depth"],
            }
        )
    return out


def _architecture(row: Mapping[str, Any]) -> str:
    """The spec without its activation: what must be equal for a fair activation comparison."""
    spec, act = str(row["spec"]), str(row.get("activation"))
    return spec[: -len(act) - 1] if spec.endswith("-" + act) else spec


def activation_effect(rows: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """Accuracy per activation, mean ± std over runs.

    ``mode="matched"``: one group per architecture and protocol that was trained with several activations, so the
    activation is the only difference. ``mode="pooled"`` (no such group): one group over all trials, which mixes
    sizes and depths and says so. Models without hidden layers (``mlp:linear``) use no activation and are left out.
    """
    usable = [r for r in rows if r.get("activation") and r.get("depth")]
    matched: dict[tuple[str, str], list[Mapping[str, Any]]] = defaultdict(list)
    for r in usable:
        matched[(_architecture(r), json.dumps(r.get("protocol") or {}, sort_keys=True))].append(r)
    candidates = [(key, rs) for key, rs in matched.items() if len({r["activation"] for r in rs}) >= 2]
    losses = {r.get("loss") for _, rs in candidates for r in rs}
    mode = "matched" if candidates else "pooled"
    if not candidates:
        candidates = [(("all trials (pooled: mixes sizes and depths)", ""), usable)] if usable else []
    groups = []
    for (arch, _), rs in sorted(candidates, key=lambda kv: kv[0][0]):
        by_act: dict[str, list[Mapping[str, Any]]] = defaultdict(list)
        for r in rs:
            by_act[str(r["activation"])].append(r)
        order = sorted(by_act, key=lambda a: (ACTIVATION_ORDER.index(a) if a in ACTIVATION_ORDER else 99, a))
        loss = rs[0].get("loss")
        label = arch + (f" ({loss})" if mode == "matched" and len(losses) > 1 else "")
        acts = [{"activation": a, **_group_stats(by_act[a])} for a in order]
        groups.append(
            {
                "label": label,
                "architecture": arch,
                "loss": loss,
                "activations": acts,
                "best": max(acts, key=lambda a: a["mean"])["activation"],
            }
        )
    return {"mode": mode, "groups": groups}
