"""TiledLinear / TiledConv1d / TiledConv2d against the numpy re-implementation of the paper."""

from __future__ import annotations

import zlib

import numpy as np
import pytest

torch = pytest.importorskip("torch")

import tbn_reference as ref  # noqa: E402
from hypothesis import given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402
from torch import nn  # noqa: E402

from tbn_tvm.errors import TBNError  # noqa: E402
from tbn_tvm.torch import (  # noqa: E402
    TiledConv1d,
    TiledConv2d,
    TiledLinear,
    TilingError,
    tiled_sign,
    tiled_weight,
)

P_VALUES = [1, 2, 4, 8]


def dyadic(rng: np.random.Generator, shape, zeros: bool = True) -> np.ndarray:
    """Multiples of 1/8 in [-2, 2]: every sum of a few of them is exact in float32, so the signs
    and the means cannot depend on the order of summation (the test then demands bit equality)."""
    v = rng.integers(-16, 17, size=shape).astype(np.float32) / 8
    if not zeros:
        v[v == 0] = 0.125
    return v


def make(kind: str, p: int, alpha: str, alpha_source: str, bias: bool = True, **conv):
    if kind == "linear":
        return TiledLinear(24, 16, bias=bias, p=p, alpha=alpha, alpha_source=alpha_source)
    if kind == "conv1d":
        return TiledConv1d(4, 8, 3, bias=bias, p=p, alpha=alpha, alpha_source=alpha_source, **conv)
    return TiledConv2d(4, 8, 3, bias=bias, p=p, alpha=alpha, alpha_source=alpha_source, **conv)


def set_params(layer, rng, zeros=True):
    with torch.no_grad():
        layer.weight.copy_(torch.from_numpy(dyadic(rng, tuple(layer.weight.shape), zeros)))
        if layer.alpha_weight is not None:
            layer.alpha_weight.copy_(torch.from_numpy(dyadic(rng, tuple(layer.weight.shape), zeros)))
        if layer.bias is not None:
            layer.bias.copy_(torch.from_numpy(dyadic(rng, tuple(layer.bias.shape))))


def np_params(layer):
    w = layer.weight.detach().numpy().copy()
    a = None if layer.alpha_weight is None else layer.alpha_weight.detach().numpy().copy()
    b = None if layer.bias is None else layer.bias.detach().numpy().astype(np.float64)
    return w, a, b


def np_forward(layer, x: np.ndarray) -> np.ndarray:
    w, a, b = np_params(layer)
    w_hat = ref.tiled_weight(w, layer.p, a, layer.alpha)
    if isinstance(layer, nn.Linear):
        return ref.linear(x, w_hat, b)
    return ref.conv_nd(
        x, w_hat, b, layer.stride, layer.padding, layer.dilation, layer.groups, layer.padding_mode
    )


def example_input(kind: str, rng) -> np.ndarray:
    shape = {"linear": (5, 24), "conv1d": (3, 4, 11), "conv2d": (2, 4, 7, 6)}[kind]
    return rng.standard_normal(shape).astype(np.float32)


# ------------------------------------------------------------------------------ forward values
@pytest.mark.parametrize("kind", ["linear", "conv1d", "conv2d"])
@pytest.mark.parametrize("p", P_VALUES)
@pytest.mark.parametrize("alpha", ["per_copy", "single"])
@pytest.mark.parametrize("alpha_source", ["A", "W"])
def test_weight_and_forward_match_numpy(kind, p, alpha, alpha_source):
    rng = np.random.default_rng(zlib.crc32(f"{kind}{p}{alpha}{alpha_source}".encode()))
    layer = make(kind, p, alpha, alpha_source)
    set_params(layer, rng)
    w, a, _ = np_params(layer)
    expected_w = ref.tiled_weight(w, p, a, alpha)
    x = example_input(kind, rng)
    for mode in ("train", "eval"):
        layer.train(mode == "train")
        got_w = layer.binary_weight().detach().numpy()
        np.testing.assert_array_equal(got_w, expected_w)  # bit-exact weight
        y = layer(torch.from_numpy(x)).detach().numpy()
        np.testing.assert_allclose(y, np_forward(layer, x), rtol=1e-5, atol=1e-5)


def test_paper_example_by_hand():
    # W = [[1, -2], [-3, 3]], p = 2: chunks [1, -2] and [-3, 3], s = [-2, 1], t = [-1, +1].
    # A = [[1, 1], [2, 4]]: alpha_0 = 1, alpha_1 = 3 -> W_hat = [[-1, 1], [-3, 3]].
    layer = TiledLinear(2, 2, bias=False, p=2)
    with torch.no_grad():
        layer.weight.copy_(torch.tensor([[1.0, -2.0], [-3.0, 3.0]]))
        layer.alpha_weight.copy_(torch.tensor([[1.0, 1.0], [2.0, 4.0]]))
    assert layer.binary_weight().tolist() == [[-1.0, 1.0], [-3.0, 3.0]]
    assert layer.tile().tolist() == [-1.0, 1.0]
    assert layer.alphas().tolist() == [1.0, 3.0]
    layer.alpha = "single"  # mean |A| = 2
    assert layer.binary_weight().tolist() == [[-2.0, 2.0], [-2.0, 2.0]]


