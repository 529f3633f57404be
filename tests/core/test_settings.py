"""Settings: the environment read in one place, once per command."""

from __future__ import annotations

from pathlib import Path

import pytest

from archsearch.core.errors import UserError
from archsearch.core.settings import Settings, current, using


def test_from_env_reads_every_switch() -> None:
    s = Settings.from_env({
        "ARCHSEARCH_DATA": "/d", "ARCHSEARCH_OFFLINE": "1", "ARCHSEARCH_CACHE": "/c", "XDG_CACHE_HOME": "/x",
        "ARCHSEARCH_GEMM": "torch", "ARCHSEARCH_CONV": "native", "ARCHSEARCH_CONV_ANY_CPU": "1", "CC": "clang",
        "LIBXSMM_ROOT": "/opt/xsmm",
    })  # fmt: skip
    assert (s.data_dir, s.offline, s.kernel_cache, s.gemm, s.conv, s.conv_any_cpu, s.cc, s.libxsmm_root) == (
        Path("/d"),
        True,
        Path("/c"),
        "torch",
        "native",
        True,
        "clang",
        Path("/opt/xsmm"),
    )
    empty = Settings.from_env({"XDG_CACHE_HOME": "/x"})
    assert empty.default_data_dir == empty.kernel_cache == Path("/x/archsearch") and not empty.offline
    assert (empty.gemm, empty.conv, empty.conv_any_cpu) == ("auto", "auto", False)


@pytest.mark.parametrize(("name", "value"), [("ARCHSEARCH_GEMM", "fast"), ("ARCHSEARCH_CONV", "libxsmm")])
def test_a_bad_backend_choice_names_the_variable(name: str, value: str) -> None:
    with pytest.raises(UserError, match=f"{name} must be auto, torch or"):
        Settings.from_env({name: value})


def test_a_command_reads_the_environment_once(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ARCHSEARCH_OFFLINE", "1")
    with using(Settings.from_env()):
        monkeypatch.setenv("ARCHSEARCH_OFFLINE", "0")  # a change during the command is not seen by it
        assert current().offline
    assert not current().offline  # outside a command: the environment at the call
