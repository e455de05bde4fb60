"""BitwiseLinear / BitwiseConv2d against the numpy reference: the weight formula, the STE, the
trainable-bit mask under real optimisers, initialisation, bitwiseify, size accounting, export
and a short training run on digits."""

from __future__ import annotations

import math

import numpy as np
import pytest

torch = pytest.importorskip("torch")
onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")

import subbit_reference as ref  # noqa: E402
from torch import nn  # noqa: E402

from tbn_tvm.torch import BitwiseConv2d, BitwiseLinear, bitwiseify, export_onnx, fit, summary  # noqa: E402
from tbn_tvm.torch.bitwise import quantize_sign_magnitude, trainable_mask  # noqa: E402
from tbn_tvm.torch.layers import TilingError  # noqa: E402


def set_planes(layer, planes: torch.Tensor) -> None:
    """Write all k latent planes (bit order) into the layer's trainable and frozen storage."""
    with torch.no_grad():
        if layer.bits is not None:
            layer.bits.copy_(planes[layer._trainable_planes])
        layer.frozen_bits.copy_(planes[layer._frozen_planes])


@pytest.mark.parametrize(
    "k,trainable,alpha", [(6, 3, "layer"), (3, [1, 0, 1], "channel"), (8, 8, "layer"), (4, 0, "channel")]
)
def test_weight_is_alpha_times_the_sign_magnitude_integer(k, trainable, alpha):
    torch.manual_seed(0)
    layer = BitwiseLinear(10, 7, k=k, trainable=trainable, alpha=alpha)
    planes = torch.randn(k, 7, 10)
    set_planes(layer, planes)
    assert torch.equal(layer.latent_planes(), planes)
    a = layer.alpha.numpy()
    expected = ref.bitwise_weight(planes.numpy(), a)
    for mode in (True, False):
        layer.train(mode)
        np.testing.assert_array_equal(layer.weight.detach().numpy(), expected)  # exactly α · integer
    assert np.array_equal(layer.integer_weight().numpy(), ref.bitwise_integer(planes.numpy()))
    assert int(layer.integer_weight().abs().max()) <= 2 ** (k - 1) - 1
    x = torch.randn(3, 10)
    torch.testing.assert_close(layer.eval()(x), x @ torch.from_numpy(expected).T + layer.bias)


def test_conv_weight_and_output():
    torch.manual_seed(1)
    conv = BitwiseConv2d(4, 6, 3, padding=1, k=5, trainable=2, alpha="channel")
    planes = torch.randn(5, 6, 4, 3, 3)
    set_planes(conv, planes)
    expected = ref.bitwise_weight(planes.numpy(), conv.alpha.numpy())
    np.testing.assert_array_equal(conv.weight.detach().numpy(), expected)
    x = torch.randn(2, 4, 5, 5)
    want = torch.nn.functional.conv2d(x, torch.from_numpy(expected), conv.bias, padding=1)
    torch.testing.assert_close(conv.eval()(x), want)


def test_ste_gradients_of_every_trainable_plane():
    torch.manual_seed(2)
    layer = BitwiseLinear(6, 5, bias=False, k=6, trainable=6).train()
    planes = torch.randn(6, 5, 6)
    set_planes(layer, planes)
    up = torch.randn(5, 6)
    (layer.weight * up).sum().backward()
    expected = ref.bitwise_grads(planes.numpy(), layer.alpha.numpy(), up.numpy())
    np.testing.assert_allclose(layer.bits.grad.numpy(), expected, rtol=1e-6, atol=1e-7)


