"""Files results are written to: whole or not at all (a temporary file renamed into place), and checked to be
writable before any work starts."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from archsearch.core.errors import UserError

__all__ = ["atomic_write", "check_writable", "save_figure"]


def check_writable(out: Path) -> None:
    """Fail early (before any training) if ``out`` cannot be created or written."""
    try:
        out.mkdir(parents=True, exist_ok=True)
        probe = out / ".archsearch-write-test"
        probe.write_text("")
        probe.unlink()
    except OSError as err:
        raise UserError(f"cannot write to --out {out}: {err.strerror or err}") from None


def atomic_write(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` whole: a temporary file beside it, renamed into place."""
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text)
    tmp.replace(path)


def save_figure(fig: Any, path: Path) -> str:
    """Save a matplotlib figure as PNG, whole (temporary file, then rename), and close it; returns the file name."""
    import matplotlib.pyplot as plt

    fig.tight_layout()
    tmp = path.with_name(f".{path.name}.tmp")
    fig.savefig(tmp, dpi=120, format="png")
    plt.close(fig)
    tmp.replace(path)
    return path.name
