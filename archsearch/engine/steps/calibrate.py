"""Which memory format a CPU trains a plain CNN faster in, measured once per machine and model, and cached.

oneDNN's convolutions are faster in channels-last on some CNNs and in NCHW on others, and which depends on the CPU
as much as on the model (on a Zen 4 with AVX-512: a 77.8k-parameter ResNet 1.4x faster in channels-last, the 68.6k
budget finalist 1.1x faster in NCHW; on a Zen 2 with AVX2 the finalist ran at 0.88x in channels-last). No rule of
thumb survives that, so the plain layout measures: a few training steps of a throwaway copy of the model (its own
seed, random images: the run's own random draws are untouched) in each format, alternately, the faster median
chosen. The choice is cached per CPU, torch version, spec, image shape, batch size and thread count
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

__all__ = ["MemoryFormat", "memory_format"]

MemoryFormat = Literal["nchw", "channels_last"]
CACHE_FILE = "memory-formats.json"
WARMUP, STEPS = 2, 3  # per format and round; two rounds, alternating


def _key(spec: Spec, shape: Shape, classes: int, batch_size: int, threads: int) -> str:
    return f"{spec}|{shape}|{classes}|b{batch_size}|t{threads}"


def _machine() -> str:
    """This CPU (its model and feature flags, hashed) and torch's version."""
    return f"cpu {hashlib.sha256(_cpu().encode()).hexdigest()[:16]}, torch {torch.__version__}"


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


def _seconds_per_step(spec: Spec, shape: Shape, classes: int, batch_size: int, fmt: MemoryFormat) -> list[float]:
    gen = torch.Generator().manual_seed(0)
    model = init_model(build_model(spec, shape, classes), gen)
    x = torch.rand(batch_size, shape.channels, shape.height, shape.width, generator=gen)
    y = torch.randint(0, classes, (batch_size,), generator=gen)
    if fmt == "channels_last":
        model, x = model.to(memory_format=torch.channels_last), x.contiguous(memory_format=torch.channels_last)
    opt = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9)
    times = []
    for i in range(WARMUP + STEPS):
        start = time.perf_counter()
        opt.zero_grad(set_to_none=True)
        torch.nn.functional.cross_entropy(model(x), y).backward()
        opt.step()
        if i >= WARMUP:
            times.append(time.perf_counter() - start)
    return times


def memory_format(spec: Spec, shape: Shape, classes: int, batch_size: int, threads: int) -> MemoryFormat:
    """The faster memory format for training ``spec`` as a plain model on this CPU with ``threads`` torch threads:
    from the cache, else measured (about 20 steps of the model in all) and cached."""
    machine, key = _machine(), _key(spec, shape, classes, batch_size, threads)
    cached = _read().get(machine, {}).get(key)
    if cached in ("nchw", "channels_last"):
        return cached  # type: ignore[return-value]
    timings: dict[MemoryFormat, list[float]] = {"nchw": [], "channels_last": []}
    with torch_threads(threads):
        for _ in range(2):
            for fmt in timings:
                timings[fmt] += _seconds_per_step(spec, shape, classes, batch_size, fmt)
    nchw, last = (statistics.median(timings[f]) for f in ("nchw", "channels_last"))
    choice: MemoryFormat = "channels_last" if last < nchw else "nchw"
    _write(machine, key, choice)
    return choice
