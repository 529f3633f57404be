from __future__ import annotations

import pytest

from archsearch.spec import ACTIVATIONS, CNNSpec, ConvLayer, MLPSpec, PoolLayer, SpecError, parse_spec, spec_from_dict


@pytest.mark.parametrize(
    "text, expected",
    [
        ("mlp:linear", MLPSpec(())),
        ("mlp:", MLPSpec(())),
        ("mlp:128-tanh", MLPSpec((128,), "tanh")),
        ("mlp:350,350", MLPSpec((350, 350), "relu")),
        (
            "cnn:6c5-p2-16c5-p2-fc128,64",
            CNNSpec((ConvLayer(6, 5), PoolLayer(2), ConvLayer(16, 5), PoolLayer(2)), (128, 64)),
        ),
        ("cnn:32c3p1-ap2-fc-gelu", CNNSpec((ConvLayer(32, 3, 1), PoolLayer(2, "avg")), (), "gelu")),
    ],
)
def test_parse(text: str, expected: object) -> None:
    spec = parse_spec(text)
    assert spec == expected
    assert parse_spec(str(spec)) == spec  # the canonical string round-trips
    assert spec_from_dict(spec.to_dict()) == spec  # and so does the TOML/JSON table


@pytest.mark.parametrize("act", ACTIVATIONS)
def test_every_activation_parses(act: str) -> None:
    assert parse_spec(f"mlp:16-{act}").activation == act


def test_depth_and_widths() -> None:
    cnn = parse_spec("cnn:6c5-p2-16c5-p2-fc128,64")
    assert (cnn.depth, cnn.widths) == (4, (6, 16, 128, 64))
    assert cnn.feature_shape() == (16, 4, 4)
    assert parse_spec("mlp:5").depth == 1


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
        ("cnn:6c29-fc", "shrinks the 28x28 image below 1x1"),
        ("cnn:6c5-p2-16c5-p2-16c5-fc", "layer 5 (16c5) shrinks"),
        ("cnn:6c5-p64-fc", "shrinks"),
        ("cnn:6c5-q2-fc", "cannot read token 'q2'"),
        ("cnn:6c3p3-fc", "padding"),
        ("cnn:6c5-fc10-6c5", "nothing may follow the fc head"),
        ("cnn:0c5-fc", "conv channels"),
    ],
)
def test_bad_specs_name_the_problem(text: str, fragment: str) -> None:
    with pytest.raises(SpecError, match=None) as info:
        parse_spec(text)
    assert fragment in str(info.value)


def test_spec_from_toml_table_errors() -> None:
    with pytest.raises(SpecError, match="unknown key"):
        spec_from_dict({"kind": "mlp", "hidden": [4], "widht": 3})
    with pytest.raises(SpecError, match="kind"):
        spec_from_dict({"hidden": [4]})
    with pytest.raises(SpecError, match="'conv' or a 'pool'"):
        spec_from_dict({"kind": "cnn", "layers": [{"size": 3}]})
    assert spec_from_dict({"spec": "mlp:4-elu"}) == MLPSpec((4,), "elu")
