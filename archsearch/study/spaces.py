"""Search spaces: declarative TOML files that turn an Optuna trial into a spec and a training recipe.

"What to try" lives here, "how to train" in the trainer. A space file names its kind (mlp, cnn, resnet: see
archsearch.study.space_kinds for their keys) and defines parameters; each parameter is
``{ low = .., high = .., log = true, step = .. }`` (int if both bounds are ints), ``{ choices = [..] }`` or a plain
value (fixed). Per-layer parameters exist only up to the sampled depth (Optuna's define-by-run makes them
conditional). Constraints: ``max_params``, ``min_params``, ``max_macs`` (compute per image: keeps trials affordable
on a CPU). A ``[recipe]`` table opens up training (absent keys: the report's protocol): optimizer (adamw | sgd), lr,
weight_decay, momentum, batch_size, schedule (constant | cosine | onecycle), warmup_epochs, label_smoothing, the
augmentation crop (padding), flip, erase (probability), ema (weight averaging's decay, 0 off) and tta (evaluate with
mirrored images too). ``[optimizer]`` is the older name of the same table.
See ``studies/*.toml`` and ``examples/small_cnn.toml``.
"""

from __future__ import annotations

import re
import tomllib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import optuna

from archsearch.core.errors import UserError
from archsearch.core.protocol import OPTIMIZERS, REPORT_PROTOCOL, SCHEDULES, Augment, Protocol, ProtocolError
from archsearch.core.resources import read_toml, studies_dir
from archsearch.core.shapes import FASHION_MNIST_SHAPE, Shape
from archsearch.models import NUM_CLASSES, Spec, SpecError, count_params, macs_per_sample
from archsearch.study.report import ReportRow
from archsearch.study.space_kinds import KINDS, Fit

__all__ = [
    "BUILTIN_SPACES",
    "RECIPE_KEYS",
    "Param",
    "Space",
    "SpaceError",
    "check_buildable",
    "load_space",
    "parse_space",
    "spec_or_reason",
]

BUILTIN_SPACES = ("mlp", "cnn", "resnet", "fast")
_COMMON = {"kind", "name", "description", "max_params", "min_params", "max_macs", "recipe", "optimizer"}
_AUGMENT = ("crop", "flip", "erase")
_MAX_WIDTH = 4096  # the fit's last doubling: a fitted first block has fewer than twice as many channels
RECIPE_KEYS = (
    "optimizer", "lr", "weight_decay", "momentum", "batch_size", "schedule", "warmup_epochs", "label_smoothing",
    *_AUGMENT, "ema", "tta",
)  # fmt: skip
_RECIPE_ALLOWED: dict[str, tuple[Any, ...]] = {
    "optimizer": OPTIMIZERS, "schedule": SCHEDULES, "flip": (False, True), "tta": (False, True),
}  # fmt: skip


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

    def values(self) -> tuple[Any, ...]:
        """The values it can take where they are listed (choices, a fixed value); () for a range."""
        return self.choices if self.choices is not None else (self.fixed,) if self.low is None else ()

    def grid(self) -> list[Any] | None:
        """Every value, for the grid sampler; None if the parameter is continuous."""
        if self.low is None or self.high is None:
            return list(self.values())
        if isinstance(self.low, int) and isinstance(self.high, int) and not self.log:
            return list(range(self.low, self.high + 1, int(self.step or 1)))
        return None


def _default(name: str, value: Any) -> Param:
    return Param(name, choices=value) if isinstance(value, tuple) else Param(name, fixed=value)


