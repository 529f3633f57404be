"""`archsearch analyze` on small studies built directly with Optuna: no training, realistic user attributes.

The trials carry what :func:`archsearch.objective.run_trial` records (spec, kind, params, depth, widths, activation,
seeds, protocol, monitor, per-split metric summaries and per-seed values), so the analysis sees what it would see
after a real reproduction or search.
"""

from __future__ import annotations

import json
import statistics
from pathlib import Path
from typing import Any

import optuna
import pytest
from optuna.distributions import CategoricalDistribution, IntDistribution
from optuna.trial import TrialState, create_trial

from archsearch.core.errors import UserError
from archsearch.models import parse_spec
from archsearch.results import format_tables, write_analysis
from archsearch.study.analysis import analyze_study, depth_effect, pareto_front
from archsearch.study.objective import spec_attrs
from archsearch.study.report import report_rows
from archsearch.study.storage import open_storage

optuna.logging.set_verbosity(optuna.logging.WARNING)

PROTOCOL = {"epochs": 2, "batch_size": 32, "lr": 3e-4, "weight_decay": 1e-3, "loss": "ce"}


def metrics(per_seed: list[float]) -> tuple[dict[str, Any], dict[str, Any]]:
    """(split summary, per-seed lists) as run_trial records them; precision etc. a little off accuracy."""
    values = {
        "accuracy": per_seed,
        "precision": [a + 0.001 for a in per_seed],
        "recall": per_seed,
        "f1": [a - 0.001 for a in per_seed],
    }
    summary = {
        k: {"mean": statistics.fmean(v), "std": statistics.stdev(v) if len(v) > 1 else 0.0} for k, v in values.items()
    }
    return summary, values


def trial_attrs(spec_text: str, test: list[float], val: list[float] | None = None, **extra: Any) -> dict[str, Any]:
    seeds = list(range(42, 42 + len(test)))
    attrs: dict[str, Any] = {
        **spec_attrs(parse_spec(spec_text)),  # exactly what archsearch.objective records
        "seeds": seeds,
        "protocol": PROTOCOL,
        "monitor": "val" if val is not None else "test",
        "diverged_seeds": [],
        "seconds": 1.5,
        **extra,
    }
    for split, accs in (("test", test), ("val", val)):
        if accs is not None:
            attrs[split], attrs[f"{split}_per_seed"] = metrics(accs)
    return attrs


# ---------------------------------------------------------------------------------------------- a reproduce study

# report row -> per-seed test accuracies. Expected Pareto front (params ↑): 12, 0, 16, 7, 10 (see test below).
REPRO = {
    12: [0.825, 0.827],  # 3,985 params
    0: [0.839, 0.841],  # 7,850
    16: [0.879, 0.881],  # 44,374 (CNN)
    1: [0.858, 0.862],  # 101,770 sigmoid
    2: [0.875, 0.877],  # 101,770 tanh
    6: [0.878, 0.880],  # 101,770 relu: below the CNN with more parameters: dominated
    8: [0.877, 0.879],  # 101,807, depth 2
    7: [0.880, 0.882],  # 104,775, depth 2: more accurate than the CNN: on the front
    9: [0.881, 0.883],  # 407,050, depth 1: dominated by row 10
    10: [0.885, 0.887],  # 401,110, depth 2
}


