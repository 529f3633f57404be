"""`archsearch dashboard`: optuna-dashboard served for an archsearch storage, checked in a real headless browser.

The dashboard is a React app that fetches its JSON API after the page loads, so the checks wait for rendered text
rather than reading the HTML. The server runs in a child process (``archsearch dashboard``), stopped with Ctrl-C.
"""

from __future__ import annotations

import json
import socket
import statistics
import urllib.request
from pathlib import Path

import optuna
import pytest
from optuna.distributions import CategoricalDistribution, IntDistribution
from optuna.trial import TrialState, create_trial

from archsearch.core.errors import UserError
from archsearch.study.artifacts import artifact_store
from archsearch.study.dashboard import dashboard_url, serve
from tests.dashboard_process import free_port, start_background
from tests.study.test_analysis import trial_attrs

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-background-networking",
    "--disable-gpu",
    "--disable-component-update",
    "--no-first-run",
]
SCREENSHOT = Path(__file__).resolve().parents[2] / "test-artifacts" / "dashboard.png"
TRIALS = [("mlp:128-relu", [0.877, 0.879]), ("mlp:64,32-tanh", [0.866, 0.870]), ("mlp:linear", [0.839, 0.841])]


def make_study(url: str) -> int:
    """A small 2-objective search study with archsearch's user attributes; returns its id (for the page URL)."""
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(storage=url, study_name="dash-demo", directions=["maximize", "minimize"])
    study.set_user_attr("archsearch", {"kind": "search", "space": "mlp", "objectives": ["accuracy", "params"]})
    dists = {"depth": IntDistribution(0, 6), "activation": CategoricalDistribution(["relu", "tanh"])}
    for spec, val in TRIALS:
        attrs = trial_attrs(spec, [v - 0.004 for v in val], val)
        study.add_trial(
            create_trial(
                params={"depth": attrs["depth"], "activation": attrs["activation"]},
                distributions=dists,
                values=[statistics.fmean(val), attrs["params"]],
                user_attrs=attrs,
                intermediate_values={0: val[0] - 0.03, 1: val[0] - 0.01, 2: statistics.fmean(val)},
            )
        )
    study.add_trial(
        create_trial(
            params={"depth": 1, "activation": "relu"}, distributions=dists, state=TrialState.FAIL, user_attrs={}
        )
    )
    return study._study_id


@pytest.mark.slow
def test_dashboard_shows_the_study_in_a_browser(tmp_path: Path) -> None:
    if not CHROMIUM.exists():
        pytest.fail(f"{CHROMIUM} is missing: install Debian's chromium package (.ci/setup does) to run browser tests")
    from playwright.sync_api import expect, sync_playwright

    url = f"sqlite:///{tmp_path / 'dash.db'}"
    study_id = make_study(url)
    # A trial with weights, stored the way archsearch stores them: an artifact uploaded while the trial runs.
    study = optuna.load_study(study_name="dash-demo", storage=url)
    running = study.ask()
    weights = tmp_path / "trial4-weights.safetensors"
    weights.write_bytes(b"{}")
    optuna.artifacts.upload_artifact(artifact_store=artifact_store(url), file_path=str(weights), study_or_trial=running)
    study.tell(running, [0.85, 1000.0])
    with start_background(url) as server:
        assert server.url.startswith("http://127.0.0.1:") and server.url.endswith("/dashboard")
        # The artifact store (trial weights) is the one next to the database, and the dashboard knows it has one.
        with urllib.request.urlopen(server.url.removesuffix("/dashboard") + "/api/meta", timeout=10) as response:
            assert json.load(response)["artifact_is_available"] is True
        assert (tmp_path / "dash-artifacts").is_dir()

        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
            try:
                page = browser.new_page(viewport={"width": 1400, "height": 900})
                page.set_default_timeout(20_000)
                page.goto(server.url)  # the study list
                expect(page.get_by_text("dash-demo").first).to_be_visible()

                page.goto(f"{server.url}/studies/{study_id}/trials")
                for number in range(len(TRIALS) + 1):
                    expect(page.get_by_text(f"Trial {number}", exact=True).first).to_be_visible()
                expect(page.get_by_text("Fail", exact=True).first).to_be_visible()
                # The first trial is selected: its user attributes, e.g. the spec, are shown.
                expect(page.get_by_text(TRIALS[0][0]).first).to_be_visible()
                page.get_by_text("Trial 1", exact=True).first.click()
                spec = page.get_by_text(TRIALS[1][0]).first  # only a user attribute holds the spec string
                expect(spec).to_be_visible()
                page.get_by_text("Trial 4", exact=True).first.click()
                expect(page.get_by_text("trial4-weights.safetensors").first).to_be_attached()  # its artifact
                page.get_by_text("Trial 1", exact=True).first.click()
                expect(spec).to_be_visible()
                expect(page.get_by_text("dash-demo").first).to_be_visible()
                # The user attributes box scrolls (long JSON values run wide): bring the spec into view, left-aligned.
                spec.evaluate("el => el.scrollIntoView({block: 'center', inline: 'start'})")
                page.evaluate("() => document.querySelectorAll('*').forEach(e => { e.scrollLeft = 0; })")
                SCREENSHOT.parent.mkdir(parents=True, exist_ok=True)
                page.screenshot(path=str(SCREENSHOT))
            finally:
                browser.close()
    assert server.process.returncode == 0  # stopped like Ctrl-C: run_server returned, serve() returned normally
    assert SCREENSHOT.stat().st_size > 10_000


def test_busy_port_and_bad_storage_are_user_errors(tmp_path: Path) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        with pytest.raises(UserError, match=f"port {port} on 127.0.0.1 is already in use"):
            serve(f"sqlite:///{tmp_path / 'a.db'}", port=port)
    with pytest.raises(UserError, match="not a URL"):
        serve("archsearch.db", port=free_port())
    with pytest.raises(UserError, match="between 1 and 65535"):
        serve(f"sqlite:///{tmp_path / 'a.db'}", port=70000)


def test_background_server_reports_why_it_exited(tmp_path: Path) -> None:
    with pytest.raises(RuntimeError, match="not a URL"):
        start_background("archsearch.db", timeout=20)


def test_dashboard_url() -> None:
    assert dashboard_url() == "http://127.0.0.1:8080/dashboard"
    assert dashboard_url("0.0.0.0", 9000) == "http://127.0.0.1:9000/dashboard"  # a browser cannot open 0.0.0.0
    assert dashboard_url("::1", 8081) == "http://[::1]:8081/dashboard"
    assert dashboard_url("example.org", 80) == "http://example.org:80/dashboard"
