"""optuna-dashboard in a child process for tests: ``archsearch dashboard`` started in the background, stopped as
Ctrl-C would stop it (``serve`` blocks until interrupted, and offers no handle to stop it from another thread)."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path
from types import TracebackType

from archsearch.study.dashboard import DEFAULT_HOST, dashboard_url

__all__ = ["DashboardProcess", "free_port", "start_background"]


def free_port(host: str = DEFAULT_HOST) -> int:
    """A TCP port that is free on ``host`` right now (the OS picks it), for tests and throwaway servers."""
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


class DashboardProcess:
    """A dashboard server running in a child process; stop it with :meth:`stop` or use it as a context manager."""

    def __init__(self, process: subprocess.Popen[bytes], url: str, log_path: Path) -> None:
        self.process = process
        self.url = url
        self.log_path = log_path

    def log(self) -> str:
        """What the server wrote on stderr (bottle's start-up lines, one line per request, any traceback)."""
        try:
            return self.log_path.read_text(errors="replace")
        except OSError:
            return ""

    def stop(self, timeout: float = 5.0) -> int | None:
        """Interrupt the server as Ctrl-C would (so it closes its socket), kill it if that does not work."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGINT)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        with contextlib.suppress(OSError):
            self.log_path.unlink()
        return self.process.returncode

    def __enter__(self) -> DashboardProcess:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()


def start_background(
    storage_url: str | None,
    host: str = DEFAULT_HOST,
    port: int | None = None,
    artifact_dir: str | Path | None = None,
    *,
    timeout: float = 30.0,
) -> DashboardProcess:
    """Start ``archsearch dashboard`` in a child process and return once its API answers (``port=None``: a free port).

    Raises ``RuntimeError`` with the server's output if it exits or does not answer within ``timeout`` seconds.
    """
    port = free_port(host) if port is None else port
    args = ["--host", host, "--port", str(port)]
    if storage_url is not None:
        args += ["--storage", storage_url]
    if artifact_dir is not None:
        args += ["--artifact-dir", str(artifact_dir)]
    fd, log_name = tempfile.mkstemp(prefix="archsearch-dashboard-", suffix=".log")
    log_path = Path(log_name)
    with os.fdopen(fd, "wb") as log:  # a file, not a pipe: a pipe nobody reads would block the server when full
        process = subprocess.Popen(
            [sys.executable, "-m", "archsearch", "dashboard", *args],
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    server = DashboardProcess(process, dashboard_url(host, port), log_path)
    api = server.url.removesuffix("/dashboard") + "/api/meta"
    deadline = time.monotonic() + timeout
    while True:
        if process.poll() is not None:
            output = server.log()
            server.stop()
            raise RuntimeError(f"the dashboard exited with code {process.returncode}:\n{output}")
        try:
            with urllib.request.urlopen(api, timeout=2) as response:
                if response.status == 200:
                    return server
        except (urllib.error.URLError, OSError):
            pass
        if time.monotonic() > deadline:
            output = server.log()
            server.stop()
            raise RuntimeError(f"the dashboard did not answer at {api} within {timeout:.0f} s:\n{output}")
        time.sleep(0.2)
