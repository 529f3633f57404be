from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any

import optuna
import pytest

from archsearch.core.errors import UserError
from archsearch.models import Conv, SepConv, count_params, macs_per_sample
from archsearch.study.report import report_rows
from archsearch.study.spaces import SpaceError, load_space, spec_or_reason

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "small_cnn.toml"


def sample_many(space_name: str, n: int = 60) -> list[object]:
    space = load_space(space_name)
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    out = []
    for _ in range(n):
        trial = study.ask()
        spec, _, reason = spec_or_reason(space, trial)
        out.append((spec, reason, trial.params))
        study.tell(trial, 0.0)
    return out


def test_mlp_space_is_conditional() -> None:
    for spec, reason, params in sample_many("mlp"):
        assert spec is not None and spec.kind == "mlp" and reason is None
        depth = params["depth"]
        widths = [k for k in params if k.startswith("width_")]
        # per-layer widths exist only up to the sampled depth (all of them only for the free shape)
        assert len(widths) == (depth if params.get("shape", "free") == "free" else min(depth, 1))
        assert spec.depth == depth and all(4 <= w <= 1024 for w in params.values() if isinstance(w, int) and w > 6)


def test_cnn_space_respects_the_budget() -> None:
    results = sample_many("cnn")
    ok = [spec for spec, reason, _ in results if reason is None]
    rejected = [reason for spec, reason, _ in results if reason is not None]
    assert ok and rejected  # both happen in a random sample
    assert all(count_params(s) <= 100000 and macs_per_sample(s) <= 20_000_000 for s in ok)  # type: ignore[arg-type]
    assert all("max_params" in r or "max_macs" in r or "invalid architecture" in r for r in rejected)
    kernels = {p[k] for _, _, p in results for k in p if k.startswith("kernel_")}
    assert kernels == {3, 5, 7}


def test_report_rows_that_fit() -> None:
    mlp, cnn = load_space("mlp"), load_space("cnn")
    rows = report_rows()
    assert [r.index for r in rows if mlp.report_params(r) is not None] == list(range(16))
    assert [r.index for r in rows if cnn.report_params(r) is not None] == [16]
    # the enqueued parameters really make the space build the report's architecture
    for row in (rows[15], rows[16]):
        space = cnn if row.index == 16 else mlp
        study = optuna.create_study()
        study.enqueue_trial(space.report_params(row))  # type: ignore[arg-type]
        spec, _, reason = spec_or_reason(space, study.ask())
        assert spec == row.spec and reason is None


def test_example_space_loads_and_samples() -> None:
    space = load_space(str(EXAMPLE))
    assert space.kind == "cnn" and space.max_params == 44374 and "lr" in space.recipe
    spec, recipe, _ = spec_or_reason(space, optuna.create_study().ask())
    assert spec is not None and 3e-4 <= recipe["lr"] <= 3e-3


@pytest.mark.parametrize(
    "text, fragment",
    [
        ('kind = "mlp"\ndepth = { low = 0, high = 3 }\nwidht = { low = 4, high = 8 }\n', ":3: unknown key 'widht'"),
        ('kind = "rnn"\n', "'kind' must be one of mlp, cnn, resnet"),
        ('kind = "mlp"\nactivation = { choices = ["relu", "swish"] }\n', ":2: 'activation' values must be among"),
        ('kind = "mlp"\nwidth = { low = 0, high = 8 }\n', "'width' must be integers >= 1"),
        ('kind = "mlp"\nwidth = { low = 8, high = 4 }\n', "low <= high"),
        ('kind = "mlp"\nwidth = { low = 4 }\n', "needs low and high"),
        ('kind = "mlp"\nwidth = { low = 4, high = 8, lgo = true }\n', "unknown field(s) lgo"),
        ('kind = "cnn"\nkernel = { choices = [0] }\n', "'kernel' must be integers >= 1"),
        ('kind = "cnn"\n[optimizer]\nmomentun = 0.9\n', ":3: unknown recipe key 'momentun'"),
        (
            'kind = "cnn"\n[recipe]\nschedule = { choices = ["cosine", "step"] }\n',
            ":3: 'schedule' values must be among",
        ),
        ('kind = "cnn"\n[recipe]\nlabel_smoothing = { low = 0.0, high = 1.5 }\n', "label smoothing must be in [0, 1)"),
        ('kind = "cnn"\n[recipe]\ncrop = 40\n', ":3: augment crop padding must be an integer from 0 to 16"),
        ('kind = "cnn"\npool = { choices = ["max", "strided"] }\n', ":2: 'pool' values must be among"),
        ('kind = "resnet"\nstages = { low = 0, high = 2 }\n', "'stages' must be integers >= 1"),
        ('kind = "resnet"\nchannels = 8\n', "unknown key 'channels' for a resnet space"),
        ('kind = "cnn"\ndropout = 1.5\n', "'dropout' must be in [0, 1)"),
        ('kind = "cnn"\nmax_params = -5\n', "'max_params' must be a positive integer"),
        ('kind = "mlp"\ndepth = [0, 3\n', "TOML syntax error"),
        ('kind = "cnn"\nmax_params = 9000\nfill = 1.5\n', ":3: 'fill' is a share of max_params, in (0, 1]"),
        ('kind = "cnn"\nmax_params = 9000\nfill = { low = 0.0, high = 1.0 }\n', "'fill' is a share of max_params"),
        ('kind = "cnn"\nfill = 0.9\n', ":2: 'fill' scales the widths to a share of max_params; set max_params"),
    ],
)
def test_bad_space_files_name_line_and_key(tmp_path: Path, text: str, fragment: str) -> None:
    path = tmp_path / "space.toml"
    path.write_text(text)
    with pytest.raises(UserError) as info:
        load_space(str(path))
    assert fragment in str(info.value) and str(path) in str(info.value)