def test_ste_with_a_partial_mask_only_reaches_the_trainable_planes():
    torch.manual_seed(3)
    layer = BitwiseLinear(6, 5, bias=False, k=6, trainable=3).train()
    up = torch.randn(5, 6)
    (layer.weight * up).sum().backward()
    full = ref.bitwise_grads(layer.latent_planes().detach().numpy(), layer.alpha.numpy(), up.numpy())
    assert layer.bits.shape[0] == 3 and layer.frozen_bits.shape[0] == 3
    np.testing.assert_allclose(layer.bits.grad.numpy(), full[[3, 4, 5]], rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize(
    "make_opt",
    [
        lambda p: torch.optim.SGD(p, lr=0.5, momentum=0.9, weight_decay=0.1),
        lambda p: torch.optim.Adam(p, lr=0.1),
        lambda p: torch.optim.AdamW(p, lr=0.1, weight_decay=0.5),
    ],
)
def test_frozen_bits_stay_frozen_after_optimiser_steps(make_opt):
    torch.manual_seed(4)
    model = nn.Sequential(
        BitwiseLinear(8, 16, k=6, trainable=3),
        nn.ReLU(),
        BitwiseLinear(16, 3, k=6, trainable=[1, 0, 0, 0, 1, 1]),
    )
    before = [m.latent_planes().detach().clone() for m in model if isinstance(m, BitwiseLinear)]
    opt = make_opt(model.parameters())
    x, y = torch.randn(32, 8), torch.randint(0, 3, (32,))
    for _ in range(5):
        opt.zero_grad()
        nn.functional.cross_entropy(model(x), y).backward()
        opt.step()
    for layer, old in zip([m for m in model if isinstance(m, BitwiseLinear)], before, strict=True):
        new = layer.latent_planes().detach()
        mask = torch.tensor(layer.trainable_mask)
        assert torch.equal(new[~mask], old[~mask])  # frozen planes: not one value moved
        assert not torch.equal(new[mask], old[mask])  # trainable planes learned
        frozen_bits_before = old[~mask] > 0
        assert torch.equal(new[~mask] > 0, frozen_bits_before)


def test_trainable_mask_and_errors():
    assert trainable_mask(6, 3) == (False, False, False, True, True, True)
    assert trainable_mask(6, 0) == (False,) * 6 and trainable_mask(3, 3) == (True,) * 3
    assert trainable_mask(4, [0, 1, 0, 1]) == (False, True, False, True)
    for bad in (7, -1, [1, 0], True, "3"):
        with pytest.raises(TilingError):
            trainable_mask(6, bad)
    with pytest.raises(TilingError, match="k must"):
        BitwiseLinear(4, 4, k=1)
    with pytest.raises(TilingError, match="alpha"):
        BitwiseLinear(4, 4, alpha="row")  # type: ignore[arg-type]
    with pytest.raises(TilingError, match="container"):
        bitwiseify(nn.Linear(4, 4))
    layer = BitwiseLinear(4, 4, trainable=0)
    assert layer.bits is None and [n for n, _ in layer.named_parameters()] == ["bias"]


def test_quantize_init_keeps_the_dense_weight_on_the_grid():
    torch.manual_seed(5)
    dense = nn.Linear(20, 8)
    for alpha in ("layer", "channel"):
        layer = BitwiseLinear.from_dense(dense, k=6, trainable=3, alpha=alpha)
        a, q = quantize_sign_magnitude(dense.weight, 6, alpha)  # type: ignore[arg-type]
        w = dense.weight.detach().numpy()
        peak = np.abs(w).max() if alpha == "layer" else np.abs(w).max(axis=1, keepdims=True)
        np.testing.assert_allclose(a.numpy(), peak / 31, rtol=1e-6)
        assert np.array_equal(q.numpy(), np.clip(np.rint(w / a.numpy()), -31, 31))
        assert torch.equal(layer.integer_weight(), q) and torch.equal(layer.alpha, a)
        assert np.abs(layer.weight.detach().numpy() - w).max() <= float(a.max()) / 2 + 1e-7
        assert torch.equal(layer.bias, dense.bias)


def test_random_init_is_the_authors():
    torch.manual_seed(6)
    layer = BitwiseLinear(200, 100, k=6, trainable=3, init="random")
    q = layer.integer_weight()
    assert int((q == 0).sum()) == 0  # magnitude bits re-drawn until one is set
    std = float((layer.alpha * q.float()).std())
    assert std == pytest.approx(math.sqrt(2 / 200), rel=1e-4)


def test_bitwiseify_converts_every_linear_and_conv2d():
    torch.manual_seed(7)
    model = nn.Sequential(nn.Conv2d(1, 4, 3), nn.ReLU(), nn.Conv1d(4, 4, 1), nn.Flatten(), nn.Linear(16, 3))
    dense = model[4].weight.detach().clone()
    bitwiseify(model, k=4, trainable=2)
    assert [type(m).__name__ for m in model] == [
        "BitwiseConv2d",
        "ReLU",
        "Conv1d",
        "Flatten",
        "BitwiseLinear",
    ]
    a, q = quantize_sign_magnitude(dense, 4)
    assert torch.equal(model[4].integer_weight(), q)
    model2 = bitwiseify(nn.Sequential(nn.Linear(4, 4), nn.Linear(4, 2)), exclude=["1"])
    assert [type(m).__name__ for m in model2] == ["BitwiseLinear", "Linear"]


def test_summary_counts_k_bits_per_weight_plus_alpha():
    model = bitwiseify(
        nn.Sequential(nn.Linear(32, 16), nn.BatchNorm1d(16), nn.Linear(16, 4)), k=6, trainable=3
    )
    model[2] = BitwiseLinear.from_dense(nn.Linear(16, 4), k=5, trainable=2, alpha="channel")
    rows = [r for r in summary(model).rows if r.format == "bitwise"]
    assert [r.weight_bits for r in rows] == [6 * 512 + 32, 5 * 64 + 32 * 4]
    assert [r.detail for r in rows] == ["k=6 t=3", "k=5 t=2"]
    assert rows[0].other_values == 16  # the bias only: latent planes and α are not "other"
    assert summary(model).total["bits_per_weight"] == pytest.approx((6 * 512 + 32 + 5 * 64 + 128) / 576)


def ort_run(path, x):
    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    sess = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
    return sess.run(None, {sess.get_inputs()[0].name: x})[0]


def test_short_training_on_digits_then_export(tmp_path):
    """A few hundred steps on digits; the export is α times integers, equal to torch."""
    from tbn_tvm.datasets import load_digits_split
    from tbn_tvm.torch.models import digits_cnn

    data = load_digits_split()
    torch.manual_seed(0)
    model = bitwiseify(digits_cnn(), k=6, trainable=3)
    frozen = {
        name: m.frozen_bits.clone() for name, m in model.named_modules() if isinstance(m, BitwiseConv2d)
    }
    history = fit(
        model,
        (data.x_train, data.y_train),
        (data.x_test, data.y_test),
        epochs=10,
        batch_size=64,
        progress=False,
    )
    assert (
        history.steps == 230 and history.loss[-1] < 0.5 * history.loss[0] and history.val_accuracy[-1] > 0.85
    )
    for name, planes in frozen.items():
        assert torch.equal(model.get_submodule(name).frozen_bits, planes)
    example = torch.from_numpy(data.x_test[:1])
    x = data.x_test[:8]
    with torch.no_grad():
        expected = model.eval()(torch.from_numpy(x)).numpy()
    path = tmp_path / "bitwise.onnx"  # compact: int8 integers and α, BatchNorm separate
    result = export_onnx(model, example, path)
    assert result.ops.get("Cast") == 3 and "BatchNormalization" in result.ops
    inits = {i.name: onnx.numpy_helper.to_array(i) for i in onnx.load(str(path)).graph.initializer}
    for name in ("conv1", "conv2", "fc"):
        layer = model.get_submodule(name)
        q, a = inits[f"{name}.intweight"], inits[f"{name}.scale"]
        assert q.dtype == np.int8 and np.abs(q).max() <= 31
        np.testing.assert_array_equal(
            (a * q.astype(np.float32)).astype(np.float32), layer.weight.detach().numpy()
        )
    dense = tmp_path / "bitwise-dense.onnx"
    export_onnx(model, example, dense, form="dense")
    for f in (path, dense):
        for j in range(0, 8, 2):
            np.testing.assert_allclose(ort_run(f, x[j : j + 1]), expected[j : j + 1], rtol=1e-5, atol=1e-5)
