"""The spec grammar and its TOML form: the report's specs as before, every layer kind of the registry, errors that
name the problem."""

from __future__ import annotations

import pytest

from archsearch.core.shapes import Shape
from archsearch.models import (
    ACTIVATIONS,
    Conv,
    Dropout,
    GlobalAvgPool,
    Linear,
    Pool,
    Residual,
    SepConv,
    Spec,
    SpecError,
    cnn,
    mlp,
    parse_spec,
    spec_from_dict,
)


@pytest.mark.parametrize(
    "text, expected",
    [
        ("mlp:linear", mlp(())),
        ("mlp:", mlp(())),
        ("mlp:128-tanh", mlp((128,), "tanh")),
        ("mlp:350,350", mlp((350, 350), "relu")),
        ("cnn:6c5-p2-16c5-p2-fc128,64", cnn((Conv(6, 5), Pool(2), Conv(16, 5), Pool(2)), (128, 64))),
        ("cnn:32c3p1-ap2-fc-gelu", cnn((Conv(32, 3, padding=1), Pool(2, "avg")), (), "gelu")),
        # the new vocabulary
        ("cnn:32c3s2p1-bn-fc", cnn((Conv(32, 3, 2, 1, norm=True),))),
        ("cnn:16ds3p1-bn-gap-fc", cnn((SepConv(16, 3, padding=1, norm=True), GlobalAvgPool()))),
        ("cnn:8c3-r8-bn-r16s2-gap-fc", cnn((Conv(8, 3), Residual(8, norm=True), Residual(16, 2), GlobalAvgPool()))),
        (
            "cnn:8c3-d0.25-p2-fc64-bn-d0.5-fc32-silu",
            Spec("cnn", (Conv(8, 3), Dropout(0.25), Pool(2), Linear(64, norm=True), Dropout(0.5), Linear(32)), "silu"),
        ),
        ("mlp:512,256-bn-d0.2", Spec("mlp", (Linear(512), Linear(256, norm=True), Dropout(0.2)))),
        ("cnn:8c3-gap-fc-d0.2", Spec("cnn", (Conv(8, 3), GlobalAvgPool(), Dropout(0.2)))),
    ],
)
def test_parse(text: str, expected: Spec) -> None:
    spec = parse_spec(text)
    assert spec == expected
    assert parse_spec(str(spec)) == spec  # the canonical string round-trips
    assert spec_from_dict(spec.to_dict()) == spec  # and so does the TOML/JSON table


def test_the_report_specs_print_as_they_always_did() -> None:
    assert str(parse_spec("cnn:6c5-p2-16c5-p2-fc128,64")) == "cnn:6c5-p2-16c5-p2-fc128,64-relu"
    assert str(parse_spec("mlp:512,256,64,256,10")) == "mlp:512,256,64,256,10-relu"
    assert parse_spec("mlp:128-relu").to_dict() == {"kind": "mlp", "hidden": [128], "activation": "relu"}
    assert parse_spec("cnn:6c5-p2-fc").to_dict() == {
        "kind": "cnn",
        "layers": [{"conv": 6, "kernel": 5, "padding": 0}, {"pool": 2, "mode": "max"}],
        "fc": [],
        "activation": "relu",
    }


@pytest.mark.parametrize("act", ACTIVATIONS)
def test_every_activation_parses(act: str) -> None:
    assert parse_spec(f"mlp:16-{act}").activation == act


def test_depth_widths_and_shapes() -> None:
    spec = parse_spec("cnn:6c5-p2-16c5-p2-fc128,64")
    assert (spec.depth, spec.widths, spec.hidden) == (4, (6, 16, 128, 64), (128, 64))
    assert spec.shapes()[4] == Shape(256, 1, 1)  # the head's input: 16 x 4 x 4 flattened
    assert parse_spec("mlp:5").depth == 1
    assert parse_spec("cnn:8c3-r8-r16s2-gap-fc").depth == 5  # a residual block counts its two convolutions
    # the same spec on other images: 3 channels, 32x32
    assert parse_spec("cnn:6c5-p2-16c5-p2-fc128").shapes(Shape(3, 32, 32))[4] == Shape(400, 1, 1)


@pytest.mark.parametrize(
    "text, fragment",
    [
        ("mlp:0", "width"),
        ("mlp:128,0", "hidden layer 2 width"),
        ("mlp:128-swish", "unknown activation 'swish'"),
        ("mlp:12x", "comma-separated widths"),
        ("rnn:12", "must start with"),
        ("128", "must start with"),
        ("cnn:fc128", "at least one conv"),
        ("cnn:6c5-q2-fc", "cannot read token 'q2'"),
        ("cnn:6c3p3-fc", "padding"),
        ("cnn:6c5-fc10-6c5", "may follow the fc head"),
        ("cnn:0c5-fc", "conv channels"),
        ("cnn:bn-6c5-fc", "'bn' must follow"),
        ("cnn:6c5-p2-bn-fc", "'bn' must follow a conv"),
        ("cnn:6c5-bn-bn-fc", "'bn' given twice"),
        ("cnn:6c5-d1.5-fc", "cannot read token 'd1.5'"),
        ("mlp:12-gap", "expected comma-separated widths"),
    ],
)
def test_bad_specs_name_the_problem(text: str, fragment: str) -> None:
    with pytest.raises(SpecError) as info:
        parse_spec(text)
    assert fragment in str(info.value)


@pytest.mark.parametrize(
    "text, shape, fragment",
    [
        ("cnn:6c29-fc", Shape(1, 28, 28), "layer 1 (6c29) shrinks the 28x28 image below 1x1"),
        ("cnn:6c5-p2-16c5-p2-16c5-fc", Shape(1, 28, 28), "layer 5 (16c5) shrinks"),
        ("cnn:6c5-p64-fc", Shape(1, 28, 28), "shrinks"),
        ("cnn:6c3-p2-6c3-p2-fc", Shape(1, 8, 8), "layer 4 (p2) shrinks the 8x8 image"),  # fits 28x28, not 8x8
    ],
)
def test_a_spec_that_does_not_fit_the_images_names_the_layer(text: str, shape: Shape, fragment: str) -> None:
    spec = parse_spec(text)
    with pytest.raises(SpecError) as info:
        spec.check(shape)
    assert fragment in str(info.value)


def test_spec_from_toml_table() -> None:
    with pytest.raises(SpecError, match="unknown key"):
        spec_from_dict({"kind": "mlp", "hidden": [4], "widht": 3})
    with pytest.raises(SpecError, match="kind"):
        spec_from_dict({"hidden": [4]})
    with pytest.raises(SpecError, match="needs exactly one of the keys"):
        spec_from_dict({"kind": "cnn", "layers": [{"size": 3}]})
    with pytest.raises(SpecError, match=r"unknown key.*strides"):
        spec_from_dict({"kind": "cnn", "layers": [{"conv": 3, "strides": 2}]})
    assert spec_from_dict({"spec": "mlp:4-elu"}) == mlp((4,), "elu")
    table = {"kind": "cnn", "layers": [{"conv": 8, "kernel": 3, "padding": 1}, {"bn": True}, {"gap": True}],
             "head": [{"dropout": 0.3}]}  # fmt: skip
    assert str(spec_from_dict(table)) == "cnn:8c3p1-bn-gap-fc-d0.3-relu"
