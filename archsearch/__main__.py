"""``archsearch`` and ``python -m archsearch``: SIGINT and SIGTERM are taken before the command's imports (torch,
Optuna: seconds), so a signal during start-up stops the command like a signal at any other moment."""

from __future__ import annotations

import sys

from archsearch.core import interrupts

__all__ = ["run"]


def run() -> int:
    with interrupts.handled(exiting=True):
        try:
            from archsearch.cli import main

            return main()
        except KeyboardInterrupt:  # during the imports, or as typer builds the command (before main's own handling)
            sys.stderr.write(interrupts.stopped_line() + "\n")
            return interrupts.exit_code()


if __name__ == "__main__":
    sys.exit(run())
