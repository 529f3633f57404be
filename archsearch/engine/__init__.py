"""The engine: one training loop for every spec, batches gathered and augmented on the device, the optimisers and
schedules, the runtime settings, and the steps (:mod:`archsearch.engine.steps`) with their native kernels
(:mod:`archsearch.engine.native`). Never imports Optuna."""

from archsearch.engine.doctor import describe_runtime
from archsearch.engine.loop import EpochReport, RunResult, TrainResult, noise_generator, train
from archsearch.engine.runtime import (
    check_backends,
    default_device,
    on_device,
    resolve_device,
    torch_threads,
    usable_cores,
    use_huge_pages,
)
from archsearch.engine.steps import StepPlan, select_step

__all__ = [
    "EpochReport",
    "RunResult",
    "StepPlan",
    "TrainResult",
    "check_backends",
    "default_device",
    "describe_runtime",
    "noise_generator",
    "on_device",
    "resolve_device",
    "select_step",
    "torch_threads",
    "train",
    "usable_cores",
    "use_huge_pages",
]
