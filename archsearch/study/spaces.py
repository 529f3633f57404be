"""Search spaces: declarative TOML files that turn an Optuna trial into a spec (and optional optimiser settings).

"What to try" lives here, "how to train" in the trainer. A space file names its kind and defines parameters; each
parameter is ``{ low = .., high = .., log = true, step = .. }`` (int if both bounds are ints), ``{ choices = [..] }``
or a plain value (fixed). Per-layer parameters exist only up to the sampled depth (Optuna's define-by-run makes them
conditional). Constraints: ``max_params`` / ``min_params``. See ``studies/mlp.toml``, ``studies/cnn.toml`` and
``examples/small_cnn.toml``.

mlp keys: depth, width (per layer), shape (free | constant | funnel | hourglass), activation.
cnn keys: blocks, channels, kernel, padding (valid | same), pool (max | avg | none) — per block — then fc_depth,
fc_width (per fc layer), activation.
Both: max_params, min_params, max_macs (compute per image: keeps trials affordable on a CPU), and an [optimizer]
table with lr, weight_decay, batch_size (absent: the report's fixed protocol).
"""

from __future__ import annotations

import re
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import optuna

from archsearch.core.errors import UserError
from archsearch.core.protocol import REPORT_PROTOCOL
from archsearch.core.resources import read_toml, studies_dir
from archsearch.models import ACTIVATIONS, Conv, Layer, Pool, Spec, SpecError, cnn, count_params, macs_per_sample, mlp
from archsearch.study.report import ReportRow

__all__ = ["BUILTIN_SPACES", "Param", "Space", "SpaceError", "load_space", "parse_space", "spec_or_reason"]

BUILTIN_SPACES = ("mlp", "cnn")
_KEYS = {
    "mlp": {"depth", "width", "shape", "activation"},
    "cnn": {"blocks", "channels", "kernel", "padding", "pool", "fc_depth", "fc_width", "activation"},
}
_COMMON = {"kind", "name", "description", "max_params", "min_params", "max_macs", "optimizer"}
_OPTIMIZER = {"lr", "weight_decay", "batch_size"}
SHAPES = ("free", "constant", "funnel", "hourglass")


class SpaceError(UserError):
    """A space file that cannot be used; the message names the file, line and key."""


@dataclass(frozen=True)
class Param:
    """One parameter definition: a range, a list of choices, or a fixed value."""

    name: str
    low: float | None = None
    high: float | None = None
    log: bool = False
    step: float | None = None
    choices: tuple[Any, ...] | None = None
    fixed: Any = None

    def suggest(self, trial: optuna.Trial, name: str | None = None) -> Any:
        name = name or self.name
        if self.choices is not None:
            return trial.suggest_categorical(name, list(self.choices))
        if self.low is None or self.high is None:
            return self.fixed
        if isinstance(self.low, int) and isinstance(self.high, int) and not isinstance(self.step, float):
            return trial.suggest_int(name, self.low, self.high, log=self.log, step=int(self.step or 1))
        return trial.suggest_float(name, float(self.low), float(self.high), log=self.log, step=self.step)

    def admits(self, value: Any) -> bool:
        if self.choices is not None:
            return value in self.choices
        if self.low is None or self.high is None:
            return bool(value == self.fixed)
        return bool(self.low <= value <= self.high)

    def grid(self) -> list[Any] | None:
        """Every value, for the grid sampler; None if the parameter is continuous."""
        if self.choices is not None:
            return list(self.choices)
        if self.low is None or self.high is None:
            return [self.fixed]
        if isinstance(self.low, int) and isinstance(self.high, int) and not self.log:
            return list(range(self.low, self.high + 1, int(self.step or 1)))
        return None


