"""Which memory format a CPU trains a plain CNN faster in, measured once per machine and model, and cached.

oneDNN's convolutions are faster in channels-last on some CNNs and in NCHW on others, and which depends on the CPU
as much as on the model (on a Zen 4 with AVX-512 a 77.8k-parameter ResNet trains 1.4x faster in channels-last, while
the 68.6k budget finalist measured 0.77x to 1.1x of NCHW's step time from one run to the next; on a Zen 2 with AVX2
the finalist ran at 0.88x of NCHW's speed in channels-last). No rule of thumb survives that, so the plain layout
measures: a few training steps of a throwaway copy of the model (its own seed, random images: the run's own random
draws are untouched), each format warmed up once, then timed in alternating rounds, so that a drift of the
machine's speed touches both alike. Channels-last is chosen only where its median step is at least ``MARGIN``
faster: NCHW is torch's own format and the one a plain loop uses, and on a shared 2-core machine one model's step
time varies by 10-15% from one measurement to the next, so that a smaller difference is no reason to leave it. The
choice is cached per CPU, torch version, spec, image shape, batch size and thread count
(``<cache>/memory-formats.json``), so a machine decides once, and a rerun on it takes the same path and computes
the same numbers.
"""

from __future__ import annotations

import hashlib
import json
import os
import statistics
import tempfile
import time
from typing import Literal

import torch

from archsearch.core.shapes import Shape
from archsearch.engine.native.loader import _cpu, cache_dir
from archsearch.engine.runtime import torch_threads
from archsearch.models import Spec, build_model, init_model

__all__ = ["MARGIN", "MemoryFormat", "choose", "memory_format"]

MemoryFormat = Literal["nchw", "channels_last"]
CACHE_FILE = "memory-formats.json"
WARMUP, STEPS, ROUNDS = 2, 2, 3  # per format: warm-up steps once, then ROUNDS alternating rounds of STEPS
MARGIN = 0.05  # channels-last must be this much faster (its median step time at most 95% of NCHW's)
VERSION = 2  # of the measurement; choices measured by another version are measured again


def _key(spec: Spec, shape: Shape, classes: int, batch_size: int, threads: int) -> str:
    return f"{spec}|{shape}|{classes}|b{batch_size}|t{threads}"


def _machine() -> str:
    """This CPU (its model and feature flags, hashed) and torch's version."""
    return f"cpu {hashlib.sha256(_cpu().encode()).hexdigest()[:16]}, torch {torch.__version__}, v{VERSION}"


def _read() -> dict[str, dict[str, str]]:
    try:
        data = json.loads((cache_dir() / CACHE_FILE).read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def _write(machine: str, key: str, choice: MemoryFormat) -> None:
    """Add one choice to the cache, whole or not at all (a temporary file renamed); a cache that cannot be written
    costs a measurement next time, nothing else."""
    data = _read()
    data.setdefault(machine, {})[key] = choice
    try:
        cache_dir().mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=cache_dir(), prefix=f".{CACHE_FILE}.")
        with os.fdopen(fd, "w") as f:
            json.dump(data, f, indent=1, sort_keys=True)
        os.replace(tmp, cache_dir() / CACHE_FILE)
    except OSError:
        pass


class _Trainer:
    """A throwaway copy of the model in one memory format, with its batch of random images and an optimiser."""

    def __init__(self, spec: Spec, shape: Shape, classes: int, batch_size: int, fmt: MemoryFormat) -> None:
        self.fmt = fmt
        gen = torch.Generator().manual_seed(0)
        self.model = init_model(build_model(spec, shape, classes), gen)
        self.x = torch.rand(batch_size, shape.channels, shape.height, shape.width, generator=gen)
        self.y = torch.randint(0, classes, (batch_size,), generator=gen)
        if fmt == "channels_last":
            self.model = self.model.to(memory_format=torch.channels_last)
            self.x = self.x.contiguous(memory_format=torch.channels_last)
        self.opt = torch.optim.SGD(self.model.parameters(), lr=1e-3, momentum=0.9)

    def seconds_per_step(self, steps: int) -> list[float]:
        times = []
        for _ in range(steps):
            start = time.perf_counter()
            self.opt.zero_grad(set_to_none=True)
            torch.nn.functional.cross_entropy(self.model(self.x), self.y).backward()
            self.opt.step()
            times.append(time.perf_counter() - start)
        return times


def _timings(spec: Spec, shape: Shape, classes: int, batch_size: int) -> dict[MemoryFormat, list[float]]:
    """Seconds per training step in each format: ``WARMUP`` untimed steps each, then ``ROUNDS`` rounds of
    ``STEPS`` timed steps, the formats alternating."""
    formats: tuple[MemoryFormat, ...] = ("nchw", "channels_last")
    trainers = {fmt: _Trainer(spec, shape, classes, batch_size, fmt) for fmt in formats}
    for trainer in trainers.values():
        trainer.seconds_per_step(WARMUP)
    timings: dict[MemoryFormat, list[float]] = {fmt: [] for fmt in formats}
    for _ in range(ROUNDS):
        for fmt in formats:
            timings[fmt] += trainers[fmt].seconds_per_step(STEPS)
    return timings


def choose(timings: dict[MemoryFormat, list[float]]) -> MemoryFormat:
    """Channels-last where its median step is at least ``MARGIN`` faster than NCHW's, else NCHW."""
    nchw, last = (statistics.median(timings[f]) for f in ("nchw", "channels_last"))
    return "channels_last" if last <= (1 - MARGIN) * nchw else "nchw"


def memory_format(spec: Spec, shape: Shape, classes: int, batch_size: int, threads: int) -> MemoryFormat:
    """The faster memory format for training ``spec`` as a plain model on this CPU with ``threads`` torch threads:
    from the cache, else measured (16 steps of the model in all) and cached."""
    machine, key = _machine(), _key(spec, shape, classes, batch_size, threads)
    cached = _read().get(machine, {}).get(key)
    if cached in ("nchw", "channels_last"):
        return cached  # type: ignore[return-value]
    with torch_threads(threads):
        choice = choose(_timings(spec, shape, classes, batch_size))
    _write(machine, key, choice)
    return choice