def test_unknown_space_name() -> None:
    with pytest.raises(SpaceError, match="unknown space 'transformer'"):
        load_space("transformer")
    with pytest.raises(UserError, match="file not found"):
        load_space("missing.toml")


def test_grid_needs_a_finite_space(tmp_path: Path) -> None:
    path = tmp_path / "g.toml"
    path.write_text('kind = "mlp"\ndepth = { low = 1, high = 2 }\nwidth = { choices = [8, 16] }\n')
    grid = load_space(str(path)).grid()
    assert grid["depth"] == [1, 2] and grid["width_2"] == [8, 16]
    with pytest.raises(SpaceError, match="finite"):
        load_space("mlp").grid()


@pytest.mark.parametrize("name", ["cnn", "resnet"])
def test_new_vocabulary_and_recipe_are_sampled(name: str) -> None:
    """The built-in CNN and ResNet spaces reach BatchNorm, dropout, residual blocks, GAP, strided convs, and every
    recipe option; and every sampled recipe is a valid protocol."""
    from archsearch.core.protocol import REPORT_PROTOCOL

    space = load_space(name)
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=1))
    kinds: set[str] = set()
    recipes = []
    for _ in range(80):
        trial = study.ask()
        spec, recipe, _ = spec_or_reason(space, trial)
        if spec is not None:
            kinds |= spec.kinds
            kinds |= {"bn"} if spec.normed else set()
            kinds |= {"strided"} if any(getattr(layer, "stride", 1) > 1 for layer in spec.layers) else set()
        recipes.append(space.protocol(REPORT_PROTOCOL.with_(epochs=3), recipe))
        study.tell(trial, 0.0)
    expected = {"conv", "bn", "dropout", "gap", "strided"} | ({"residual"} if name == "resnet" else {"pool", "fc"})
    assert expected <= kinds
    assert {p.optimizer for p in recipes} == {"adamw", "sgd"} and len({p.schedule for p in recipes}) >= 2
    assert any(p.augment.crop for p in recipes) and any(p.augment.flip for p in recipes)
    assert any(p.label_smoothing > 0 for p in recipes) and all(p.epochs == 3 for p in recipes)


def test_the_resnet_space_builds_residual_stages() -> None:
    space = load_space("resnet")
    study = optuna.create_study()
    study.enqueue_trial({"stem": 16, "stages": 3, "blocks_1": 1, "blocks_2": 2, "blocks_3": 1, "width": 16,
                         "dropout": 0.1, "activation": "relu"})  # fmt: skip
    spec, _, reason = spec_or_reason(space, study.ask())
    assert str(spec) == "cnn:16c3p1-bn-r16-bn-r32s2-bn-r32-bn-r64s2-bn-gap-fc-d0.1-relu" and reason is None


