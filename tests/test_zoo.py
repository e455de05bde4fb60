"""The test models themselves: onnxruntime agrees with their numpy references, and the tiled
weight generator follows the definition (no compiler involved)."""

from __future__ import annotations

import math

import numpy as np
import onnx
import onnx_zoo as zoo
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

ALL = {**zoo.ZOO, **zoo.MULTI_IO}


@pytest.mark.parametrize("name", sorted(ALL))
def test_onnxruntime_matches_numpy(name):
    zm = ALL[name]()
    for seed in (0, 1):
        feeds = zm.sample(seed)
        got = zoo.run_onnxruntime(zm.model, feeds)
        want = zm.forward(feeds)
        assert len(got) == len(want) == len(zm.outputs)
        for g, w, (out, shape) in zip(got, want, zm.outputs.items(), strict=True):
            assert g.shape == shape
            zoo.assert_close(g, w, what=f"{name}:{out}")


@pytest.mark.parametrize("name", sorted(ALL))
def test_models_are_static_float32_opset17(name):
    m = ALL[name]().model
    onnx.checker.check_model(m, full_check=True)
    assert {o.domain: o.version for o in m.opset_import}[""] in (17, 18)
    for vi in list(m.graph.input) + list(m.graph.output):
        assert vi.type.tensor_type.elem_type == onnx.TensorProto.FLOAT
        assert all(d.HasField("dim_value") for d in vi.type.tensor_type.shape.dim)


def _flat_period_ok(flat: np.ndarray, L: int) -> bool:  # noqa: N803
    s = np.sign(flat)
    return bool(np.array_equal(s, np.tile(s[:L], flat.size // L)))


@settings(max_examples=60, deadline=None, derandomize=True)
@given(
    rows=st.integers(1, 12),
    cols=st.integers(1, 40),
    p=st.sampled_from([1, 2, 3, 4, 8]),
    alpha=st.sampled_from(zoo.ALPHAS),
    seed=st.integers(0, 2**16),
)
def test_tiled_weight_follows_definition(rows, cols, p, alpha, seed):
    n = rows * cols
    if n % p or n // p < 2:
        return
    shape = (rows, cols)
    t = zoo.make_tiled(shape, p, alpha, np.random.default_rng(seed))
    w = t.weight
    assert w.shape == shape and w.dtype == np.float32
    flat = w.ravel()
    L = n // p
    assert t.L == L and np.all(np.abs(t.tile) == 1)
    assert np.all(t.scales > 0)
    assert _flat_period_ok(flat, L)
    assert np.array_equal(np.sign(flat[:L]), t.tile)
    # no shorter period: p is the largest compression factor of this weight
    for d in range(1, L):
        if n % d == 0 and d < L:
            assert not _flat_period_ok(flat, d)
    mags = np.abs(flat)
    if alpha == "per_copy":
        assert t.scales.size == p and np.unique(t.scales).size == p
        np.testing.assert_array_equal(mags, np.repeat(t.scales, L))
    elif alpha == "single":
        assert t.scales.size == 1 and np.all(mags == t.scales[0])
    else:
        assert t.scales.size == rows
        np.testing.assert_array_equal(np.abs(w), np.repeat(t.scales[:, None], cols, axis=1))


def test_tiled_weight_by_tile_length():
    w = zoo.tiled_weight((6, 100), L=150, rng=np.random.default_rng(3))
    assert _flat_period_ok(w.ravel(), 150) and not _flat_period_ok(w.ravel(), 75)
    assert len(np.unique(np.abs(w))) == 4
    with pytest.raises(ValueError):
        zoo.tiled_weight((6, 100), p=7)


def test_flipped_sign_breaks_all_structure():
    zm = zoo.gemm_flipped_sign()
    w = onnx.numpy_helper.to_array(next(i for i in zm.model.graph.initializer if i.name == "fc.weight"))
    flat = w.ravel()
    assert not any(_flat_period_ok(flat, d) for d in range(1, flat.size) if flat.size % d == 0)
    # not binary with one scale per row either (copy boundaries fall inside rows)
    assert any(np.unique(np.abs(row)).size > 1 for row in w)


def test_expected_layers_cover_every_weight_kind():
    formats = {(layer.format, layer.p) for f in ALL.values() for layer in f().layers}
    assert {("dense", None), ("binary", 1), ("tiled", 2), ("tiled", 4)} <= formats
    alphas = {a for f in ALL.values() for layer in f().layers for a in layer.alpha}
    assert {"per_copy", "single", "per_channel"} <= alphas


def test_unsupported_op_has_no_tvm_converter():
    """The op the error tests rely on must really be missing from TVM's Relax ONNX importer."""
    frontend = pytest.importorskip("tvm.relax.frontend.onnx.onnx_frontend")
    model, op, node = zoo.unsupported_op_model()
    assert op not in frontend._get_convert_map()
    assert any(n.op_type == op and n.name == node for n in model.graph.node)
    # onnxruntime runs it, so it is a valid model
    out = zoo.run_onnxruntime(model, {"x": np.ones((1, 32), np.float32)})[0]
    np.testing.assert_allclose(np.linalg.norm(out), 1.0, rtol=1e-5)


def test_dynamic_model_has_symbolic_batch():
    m = zoo.dynamic_batch_model()
    assert m.graph.input[0].type.tensor_type.shape.dim[0].dim_param == "N"


# -- the authors' MNIST MLP --------------------------------------------------------------------
authors = pytest.mark.skipif(
    not zoo.AUTHORS_MLP_NPZ.exists(),
    reason="tbn_tvm/data/tbn-authors-mnist-mlp.npz not in the package yet (the lead copies it)",
)


@authors
def test_authors_weights_are_tiled_as_documented():
    d = np.load(zoo.AUTHORS_MLP_NPZ)
    w1 = d["fc1_weight"].ravel()
    L = w1.size // 4
    assert _flat_period_ok(w1, L)
    tile_bits = np.unpackbits(d["fc1_tile_bits"])  # MSB first
    np.testing.assert_array_equal(np.where(w1[:L] > 0, 1, 0), tile_bits[:L])
    for k in range(4):
        np.testing.assert_allclose(np.abs(w1[k * L : (k + 1) * L]), d["fc1_alphas"][k])
    w2 = d["fc2_weight"].ravel()
    np.testing.assert_allclose(np.abs(w2), d["fc2_alphas"][0])
    np.testing.assert_array_equal(np.where(w2 > 0, 1, 0), np.unpackbits(d["fc2_tile_bits"])[: w2.size])
    zm = zoo.authors_mnist_mlp()
    assert zm.compact_weight_bytes == zoo.AUTHORS_WEIGHT_BYTES == 4 * math.ceil(L / 32) + 16 + 160 + 4


@authors
def test_authors_mlp_onnxruntime_matches_numpy():
    zm = zoo.authors_mnist_mlp()
    x = np.random.default_rng(0).uniform(0, 1, (1, 784)).astype(np.float32)
    zoo.assert_close(zoo.run_onnxruntime(zm.model, {"x": x})[0], zoo.authors_mlp_numpy_logits(x))


@authors
def test_authors_mlp_numpy_accuracy():
    data = zoo.load_mnist_test()
    if data is None:
        pytest.skip("MNIST test set not in tbn_tvm/data/mnist/ yet")
    images, labels = data
    assert images.shape == (10000, 784) and labels.shape == (10000,)
    assert 0.0 <= images.min() and images.max() <= 1.0
    acc = float(np.mean(zoo.authors_mlp_numpy_logits(images).argmax(1) == labels))
    assert acc == pytest.approx(zoo.AUTHORS_ACCURACY, abs=5e-5)
