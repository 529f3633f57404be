"""`archsearch dashboard`: optuna-dashboard on the same storage and artifact store as every other command.

We run optuna-dashboard through its Python API (``optuna_dashboard.run_server``) rather than its own command line so
that the storage URL means exactly what it means elsewhere in archsearch (:func:`archsearch.storage.open_storage`:
relative SQLite paths, ``journal:///`` files, SQLite lock timeouts) and so that the trial weights saved as artifacts
(:func:`archsearch.storage.artifact_dir`) are listed under their trials.

The server binds to ``127.0.0.1`` by default: the dashboard can edit and delete studies and has no authentication,
so exposing it on a network interface has to be asked for (``--host 0.0.0.0``).

``run_server`` blocks and offers no handle to stop it from another thread, so :func:`start_background` runs the
server in a child process (``python -m archsearch.dashboard``) that can be interrupted cleanly; tests use it.
"""

from __future__ import annotations

import argparse
import contextlib
import errno
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Sequence
from pathlib import Path
from types import TracebackType
from typing import Any

from archsearch.errors import UserError

__all__ = [
    "DEFAULT_HOST",
    "DEFAULT_PORT",
    "DashboardProcess",
    "dashboard_url",
    "free_port",
    "serve",
    "start_background",
]

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 8080


def dashboard_url(host: str = DEFAULT_HOST, port: int = DEFAULT_PORT) -> str:
    """The address to open in a browser for a server bound to ``host``:``port``.

    A wildcard bind address (``0.0.0.0``, ``::``) is not something a browser can open, so the URL names the loopback
    address instead; IPv6 literals get the brackets URLs need.
    """
    shown = {"0.0.0.0": "127.0.0.1", "::": "::1", "": "127.0.0.1"}.get(host, host)
    if ":" in shown and not shown.startswith("["):
        shown = f"[{shown}]"
    return f"http://{shown}:{port}/dashboard"


def _check_port(host: str, port: int) -> None:
    """Fail with one clear line before starting, instead of a traceback from deep inside wsgiref."""
    if isinstance(port, bool) or not isinstance(port, int) or not 1 <= port <= 65535:
        raise UserError(f"port must be an integer between 1 and 65535, got {port!r}")
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except socket.gaierror as err:
        raise UserError(f"cannot bind the dashboard to host {host!r}: {err.strerror or err}") from None
    family, _, _, _, address = infos[0]
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        # wsgiref's server sets SO_REUSEADDR too: a port only in TIME_WAIT is usable, one with a listener is not.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(address)
        except OSError as err:
            raise UserError(_bind_message(host, port, err)) from None


def _bind_message(host: str, port: int, err: OSError) -> str:
    if err.errno == errno.EADDRINUSE:
        return f"port {port} on {host} is already in use; choose another with --port"
    if err.errno == errno.EACCES:
        return f"no permission to listen on port {port} on {host}; choose a port above 1023"
    return f"cannot listen on {host}:{port}: {err.strerror or err}"


def _artifact_store(storage_url: str | None, artifact_dir: str | Path | None) -> Any:
    """The FileSystemArtifactStore where trial weights live; created if missing so uploads from the UI work."""
    from optuna.artifacts import FileSystemArtifactStore

    from archsearch.storage import artifact_dir as default_artifact_dir

    path = Path(artifact_dir) if artifact_dir is not None else default_artifact_dir(storage_url)
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise UserError(f"cannot create artifact directory {path}: {err.strerror or err}") from None
    return FileSystemArtifactStore(path)


def serve(
    storage_url: str | None,
    host: str = DEFAULT_HOST,
    port: int = DEFAULT_PORT,
    artifact_dir: str | Path | None = None,
    *,
    on_ready: Callable[[str], None] | None = None,
) -> str:
    """Serve optuna-dashboard for ``storage_url`` (default ``sqlite:///archsearch.db``) until interrupted.

    Blocks until the server stops (Ctrl-C), then returns the URL it served. Everything that can be checked before
    serving is checked first and raised as a ``UserError`` (a bad storage URL, an unusable host or busy port, an
    artifact directory that cannot be created); ``on_ready(url)`` is then called, which is where the CLI prints
    the URL, since ``run_server`` itself only returns when the server is gone.
    """
    import optuna_dashboard

    from archsearch.storage import open_storage

    storage = open_storage(storage_url)
    store = _artifact_store(storage_url, artifact_dir)
    _check_port(host, port)
    url = dashboard_url(host, port)
    if on_ready is not None:
        on_ready(url)
    try:
        optuna_dashboard.run_server(storage, host=host, port=port, artifact_store=store)
    except OSError as err:  # the port was taken between our check and the server's bind
        raise UserError(_bind_message(host, port, err)) from None
    return url


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
    """Start :func:`serve` in a child process and return once its API answers (``port=None``: a free port).

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
            [sys.executable, "-m", "archsearch.dashboard", *args],
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


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m archsearch.dashboard``: what :func:`start_background` runs. Users run ``archsearch dashboard``."""
    parser = argparse.ArgumentParser(prog="python -m archsearch.dashboard", description=__doc__.splitlines()[0])
    parser.add_argument("--storage", default=None)
    parser.add_argument("--host", default=DEFAULT_HOST)
    parser.add_argument("--port", type=int, default=DEFAULT_PORT)
    parser.add_argument("--artifact-dir", default=None)
    ns = parser.parse_args(argv)
    # A parent that ignores SIGINT (a background job) would pass that on; stop() relies on Ctrl-C semantics.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        serve(ns.storage, ns.host, ns.port, ns.artifact_dir, on_ready=lambda url: print(url, flush=True))
    except UserError as err:
        sys.stderr.write(f"archsearch: error: {err}\n")
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
