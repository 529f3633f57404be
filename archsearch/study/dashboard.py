"""`archsearch dashboard`: optuna-dashboard on the same storage and artifact store as every other command.

We run optuna-dashboard through its Python API (``optuna_dashboard.run_server``) rather than its own command line so
that the storage URL means exactly what it means elsewhere in archsearch (:func:`archsearch.study.storage.open_storage`:
relative SQLite paths, ``journal:///`` files, SQLite lock timeouts) and so that the trial weights saved as artifacts
(:func:`archsearch.study.storage.artifact_dir`) are listed under their trials.

The server binds to ``127.0.0.1`` by default: the dashboard can edit and delete studies and has no authentication,
so exposing it on a network interface has to be asked for (``--host 0.0.0.0``).

``run_server`` blocks until interrupted (Ctrl-C); tests run ``archsearch dashboard`` in a child process.
"""

from __future__ import annotations

import errno
import socket
from collections.abc import Callable
from pathlib import Path
from typing import Any

from archsearch.core.errors import UserError

__all__ = ["DEFAULT_HOST", "DEFAULT_PORT", "dashboard_url", "serve"]

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

    from archsearch.study.storage import artifact_dir as default_artifact_dir

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
    try:
        import optuna_dashboard
    except ImportError:
        raise UserError("the dashboard needs optuna-dashboard: pip install 'archsearch[dashboard]'") from None

    from archsearch.study.storage import open_storage

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