@pytest.mark.parametrize("train", [True, False])
def test_sign_of_zero_is_minus_one(train):
    layer = TiledLinear(4, 4, bias=False, p=2).train(train)
    with torch.no_grad():
        w = torch.arange(16, dtype=torch.float32).reshape(4, 4) - 7.5
        w[2:] = -w[:2]  # second chunk cancels the first: s == 0 everywhere
        w[0, 0], w[2, 0] = 1.0, 0.5  # ... except position 0 (s = 1.5 > 0)
        layer.weight.copy_(w)
    t = layer.tile()
    assert t[0] == 1 and bool((t[1:] == -1).all())
    assert bool((layer.binary_weight() != 0).all())


def test_p1_is_a_binary_weight_layer():
    rng = np.random.default_rng(0)
    conv = TiledConv2d(3, 6, 3, bias=False, p=1, alpha="single")
    set_params(conv, rng, zeros=False)
    w, a, _ = np_params(conv)
    expected = np.sign(w) * np.abs(a).mean()
    np.testing.assert_array_equal(conv.binary_weight().detach().numpy(), expected.astype(np.float32))


def test_tiled_weight_repeats_the_tile_p_times():
    layer = TiledLinear(32, 64, p=8)
    w = layer.eval().binary_weight().detach().numpy().reshape(8, -1)
    scales = layer.alphas().detach().numpy()
    for k in range(8):
        np.testing.assert_allclose(w[k] / scales[k], w[0] / scales[0], rtol=0, atol=0)
    # Linear layout: the tile is the first out/p rows; row j reuses row j mod 8.
    rows = np.sign(layer.binary_weight().detach().numpy())
    np.testing.assert_array_equal(rows[8:16], rows[:8])


@settings(max_examples=25, deadline=None)
@given(
    out_f=st.integers(1, 12),
    in_f=st.integers(1, 12),
    p=st.sampled_from([1, 2, 3, 4, 6]),
    alpha=st.sampled_from(["per_copy", "single"]),
    seed=st.integers(0, 2**16),
)
def test_random_float_weights_match_numpy(out_f, in_f, p, alpha, seed):
    if (out_f * in_f) % p:
        with pytest.raises(TilingError):
            TiledLinear(in_f, out_f, p=p)
        return
    rng = np.random.default_rng(seed)
    layer = TiledLinear(in_f, out_f, p=p, alpha=alpha)
    with torch.no_grad():
        layer.weight.copy_(torch.from_numpy(rng.standard_normal((out_f, in_f)).astype(np.float32)))
    w, a, _ = np_params(layer)
    got = layer.binary_weight().detach().numpy()
    want = ref.tiled_weight(w, p, a, alpha)
    # Float sums of random values: only positions whose chunk sum is clearly non-zero are order-proof.
    s = w.reshape(p, -1).astype(np.float64).sum(0)
    clear = np.tile(np.abs(s) > 1e-5, p).reshape(w.shape)
    np.testing.assert_allclose(got[clear], want[clear], rtol=1e-6)


# ------------------------------------------------------------------------------------ gradients
@pytest.mark.parametrize("p", [1, 2, 4])
@pytest.mark.parametrize("alpha", ["per_copy", "single"])
@pytest.mark.parametrize("alpha_source", ["A", "W"])
def test_ste_gradients_match_numpy(p, alpha, alpha_source):
    rng = np.random.default_rng(p * 10 + len(alpha) + len(alpha_source))
    layer = TiledConv2d(2, 4, 3, bias=False, p=p, alpha=alpha, alpha_source=alpha_source).train()
    set_params(layer, rng, zeros=False)
    g = rng.standard_normal(tuple(layer.weight.shape)).astype(np.float32)
    loss = (layer.binary_weight() * torch.from_numpy(g)).sum()
    loss.backward()
    w, a, _ = np_params(layer)
    d_w, d_a = ref.tiled_weight_grads(w, p, a, alpha, g)
    np.testing.assert_allclose(layer.weight.grad.numpy(), d_w, rtol=1e-5, atol=1e-6)
    if alpha_source == "A":
        np.testing.assert_allclose(layer.alpha_weight.grad.numpy(), d_a, rtol=1e-5, atol=1e-6)
    else:
        assert layer.alpha_weight is None