@dataclass(frozen=True)
class Space:
    name: str
    kind: str
    params: dict[str, Param]
    optimizer: dict[str, Param] = field(default_factory=dict)
    max_params: int | None = None
    min_params: int | None = None
    max_macs: int | None = None
    source: str = ""
    text: str = field(default="", repr=False)

    def sample(self, trial: optuna.Trial) -> tuple[Spec, dict[str, Any]]:
        """Suggest this space's parameters on ``trial``: the spec and optimiser overrides (may raise SpecError)."""
        p = self.params
        spec: Spec
        if self.kind == "mlp":
            depth = int(p["depth"].suggest(trial))
            shape = p["shape"].suggest(trial) if depth >= 2 else "free"
            if shape == "free":
                widths = [int(p["width"].suggest(trial, f"width_{i + 1}")) for i in range(depth)]
            else:
                widths = _shaped(shape, int(p["width"].suggest(trial, "width_1")) if depth else 0, depth)
            spec = mlp(widths, str(p["activation"].suggest(trial)))
        else:
            layers: list[Layer] = []
            for i in range(int(p["blocks"].suggest(trial))):
                channels = int(p["channels"].suggest(trial, f"channels_{i + 1}"))
                kernel = int(p["kernel"].suggest(trial, f"kernel_{i + 1}"))
                padding = p["padding"].suggest(trial, f"padding_{i + 1}")
                pool = p["pool"].suggest(trial, f"pool_{i + 1}")
                layers.append(Conv(channels, kernel, padding=kernel // 2 if padding == "same" else 0))
                if pool != "none":
                    layers.append(Pool(2, pool))
            fc = [
                int(p["fc_width"].suggest(trial, f"fc_width_{j + 1}")) for j in range(int(p["fc_depth"].suggest(trial)))
            ]
            spec = cnn(layers, fc, str(p["activation"].suggest(trial)))
        overrides = {key: param.suggest(trial, key) for key, param in self.optimizer.items()}
        return spec, overrides

    def violation(self, spec: Spec) -> str | None:
        """Why ``spec`` breaks a constraint, or None."""
        n = count_params(spec)
        if self.max_params is not None and n > self.max_params:
            return f"{n:,} parameters > max_params {self.max_params:,}"
        if self.min_params is not None and n < self.min_params:
            return f"{n:,} parameters < min_params {self.min_params:,}"
        macs = macs_per_sample(spec)
        if self.max_macs is not None and macs > self.max_macs:
            return f"{macs:,} multiply-accumulates per image > max_macs {self.max_macs:,}"
        return None

    def report_params(self, row: ReportRow) -> dict[str, Any] | None:
        """The parameters that make this space sample ``row``'s architecture, or None if it does not fit."""
        spec, p = row.spec, self.params
        out: dict[str, Any] = {}
        if spec.kind == "mlp" and self.kind == "mlp":
            out["depth"] = spec.depth
            if spec.depth >= 2:
                out["shape"] = "free"
            out.update({f"width_{i + 1}": w for i, w in enumerate(spec.hidden)})
            checks = [("depth", spec.depth), *(("width", w) for w in spec.hidden), ("activation", spec.activation)]
            if spec.depth >= 2:
                checks.append(("shape", "free"))
        elif spec.kind == "cnn" and self.kind == "cnn":
            blocks: list[dict[str, Any]] = []
            for layer in spec.trunk:
                if type(layer) is Conv and layer.stride == 1 and not layer.norm:
                    pad = "same" if layer.padding == layer.kernel // 2 and layer.padding else "valid"
                    blocks.append({"channels": layer.channels, "kernel": layer.kernel, "padding": pad, "pool": "none"})
                elif isinstance(layer, Pool) and blocks and blocks[-1]["pool"] == "none" and layer.size == 2:
                    blocks[-1]["pool"] = layer.mode
                else:
                    return None
            out["blocks"] = len(blocks)
            checks = [("blocks", len(blocks)), ("fc_depth", len(spec.hidden)), ("activation", spec.activation)]
            for i, b in enumerate(blocks):
                for key, value in b.items():
                    out[f"{key}_{i + 1}"] = value
                    checks.append((key, value))
            out["fc_depth"] = len(spec.hidden)
            out.update({f"fc_width_{j + 1}": w for j, w in enumerate(spec.hidden)})
            checks += [("fc_width", w) for w in spec.hidden]
        else:
            return None
        out["activation"] = spec.activation
        if not all(p[key].admits(value) for key, value in checks) or self.violation(spec):
            return None
        for key, param in self.optimizer.items():  # the report's optimiser settings, where the space admits them
            value = getattr(REPORT_PROTOCOL, key)
            if not param.admits(value):
                return None
            out[key] = value
        return out

    def grid(self) -> dict[str, list[Any]]:
        """The grid sampler's search space (every parameter name that can occur); SpaceError if not finite."""
        grid: dict[str, list[Any]] = {}
        per_layer = {"width": "depth", "channels": "blocks", "kernel": "blocks", "padding": "blocks", "pool": "blocks"}
        per_layer["fc_width"] = "fc_depth"
        for key, param in {**self.params, **self.optimizer}.items():
            values = param.grid()
            if values is None:
                raise SpaceError(f"{self.source}: the grid sampler needs a finite space; '{key}' is continuous or log")
            if key in per_layer:
                top = self.params[per_layer[key]].grid() or [0]
                for i in range(max(top)):
                    grid[f"{key}_{i + 1}"] = values
            else:
                grid[key] = values
        return grid


def _shaped(shape: str, width: int, depth: int) -> list[int]:
    if shape == "constant":
        return [width] * depth
    if shape == "funnel":  # halve layer by layer, like the report's row 13
        return [max(1, width >> i) for i in range(depth)]
    # hourglass: narrow towards the middle and widen again (encoder-decoder, the report's rows 14 and 15)
    return [max(1, width >> min(i, depth - 1 - i)) for i in range(depth)]


def _line_of(text: str, key: str) -> int | None:
    pattern = re.compile(rf"^\s*(\[\s*(\w+\.)?{re.escape(key)}\s*\]|{re.escape(key)}\s*=)")
    for number, line in enumerate(text.splitlines(), start=1):
        if pattern.match(line):
            return number
    return None


def _param(name: str, value: Any, where: str) -> Param:
    if not isinstance(value, dict):
        return Param(name, fixed=value)
    unknown = set(value) - {"low", "high", "log", "step", "choices"}
    if unknown:
        raise SpaceError(f"{where}: unknown field(s) {', '.join(sorted(unknown))} in '{name}'")
    if "choices" in value:
        if not isinstance(value["choices"], list) or not value["choices"]:
            raise SpaceError(f"{where}: '{name}.choices' must be a non-empty list")
        return Param(name, choices=tuple(value["choices"]))
    if "low" not in value or "high" not in value:
        raise SpaceError(f"{where}: '{name}' needs low and high, or choices")
    low, high = value["low"], value["high"]
    if not all(isinstance(v, int | float) and not isinstance(v, bool) for v in (low, high)) or low > high:
        raise SpaceError(f"{where}: '{name}' needs numeric low <= high, got {low!r}, {high!r}")
    if value.get("log") and low <= 0:
        raise SpaceError(f"{where}: '{name}' has log = true, so low must be > 0")
    return Param(name, low, high, bool(value.get("log", False)), value.get("step"))


_DEFAULTS: dict[str, dict[str, Param]] = {
    "mlp": {
        "depth": Param("depth", 1, 1),
        "width": Param("width", 128, 128),
        "shape": Param("shape", choices=("free",)),
        "activation": Param("activation", choices=("relu",)),
    },
    "cnn": {
        "blocks": Param("blocks", 2, 2),
        "channels": Param("channels", 16, 16),
        "kernel": Param("kernel", choices=(5,)),
        "padding": Param("padding", choices=("valid",)),
        "pool": Param("pool", choices=("max",)),
        "fc_depth": Param("fc_depth", 1, 1),
        "fc_width": Param("fc_width", 64, 64),
        "activation": Param("activation", choices=("relu",)),
    },
}
_ALLOWED = {
    "shape": SHAPES,
    "activation": ACTIVATIONS,
    "padding": ("valid", "same"),
    "pool": ("max", "avg", "none"),
}
_POSITIVE = {"depth": 0, "width": 1, "blocks": 1, "channels": 1, "kernel": 1, "fc_depth": 0, "fc_width": 1}


def load_space(name_or_path: str) -> Space:
    """A built-in space by name (``mlp``, ``cnn``) or a TOML file."""
    path = studies_dir() / f"{name_or_path}.toml" if name_or_path in BUILTIN_SPACES else Path(name_or_path)
    if name_or_path not in BUILTIN_SPACES and path.suffix != ".toml":
        raise SpaceError(f"unknown space {name_or_path!r}: use one of {', '.join(BUILTIN_SPACES)} or a .toml file")
    read_toml(path)  # file and syntax errors, with the path in the message
    return parse_space(path.read_text(), str(path), path.stem)


def parse_space(text: str, source: str, default_name: str) -> Space:
    """A space from TOML text (a worker rebuilds the space a study was started with from the copy it keeps)."""
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as err:
        raise SpaceError(f"{source}: TOML syntax error: {err}") from None

    def where(key: str) -> str:
        line = _line_of(text, key)
        return f"{source}:{line}" if line else source

    kind = data.get("kind")
    if kind not in _KEYS:
        raise SpaceError(f"{where('kind')}: key 'kind' must be 'mlp' or 'cnn', got {kind!r}")
    for key in data:
        if key not in _KEYS[kind] | _COMMON:
            known = ", ".join(sorted(_KEYS[kind] | _COMMON))
            raise SpaceError(f"{where(key)}: unknown key '{key}' for a {kind} space (known: {known})")
    params = dict(_DEFAULTS[kind])
    for key in _KEYS[kind] & set(data):
        param = _param(key, data[key], where(key))
        allowed = _ALLOWED.get(key)
        values = param.choices if param.choices is not None else (param.fixed,) if param.low is None else ()
        if allowed is not None and any(v not in allowed for v in values):
            raise SpaceError(f"{where(key)}: '{key}' values must be among {', '.join(map(str, allowed))}")
        if key in _POSITIVE:
            nums = [*values, *(v for v in (param.low, param.high) if v is not None)]
            if any(not isinstance(v, int) or isinstance(v, bool) or v < _POSITIVE[key] for v in nums):
                raise SpaceError(f"{where(key)}: '{key}' must be integers >= {_POSITIVE[key]}")
        params[key] = param
    optimizer: dict[str, Param] = {}
    opt = data.get("optimizer", {})
    if not isinstance(opt, dict):
        raise SpaceError(f"{where('optimizer')}: 'optimizer' must be a table")
    for key, value in opt.items():
        if key not in _OPTIMIZER:
            raise SpaceError(f"{where(key)}: unknown optimizer key '{key}' (known: {', '.join(sorted(_OPTIMIZER))})")
        optimizer[key] = _param(key, value, where(key))
    for key in ("max_params", "min_params", "max_macs"):
        if key in data and (not isinstance(data[key], int) or data[key] < 1):
            raise SpaceError(f"{where(key)}: '{key}' must be a positive integer")
    return Space(
        name=str(data.get("name", default_name)),
        kind=kind,
        params=params,
        optimizer=optimizer,
        max_params=data.get("max_params"),
        min_params=data.get("min_params"),
        max_macs=data.get("max_macs"),
        source=source,
        text=text,
    )


def spec_or_reason(space: Space, trial: optuna.Trial) -> tuple[Spec | None, dict[str, Any], str | None]:
    """Sample; an invalid or constraint-breaking architecture comes back as a reason instead of a spec."""
    try:
        spec, overrides = space.sample(trial)
        spec.check()
    except SpecError as err:
        return None, {}, f"invalid architecture: {err}"
    return spec, overrides, space.violation(spec)