@pytest.fixture(scope="module")
def repro(tmp_path_factory: pytest.TempPathFactory) -> tuple[str, dict[int, int]]:
    """A reproduce-kind study (plus a PRUNED, a FAIL and a foreign COMPLETE trial); returns (URL, row -> trial)."""
    url = f"sqlite:///{tmp_path_factory.mktemp('repro') / 'a.db'}"
    study = optuna.create_study(storage=url, study_name="report-e2-r2", direction="maximize")
    study.set_user_attr("archsearch", {"kind": "reproduce", "protocol": {**PROTOCOL, "seeds": [42, 43]}})
    study.set_user_attr("deviations_from_report", ["epochs 2 (report: 50)", "runs 2 (report: 5)"])
    dists = {"row": IntDistribution(0, 16), "loss": CategoricalDistribution(["ce", "kl"])}
    rows = report_rows()
    numbers = {}
    for index, accs in REPRO.items():
        r = rows[index]
        attrs = trial_attrs(
            str(r.spec),
            accs,
            report_row={"index": index, "label": r.label, "params": r.reported_params, "acc": r.reported_acc,
                        "prec": r.reported_prec, "rec": r.reported_rec},
        )  # fmt: skip
        numbers[index] = len(study.trials)
        study.add_trial(
            create_trial(
                params={"row": index, "loss": "ce"},
                distributions=dists,
                value=statistics.fmean(accs),
                user_attrs=attrs,
                intermediate_values={0: statistics.fmean(accs) - 0.02, 1: statistics.fmean(accs)},
            )
        )
    study.add_trial(create_trial(params={"row": 13, "loss": "ce"}, distributions=dists, state=TrialState.PRUNED))
    study.add_trial(create_trial(params={"row": 14, "loss": "ce"}, distributions=dists, state=TrialState.FAIL))
    study.add_trial(create_trial(value=0.5))  # complete, but not written by archsearch: left out with a note
    return url, numbers


def test_reproduce_study_numbers(repro: tuple[str, dict[int, int]]) -> None:
    url, numbers = repro
    result = analyze_study(url, "report-e2-r2")
    json.dumps(result, allow_nan=False)  # plain data: what `--json` prints
    assert result["kind"] == "reproduce" and result["monitor"] == "test" and result["metric"] == "test accuracy"
    assert result["counts"] == {"complete": len(REPRO) + 1, "pruned": 1, "fail": 1}
    assert [r["number"] for r in result["rows"]] == sorted(numbers.values())
    assert any(str(len(REPRO) + 2) in note for note in result["notes"])  # the foreign trial is named
    by_row = {r["report_row"]: r for r in result["rows"]}
    six = by_row[6]
    assert six["spec"] == "mlp:128-relu" and six["params"] == 101770 and six["depth"] == 1
    assert six["acc_mean"] == pytest.approx(0.879) and six["acc_per_seed"] == [0.878, 0.880]

    assert result["pareto_front"] == [numbers[i] for i in (12, 0, 16, 7, 10)]
    assert {r["report_row"] for r in result["rows"] if r["pareto"]} == {12, 0, 16, 7, 10}

    # Depth within bands of factor 2: [65,536, 131,072) holds rows 1, 2, 6 (depth 1) and 7, 8 (depth 2);
    # [262,144, 524,288) rows 9 (depth 1) and 10 (depth 2). Every other band has one depth only.
    bands = {(b["low"], b["high"]): b for b in result["depth_effect"]}
    assert set(bands) == {(65536, 131072), (262144, 524288)}
    small = {d["depth"]: d for d in bands[(65536, 131072)]["depths"]}
    assert small[1]["n_trials"] == 3 and small[1]["n_runs"] == 6
    assert small[1]["mean"] == pytest.approx(statistics.fmean(REPRO[1] + REPRO[2] + REPRO[6]))
    assert small[1]["std"] == pytest.approx(statistics.stdev(REPRO[1] + REPRO[2] + REPRO[6]))
    assert small[2]["mean"] == pytest.approx(statistics.fmean(REPRO[7] + REPRO[8]))
    assert bands[(262144, 524288)]["best_depth"] == 2

    # Activation: rows 1, 2, 6 are the same architecture and protocol: a matched comparison.
    act = result["activation_effect"]
    assert act["mode"] == "matched" and len(act["groups"]) == 1
    group = act["groups"][0]
    assert group["architecture"] == "mlp:128" and group["best"] == "relu"
    means = {a["activation"]: (a["mean"], a["std"], a["n_runs"]) for a in group["activations"]}
    assert list(means) == ["sigmoid", "tanh", "relu"]  # the report's order
    assert means["sigmoid"] == pytest.approx((0.860, statistics.stdev(REPRO[1]), 2))
    assert means["relu"][0] == pytest.approx(0.879)

    assert result["importances"] is None  # the row/loss "parameters" are labels
    report = result["report"]
    assert [r["index"] for r in report["results"]] == sorted(REPRO)
    ten = next(r for r in report["results"] if r["index"] == 10)
    assert ten["acc_diff"] == pytest.approx(0.886 - report_rows()[10].reported_acc)
    sections = {c["section"]: c for c in report["comparisons"]}
    assert sections["2.3"]["reproduced_order"] == [6, 2, 1]
    assert {s["verdict"] for c in report["comparisons"] for s in c["steps"]} <= {
        "supported",
        "reversed",
        "within noise",
    }
    assert report["deviations"] == ["epochs 2 (report: 50)", "runs 2 (report: 5)"]