def test_cnn_growth_double_asks_one_width_and_doubles_it_block_by_block(tmp_path: Path) -> None:
    path = tmp_path / "doubling.toml"
    path.write_text(
        'kind = "cnn"\nblocks = { low = 2, high = 3 }\nchannels = { low = 4, high = 32 }\nkernel = 3\n'
        'padding = "same"\npool = "max"\ngrowth = "double"\nhead = "gap"\nfc_depth = 0\n'
    )
    space = load_space(str(path))
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    for _ in range(10):
        trial = study.ask()
        spec, _, reason = spec_or_reason(space, trial)
        assert spec is not None and reason is None
        convs = [layer.channels for layer in spec.trunk if isinstance(layer, Conv)]
        assert convs == [trial.params["channels_1"] << i for i in range(trial.params["blocks"])]
        assert not any(k.startswith("channels_") and k != "channels_1" for k in trial.params)
        study.tell(trial, 0.0)
    # a space that does not say is free, one width per block, as before; the built-in cnn space offers both
    path.write_text('kind = "cnn"\nblocks = 2\n')
    assert load_space(str(path)).params["growth"].values() == ("free",)
    assert load_space("cnn").params["growth"].values() == ("free", "double")
    # an unknown growth is one line naming the key
    path.write_text('kind = "cnn"\ngrowth = "triple"\n')
    with pytest.raises(SpaceError, match="growth"):
        load_space(str(path))


def _fitted(space_text: str, path: Path, n: int = 30) -> list[tuple[Any, float, str | None]]:
    path.write_text(space_text)
    space = load_space(str(path))
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=3))
    out = []
    for _ in range(n):
        trial = study.ask()
        spec, _, reason = spec_or_reason(space, trial)
        assert not any(k.startswith("channels") for k in trial.params)  # the fit chooses the width, nothing asks it
        out.append((spec, trial.params["fill"], reason))
        study.tell(trial, 0.0)
    return out


def _one_channel_wider(spec: Any) -> Any:
    """``spec`` with one channel more in its first block and the other blocks in proportion (doubling from it)."""
    first = spec.trunk[0].channels
    return replace(spec, layers=tuple(
        replace(layer, channels=layer.channels + layer.channels // first) if isinstance(layer, Conv | SepConv)
        else layer for layer in spec.layers
    ))  # fmt: skip


def test_fill_gives_each_architecture_the_largest_width_within_its_share_of_the_budget(tmp_path: Path) -> None:
    text = (
        'kind = "cnn"\nmax_params = 20000\nblocks = { low = 1, high = 3 }\ngrowth = "double"\nkernel = 3\n'
        'padding = "same"\nconvs = { low = 1, high = 2 }\npool = { choices = ["max", "stride"] }\nnorm = true\n'
        'separable = { choices = [false, true] }\nhead = { choices = ["flatten", "gap"] }\nfc_depth = 0\n'
        "fill = { low = 0.5, high = 1.0 }\n"
    )
    kinds = set()
    for spec, share, reason in _fitted(text, tmp_path / "fill.toml"):
        assert spec is not None and reason is None
        assert count_params(spec) <= share * 20000 < count_params(_one_channel_wider(spec))
        kinds.add(any(isinstance(layer, SepConv) for layer in spec.trunk))
    assert kinds == {False, True}  # both kinds of convolution are fitted, each to its own width


def test_fill_respects_max_macs_and_a_fitted_space_enqueues_no_report_row(tmp_path: Path) -> None:
    text = (
        'kind = "cnn"\nmax_params = 100000\nmax_macs = 2000000\nblocks = 2\ngrowth = "double"\nkernel = 3\n'
        'padding = "same"\npool = "max"\nhead = "gap"\nfc_depth = 0\nfill = { low = 0.5, high = 1.0 }\n'
    )
    for spec, share, reason in _fitted(text, tmp_path / "macs.toml", n=5):
        assert spec is not None and reason is None
        # at 28x28 the compute binds first: the widest within 2M multiply-accumulates, well under its parameters
        assert macs_per_sample(spec) <= 2_000_000 < macs_per_sample(_one_channel_wider(spec))
        assert count_params(spec) < share * 100000
    assert load_space("fast").fills and not load_space("cnn").fills
    # a fitted space samples no report row: its widths are not asked, so none can be enqueued
    assert all(load_space("fast").report_params(row) is None for row in report_rows())


def test_fill_without_doubling_keeps_the_asked_widths_in_proportion(tmp_path: Path) -> None:
    path = tmp_path / "free.toml"
    path.write_text(
        'kind = "cnn"\nmax_params = 20000\nblocks = 2\nchannels = { low = 4, high = 32 }\nkernel = 3\n'
        'padding = "same"\npool = "max"\nhead = "gap"\nfc_depth = 0\nfill = 0.8\n'
    )
    space = load_space(str(path))
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=5))
    for _ in range(10):
        trial = study.ask()
        spec, _, reason = spec_or_reason(space, trial)
        assert spec is not None and reason is None
        first, second = (layer.channels for layer in spec.trunk if isinstance(layer, Conv))
        asked = trial.params["channels_1"], trial.params["channels_2"]
        assert second == max(1, round(asked[1] * first / asked[0]))  # each block asks its width; the fit scales
        assert count_params(spec) <= 0.8 * 20000
        study.tell(trial, 0.0)
