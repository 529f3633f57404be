"""What the CLI draws with rich: progress bars with ETA on stderr, tables and lines on stdout.

The trainer and the studies report progress through callbacks (:class:`archsearch.study.Hooks`); only this module
turns them into bars, so stdout stays clean for ``--json``.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from rich.table import Table

from archsearch.core.jsonio import dumps

__all__ = ["bar", "emit_json", "out", "print_lines", "print_tables", "trial_hooks"]


def out() -> Console:
    """stdout console, created per use so redirection works; wide when not a terminal so tables are not cut."""
    return Console() if sys.stdout.isatty() else Console(width=200)


def emit_json(data: Any) -> None:
    sys.stdout.write(dumps(data))


def print_tables(tables: Sequence[tuple[str, list[str], list[list[str]]]]) -> None:
    con = out()
    for title, headers, rows in tables:
        table = Table(title=title)
        for h in headers:
            table.add_column(h)
        for r in rows:
            table.add_row(*r)
        con.print(table)


def print_lines(lines: Sequence[str]) -> None:
    con = out()
    for line in lines:
        con.print(line, markup=False, highlight=False)


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


def trial_hooks(bar: Progress, title: str | None = None) -> Any:
    """Hooks drawing the study's trials (``title``: an overall bar) and the trial in training (steps, accuracy)."""
    from archsearch.study import Hooks

    # Both start hidden: the study shows the overall bar once it has checked its input and knows the total, so a
    # refused command prints its one line and nothing else.
    overall = bar.add_task(title or "", total=None, visible=False)
    current = bar.add_task("", total=None, visible=False)

    def on_epoch(r: Any) -> None:
        bar.update(current, description=f"  epoch {r.epoch}/{r.epochs} {r.monitor} acc {r.mean_accuracy:.4f}")

    return Hooks(
        on_progress=lambda done, total: bar.update(overall, completed=done, total=total, visible=title is not None),
        on_trial=lambda label: bar.update(current, description=f"  {label}", completed=0, total=None, visible=True),
        on_step=lambda d, t: bar.update(current, completed=d, total=t),
        on_epoch=on_epoch,
    )
