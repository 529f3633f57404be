from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest

from archsearch.core.errors import UserError
from archsearch.results import compare, welch, write_outputs
from archsearch.study.report import report_rows


def row(index: int, accs: list[float], **extra: Any) -> dict[str, Any]:
    r = report_rows()[index]
    mean = sum(accs) / len(accs)
    return {
        "index": index, "label": r.label, "spec": str(r.spec), "loss": "ce", "params": r.params,
        "depth": r.spec.depth, "activation": r.spec.activation, "kind": r.spec.kind, "n_runs": len(accs),
        "acc_per_seed": accs, "acc_mean": mean, "acc_std": 0.001, "prec_mean": mean, "prec_std": 0.001,
        "rec_mean": mean, "rec_std": 0.001, "reported_acc": r.reported_acc, "reported_prec": r.reported_prec,
        "reported_rec": r.reported_rec, "acc_diff": mean - r.reported_acc, **extra,
    }  # fmt: skip


def test_welch() -> None:
    assert welch([0.8], [0.7]) is None  # one run: nothing to test
    assert welch([0.80, 0.81, 0.79], [0.70, 0.71, 0.69]) < 0.001
    assert welch([0.80, 0.81, 0.79], [0.80, 0.79, 0.81]) > 0.5


def test_verdicts() -> None:
    # report: 9 (0.8826) > 6 (0.8785) > 0 (0.8394) > 12 (0.8263)
    results = [
        row(9, [0.880, 0.881, 0.882]),
        row(6, [0.885, 0.886, 0.884]),  # beats 9: the claim 9 > 6 is reversed
        row(0, [0.840, 0.845, 0.835]),
        row(12, [0.838, 0.842, 0.836]),  # indistinguishable from 0
    ]
    (c,) = compare(results)
    assert c["section"] == "2.4" and c["claimed_order"] == [9, 6, 0, 12] and c["reproduced_order"][:2] == [6, 9]
    verdicts = {s["claim"]: s["verdict"] for s in c["steps"]}
    assert verdicts == {"9 > 6": "reversed", "6 > 0": "supported", "0 > 12": "within noise"}


def test_outputs_are_written(tmp_path: Path) -> None:
    results = [row(i, [0.85 + i / 1000, 0.86 + i / 1000]) for i in (1, 2, 6, 7, 8, 16)]
    written = write_outputs(tmp_path, results, compare(results), {"study": "t", "deviations": []})
    assert {"results.json", "REPORT.md", "accuracy_vs_params.png", "accuracy_by_activation.png"} <= set(written)
    assert "accuracy_vs_depth.png" in written
    data = json.loads((tmp_path / "results.json").read_text())
    assert [r["index"] for r in data["rows"]] == [1, 2, 6, 7, 8, 16]
    for key in ("index", "params", "acc_mean", "acc_std", "prec_mean", "rec_mean", "reported_acc", "n_runs"):
        assert key in data["rows"][0]
    md = (tmp_path / "REPORT.md").read_text()
    assert "Welch" in md and "569,016" in md and "| 16 |" in md
    assert all((tmp_path / f).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" for f in written if f.endswith(".png"))
    assert all((tmp_path / f).stat().st_size > 1000 for f in written if f.endswith(".png"))
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(written)  # every file whole: no temporary left


@pytest.mark.skipif(os.geteuid() == 0, reason="root can write anywhere")
def test_unwritable_out_is_refused(tmp_path: Path) -> None:
    tmp_path.chmod(0o500)
    with pytest.raises(UserError, match="cannot write"):
        write_outputs(tmp_path / "x", [], [], {})


def test_out_under_a_file_is_refused(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("")
    with pytest.raises(UserError, match="cannot write to --out"):
        write_outputs(tmp_path / "file" / "out", [], [], {})


def test_reported_value_against_the_reproduced_interval() -> None:
    from archsearch.results import against_reported

    rows = [row(0, [0.846, 0.847, 0.845]), row(6, [0.8784, 0.8786, 0.8780]), row(12, [0.80, 0.81, 0.80]), row(9, [0.9])]
    verdicts = [d["verdict"] for d in against_reported(rows)]
    # reported: row 0 0.8394 (below), row 6 0.8785 (inside), row 12 0.8263 (above), row 9 a single run
    assert verdicts == ["reproduced higher", "consistent", "reproduced lower", "one run, no interval"]
