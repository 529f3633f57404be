"""The package's layers import one way: each layer, imported alone in a fresh interpreter, pulls in only the layers
below it (and no Optuna, typer or rich where it should not), so data flows cli → study → engine → models → core."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

LAYERS = ("core", "data", "models", "engine", "results", "export", "study", "cli")
# What each layer may import of archsearch (besides itself), and which third-party packages it must not import.
ALLOWED: dict[str, set[str]] = {
    "core": set(),
    "data": {"core"},
    "models": {"core"},
    "engine": {"core", "data", "models"},
    "results": {"core"},
    "export": {"core", "data", "models"},
    "study": {"core", "data", "models", "engine", "results", "export"},
    "cli": {"core", "data", "models", "engine", "results", "export", "study", "_console"},
}
FORBIDDEN: dict[str, set[str]] = {
    "core": {"optuna", "typer", "rich", "torchvision"},
    "data": {"optuna", "typer", "rich"},
    "models": {"optuna", "typer", "rich", "torchvision"},
    "engine": {"optuna", "typer", "rich"},
    "results": {"optuna", "typer", "rich", "torch"},
    "export": {"optuna", "typer", "rich"},
    "study": {"typer", "rich"},
    "cli": set(),
}
PROBE = """
import json, sys
import archsearch.{layer}
mods = sorted(sys.modules)
print(json.dumps({{
    "layers": sorted({{m.split(".")[1] for m in mods if m.startswith("archsearch.") and m.count(".") >= 1}}),
    "top": sorted({{m.split(".")[0] for m in mods}}),
    "steps": any(m.startswith("archsearch.engine.steps") for m in mods),
}}))
"""


def _imported(layer: str) -> dict[str, object]:
    proc = subprocess.run([sys.executable, "-c", PROBE.format(layer=layer)], capture_output=True, text=True, check=True)
    result: dict[str, object] = json.loads(proc.stdout)
    return result


@pytest.mark.parametrize("layer", LAYERS)
def test_each_layer_imports_only_the_layers_below_it(layer: str) -> None:
    got = _imported(layer)
    layers = set(got["layers"]) - {layer}  # type: ignore[arg-type]
    assert layers <= ALLOWED[layer], f"archsearch.{layer} imports {sorted(layers - ALLOWED[layer])}"
    top = set(got["top"])  # type: ignore[arg-type]
    assert not top & FORBIDDEN[layer], f"archsearch.{layer} imports {sorted(top & FORBIDDEN[layer])}"


def test_export_needs_neither_the_engine_nor_optuna() -> None:
    """A checkpoint is loaded, evaluated and used with the plain model builder only."""
    got = _imported("export")
    assert got["steps"] is False and "engine" not in got["layers"]  # type: ignore[operator]
    assert "optuna" not in got["top"]  # type: ignore[operator]


def test_every_layer_is_a_package_with_public_names() -> None:
    import importlib

    for layer in LAYERS[:-1]:
        module = importlib.import_module(f"archsearch.{layer}")
        assert module.__all__, layer
        assert all(hasattr(module, name) for name in module.__all__), layer
