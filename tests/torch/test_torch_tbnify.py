"""tbnify's replacement rules and summary's size accounting."""

from __future__ import annotations

import json
from collections import OrderedDict

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from torch import nn  # noqa: E402

from tbn_tvm.torch import (  # noqa: E402
    TiledConv1d,
    TiledConv2d,
    TiledLinear,
    TilingError,
    summary,
    tbnify,
    tiling_plan,
)
from tbn_tvm.torch.attention import TiledMultiheadAttention  # noqa: E402


def mlp() -> nn.Sequential:
    # weights: 64*100=6400, 100*700=70000, 700*100=70000, 100*10=1000
    return nn.Sequential(
        OrderedDict(
            [
                ("fc1", nn.Linear(64, 100)),
                ("act1", nn.ReLU()),
                ("fc2", nn.Linear(100, 700)),
                ("act2", nn.ReLU()),
                ("fc3", nn.Linear(700, 100)),
                ("act3", nn.ReLU()),
                ("head", nn.Linear(100, 10)),
            ]
        )
    )


def ps(model) -> dict[str, int | None]:
    return {
        name: getattr(m, "p", None)
        for name, m in model.named_modules()
        if isinstance(m, nn.Linear | nn.Conv1d | nn.Conv2d)
    }


def test_default_rules_first_last_binary_and_min_size():
    model = tbnify(mlp(), p=4)  # min_size 64000 (the authors')
    assert ps(model) == {"fc1": 1, "fc2": 4, "fc3": 4, "head": 1}
    assert all(isinstance(m, TiledLinear) for m in (model.fc1, model.fc2, model.fc3, model.head))
    model = tbnify(mlp(), p=4, min_size=70001)  # both hidden layers now too small
    assert ps(model) == {"fc1": 1, "fc2": 1, "fc3": 1, "head": 1}


def test_first_and_last_can_be_tiled():
    model = tbnify(mlp(), p=2, min_size=0, keep_first_last_binary=False)
    assert ps(model) == {"fc1": 2, "fc2": 2, "fc3": 2, "head": 2}
    model = tbnify(mlp(), p=2, min_size=5000, keep_first_last_binary=False)
    assert ps(model) == {"fc1": 2, "fc2": 2, "fc3": 2, "head": 1}


def test_overrides_exact_glob_and_full_precision():
    model = tbnify(mlp(), p=4, min_size=0, overrides={"fc3": 8, "fc*": 2, "head": None})
    assert ps(model) == {"fc1": 2, "fc2": 2, "fc3": 8, "head": None}
    assert type(model.head) is nn.Linear  # None keeps the dense layer


def test_override_errors():
    with pytest.raises(TilingError, match="match no"):
        tbnify(mlp(), overrides={"fc9": 2})
    with pytest.raises(TilingError, match="does not divide"):
        tbnify(mlp(), overrides={"head": 3})
    with pytest.raises(TilingError, match="positive"):
        tbnify(mlp(), overrides={"fc2": 0})
    with pytest.raises(TilingError):
        tbnify(mlp(), p=0)
    with pytest.raises(TilingError, match="container"):
        tbnify(nn.Linear(4, 4), p=1)


def test_indivisible_layer_falls_back_to_binary_with_a_warning():
    model = nn.Sequential(nn.Linear(8, 8), nn.Linear(7, 9), nn.Linear(9, 8), nn.Linear(8, 2))
    with pytest.warns(UserWarning, match="kept at p=1"):
        tbnify(model, p=2, min_size=0)
    assert [m.p for m in model] == [1, 1, 2, 1]
    plan = tiling_plan(nn.Sequential(nn.Linear(8, 8), nn.Linear(7, 9), nn.Linear(8, 2)), p=2, min_size=0)
    assert plan[1].reason == "p=2 does not divide 63"


def test_plan_lists_every_layer_without_changing_the_model():
    model = mlp()
    plan = tiling_plan(model, p=8, min_size=10000)
    assert [(r.name, r.p, r.numel) for r in plan] == [
        ("fc1", 1, 6400),
        ("fc2", 8, 70000),
        ("fc3", 8, 70000),
        ("head", 1, 1000),
    ]
    assert all(type(m) is nn.Linear for m in model if not isinstance(m, nn.ReLU))


def test_conv_layers_are_replaced_with_their_options():
    model = nn.Sequential(
        nn.Conv1d(2, 8, 3),
        nn.Conv2d(8, 16, (3, 1), stride=2, padding=(1, 0), groups=2, padding_mode="reflect"),
        nn.Conv2d(16, 4, 1),
    )
    tbnify(model, p=2, min_size=0)
    assert isinstance(model[0], TiledConv1d) and isinstance(model[1], TiledConv2d)
    c = model[1]
    assert (c.kernel_size, c.stride, c.padding, c.groups, c.padding_mode, c.p) == (
        (3, 1),
        (2, 2),
        (1, 0),
        2,
        "reflect",
        2,
    )


