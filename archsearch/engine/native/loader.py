"""C shims compiled on first use and loaded with ctypes: libxsmm's products (``_xsmm.c``,
archsearch.engine.native.gemm) and the CNN's first convolution (``_conv.c``, archsearch.engine.native.conv).

Why compile on the user's machine: no wheel to build per platform, and the kernels are compiled for this CPU
(``-march=native``: AVX-512 where there is AVX-512). Each shim is built once, with the system's C compiler, into a
per-user cache (``$ARCHSEARCH_CACHE``, else ``~/.cache/archsearch``), under a name keyed by its source, its flags,
the files it links and the CPU, so an edit, an upgrade or another machine sharing the cache rebuilds it. No compiler:
callers fall back to torch and say why where the shim was required. Each shim has a setting, ``ARCHSEARCH_<NAME>``:
``auto`` (the default: the shim where it builds, else torch), ``torch`` (never the shim) or the shim's own name
(the shim or an error: CI sets it, so that a missing library cannot pass for a slow success).
"""

from __future__ import annotations

import ctypes
import functools
import hashlib
import os
import platform
import shutil
import subprocess
import tempfile
from collections.abc import Callable
from pathlib import Path

from archsearch.core.errors import UserError
from archsearch.core.settings import BACKEND_CHOICES, current

__all__ = ["build", "cache_dir", "load"]


def cache_dir() -> Path:
    """Where compiled kernels (and per-machine measurements) are kept: ``ARCHSEARCH_CACHE``, else the user cache."""
    return current().kernel_cache


def _cpu() -> str:
    """What ``-march=native`` compiles for: the CPU's model and feature flags (Linux), else the platform's name."""
    try:
        lines = Path("/proc/cpuinfo").read_text().splitlines()
    except OSError:
        lines = []
    wanted = ("model name", "flags", "Features", "CPU part")
    seen = {line.split(":")[0].strip(): line for line in lines if line.split(":")[0].strip() in wanted}
    return "|".join(sorted(seen.values())) or f"{platform.machine()}|{platform.processor()}"


@functools.cache  # /proc/cpuinfo is read once per process, not at every step selection
def cpu_flags() -> frozenset[str]:
    """The CPU's feature flags as Linux reports them (``avx512f``, ``avx2``...); empty where it does not say."""
    for line in _cpu().split("|"):
        key, _, value = line.partition(":")
        if key.strip() in ("flags", "Features"):
            return frozenset(value.split())
    return frozenset()


def build(name: str, source: Path, *, flags: list[str], link: list[str], deps: list[Path] | None = None) -> Path | str:
    """The compiled ``source`` (``<cache>/<name>-<key>.so``), from the cache or freshly built, or why it cannot be.

    Built atomically (compiled to a temporary file, then renamed), since parallel workers may race to build it.
    """
    key = hashlib.sha256(source.read_bytes())
    key.update(" ".join([*flags, *link, _cpu()]).encode())
    for dep in deps or []:
        stat = dep.stat()
        key.update(f"{dep}:{stat.st_size}:{stat.st_mtime_ns}".encode())
    target = cache_dir() / f"{name}-{key.hexdigest()[:16]}.so"
    if target.is_file():
        return target
    compiler = shutil.which(current().cc) or shutil.which("gcc")
    if compiler is None:
        return "no C compiler (cc) was found"
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(suffix=".so", dir=target.parent)
    except OSError as err:
        return f"its cache {target.parent} is not writable ({err.strerror}; set ARCHSEARCH_CACHE)"
    os.close(fd)
    cmd = [compiler, *flags, "-shared", "-fPIC", str(source), "-o", tmp, *link]
    try:
        subprocess.run(cmd, check=True, capture_output=True, timeout=120)
        os.replace(tmp, target)
    except subprocess.CalledProcessError as err:
        Path(tmp).unlink(missing_ok=True)
        first = (err.stderr.decode(errors="replace").strip().splitlines() or ["no output"])[0]
        return f"compiling its shim failed: {first}"
    except (OSError, subprocess.SubprocessError) as err:
        Path(tmp).unlink(missing_ok=True)
        return f"compiling its shim failed: {err}"
    return target


def load(setting: str, choice: str, make: Callable[[], Path | str]) -> tuple[ctypes.CDLL | None, str | None]:
    """The shim that ``make`` builds (its path, or why not), loaded as the ``choice`` of the setting ``setting``
    allows: ``auto``, ``torch`` (nothing built) or the required one (a shim that cannot be built is a UserError).
    Returns the library, or None and why not (what `archsearch doctor` says)."""
    if choice == "torch":
        return None, f"{setting}=torch"
    path = make()
    if isinstance(path, str):  # why not: an error where the shim is required, else torch does the work
        if choice == BACKEND_CHOICES[setting]:
            raise UserError(f"{setting}={choice}, but {path}")
        return None, path
    return ctypes.CDLL(str(path)), None
