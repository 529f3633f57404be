"""Rich progress bars for long work. The trainer reports progress through callbacks; only the CLI draws."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from contextlib import contextmanager

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

__all__ = ["bar"]


@contextmanager
def bar(enabled: bool = True) -> Iterator[Progress]:
    """A progress display with ETA on stderr (stdout stays clean for --json); disabled, it draws nothing."""
    progress = Progress(
        TextColumn("[progress.description]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TextColumn("ETA"),
        TimeRemainingColumn(),
        console=Console(file=sys.stderr),
        disable=not enabled,
    )
    with progress:
        yield progress
