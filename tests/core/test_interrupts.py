"""archsearch.core.interrupts in one process: what a signal does inside and outside a deferred block."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading

import pytest

from archsearch.core import interrupts


def test_a_signal_inside_a_deferred_block_is_raised_when_it_ends() -> None:
    done = []
    with interrupts.handled():
        with pytest.raises(interrupts.Interrupted) as info, interrupts.deferred():
            os.kill(os.getpid(), signal.SIGTERM)
            done.append("the rest of the block")
        assert interrupts.received() == signal.SIGTERM
    assert done == ["the rest of the block"] and info.value.signum == signal.SIGTERM
    interrupts.check()  # the block is over: its signal is not raised again


def test_deferred_blocks_nest_and_the_outer_end_raises() -> None:
    steps = []
    with interrupts.handled(), pytest.raises(interrupts.Interrupted), interrupts.deferred():
        with interrupts.deferred():
            os.kill(os.getpid(), signal.SIGINT)
        steps.append("after the inner block")
    assert steps == ["after the inner block"]


def test_a_deferred_block_outside_the_main_thread_runs_as_it_is() -> None:
    """Optuna's heartbeat thread writes through the same storage: its calls must not hold or raise signals."""
    seen: list[int] = []

    def beat() -> None:
        with interrupts.deferred():
            seen.append(interrupts._deferring)

    with interrupts.handled():
        thread = threading.Thread(target=beat)
        thread.start()
        thread.join()
    assert seen == [0]


def test_a_second_signal_while_one_is_held_ends_the_process() -> None:
    code = (
        "import os, signal, time\nfrom archsearch.core import interrupts\n"
        "with interrupts.handled(exiting=True):\n    with interrupts.deferred():\n"
        "        os.kill(os.getpid(), signal.SIGTERM)\n        os.kill(os.getpid(), signal.SIGTERM)\n"
        "        time.sleep(30)\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert proc.returncode == -signal.SIGTERM  # killed by the signal's default action, not after the sleep
