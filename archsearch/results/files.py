"""Files results are written to: whole or not at all, and checked to be writable before any work starts.

A command's output folder is written into a temporary folder beside it and put in place only when every file is
there (:func:`output_dir`), with SIGINT and SIGTERM held for those few renames: an interrupted command leaves either
the whole output or none, never an empty or half-written folder.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from archsearch.core import interrupts
from archsearch.core.errors import UserError

__all__ = ["check_writable", "output_dir", "save_figure"]


def check_writable(out: Path) -> None:
    """Fail early (before any training) if ``out`` cannot be created or written; creates nothing."""
    if out.exists() and not out.is_dir():
        raise UserError(f"--out {out} exists and is not a directory")
    existing = out.absolute()
    while not existing.exists():  # the folder and its parents are created only when the results are written
        existing = existing.parent
    if not existing.is_dir() or not os.access(existing, os.W_OK | os.X_OK):
        raise UserError(f"cannot write to --out {out}: {existing} is not a writable directory")


@contextmanager
def output_dir(out: Path, *, replace: bool = False) -> Iterator[Path]:
    """Yield a temporary folder beside ``out`` to write the results into. When the block ends normally its files are
    put into ``out`` (created if new; with ``replace``, ``out`` is replaced whole); if it raises, the temporary folder
    vanishes and ``out`` is as it was."""
    parent = out.absolute().parent
    try:
        parent.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise UserError(f"cannot create {parent}: {err.strerror or err}") from None
    tmp = Path(tempfile.mkdtemp(dir=parent, prefix=f".{out.name}.tmp-"))
    try:
        yield tmp
        mask = _umask()  # mkdtemp (and safetensors) create private files; results are ordinary files
        for path in tmp.iterdir():
            os.chmod(path, 0o666 & ~mask)
        os.chmod(tmp, 0o777 & ~mask)
        with interrupts.deferred():
            _put_in_place(tmp, out, replace)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def _put_in_place(tmp: Path, out: Path, replace: bool) -> None:
    if not out.exists():
        os.replace(tmp, out)
    elif not replace:  # a folder of the user's: our files join (or replace) theirs, nothing else is touched
        for path in tmp.iterdir():
            os.replace(path, out / path.name)
    else:
        old = Path(tempfile.mkdtemp(dir=out.absolute().parent, prefix=f".{out.name}.old-"))
        os.replace(out, old / "previous")
        try:
            os.replace(tmp, out)
        except OSError:
            os.replace(old / "previous", out)
            raise
        finally:
            shutil.rmtree(old, ignore_errors=True)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def save_figure(fig: Any, path: Path) -> str:
    """Save a matplotlib figure as PNG, whole (temporary file, then rename), and close it; returns the file name."""
    import matplotlib.pyplot as plt

    fig.tight_layout()
    tmp = path.with_name(f".{path.name}.tmp")
    fig.savefig(tmp, dpi=120, format="png")
    plt.close(fig)
    tmp.replace(path)
    return path.name