def test_weights_are_copied_and_p1_model_is_sign_times_mean_abs():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(16, 32), nn.Tanh(), nn.Linear(32, 4))
    w = [model[0].weight.detach().numpy().copy(), model[2].weight.detach().numpy().copy()]
    b = [model[0].bias.detach().numpy().copy(), model[2].bias.detach().numpy().copy()]
    tbnify(model, p=1, min_size=0)
    assert np.array_equal(model[0].weight.detach().numpy(), w[0])
    assert np.array_equal(model[0].alpha_weight.detach().numpy(), w[0])
    x = np.random.default_rng(0).standard_normal((3, 16)).astype(np.float32)
    h = np.tanh(x @ (np.where(w[0] > 0, 1, -1) * np.abs(w[0]).mean()).T + b[0])
    want = h @ (np.where(w[1] > 0, 1, -1) * np.abs(w[1]).mean()).T + b[1]
    got = model.eval()(torch.from_numpy(x)).detach().numpy()
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


def test_fresh_weights_and_alpha_options():
    model = tbnify(mlp(), p=4, min_size=0, alpha="single", alpha_source="W", copy_weights=False)
    assert model.fc2.alpha == "single" and model.fc2.alpha_weight is None


def test_shared_module_is_replaced_everywhere_and_attention_is_tiled_whole():
    shared = nn.Linear(8, 8)
    model = nn.Sequential(nn.Linear(8, 8), shared, nn.ReLU(), shared, nn.Linear(8, 8))
    tbnify(model, p=2, min_size=0)
    assert model[1] is model[3] and isinstance(model[1], TiledLinear) and model[1].p == 2

    class Attn(nn.Module):
        def __init__(self):
            super().__init__()
            self.inp = nn.Linear(8, 8)
            self.mha = nn.MultiheadAttention(8, 2)
            self.out = nn.Linear(8, 8)

    a = tbnify(Attn(), p=2, min_size=0)
    # the attention uses its projections' weights directly: never swapped one by one, but the
    # whole attention is replaced (tests/torch/test_tbnify_coverage.py)
    assert isinstance(a.mha, TiledMultiheadAttention) and a.mha.in_proj.p == a.mha.out_proj.p == 2
    assert isinstance(a.inp, TiledLinear) and isinstance(a.out, TiledLinear)


# --------------------------------------------------------------------------------------- summary
def test_summary_bits_follow_the_authors_accounting():
    model = nn.Sequential(
        nn.Linear(64, 256, bias=False),
        nn.BatchNorm1d(256),
        nn.ReLU(),
        nn.Linear(256, 256, bias=False),
        nn.ReLU(),
        nn.Linear(256, 10),
    )
    tbnify(model, p=4, min_size=0)
    s = summary(model)
    rows = {r.name: r for r in s.rows}
    # By hand: binary layer = n bits + one fp32 alpha; tiled = n/p bits + p fp32 alphas.
    assert rows["0"].weight_bits == 64 * 256 + 32 and rows["0"].format == "binary"
    assert rows["3"].weight_bits == 256 * 256 // 4 + 4 * 32 and rows["3"].format == "tiled"
    assert rows["5"].weight_bits == 2560 + 32 and rows["5"].other_values == 10  # bias
    assert rows["1"].other_values == 4 * 256 and rows["1"].format == "other"  # gamma, beta, mean, var
    total = s.total
    weights = 64 * 256 + 256 * 256 + 2560
    weight_bits = (64 * 256 + 32) + (256 * 256 // 4 + 128) + (2560 + 32)
    assert total["weights"] == weights and total["weight_bits"] == weight_bits
    assert total["bits_per_weight"] == pytest.approx(weight_bits / weights)
    assert total["bytes"] == -(-(weight_bits + 32 * (10 + 1024)) // 8)
    assert total["compression"] == pytest.approx(32 * (weights + 1034) / (weight_bits + 32 * 1034))
    text = str(s)
    assert "TiledLinear" in text and "total" in text and "tiled" in text
    assert s.table(markdown=True).startswith("| layer |")
    json.dumps(s.to_dict())


def test_summary_of_a_dense_model_is_fp32():
    s = summary(nn.Sequential(nn.Conv2d(1, 4, 3), nn.Flatten(), nn.Linear(4, 2)))
    assert s.total["bits_per_weight"] == 32.0
    assert s.total["compression"] == pytest.approx(1.0)
