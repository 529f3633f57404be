"""Ctrl-C and ``kill``: SIGINT and SIGTERM stop a command at once, and the caller learns which signal it was.

:func:`handled` (the CLI's entry point runs every command in it) makes both signals raise :class:`Interrupted`, a
``KeyboardInterrupt``: Optuna fails the running trial on it, ``finally`` blocks clean up, and the command exits with
128 + the signal's number (130, 143), as a shell reports a process the signal killed. SIGINT is taken even where the
process inherited it ignored (a job started with ``&`` by a script): the command's own Ctrl-C works the same
everywhere. A second signal while the first one's clean-up runs ends the process at once, with the signal's default
action. Python drops an exception raised inside a weakref callback or ``__del__``; long loops call :func:`check`, so
a signal that lands there still stops them.

:func:`deferred` holds a signal off while a few renames put finished files in place, so an output folder is written
whole or not at all, and while a storage call runs (a signal inside a database transaction leaves its lock taken, and
the clean-up that fails the trial then waits on it forever); the signal takes effect when the block ends.
"""

from __future__ import annotations

import os
import signal
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from types import FrameType
from typing import Any

__all__ = ["Interrupted", "check", "deferred", "exit_code", "handled", "received", "stopped_line"]

SIGNALS = (signal.SIGINT, signal.SIGTERM)


class Interrupted(KeyboardInterrupt):
    """Raised by the first SIGINT or SIGTERM; ``signum`` says which."""

    def __init__(self, signum: int) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


_received: int | None = None
_deferring = 0
_pending: int | None = None
_exiting = False
# After a signal, the clean-up (failing the running trial, stopping workers) gets this long; a process whose clean-up
# hangs (a database lock it broke by the interrupt, say) is then ended anyway: a rerun recovers what it left.
GRACE_S = 20.0


def _handler(signum: int, _frame: FrameType | None) -> None:
    global _received, _pending
    if _received is not None:  # a second signal: the user insists
        signal.signal(signum, signal.SIG_DFL)
        os.kill(os.getpid(), signum)
        return
    if _deferring:
        if _pending is not None:  # a second signal while the first is held: the user insists
            signal.signal(signum, signal.SIG_DFL)
            os.kill(os.getpid(), signum)
        _pending = signum
        return
    _received = signum
    if _exiting:
        watchdog = threading.Timer(GRACE_S, _end, args=(signum,))
        watchdog.daemon = True  # a process that finishes its clean-up in time exits without waiting for it
        watchdog.start()
    raise Interrupted(signum)


def _end(signum: int) -> None:
    """The clean-up outlived its grace: say so and end the process with the signal's exit code."""
    sys.stderr.write(f"{stopped_line()} (clean-up took over {GRACE_S:g} s: ended)\n")
    sys.stderr.flush()
    os._exit(128 + signum)


@contextmanager
def handled(*, exiting: bool = False) -> Iterator[None]:
    """Within the block, SIGINT and SIGTERM raise :class:`Interrupted`; the previous handlers come back after it,
    or, where the process is ``exiting`` after the block, the signals are ignored: the work is done, and a signal in
    the last milliseconds must not turn a finished command into a killed one. Outside the main thread (where Python
    allows no handlers) the block runs as it is."""
    global _received, _pending, _exiting
    _received = _pending = None
    _exiting = _exiting or exiting
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {signum: signal.getsignal(signum) for signum in SIGNALS}
    hook = sys.unraisablehook
    for signum in SIGNALS:
        signal.signal(signum, _handler)
    sys.unraisablehook = _unraisable
    try:
        yield
    finally:
        sys.unraisablehook = hook
        for signum, handler in previous.items():
            signal.signal(signum, signal.SIG_IGN if exiting else handler)
        if not exiting:  # a caller in Python goes on: a later check() must not raise this block's signal
            _received = _pending = None


def _unraisable(unraisable: Any) -> None:
    """Python's report of an exception it had to drop, less our own interrupt (:func:`check` raises it again)."""
    if not isinstance(unraisable.exc_value, Interrupted):
        sys.__unraisablehook__(unraisable)


def received() -> int | None:
    """The signal that interrupted this process, if one did."""
    return _received


def check() -> None:
    """Raise :class:`Interrupted` again if a signal came: Python swallows an exception raised while it runs a
    weakref callback or a ``__del__`` (it prints "Exception ignored in ..."), and a signal can land there. Long loops
    (the training loop's steps, a study's trials) call this, so such an interrupt still stops them."""
    if _received is not None and not _deferring:
        raise Interrupted(_received)


def stopped_line() -> str:
    """What a command prints when a signal stopped it."""
    how = f" by {signal.Signals(_received).name}" if _received not in (None, signal.SIGINT) else ""
    return f"archsearch: interrupted{how}"


def exit_code(default: int = 130) -> int:
    """128 + the signal's number; ``default`` for an interrupt that came from no signal."""
    return 128 + _received if _received is not None else default


@contextmanager
def deferred() -> Iterator[None]:
    """Hold SIGINT and SIGTERM (inside :func:`handled`) until the block ends, then act on them; a second signal
    while one is held ends the process at once. Signals reach the main thread only: in any other thread (Optuna's
    heartbeat) the block runs as it is."""
    global _deferring, _pending, _received
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    _deferring += 1
    try:
        yield
    finally:
        _deferring -= 1
        if not _deferring and _pending is not None:
            _received, _pending = _pending, None
            raise Interrupted(_received)