@dataclass(frozen=True)
class Space:
    name: str
    kind: str
    params: dict[str, Param]
    recipe: dict[str, Param] = field(default_factory=dict)
    max_params: int | None = None
    min_params: int | None = None
    max_macs: int | None = None
    source: str = ""
    text: str = field(default="", repr=False)

    def sample(
        self, trial: optuna.Trial, shape: Shape = FASHION_MNIST_SHAPE, classes: int = NUM_CLASSES
    ) -> tuple[Spec, dict[str, Any]]:
        """Suggest this space's parameters on ``trial``: the spec (for images of ``shape``) and the recipe's values
        (may raise SpecError)."""

        def suggest(key: str, name: str | None = None) -> Any:
            return self.params[key].suggest(trial, name)

        spec = KINDS[self.kind].sample(suggest, self._fit(shape, classes))
        return spec, {key: param.suggest(trial, key) for key, param in self.recipe.items()}

    @property
    def fills(self) -> bool:
        """Whether its widths are scaled to a share of ``max_params`` (the key ``fill``) rather than asked."""
        return "fill" in self.params and self.params["fill"].values() != (None,)

    def _fit(self, shape: Shape, classes: int) -> Fit:
        def fits(spec: Spec, share: float) -> bool:
            if self.max_params is not None and count_params(spec, shape, classes) > share * self.max_params:
                return False
            return self.max_macs is None or macs_per_sample(spec, shape, classes) <= self.max_macs

        def fit(build: Callable[[int], Spec], share: float) -> Spec:
            """The largest width that fits (parameters and compute grow with it): doubled, then bisected; width 1
            where none does (the constraints then reject it)."""
            low, high = 1, 2
            while high <= _MAX_WIDTH and fits(build(high), share):
                low, high = high, high * 2
            while high - low > 1:
                mid = (low + high) // 2
                low, high = (mid, high) if fits(build(mid), share) else (low, mid)
            return build(low)

        return fit

    def protocol(self, base: Protocol, values: dict[str, Any]) -> Protocol:
        """``base`` with the recipe's sampled ``values``; an impossible combination is a ProtocolError."""
        augment = {k: values[k] for k in _AUGMENT if k in values}
        rest = {k: v for k, v in values.items() if k not in _AUGMENT}
        for key in ("batch_size",):
            if key in rest:
                rest[key] = int(rest[key])
        if "tta" in rest:
            rest["tta"] = bool(rest["tta"])
        if "ema" in rest:
            rest["ema"] = float(rest["ema"])
        if augment:
            current = base.augment
            rest["augment"] = Augment(
                crop=int(augment.get("crop", current.crop)),
                flip=bool(augment.get("flip", current.flip)),
                erase=float(augment.get("erase", current.erase)),
            )
        return base.with_(**rest)

    def violation(self, spec: Spec, shape: Shape = FASHION_MNIST_SHAPE, classes: int = NUM_CLASSES) -> str | None:
        """Why ``spec`` breaks a constraint, or None."""
        n = count_params(spec, shape, classes)
        if self.max_params is not None and n > self.max_params:
            return f"{n:,} parameters > max_params {self.max_params:,}"
        if self.min_params is not None and n < self.min_params:
            return f"{n:,} parameters < min_params {self.min_params:,}"
        macs = macs_per_sample(spec, shape, classes)
        if self.max_macs is not None and macs > self.max_macs:
            return f"{macs:,} multiply-accumulates per image > max_macs {self.max_macs:,}"
        return None

    def report_params(
        self, row: ReportRow, shape: Shape = FASHION_MNIST_SHAPE, classes: int = NUM_CLASSES
    ) -> dict[str, Any] | None:
        """The parameters that make this space sample ``row``'s architecture with the report's protocol, or None if
        it does not fit (the space, or images of ``shape``)."""
        values = None if self.fills else KINDS[self.kind].report_values(row.spec)
        try:
            if values is None or self.violation(row.spec.check(shape), shape, classes):
                return None
        except SpecError:
            return None
        per_layer = KINDS[self.kind].per_layer
        out: dict[str, Any] = {}
        for name, value in values.items():
            key = name.rsplit("_", 1)[0] if name.rsplit("_", 1)[0] in per_layer else name
            if not self.params[key].admits(value):
                return None
            if self.params[key].choices is not None or self.params[key].low is not None:  # suggested, not fixed
                out[name] = value
        for key, param in self.recipe.items():  # the report's protocol, where the space admits it
            value = getattr(REPORT_PROTOCOL.augment if key in _AUGMENT else REPORT_PROTOCOL, key)
            if not param.admits(value):
                return None
            out[key] = value
        return out

    def grid(self) -> dict[str, list[Any]]:
        """The grid sampler's search space (every parameter name that can occur); SpaceError if not finite."""
        grid: dict[str, list[Any]] = {}
        per_layer = KINDS[self.kind].per_layer
        for key, param in {**self.params, **self.recipe}.items():
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


def load_space(name_or_path: str) -> Space:
    """A built-in space by name (``mlp``, ``cnn``, ``resnet``) or a TOML file."""
    path = studies_dir() / f"{name_or_path}.toml" if name_or_path in BUILTIN_SPACES else Path(name_or_path)
    if name_or_path not in BUILTIN_SPACES and path.suffix != ".toml":
        raise SpaceError(f"unknown space {name_or_path!r}: use one of {', '.join(BUILTIN_SPACES)} or a .toml file")
    read_toml(path)  # file and syntax errors, with the path in the message
    return parse_space(path.read_text(), str(path), path.stem)


def _check_values(key: str, param: Param, allowed: tuple[Any, ...] | None, minimum: int | None, where: str) -> None:
    values = param.values()
    if allowed is not None and any(v not in allowed for v in values):
        raise SpaceError(f"{where}: '{key}' values must be among {', '.join(map(str, allowed))}")
    if minimum is not None:
        nums = [*values, *(v for v in (param.low, param.high) if v is not None)]
        if any(not isinstance(v, int) or isinstance(v, bool) or v < minimum for v in nums):
            raise SpaceError(f"{where}: '{key}' must be integers >= {minimum}")


def _check_fill(data: dict[str, Any], params: dict[str, Param], where: Callable[[str], str]) -> None:
    if "fill" not in data:
        return
    fill = params["fill"]
    shares = [*fill.values(), *(v for v in (fill.low, fill.high) if v is not None)]
    if any(isinstance(v, bool) or not isinstance(v, int | float) or not 0 < v <= 1 for v in shares):
        raise SpaceError(f"{where('fill')}: 'fill' is a share of max_params, in (0, 1]")
    if "max_params" not in data:
        raise SpaceError(f"{where('fill')}: 'fill' scales the widths to a share of max_params; set max_params")


