"""The time-budget search's REPORT.md, rendered from a committed run's summary."""

from __future__ import annotations

import json
from pathlib import Path

from archsearch.results.budget import budget_markdown

SUMMARY = Path(__file__).resolve().parents[2] / "studies" / "results" / "time-100k" / "summary.json"


def test_the_budget_report_links_each_plot_once_and_names_the_screen_subset() -> None:
    summary = json.loads(SUMMARY.read_text())
    plots = ["accuracy-over-time.png", "screen-vs-params.png"]
    md = budget_markdown(summary, plots)
    assert [line for line in md.splitlines() if line.startswith("![")] == [f"![{p}]({p})" for p in plots]
    assert f"on {summary['screen']['train_images']:,} training images" in md
    assert "![" not in budget_markdown(summary)
