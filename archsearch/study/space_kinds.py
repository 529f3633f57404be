"""The kinds of search space: for each, its keys (with defaults, allowed values and which are per layer), how an
Optuna trial's values become a spec, and which values make the space sample one of the report's architectures.

mlp: depth, width (per layer), shape (free | constant | funnel | hourglass), norm, dropout, activation.
cnn: blocks; per block channels, kernel, padding (valid | same), convs (1 or 2: VGG-style pairs), pool (max | avg |
     stride: the block's last conv with stride 2 | none); growth (free: channels per block | double: the first
     block's channels, doubled block by block as hand-made CNNs do); fill (a share of max_params: the widths are
     then fitted, not asked — the first block's is the largest within that share and max_macs, the others in
     proportion); norm, head (flatten | gap), fc_depth,
     fc_width (per fc layer), dropout (before the output layer), activation.
resnet: stem (channels of a 3x3 stem conv), stages, blocks (residual blocks per stage), width (channels of the first
     stage; each further stage doubles them and halves the resolution with a strided block), norm, dropout,
     activation; the head is global average pooling.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

from archsearch.models import (
    ACTIVATIONS,
    Conv,
    Dropout,
    GlobalAvgPool,
    Layer,
    Linear,
    Pool,
    Residual,
    SepConv,
    Spec,
)

__all__ = ["KINDS", "SHAPES", "Fit", "SpaceKind"]

SHAPES = ("free", "constant", "funnel", "hourglass")


class Fit(Protocol):
    """The space's budget: the architecture ``build(width)`` at the largest width whose parameters stay within
    ``share`` of the space's ``max_params`` (and its compute within ``max_macs``)."""

    def __call__(self, build: Callable[[int], Spec], share: float) -> Spec: ...


class Suggest(Protocol):
    """A parameter of the space, asked for its value on the current trial (``name``: per-layer names)."""

    def __call__(self, key: str, name: str | None = None) -> Any: ...


@dataclass(frozen=True)
class SpaceKind:
    keys: dict[str, Any]  # key -> default: a fixed value, or a tuple of choices
    allowed: dict[str, tuple[Any, ...]]
    minimum: dict[str, int]  # integer keys and their least value
    per_layer: dict[str, str]  # key -> the key that says how many of it there are
    sample: Callable[[Suggest, Fit], Spec]
    report_values: Callable[[Spec], dict[str, Any] | None]  # the values that sample ``spec``, or None


def _head(s: Suggest, norm: bool) -> list[Layer]:
    layers: list[Layer] = [
        Linear(int(s("fc_width", f"fc_width_{j + 1}")), norm=norm) for j in range(int(s("fc_depth")))
    ]
    p = float(s("dropout"))
    return [*layers, Dropout(p)] if p > 0 else layers


def _shaped(shape: str, width: int, depth: int) -> list[int]:
    if shape == "constant":
        return [width] * depth
    if shape == "funnel":  # halve layer by layer, like the report's row 13
        return [max(1, width >> i) for i in range(depth)]
    # hourglass: narrow towards the middle and widen again (encoder-decoder, the report's rows 14 and 15)
    return [max(1, width >> min(i, depth - 1 - i)) for i in range(depth)]


# ----------------------------------------------------------------------------------------------------------------- mlp


def _sample_mlp(s: Suggest, fit: Fit) -> Spec:
    depth = int(s("depth"))
    shape = s("shape") if depth >= 2 else "free"
    if shape == "free":
        widths = [int(s("width", f"width_{i + 1}")) for i in range(depth)]
    else:
        widths = _shaped(shape, int(s("width", "width_1")) if depth else 0, depth)
    norm = bool(s("norm")) if depth else False
    layers: list[Layer] = [Linear(w, norm=norm) for w in widths]
    p = float(s("dropout"))
    return Spec("mlp", (*layers, Dropout(p)) if p > 0 else tuple(layers), str(s("activation")))


def _report_mlp(spec: Spec) -> dict[str, Any] | None:
    if spec.kind != "mlp" or spec.normed or "dropout" in spec.kinds:
        return None
    out: dict[str, Any] = {"depth": spec.depth, **{f"width_{i + 1}": w for i, w in enumerate(spec.hidden)}}
    if spec.depth >= 2:
        out["shape"] = "free"
    if spec.depth:
        out["norm"] = False
    return {**out, "dropout": 0.0, "activation": spec.activation}


# ----------------------------------------------------------------------------------------------------------------- cnn