def test_reproduce_study_files(repro: tuple[str, dict[int, int]], tmp_path: Path) -> None:
    result = analyze_study(repro[0], "report-e2-r2")
    written = write_analysis(result, tmp_path / "out")
    assert written == ["accuracy_vs_params.png", "accuracy_vs_depth.png", "accuracy_by_activation.png", "ANALYSIS.md"]
    for name in written[:-1]:
        data = (tmp_path / "out" / name).read_bytes()
        assert data.startswith(b"\x89PNG\r\n\x1a\n") and len(data) > 10_000
    text = (tmp_path / "out" / "ANALYSIS.md").read_text()
    assert "# Analysis of study `report-e2-r2`" in text
    assert "![Accuracy against parameter count](accuracy_vs_params.png)" in text
    assert "## Against the report" in text and "| 16 | Convolutional Network | ce | 44,374 |" in text
    assert "epochs 2 (report: 50)" in text
    assert not list((tmp_path / "out").glob(".*"))  # no temporary files left behind


def test_tables_are_rectangular(repro: tuple[str, dict[int, int]]) -> None:
    tables = format_tables(analyze_study(repro[0], "report-e2-r2"))
    titles = [t[0] for t in tables]
    assert titles[0].startswith("Complete trials of report-e2-r2")
    assert any(t.startswith("Pareto front") for t in titles) and any(t.startswith("The report's") for t in titles)
    for title, headers, rows in tables:
        assert all(len(row) == len(headers) and all(isinstance(c, str) for c in row) for row in rows), title
    trials = tables[0][2]
    assert trials[0][1] == "mlp:350,350-relu" and trials[0][-1] == "yes"  # best first; row 10 is on the front


def test_unknown_study_lists_the_available_ones(repro: tuple[str, dict[int, int]], tmp_path: Path) -> None:
    with pytest.raises(UserError, match=r"no study named 'nope'.*studies there: report-e2-r2"):
        analyze_study(repro[0], "nope")
    missing = tmp_path / "missing.db"
    with pytest.raises(UserError, match="no such file"):
        analyze_study(f"sqlite:///{missing}", "nope")
    assert not missing.exists()  # not created by looking
    open_storage(f"sqlite:///{tmp_path / 'empty.db'}")
    with pytest.raises(UserError, match="holds no studies"):
        analyze_study(f"sqlite:///{tmp_path / 'empty.db'}", "nope")


def test_unwritable_out_dir_is_refused_before_writing(repro: tuple[str, dict[int, int]], tmp_path: Path) -> None:
    result = analyze_study(repro[0], "report-e2-r2")
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    with pytest.raises(UserError, match="cannot write"):
        write_analysis(result, blocker / "out")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a-file"]


# ------------------------------------------------------------------------------------ a 2-objective search study

SEARCH = [  # spec, per-seed validation accuracies; test accuracy is 0.004 lower
    ("mlp:linear", [0.838, 0.840]),
    ("mlp:16-relu", [0.846, 0.850]),
    ("mlp:32-relu", [0.858, 0.860]),
    ("mlp:64-relu", [0.868, 0.870]),
    ("mlp:64-relu", [0.869, 0.869]),  # same mean as the one before: both on the front (an exact tie)
    ("mlp:128-relu", [0.877, 0.879]),
    ("mlp:256-relu", [0.882, 0.884]),
    ("mlp:20-sigmoid", [0.830, 0.834]),
    ("mlp:48-sigmoid", [0.845, 0.847]),
    ("mlp:96-tanh", [0.862, 0.866]),
    ("mlp:200-tanh", [0.870, 0.872]),
    ("mlp:100,50-relu", [0.874, 0.878]),
    ("mlp:90,90-tanh", [0.868, 0.870]),
    ("mlp:300,100-relu", [0.884, 0.886]),
    ("mlp:24,24-sigmoid", [0.836, 0.838]),
]


