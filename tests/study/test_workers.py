"""Many processes on one study: 4 local workers on SQLite, 4 `archsearch worker`s on a real PostgreSQL server, and
10 SIGKILLs at random moments — no trial lost, none trained twice."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
import uuid
from collections import Counter
from pathlib import Path

import optuna
import pytest
from optuna.trial import TrialState

pytestmark = pytest.mark.slow
ROWS = "0,1,2,3,4,5,6,12"  # eight small report rows: 1 run of 1 epoch each takes seconds


def archsearch(cwd: Path, *args: str) -> subprocess.Popen[str]:
    cmd = [sys.executable, "-m", "archsearch", *args]
    return subprocess.Popen(cmd, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def finish(proc: subprocess.Popen[str], timeout: float = 600) -> str:
    out, err = proc.communicate(timeout=timeout)
    # a chained traceback prints its root cause first: keep both ends of a long one
    assert proc.returncode == 0, err if len(err) <= 6000 else f"{err[:3000]}\n[...]\n{err[-3000:]}"
    return out


def done_once(storage: str, name: str) -> Counter[tuple[int, str]]:
    trials = optuna.load_study(study_name=name, storage=storage).get_trials()
    return Counter((t.params["row"], t.params["loss"]) for t in trials if t.state == TrialState.COMPLETE)


def test_four_local_workers_on_sqlite(tmp_path: Path) -> None:
    out = finish(archsearch(tmp_path, "reproduce", "--models", ROWS, "--runs", "1", "--epochs", "1",
                            "--workers", "4", "--json"))  # fmt: skip
    result = json.loads(out)
    assert result["meta"]["trained_now"] == 8 and len(result["rows"]) == 8
    counts = done_once(f"sqlite:///{tmp_path}/archsearch.db", "report-e1-r1")
    assert counts == {(int(i), "ce"): 1 for i in ROWS.split(",")}


def postgres_url() -> str:
    url = os.environ.get("ARCHSEARCH_TEST_POSTGRES")
    if not url:
        if os.environ.get("CI"):
            pytest.fail("CI must provide ARCHSEARCH_TEST_POSTGRES (.ci/run starts PostgreSQL on loopback)")
        pytest.skip("set ARCHSEARCH_TEST_POSTGRES=postgresql://user:pw@127.0.0.1/db to run")
    return url


def wait_for_study(url: str, name: str, timeout: float = 120) -> None:
    """Poll read-only (psycopg) until the first process has created the study; opening the storage through Optuna
    meanwhile would race it creating the tables."""
    import psycopg

    deadline = time.time() + timeout
    while time.time() < deadline:
        try:
            with psycopg.connect(url, connect_timeout=5) as con:
                if con.execute("SELECT 1 FROM studies WHERE study_name = %s", (name,)).fetchone():
                    return
        except psycopg.Error:
            pass
        time.sleep(0.5)
    pytest.fail(f"study {name} never appeared")


def test_four_workers_on_postgresql(tmp_path: Path) -> None:
    url = postgres_url()
    name = f"pg-{uuid.uuid4().hex[:8]}"
    # one machine queues the report's rows (with 0 workers' worth of training: --models and the protocol) ...
    queue = ("reproduce", "--models", ROWS, "--runs", "1", "--epochs", "1", "--storage", url, "--study-name", name)
    workers = []
    first = archsearch(tmp_path, *queue, "--threads", "1", "--json")
    wait_for_study(url, name)
    # ... and four workers join it, as they would from four machines
    for _ in range(4):
        workers.append(archsearch(tmp_path, "worker", "--study", name, "--storage", url, "--threads", "1", "--json"))
    finish(first)
    trained = sum(json.loads(finish(w))["trained"] for w in workers)
    counts = done_once(url, name)
    assert counts == {(int(i), "ce"): 1 for i in ROWS.split(",")}
    assert trained <= 8


def test_ten_random_kills_lose_and_duplicate_nothing(tmp_path: Path) -> None:
    args = ("reproduce", "--models", "0,12,6", "--runs", "2", "--epochs", "2", "--threads", "1", "--json")
    rng = random.Random(1234)
    for _ in range(10):
        proc = archsearch(tmp_path, *args)
        time.sleep(rng.uniform(1.0, 8.0))  # startup, mid-epoch, between trials: anywhere
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGKILL)
        proc.communicate()
    resumed = json.loads(finish(archsearch(tmp_path, *args)))
    db = f"sqlite:///{tmp_path}/archsearch.db"
    assert done_once(db, "report-e2-r2") == {(0, "ce"): 1, (12, "ce"): 1, (6, "ce"): 1}
    trials = optuna.load_study(study_name="report-e2-r2", storage=db).get_trials()
    assert not [t for t in trials if t.state in (TrialState.RUNNING, TrialState.WAITING)]
    clean_dir = tmp_path / "clean"
    clean_dir.mkdir()
    clean = json.loads(finish(archsearch(clean_dir, *args)))
    assert [r["acc_per_seed"] for r in resumed["rows"]] == [r["acc_per_seed"] for r in clean["rows"]]


def test_killed_search_resumes_and_retries_the_interrupted_trial(tmp_path: Path) -> None:
    space = tmp_path / "tiny.toml"
    space.write_text('kind = "mlp"\ndepth = { low = 1, high = 2 }\nwidth = { choices = [8, 16, 32] }\n')
    args = ("search", "--space", str(space), "--n-trials", "4", "--epochs", "1", "--threads", "1", "--json")
    db = f"sqlite:///{tmp_path}/archsearch.db"
    rng = random.Random(7)
    for _ in range(3):
        proc = archsearch(tmp_path, *args)
        time.sleep(rng.uniform(6.0, 12.0))  # inside a trial, most of the time
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGKILL)
        proc.communicate()
    summary = json.loads(finish(archsearch(tmp_path, *args)))
    trials = optuna.load_study(study_name="search-tiny", storage=db).get_trials()
    finished = [t for t in trials if t.state in (TrialState.COMPLETE, TrialState.PRUNED)]
    assert len(finished) == 4 and summary["counts"].get("complete", 0) + summary["counts"].get("pruned", 0) == 4
    assert not [t for t in trials if t.state in (TrialState.RUNNING, TrialState.WAITING)]
    lost = [t for t in trials if t.state == TrialState.FAIL and "duplicate_of" not in t.user_attrs]
    assert all(t.system_attrs["archsearch:fail_reason"] == "worker died" for t in lost)
    retries = {t.user_attrs["retry_of"]: t for t in trials if "retry_of" in t.user_attrs}
    for dead in lost:  # every killed trial was queued again, once, with its parameters: until one finished
        assert [t.user_attrs.get("retry_of") for t in trials].count(dead.number) == 1
        again = retries[dead.number]
        while again in lost:  # the retry was killed in its turn (seen): its own retry goes on
            again = retries[again.number]
        # the parameters it had sampled, kept (one killed while sampling: the sampler fills in the rest)
        assert again in finished and again.params.items() >= dead.params.items()


def test_worker_can_be_limited_to_some_rows(tmp_path: Path) -> None:
    from archsearch.study.kinds import run_worker
    from archsearch.study.reproduce import ReproduceConfig, open_reproduce_study
    from archsearch.study.storage import open_storage

    url = f"sqlite:///{tmp_path}/w.db"
    open_reproduce_study(open_storage(url), "w", ReproduceConfig(indexes=(0, 12), runs=1, epochs=1))
    result = run_worker(url, "w", device="cpu", data_dir=None, hooks=None, models=[12])
    states = {
        t.system_attrs["fixed_params"]["row"]: t.state for t in optuna.load_study(study_name="w", storage=url).trials
    }
    assert result["trained"] == 1 and states == {0: TrialState.WAITING, 12: TrialState.COMPLETE}


def test_worker_models_only_for_reproduce_studies(tmp_path: Path) -> None:
    """--models names report rows: on a search study it is refused before any data is loaded or trial claimed."""
    from archsearch.core.errors import UserError
    from archsearch.study.kinds import run_worker
    from archsearch.study.search import SearchConfig, open_search_study
    from archsearch.study.spaces import load_space
    from archsearch.study.storage import open_storage

    url = f"sqlite:///{tmp_path}/s.db"
    open_search_study(open_storage(url), "s", load_space("mlp"), SearchConfig(space="mlp", n_trials=1, epochs=1))
    with pytest.raises(UserError, match="not a reproduce study"):
        run_worker(url, "s", device="cpu", data_dir=tmp_path / "no-data", hooks=None, models=[0])
    assert optuna.load_study(study_name="s", storage=url).get_trials() == []


def _exiting(code: int) -> subprocess.Popen[bytes]:
    return subprocess.Popen([sys.executable, "-c", f"import sys; sys.exit({code})"])


def test_a_worker_failure_is_reported_even_when_every_worker_has_ended() -> None:
    """Workers that die before the coordinator looks (a bad setting, say) must not pass for a finished job."""
    from archsearch.core.errors import UserError
    from archsearch.study.workers import wait_workers

    procs = [_exiting(0), _exiting(2)]
    for p in procs:
        p.wait()  # both ended before the first look
    with pytest.raises(UserError, match="a worker exited with code 2; rerun the command to resume"):
        wait_workers(procs, lambda: None, every=0.01)
    procs = [_exiting(0), _exiting(0)]
    seen: list[list[int | None]] = []
    wait_workers(procs, lambda: seen.append([p.returncode for p in procs]), every=0.01)
    assert seen and seen[-1] == [0, 0]  # the last progress update comes after every worker has ended


def test_default_workers_one_per_core_on_a_cpu_within_trials_and_memory(monkeypatch: pytest.MonkeyPatch) -> None:
    import torch

    from archsearch.study import workers

    monkeypatch.setattr(workers, "usable_cores", lambda: 8)
    monkeypatch.setattr(workers, "_available_memory", lambda: 20 * workers.WORKER_BYTES)
    cpu = torch.device("cpu")
    assert workers.default_workers(cpu, None, 17) == 8  # one per core
    assert workers.default_workers(cpu, None, 3) == 3  # no idle workers
    assert workers.default_workers(cpu, None, 1) == 1  # a single trial trains in the command's own process
    assert workers.default_workers(cpu, 4, 17) == 1  # --threads says how to use the cores
    assert workers.default_workers(torch.device("cuda"), None, 17) == 1  # one GPU: one process
    monkeypatch.setattr(workers, "_available_memory", lambda: 5 * workers.WORKER_BYTES // 2)
    assert workers.default_workers(cpu, None, 17) == 2  # as many as the free memory holds
    monkeypatch.setattr(workers, "_available_memory", lambda: None)
    assert workers.default_workers(cpu, None, 17) == 8
    assert workers.threads_per_worker(8) == 1 and workers.threads_per_worker(3) == 2


def test_usable_cores_and_free_memory_are_read_from_this_machine() -> None:
    from archsearch.study import workers

    assert 1 <= workers.usable_cores() <= (os.cpu_count() or 1)
    free = workers._available_memory()
    assert free is None or free > 0


SEARCH = ("search", "--dataset", "digits", "--space", "mlp", "--epochs", "10", "--threads", "1", "--json")


def counted_params(db: str, name: str) -> list[dict[str, object]]:
    trials = optuna.load_study(study_name=name, storage=db).get_trials()
    return [t.params for t in trials if t.state in (TrialState.COMPLETE, TrialState.PRUNED)]


def test_a_search_run_in_pieces_continues_the_sampler_instead_of_repeating_it(tmp_path: Path) -> None:
    """--n-trials 2, then 4 killed at a random moment and rerun, then 6: six distinct trials, the very six a fresh
    uninterrupted run of --n-trials 6 trains (the seeded sequence goes on where the study stands)."""
    pieces, fresh = tmp_path / "pieces", tmp_path / "fresh"
    pieces.mkdir(), fresh.mkdir()
    finish(archsearch(pieces, *SEARCH, "--n-trials", "2"))
    proc = archsearch(pieces, *SEARCH, "--n-trials", "4")
    time.sleep(random.Random(27).uniform(4.0, 8.0))
    if proc.poll() is None:
        os.kill(proc.pid, signal.SIGKILL)
    proc.communicate()
    finish(archsearch(pieces, *SEARCH, "--n-trials", "4"))
    finish(archsearch(pieces, *SEARCH, "--n-trials", "6"))
    finish(archsearch(fresh, *SEARCH, "--n-trials", "6"))
    got = counted_params(f"sqlite:///{pieces}/archsearch.db", "search-mlp")
    assert len(got) == 6 and len({json.dumps(p, sort_keys=True) for p in got}) == 6
    assert got == counted_params(f"sqlite:///{fresh}/archsearch.db", "search-mlp")


def test_two_workers_on_one_search_train_distinct_trials(tmp_path: Path) -> None:
    summary = json.loads(finish(archsearch(tmp_path, *SEARCH, "--n-trials", "6", "--workers", "2")))
    got = counted_params(f"sqlite:///{tmp_path}/archsearch.db", "search-mlp")
    # each worker stops once the study has 6; the other may be finishing a trial of its own then
    assert len(got) == summary["counts"]["complete"] + summary["counts"].get("pruned", 0) in (6, 7)
    assert len({json.dumps(p, sort_keys=True) for p in got}) == len(got)