def _sample_cnn(s: Suggest, fit: Fit) -> Spec:
    norm, separable = bool(s("norm")), bool(s("separable"))
    blocks = int(s("blocks"))
    # "double" asks one width instead of one per block: a search of a few dozen trials should not spend them on
    # 58-8-4 channel funnels that no hand design would try
    double = blocks >= 2 and s("growth") == "double"
    fill = s("fill")  # None, or the share of max_params the widths are scaled to: then the fit chooses the width
    plan: list[tuple[int, int, int, int, str]] = []  # per block: channels (as asked), kernel, padding, convs, pool
    for i in range(blocks):
        asked = not double or (fill is None and i == 0)
        channels = int(s("channels", f"channels_{i + 1}")) if asked else 1 << i
        kernel = int(s("kernel", f"kernel_{i + 1}"))
        pad = kernel // 2 if s("padding", f"padding_{i + 1}") == "same" else 0
        plan.append((channels, kernel, pad, int(s("convs", f"convs_{i + 1}")), str(s("pool", f"pool_{i + 1}"))))
    gap = s("head") == "gap"
    head = _head(s, norm)
    activation = str(s("activation"))

    def build(first: int) -> Spec:
        """The architecture with ``first`` channels in the first block (the others in proportion as asked)."""
        layers: list[Layer] = []
        for i, (width, kernel, pad, convs, pool) in enumerate(plan):
            channels = first << i if double else max(1, round(width * first / plan[0][0]))
            for j in range(convs):
                stride = 2 if pool == "stride" and j == convs - 1 else 1
                conv = SepConv if separable and layers else Conv  # the first sees the image's few channels: plain
                layers.append(conv(channels, kernel, stride, pad, norm=norm))
            if pool in ("max", "avg"):
                layers.append(Pool(2, pool))
        return Spec("cnn", (*layers, *([GlobalAvgPool()] if gap else []), *head), activation)

    return build(plan[0][0]) if fill is None else fit(build, float(fill))


def _report_cnn(spec: Spec) -> dict[str, Any] | None:
    if spec.kind != "cnn" or spec.normed or "dropout" in spec.kinds:
        return None
    blocks: list[dict[str, Any]] = []
    for layer in spec.trunk:
        if type(layer) is Conv and layer.stride == 1:
            pad = "same" if layer.padding == layer.kernel // 2 and layer.padding else "valid"
            blocks.append(
                {"channels": layer.channels, "kernel": layer.kernel, "padding": pad, "convs": 1, "pool": "none"}
            )
        elif isinstance(layer, Pool) and blocks and blocks[-1]["pool"] == "none" and layer.size == 2:
            blocks[-1]["pool"] = layer.mode
        else:
            return None
    out: dict[str, Any] = {"blocks": len(blocks), "norm": False, "head": "flatten"}
    if len(blocks) >= 2:
        out["growth"] = "free"
    for i, block in enumerate(blocks):
        out.update({f"{key}_{i + 1}": value for key, value in block.items()})
    out["fc_depth"] = len(spec.hidden)
    out.update({f"fc_width_{j + 1}": w for j, w in enumerate(spec.hidden)})
    return {**out, "dropout": 0.0, "activation": spec.activation}


# -------------------------------------------------------------------------------------------------------------- resnet


def _sample_resnet(s: Suggest, fit: Fit) -> Spec:
    norm = bool(s("norm"))
    layers: list[Layer] = [Conv(int(s("stem")), 3, padding=1, norm=norm)]
    width = int(s("width"))
    for stage in range(int(s("stages"))):
        for block in range(int(s("blocks", f"blocks_{stage + 1}"))):
            stride = 2 if stage > 0 and block == 0 else 1
            layers.append(Residual(width << stage, stride, norm=norm))
    layers.append(GlobalAvgPool())
    p = float(s("dropout"))
    return Spec("cnn", (*layers, Dropout(p)) if p > 0 else tuple(layers), str(s("activation")))


NORM, DROPOUT = (False, True), 0.0
KINDS: dict[str, SpaceKind] = {
    "mlp": SpaceKind(
        keys={"depth": 1, "width": 128, "shape": ("free",), "norm": False, "dropout": DROPOUT, "activation": ("relu",)},
        allowed={"shape": SHAPES, "activation": ACTIVATIONS, "norm": NORM},
        minimum={"depth": 0, "width": 1},
        per_layer={"width": "depth"},
        sample=_sample_mlp,
        report_values=_report_mlp,
    ),
    "cnn": SpaceKind(
        keys={
            "blocks": 2,
            "channels": 16,
            "kernel": (5,),
            "padding": ("valid",),
            "convs": 1,
            "pool": ("max",),
            "growth": "free",
            "norm": False,
            "separable": False,  # every conv after the first depthwise-separable (SepConv: ~k² fewer weights)
            "head": ("flatten",),
            "fill": None,  # a share of max_params: the first block's width is then the largest that fits it
            "fc_depth": 1,
            "fc_width": 64,
            "dropout": DROPOUT,
            "activation": ("relu",),
        },
        allowed={
            "activation": ACTIVATIONS,
            "padding": ("valid", "same"),
            "pool": ("max", "avg", "stride", "none"),
            "growth": ("free", "double"),
            "norm": NORM,
            "separable": NORM,
            "head": ("flatten", "gap"),
        },
        minimum={"blocks": 1, "channels": 1, "kernel": 1, "convs": 1, "fc_depth": 0, "fc_width": 1},
        per_layer={k: "blocks" for k in ("channels", "kernel", "padding", "convs", "pool")} | {"fc_width": "fc_depth"},
        sample=_sample_cnn,
        report_values=_report_cnn,
    ),
    "resnet": SpaceKind(
        keys={
            "stem": 16,
            "stages": 3,
            "blocks": 1,
            "width": 16,
            "norm": True,
            "dropout": DROPOUT,
            "activation": ("relu",),
        },
        allowed={"activation": ACTIVATIONS, "norm": NORM},
        minimum={"stem": 1, "stages": 1, "blocks": 1, "width": 1},
        per_layer={"blocks": "stages"},
        sample=_sample_resnet,
        report_values=lambda spec: None,  # no report row has residual blocks
    ),
}