@pytest.fixture(scope="module")
def search(tmp_path_factory: pytest.TempPathFactory) -> str:
    url = f"sqlite:///{tmp_path_factory.mktemp('search') / 's.db'}"
    study = optuna.create_study(storage=url, study_name="mlp-search", directions=["maximize", "minimize"])
    study.set_user_attr("archsearch", {"kind": "search", "space": "mlp", "objectives": ["accuracy", "params"]})
    acts = ["sigmoid", "tanh", "hardtanh", "mish", "leakyrelu", "relu", "gelu", "silu", "elu"]
    for text, val in SEARCH:
        spec = parse_spec(text)
        params: dict[str, Any] = {"depth": spec.depth, "activation": spec.activation}
        dists: dict[str, Any] = {"depth": IntDistribution(0, 6), "activation": CategoricalDistribution(acts)}
        for i, w in enumerate(spec.widths):  # per-layer widths exist only up to the depth: conditional
            params[f"width_{i + 1}"], dists[f"width_{i + 1}"] = w, IntDistribution(4, 1024, log=True)
        if spec.depth >= 2:
            params["shape"], dists["shape"] = "free", CategoricalDistribution(["free", "constant", "funnel"])
        attrs = trial_attrs(text, [v - 0.004 for v in val], val)
        study.add_trial(
            create_trial(
                params=params, distributions=dists, values=[statistics.fmean(val), attrs["params"]], user_attrs=attrs
            )
        )
    study.add_trial(
        create_trial(
            params={"depth": 1, "activation": "relu", "width_1": 8},
            distributions={"depth": IntDistribution(0, 6), "activation": CategoricalDistribution(acts),
                           "width_1": IntDistribution(4, 1024, log=True)},
            state=TrialState.FAIL,
            user_attrs={"spec": "mlp:8-relu", "params": 6370, "rejected": "below min_params"},
        )
    )  # fmt: skip
    return url


def test_search_study_numbers(search: str) -> None:
    result = analyze_study(search, "mlp-search")
    json.dumps(result, allow_nan=False)
    assert (
        result["kind"] == "search" and result["monitor"] == "val" and result["directions"] == ["maximize", "minimize"]
    )
    assert result["counts"] == {"complete": len(SEARCH), "fail": 1} and result["n_complete"] == len(SEARCH)
    rows = result["rows"]
    assert rows[3]["acc_mean"] == pytest.approx(0.869) and rows[3]["test_acc_mean"] == pytest.approx(0.865)
    assert rows[3]["hyperparameters"] == {"depth": 1, "activation": "relu", "width_1": 64}

    # Our front is Optuna's, on the study's own objectives (validation accuracy, parameters), tie included.
    study = optuna.load_study(study_name="mlp-search", storage=search)
    assert sorted(result["pareto_front"]) == sorted(t.number for t in study.best_trials)
    assert {3, 4} <= set(result["pareto_front"])
    assert 7 not in result["pareto_front"]  # mlp:20-sigmoid: less accurate than the smaller linear model

    # Every spec here is a different architecture: activations are pooled over all trials with hidden layers.
    act = result["activation_effect"]
    assert act["mode"] == "pooled" and len(act["groups"]) == 1
    pooled = {a["activation"]: a for a in act["groups"][0]["activations"]}
    relu = [v for text, val in SEARCH if text.endswith("-relu") for v in val]
    assert pooled["relu"]["n_trials"] == 8 and pooled["relu"]["mean"] == pytest.approx(statistics.fmean(relu))
    assert pooled["sigmoid"]["std"] == pytest.approx(statistics.stdev([0.830, 0.834, 0.845, 0.847, 0.836, 0.838]))

    # Bands of factor 2 with two depths: [16,384, 32,768) holds mlp:32-relu (25,450) and mlp:24,24-sigmoid
    # (19,690); [65,536, 131,072) mlp:128-relu (101,770), mlp:96-tanh (76,330) against mlp:100,50-relu (84,060),
    # mlp:90,90-tanh (79,750).
    bands = {(b["low"], b["high"]): b for b in result["depth_effect"]}
    assert set(bands) == {(16384, 32768), (65536, 131072)}
    band = {d["depth"]: d for d in bands[(65536, 131072)]["depths"]}
    assert band[1]["trials"] == [5, 9] and band[2]["trials"] == [11, 12]
    assert band[1]["mean"] == pytest.approx(statistics.fmean([0.877, 0.879, 0.862, 0.866]))
    assert band[2]["mean"] == pytest.approx(statistics.fmean([0.874, 0.878, 0.868, 0.870]))
    assert band[2]["n_runs"] == 4 and bands[(65536, 131072)]["best_depth"] == 2
    assert bands[(16384, 32768)]["best_depth"] == 1

    imp = result["importances"]
    assert imp is not None and set(imp) == {"accuracy", "pareto"}
    for values in imp.values():
        assert set(values) <= {"depth", "activation", "width_1", "width_2", "shape"}
        assert sum(values.values()) == pytest.approx(1.0)
    assert imp["accuracy"]["activation"] > 0  # the best trials are all relu


