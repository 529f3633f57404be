"""The learning-rate schedules of archsearch.engine.optim against torch's own schedulers."""

from __future__ import annotations

import math

import pytest
import torch

from archsearch.core.protocol import Protocol
from archsearch.engine.optim import ONECYCLE_DIV, ONECYCLE_FINAL_DIV, lr_at


@pytest.mark.parametrize(
    ("epochs", "steps", "warmup"),
    [(1, 10, 0.0), (3, 7, 0.0), (5, 391, 0.0), (2, 13, 0.5), (4, 50, 1.0), (1, 1, 0.0), (1, 3, 0.0)],
)
def test_onecycle_is_torchs_onecyclelr_step_for_step(epochs: int, steps: int, warmup: float) -> None:
    protocol = Protocol(epochs=epochs, schedule="onecycle", lr=0.1, warmup_epochs=warmup, optimizer="sgd")
    total = epochs * steps
    pct = round(warmup * steps) / total if warmup else 0.3
    opt = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=0.1)
    sched = torch.optim.lr_scheduler.OneCycleLR(
        opt, max_lr=0.1, total_steps=total, pct_start=pct, anneal_strategy="cos", cycle_momentum=False,
        div_factor=ONECYCLE_DIV, final_div_factor=ONECYCLE_FINAL_DIV,
    )  # fmt: skip
    for step in range(total):
        assert lr_at(protocol, step, steps) == pytest.approx(opt.param_groups[0]["lr"], rel=1e-9, abs=1e-15), step
        opt.step()
        if step < total - 1:
            sched.step()


def test_cosine_and_constant_warm_up_linearly() -> None:
    cosine = Protocol(epochs=2, schedule="cosine", lr=0.2, warmup_epochs=1.0)
    assert [lr_at(cosine, s, 4) for s in range(4)] == pytest.approx([0.05, 0.1, 0.15, 0.2])
    after = [lr_at(cosine, s, 4) for s in range(4, 8)]  # torch's CosineAnnealingLR(T_max=4) over the last 4 steps
    assert after == pytest.approx([0.2 * (1 + math.cos(math.pi * t / 4)) / 2 for t in range(4)])
    assert lr_at(Protocol(lr=0.3), 123, 10) == 0.3
