"""Every environment setting archsearch reads, in one frozen record, read in this module only.

The command line reads them once, when a command starts (:func:`using` around the command), and every layer asks
:func:`current` instead of the environment. Code that uses archsearch as a library may install its own
(``with using(Settings.from_env(...))``); without one, :func:`current` reads the environment at the call.

========================== ================================================================================
``ARCHSEARCH_DATA``        where Fashion-MNIST is looked for and kept (default: the user cache)
``ARCHSEARCH_OFFLINE``     ``1``: never download a dataset
``ARCHSEARCH_CACHE``       where compiled C kernels and measurements are kept (default: the user cache)
``ARCHSEARCH_GEMM``        ``auto`` | ``torch`` | ``libxsmm`` (libxsmm required: an error where it is missing)
``ARCHSEARCH_CONV``        ``auto`` | ``torch`` | ``native`` (the C conv kernels required: an error where they
                           cannot be built)
``ARCHSEARCH_CONV_ANY_CPU`` ``1``: take the C conv kernels on any CPU, not only where they pay (AVX-512)
``CC``, ``LIBXSMM_ROOT``   the C compiler, and where libxsmm is installed if not in the system's folders
``XDG_CACHE_HOME``         the user cache (default ``~/.cache``)
========================== ================================================================================
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from archsearch.core.errors import UserError

__all__ = ["BACKEND_CHOICES", "Settings", "current", "using"]

# Each native backend's setting: its name and the value that makes it required.
BACKEND_CHOICES = {"ARCHSEARCH_GEMM": "libxsmm", "ARCHSEARCH_CONV": "native"}


@dataclass(frozen=True)
class Settings:
    data_dir: Path | None = None  # ARCHSEARCH_DATA
    offline: bool = False  # ARCHSEARCH_OFFLINE=1
    cache_dir: Path | None = None  # ARCHSEARCH_CACHE
    user_cache: Path | None = None  # XDG_CACHE_HOME
    gemm: str = "auto"  # ARCHSEARCH_GEMM
    conv: str = "auto"  # ARCHSEARCH_CONV
    conv_any_cpu: bool = False  # ARCHSEARCH_CONV_ANY_CPU=1
    cc: str = "cc"  # CC
    libxsmm_root: Path | None = None  # LIBXSMM_ROOT

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> Settings:
        """The settings ``env`` (default: this process's environment) gives; a bad backend choice is a UserError
        naming the variable."""
        env = os.environ if env is None else env
        for name, required in BACKEND_CHOICES.items():
            if (value := env.get(name, "auto")) not in ("auto", "torch", required):
                raise UserError(f"{name} must be auto, torch or {required}, not {value!r}")

        def path(name: str) -> Path | None:
            return Path(env[name]) if env.get(name) else None

        return cls(
            data_dir=path("ARCHSEARCH_DATA"),
            offline=env.get("ARCHSEARCH_OFFLINE") == "1",
            cache_dir=path("ARCHSEARCH_CACHE"),
            user_cache=path("XDG_CACHE_HOME"),
            gemm=env.get("ARCHSEARCH_GEMM", "auto"),
            conv=env.get("ARCHSEARCH_CONV", "auto"),
            conv_any_cpu=env.get("ARCHSEARCH_CONV_ANY_CPU") == "1",
            cc=env.get("CC", "cc"),
            libxsmm_root=path("LIBXSMM_ROOT"),
        )

    def backend(self, name: str) -> str:
        """The choice for the native backend setting ``name`` (``ARCHSEARCH_GEMM`` or ``ARCHSEARCH_CONV``)."""
        return {"ARCHSEARCH_GEMM": self.gemm, "ARCHSEARCH_CONV": self.conv}[name]

    @property
    def user_cache_dir(self) -> Path:
        """The user's cache folder for archsearch: ``$XDG_CACHE_HOME/archsearch`` (default ``~/.cache``)."""
        return (self.user_cache or Path.home() / ".cache") / "archsearch"

    @property
    def kernel_cache(self) -> Path:
        """Where compiled kernels and per-machine measurements are kept."""
        return self.cache_dir or self.user_cache_dir

    @property
    def default_data_dir(self) -> Path:
        return self.data_dir or self.user_cache_dir


_installed: list[Settings] = []


def current() -> Settings:
    """The settings in force: those a command installed when it started, else the environment's now."""
    return _installed[-1] if _installed else Settings.from_env()


@contextmanager
def using(settings: Settings) -> Iterator[Settings]:
    """Install ``settings`` for the block (a command's whole run)."""
    _installed.append(settings)
    try:
        yield settings
    finally:
        _installed.remove(settings)
