"""Issue 23: a Gemm with ``transA=1`` or a weight as operand A (``MatMul(W, x)``, ``Gemm(W, x)``)
is compressed (it was built dense), and a tiled weight whose last copy is cut short, with its own
α, is found and compiled.  ``W · x`` is computed as ``(xᵀ · Wᵀ)ᵀ`` with the compact kernel of
``Wᵀ`` (:meth:`tbn_tvm.passes.compress_weights._Compressor._weight_first`).  Expected values are
onnxruntime's."""

from __future__ import annotations

import numpy as np
import pytest
import reports
from reports import TensorProto, helper

tbn_tvm = pytest.importorskip("tbn_tvm")
pytest.importorskip("onnxruntime")

F = TensorProto.FLOAT


def _tiled(shape, L: int = 96, seed: int = 0) -> np.ndarray:
    """A [shape] weight: 0.5 times an L-bit tile repeated (``reports.tiled_gemm``'s weight)."""
    m, _ = reports.tiled_gemm(shape, L, seed)
    return reports.initializer(m, "W")


def _cases():
    """(id, model, feeds): each form of a weight as operand A, and transA with the weight as B."""
    rng = np.random.default_rng(3)
    w = _tiled((24, 40))  # [M, K]
    bias = rng.standard_normal((24, 1)).astype(np.float32)
    out = []

    def add(name, nodes, inputs, outputs, inits):
        m = reports.model(nodes, inputs, outputs, inits)
        feeds = {n: rng.standard_normal(s).astype(np.float32) for n, _, s in inputs}
        out.append(pytest.param(m, feeds, id=name))

    add(
        "matmul_W_x",
        [helper.make_node("MatMul", ["W", "x"], ["y"])],
        [("x", F, [40, 5])],
        [("y", F, [24, 5])],
        [("W", w)],
    )
    add(
        "matmul_W_x_batched",
        [helper.make_node("MatMul", ["W", "x"], ["y"])],
        [("x", F, [2, 40, 3])],
        [("y", F, [2, 24, 3])],
        [("W", w)],
    )
    add(
        "matmul_W_vector",
        [helper.make_node("MatMul", ["W", "x"], ["y"])],
        [("x", F, [40])],
        [("y", F, [24])],
        [("W", w)],
    )
    add(
        "gemm_W_x_column_bias",
        [helper.make_node("Gemm", ["W", "x", "C"], ["y"])],
        [("x", F, [40, 1])],
        [("y", F, [24, 1])],
        [("W", w), ("C", bias)],
    )
    add(
        "gemm_W_x_transA_transB",
        [helper.make_node("Gemm", ["W", "x"], ["y"], transA=1, transB=1)],
        [("x", F, [3, 40])],
        [("y", F, [24, 3])],
        [("W", np.ascontiguousarray(w.T))],
    )
    add(
        "gemm_x_W_transA",
        [helper.make_node("Gemm", ["x", "W"], ["y"], transA=1, transB=1)],
        [("x", F, [40, 2])],
        [("y", F, [2, 24])],
        [("W", w)],
    )
    return out


def _check(build, m, feeds):
    ref = reports.ort(m, feeds)[0]
    got = np.asarray(build.run(feeds)).reshape(ref.shape)
    np.testing.assert_allclose(got, ref, rtol=1e-5, atol=1e-5 * np.abs(ref).max())


@pytest.mark.parametrize("m, feeds", _cases())
def test_weight_as_operand_a_is_compressed_on_the_host(m, feeds):
    found = tbn_tvm.inspect(m).to_dict()["layers"]
    assert [la["label"] for la in found] == ["tiled p=10 L=96"], found
    build = tbn_tvm.compile(m, "llvm")
    layers = build.report()["layers"]
    assert [(la["name"], la["format"], la["label"]) for la in layers] == [("W", "tiled", "tiled p=10 L=96")]
    _check(build, m, feeds)


@pytest.mark.qemu
def test_weight_as_operand_a_on_cortex_m4():
    """``W2 · relu(W1 · x)`` with ``x`` [256, 2] (MatMul then Gemm, the transposes real) on QEMU
    M4: both layers compact, the output onnxruntime's."""
    rng = np.random.default_rng(4)
    w1, w2 = _tiled((64, 256), L=512, seed=1), _tiled((48, 64), L=256, seed=2)
    m = reports.model(
        [
            helper.make_node("MatMul", ["W1", "x"], ["h"]),
            helper.make_node("Relu", ["h"], ["r"]),
            helper.make_node("Gemm", ["W2", "r"], ["y"]),
        ],
        [("x", F, [256, 2])],
        [("y", F, [48, 2])],
        [("W1", w1), ("W2", w2)],
    )
    build = tbn_tvm.compile(m, "cortex-m4")
    layers = {la["name"]: la["format"] for la in build.report()["layers"]}
    assert layers == {"W1": "tiled", "W2": "tiled"}, build.report()["layers"]
    _check(build, m, {"x": rng.standard_normal((256, 2)).astype(np.float32)})


def _partial_last_copy() -> tuple:
    """A Gemm [65, 100] weight: a 400-bit tile (four rows) repeated 16 1/4 times (6500 =
    16·400 + 100), each copy with its own α, the cut-short last copy included (α 4.25, over its
    one row).  Whole rows repeat: the Cortex-M build keeps the compact kernel (a tile cutting
    rows, 512 bits over rows of 100, is estimated slower than dense there and built dense)."""
    rng = np.random.default_rng(5)
    n, L = 6500, 400
    tile = np.where(rng.random(L) < 0.5, -1.0, 1.0)
    alphas = 0.25 * np.arange(1, 18)
    w = (np.tile(tile, -(-n // L))[:n] * np.repeat(alphas, L)[:n]).astype(np.float32).reshape(65, 100)
    m = reports.model(
        [helper.make_node("Gemm", ["x", "W"], ["y"], transB=1)],
        [("x", F, [1, 100])],
        [("y", F, [1, 65])],
        [("W", w)],
    )
    return m, rng.standard_normal((1, 100)).astype(np.float32)


@pytest.mark.parametrize("target", ["llvm", pytest.param("cortex-m4", marks=pytest.mark.qemu)])
def test_tiled_weight_whose_last_copy_is_cut_short(target):
    m, x = _partial_last_copy()
    (found,) = tbn_tvm.inspect(m).to_dict()["layers"]
    assert (found["label"], found["alpha"], found["scales"], found["tile_length"]) == (
        "tiled p=16.25 L=400",
        "per_copy",
        17,
        400,
    ), found
    assert "exact" not in found  # bit for bit, not within rounding
    build = tbn_tvm.compile(m, target)
    (layer,) = build.report()["layers"]
    assert layer["label"] == "tiled p=16.25 L=400", layer
    _check(build, m, {"x": x})
