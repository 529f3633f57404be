"""Several processes on one study: ``--workers N`` on one machine (this pool), ``archsearch worker`` on any machine
(:mod:`archsearch.study.kinds` says what each kind of study's worker does).

Every worker is an ordinary process that opens the study and takes queued (or newly sampled) trials from it; Optuna's
storage decides which worker gets which trial, so no trial is trained twice. On one host the default SQLite file is
enough: trials last seconds to hours and write a few rows per epoch, far from the write rates at which SQLite locking
hurts (with a 120 s lock timeout, see storage.py). Across hosts use PostgreSQL: one database, the same command on
every machine.

Threads: on a small CPU, N processes with one thread each beat one process with N threads for small models (the
per-step Python overhead runs in parallel); each worker gets ``cores // N`` threads.
"""

from __future__ import annotations

import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from archsearch.core.errors import UserError
from archsearch.engine import usable_cores

__all__ = ["Workers", "default_workers", "spawn_workers", "threads_per_worker", "wait_workers"]


# A worker's peak resident memory on the report's largest rows, with margin (measured: 0.96 GB for one process
# training rows 13 and 15, 1.84 GB for two workers and their coordinator).
WORKER_BYTES = 1 << 30


def _available_memory() -> int | None:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError):
        pass
    return None


def default_workers(device: Any, threads: int | None, trials: int) -> int:
    """``--workers`` when not given. On a CPU, one single-threaded worker per core: the fastest layout measured
    (benchmarks/bench_trainer.py, report rows 6, 10, 15, 16 on 2 cores: 1.3-1.7x the model-steps/s of one process
    with 2 threads, where only the ReLU MLPs' C step spreads over the cores) — but no more workers than trials, nor
    than the free memory holds. One process on a GPU (the GPU time-slices between processes: 4 workers
    measured 0.94-1.07x of one) and wherever ``--threads`` says how to use the cores."""
    if getattr(device, "type", "cpu") != "cpu" or threads is not None or trials <= 1:
        return 1
    memory = _available_memory()
    fit = max(1, memory // WORKER_BYTES) if memory is not None else usable_cores()
    return max(1, min(usable_cores(), trials, fit))


def threads_per_worker(workers: int) -> int:
    return max(1, usable_cores() // workers)


@dataclass
class Workers:
    """Worker processes started by one command, each writing its stderr to a log of its own: their progress bars
    would fight the command's own, and the log's last lines explain a worker that fails."""

    procs: list[subprocess.Popen[bytes]]
    logs: list[IO[bytes]] = field(default_factory=list)

    def last_words(self, proc: subprocess.Popen[bytes]) -> str:
        """The last line ``proc`` wrote on stderr (empty if it kept no log)."""
        if proc not in self.procs or len(self.logs) <= self.procs.index(proc):
            return ""
        log = self.logs[self.procs.index(proc)]
        log.seek(0)
        lines = [line for line in log.read().decode(errors="replace").splitlines() if line.strip()]
        return lines[-1].strip() if lines else ""


def spawn_workers(
    n: int,
    storage: str,
    study_name: str,
    *,
    device: Any,
    data_dir: Path | None,
    models: str | None = None,
) -> Workers:
    """Start ``n`` ``archsearch worker`` processes on the study, in a session of their own (a terminal's Ctrl-C goes
    to the command, which stops them); ``models`` limits reproduce workers to the rows the command asked for."""
    cmd = [sys.executable, "-m", "archsearch", "worker", "--study", study_name, "--storage", storage, "--json"]
    if models:
        cmd += ["--models", models]
    cmd += ["--threads", str(threads_per_worker(n))]
    if device is not None:
        cmd += ["--device", str(device)]
    if data_dir:
        cmd += ["--data-dir", str(data_dir)]
    logs: list[IO[bytes]] = [tempfile.TemporaryFile(prefix="archsearch-worker-") for _ in range(n)]  # noqa: SIM115 (closed by wait)
    procs = [subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=log, start_new_session=True) for log in logs]
    return Workers(procs, logs)


def wait_workers(
    workers: Workers | list[subprocess.Popen[bytes]], poll: Callable[[], None], every: float = 2.0
) -> None:
    """Wait for all workers, calling ``poll`` (progress) meanwhile; stop them all if one fails or on an interrupt."""
    pool = workers if isinstance(workers, Workers) else Workers(list(workers))
    procs = pool.procs
    try:
        while True:
            running = [p for p in procs if p.poll() is None]  # poll() first: it is what sets returncode
            failed = [p for p in procs if p.returncode not in (None, 0)]
            if failed:  # also one that failed after the last look, as all the others finished
                said = pool.last_words(failed[0])
                raise UserError(
                    f"a worker exited with code {failed[0].returncode}"
                    + (f" ({said.removeprefix('archsearch: ')})" if said else "")
                    + "; rerun the command to resume"
                )
            if not running:
                break
            poll()
            time.sleep(every)
    finally:
        for p in procs:
            if p.poll() is None:
                p.terminate()
        for p in procs:
            p.wait()
        for log in pool.logs:
            log.close()
    poll()