def parse_space(text: str, source: str, default_name: str) -> Space:
    """A space from TOML text (a worker rebuilds the space a study was started with from the copy it keeps)."""
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as err:
        raise SpaceError(f"{source}: TOML syntax error: {err}") from None

    def where(key: str) -> str:
        line = _line_of(text, key)
        return f"{source}:{line}" if line else source

    kind_name = data.get("kind")
    if kind_name not in KINDS:
        raise SpaceError(f"{where('kind')}: key 'kind' must be one of {', '.join(KINDS)}, got {kind_name!r}")
    kind = KINDS[kind_name]
    for key in data:
        if key not in set(kind.keys) | _COMMON:
            known = ", ".join(sorted(set(kind.keys) | _COMMON))
            raise SpaceError(f"{where(key)}: unknown key '{key}' for a {kind_name} space (known: {known})")
    params = {key: _default(key, value) for key, value in kind.keys.items()}
    for key in set(kind.keys) & set(data):
        param = _param(key, data[key], where(key))
        _check_values(key, param, kind.allowed.get(key), kind.minimum.get(key), where(key))
        params[key] = param
    if "dropout" in data and any(not 0 <= float(v) < 1 for v in params["dropout"].values()):
        raise SpaceError(f"{where('dropout')}: 'dropout' must be in [0, 1)")
    _check_fill(data, params, where)
    if "recipe" in data and "optimizer" in data:
        raise SpaceError(f"{where('optimizer')}: give [recipe] or its older name [optimizer], not both")
    table_name = "recipe" if "recipe" in data else "optimizer"
    table = data.get(table_name, {})
    if not isinstance(table, dict):
        raise SpaceError(f"{where(table_name)}: '{table_name}' must be a table")
    recipe: dict[str, Param] = {}
    for key, value in table.items():
        if key not in RECIPE_KEYS:
            raise SpaceError(f"{where(key)}: unknown recipe key '{key}' (known: {', '.join(RECIPE_KEYS)})")
        recipe[key] = _param(key, value, where(key))
        _check_values(key, recipe[key], _RECIPE_ALLOWED.get(key), 1 if key == "batch_size" else None, where(key))
    for key in ("max_params", "min_params", "max_macs"):
        if key in data and (not isinstance(data[key], int) or data[key] < 1):
            raise SpaceError(f"{where(key)}: '{key}' must be a positive integer")
    space = Space(
        name=str(data.get("name", default_name)),
        kind=kind_name,
        params=params,
        recipe=recipe,
        max_params=data.get("max_params"),
        min_params=data.get("min_params"),
        max_macs=data.get("max_macs"),
        source=source,
        text=text,
    )
    _check_recipe(space, where)
    return space


def _check_recipe(space: Space, where: Any) -> None:
    """Every listed recipe value must make a valid protocol (a range's bounds stand for the range)."""
    for key, param in space.recipe.items():
        for value in (*param.values(), *(v for v in (param.low, param.high) if v is not None)):
            try:
                space.protocol(REPORT_PROTOCOL, {key: value})
            except ProtocolError as err:
                raise SpaceError(f"{where(key)}: {err}") from None


def spec_or_reason(
    space: Space, trial: optuna.Trial, shape: Shape = FASHION_MNIST_SHAPE, classes: int = NUM_CLASSES
) -> tuple[Spec | None, dict[str, Any], str | None]:
    """Sample; an invalid or constraint-breaking architecture comes back as a reason instead of a spec."""
    try:
        spec, values = space.sample(trial, shape, classes)
        spec.check(shape)
    except SpecError as err:
        return None, {}, f"invalid architecture: {err}"
    return spec, values, space.violation(spec, shape, classes)


def check_buildable(space: Space, shape: Shape, classes: int, *, seed: int = 0, tries: int = 200) -> None:
    """Refuse, before any study is touched, a space of which ``tries`` random samples give no architecture that can
    be trained on images of ``shape`` within its constraints (saying why the most common sample fails)."""
    import warnings
    from collections import Counter

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        probe = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=seed))
    reasons: Counter[str] = Counter()
    example: dict[str, str] = {}
    for _ in range(tries):
        trial = probe.ask()
        spec, _, reason = spec_or_reason(space, trial, shape, classes)
        if spec is not None and reason is None:
            return
        kind = (reason or "rejected").split(":")[0]
        reasons[kind] += 1
        example.setdefault(kind, reason or "rejected")
        probe.tell(trial, state=optuna.trial.TrialState.FAIL)
    why = example[reasons.most_common(1)[0][0]]
    size = f"{shape.height}x{shape.width}"
    raise SpaceError(
        f"{space.source or space.name}: none of {tries} sampled architectures can be trained on {size} images "
        f"within the space's constraints (most often: {why}); widen the space or relax its constraints"
    )