def test_ste_is_identity_from_B_to_W():
    w = torch.randn(6, 4, requires_grad=True)
    g = torch.randn(6, 4)
    (tiled_sign(w, 3) * g).sum().backward()
    assert torch.equal(w.grad, g)  # each W element gets its own position's gradient
    # No clipping: large |W| still receives gradient.
    w2 = (torch.randn(6, 4) * 100).requires_grad_()
    (tiled_sign(w2, 3) * g).sum().backward()
    assert torch.equal(w2.grad, g)


@pytest.mark.parametrize("kind", ["linear", "conv1d", "conv2d"])
def test_gradients_reach_W_A_and_bias(kind):
    torch.manual_seed(0)
    layer = make(kind, 4, "per_copy", "A").train()
    x = torch.randn(*example_input(kind, np.random.default_rng(0)).shape)
    layer(x).square().mean().backward()
    for name in ("weight", "alpha_weight", "bias"):
        grad = getattr(layer, name).grad
        assert grad is not None and torch.isfinite(grad).all() and grad.abs().sum() > 0, name


def test_eval_mode_has_no_straight_through_path():
    layer = TiledLinear(8, 8, p=2).eval()
    layer(torch.randn(3, 8)).sum().backward()
    assert layer.weight.grad is None  # plain sign in eval: W is not differentiated
    out = tiled_weight(torch.randn(8, requires_grad=True), 2, ste=False)
    assert not out.requires_grad


# ------------------------------------------------------------------------------ options, errors
def test_p_must_divide_the_weight_count():
    with pytest.raises(TilingError, match="does not divide"):
        TiledLinear(5, 3, p=2)
    assert issubclass(TilingError, TBNError) and issubclass(TilingError, ValueError)
    with pytest.raises(TilingError):
        TiledConv2d(3, 5, 3, p=0)
    with pytest.raises(TilingError, match="alpha"):
        TiledLinear(4, 4, p=2, alpha="many")
    with pytest.raises(TilingError, match="alpha_source"):
        TiledLinear(4, 4, p=2, alpha_source="B")


@pytest.mark.parametrize(
    "conv",
    [
        dict(stride=2, padding=1),
        dict(dilation=2, padding=2),
        dict(groups=2, padding=1),
        dict(padding=1, padding_mode="reflect"),
        dict(padding=1, padding_mode="circular"),
    ],
)
@pytest.mark.parametrize("kind", ["conv1d", "conv2d"])
def test_conv_options_match_numpy(kind, conv):
    rng = np.random.default_rng(7)
    layer = make(kind, 4, "per_copy", "A", **conv)
    set_params(layer, rng)
    x = example_input(kind, rng)
    y = layer(torch.from_numpy(x)).detach().numpy()
    np.testing.assert_allclose(y, np_forward(layer, x), rtol=1e-5, atol=1e-5)


def test_drop_in_constructor_arguments():
    conv = TiledConv2d(4, 8, kernel_size=(3, 1), stride=(2, 1), padding=(1, 0), bias=False, p=2)
    dense = nn.Conv2d(4, 8, kernel_size=(3, 1), stride=(2, 1), padding=(1, 0), bias=False)
    x = torch.randn(1, 4, 9, 5)
    assert conv(x).shape == dense(x).shape
    assert isinstance(conv, nn.Conv2d) and isinstance(TiledLinear(4, 4, p=2), nn.Linear)
    assert "p=2" in repr(conv)
    lin = TiledLinear(6, 4, True, None, torch.float64, p=3)
    assert lin.weight.dtype == torch.float64 and lin.alpha_weight.dtype == torch.float64


def test_storage_bits_follow_the_authors_accounting():
    layer = TiledLinear(784, 128, bias=False, p=4)  # the authors' MNIST fc1
    assert layer.storage_bits() == 784 * 128 // 4 + 32 * 4  # 25,088 tile bits + 4 fp32 alphas
    single = TiledLinear(128, 10, bias=False, p=1, alpha="single")
    assert single.storage_bits() == 1280 + 32


def test_from_dense_to_dense_and_freeze_agree():
    torch.manual_seed(1)
    dense = nn.Conv1d(4, 8, 3, padding=1)
    tiled = TiledConv1d.from_dense(dense, p=4)
    assert torch.equal(tiled.weight, dense.weight) and torch.equal(tiled.alpha_weight, dense.weight)
    assert torch.equal(tiled.bias, dense.bias)
    tiled.eval()
    x = torch.randn(2, 4, 10)
    with torch.no_grad():
        y = tiled(x)
        back = tiled.to_dense()
        assert type(back) is nn.Conv1d
        torch.testing.assert_close(back(x), y, rtol=0, atol=0)
        frozen = tiled.freeze()
        torch.testing.assert_close(frozen(x), y, rtol=1e-6, atol=1e-6)
    assert frozen.tile.shape == (1, tiled.tile_length) and frozen.scales.shape == (4, 1)
    assert set(frozen.tile.unique().tolist()) <= {-1.0, 1.0}
    assert list(frozen.parameters()) == []