def test_search_study_files(search: str, tmp_path: Path) -> None:
    result = analyze_study(search, "mlp-search")
    written = write_analysis(result, tmp_path)
    assert set(written) == {
        "accuracy_vs_params.png",
        "accuracy_vs_depth.png",
        "accuracy_by_activation.png",
        "importances.png",
        "ANALYSIS.md",
    }
    assert all((tmp_path / name).stat().st_size > 1000 for name in written)
    text = (tmp_path / "ANALYSIS.md").read_text()
    assert "validation accuracy" in text and "## Hyperparameter importance" in text
    assert "| val acc | test acc |" in text


def test_too_few_trials_for_importances(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'few.db'}"
    study = optuna.create_study(storage=url, study_name="tiny", direction="maximize")
    study.set_user_attr("archsearch", {"kind": "search"})
    for text, val in SEARCH[:3]:
        study.add_trial(
            create_trial(
                params={"depth": parse_spec(text).depth},
                distributions={"depth": IntDistribution(0, 6)},
                value=statistics.fmean(val),
                user_attrs=trial_attrs(text, val, val),
            )
        )
    result = analyze_study(url, "tiny")
    assert result["importances"] is None and "too few complete trials" in result["importance_note"]
    assert result["pareto_front"] == [0, 1, 2]  # single-objective studies get a front too
    assert result["depth_effect"] == []  # three different bands
    written = write_analysis(result, tmp_path / "out")
    assert "importances.png" not in written and "accuracy_vs_depth.png" not in written


def test_pareto_front_and_bands_directly() -> None:
    rows = [
        {"number": 0, "params": 100, "acc_mean": 0.80},
        {"number": 1, "params": 100, "acc_mean": 0.79},  # same size, less accurate
        {"number": 2, "params": 50, "acc_mean": 0.80},  # as accurate as 0 with fewer parameters: 0 is dominated
        {"number": 3, "params": 200, "acc_mean": 0.85},
        {"number": 4, "params": 300, "acc_mean": 0.85},  # as accurate as 3, larger
    ]
    assert pareto_front(rows) == [2, 3]
    assert pareto_front([]) == []
    band_rows = [
        {"number": n, "params": p, "depth": d, "kind": "mlp", "loss": "ce", "acc_mean": a, "acc_per_seed": [a],
         "spec": f"s{n}"}
        for n, (p, d, a) in enumerate([(1000, 1, 0.8), (1500, 2, 0.82), (2047, 3, 0.81), (2048, 1, 0.9)])
    ]  # fmt: skip
    [band] = depth_effect(band_rows)  # 2,048 starts the next band, alone there
    assert (band["low"], band["high"]) == (1024, 2048) and [d["depth"] for d in band["depths"]] == [2, 3]
    assert band["best_depth"] == 2
    assert depth_effect(band_rows, band_factor=4)[0]["low"] == 1024  # [256, 1024) holds 1000; [1024, 4096) the rest
    with pytest.raises(UserError):
        depth_effect(band_rows, band_factor=1)


def test_one_run_prints_its_mean_alone_two_runs_with_their_std(tmp_path: Path) -> None:
    """A std of one value is undefined (the studies record 0.0): one seed's accuracy is "0.7834", not "± 0.0000",
    in every table and report; two seeds' keep "± std"."""
    from archsearch.results.reproduction import markdown as report_markdown
    from archsearch.results.tables import final_table, mean_std, reproduction_tables, search_tables
    from archsearch.study.search import search_summary

    url = f"sqlite:///{tmp_path / 'r.db'}"
    study = optuna.create_study(storage=url, study_name="report", direction="maximize")
    study.set_user_attr("archsearch", {"kind": "reproduce", "protocol": PROTOCOL})
    dists = {"row": IntDistribution(0, 16), "loss": CategoricalDistribution(["ce", "kl"])}
    rows = report_rows()
    for index, accs in ((0, [0.7834]), (6, [0.878, 0.880])):
        r = rows[index]
        report_row = {"index": index, "label": r.label, "params": r.reported_params, "acc": r.reported_acc,
                      "prec": r.reported_prec, "rec": r.reported_rec}  # fmt: skip
        study.add_trial(
            create_trial(
                params={"row": index, "loss": "ce"},
                distributions=dists,
                value=statistics.fmean(accs),
                user_attrs=trial_attrs(str(r.spec), accs, report_row=report_row),
            )
        )
    one, two = "0.7834", f"0.8790 ± {statistics.stdev([0.878, 0.880]):.4f}"
    result = analyze_study(url, "report")
    tables = {title.split(" (")[0]: body for title, _, body in format_tables(result)}
    by_spec = {line[1]: line for line in tables["Complete trials of report, best first"]}
    assert by_spec[str(rows[0].spec)][5] == one and by_spec[str(rows[6].spec)][5] == two
    against = {line[0]: line[4] for line in tables["Against the report"]}
    assert against == {"0": one, "6": two}
    assert "0.7834 ±" not in markdown_of(result) and f"| {two} |" in markdown_of(result)

    collected = result["report"]["results"]
    assert [r["n_runs"] for r in collected] == [1, 2]
    text = report_markdown(collected, result["report"]["comparisons"], {})
    assert "| 0.7834 | " in text and "0.7834 ±" not in text and f"| {two} | " in text
    cells = [line[4] for line in reproduction_tables("report", collected, {"runs": 2, "epochs": 2})[0][2]]
    assert cells == [one, two]

    # a search's rows and its finalists say how many runs they are over
    summary = search_summary(optuna.load_study(study_name="report", storage=url))
    assert {r["spec"]: r["n_runs"] for r in summary["top"]} == {str(rows[0].spec): 1, str(rows[6].spec): 2}
    best = {"trial": 0, "spec": "mlp:32-relu", "params": 25450, "val_acc": 0.81, "val_acc_std": 0.0, "test_acc": 0.8,
            "test_acc_std": 0.0, "n_runs": 1}  # fmt: skip
    assert search_tables({"pareto_front": [], "best": best})[0][2] == [
        ["0", "mlp:32-relu", "25,450", "0.8100", "0.8000"]
    ]
    finalist = {**best, "source_trial": 0, "screen_val_acc": 0.8, "epochs": 3, "seeds": [42, 43],
                "test_per_seed": [0.79, 0.81], "val_acc_std": 0.01, "test_acc_std": 0.0141}  # fmt: skip
    final = {"study": "s-final", "finalists": [finalist, {**finalist, "seeds": [42], "test_per_seed": [0.8]}]}
    assert [line[4:6] for line in final_table(final)[2]] == [
        ["0.8100 ± 0.0100", "0.8000 ± 0.0141"],
        ["0.8100", "0.8000"],
    ]
    assert mean_std(None, None) == "–" and mean_std(0.5, None) == "0.5000" and mean_std(0.5, 0.0) == "0.5000 ± 0.0000"


def markdown_of(result: dict[str, Any]) -> str:
    from archsearch.results.render import markdown

    return markdown(result)
