"""Weights that are exactly compressible must be compressed, and inspect's totals must equal the
built constants (reported: binary layers with shared per-row scales, float16 weights, 1-D
MatMul weights and shared weights were missed or counted twice)."""

from __future__ import annotations

import numpy as np
import pytest
import reports
from onnx import TensorProto as T
from onnx import helper as h

tbn_tvm = pytest.importorskip("tbn_tvm")

F = T.FLOAT
RNG = np.random.default_rng(0)
TILE = np.where(RNG.random(32) < 0.5, -1.0, 1.0)


def binary_shared_row_scales():
    scales = np.repeat(np.array([0.5, 0.5, 0.25, 0.25, 0.125, 0.125, 1, 1], np.float32), 32)
    w = (
        (np.where(np.random.default_rng(1).random(256) < 0.5, -1, 1) * scales)
        .astype(np.float32)
        .reshape(8, 32)
    )
    m = reports.model(
        [h.make_node("Gemm", ["x", "W"], ["y"], transB=1)],
        [("x", F, [1, 32])],
        [("y", F, [1, 8])],
        [("W", w)],
    )
    return m, (1, 32)


def float16_tiled():
    w = (0.5 * np.tile(TILE, 4)).astype(np.float16).reshape(8, 16)
    m = reports.model(
        [
            h.make_node("Cast", ["x"], ["xh"], to=T.FLOAT16),
            h.make_node("Gemm", ["xh", "W"], ["yh"], transB=1),
            h.make_node("Cast", ["yh"], ["y"], to=F),
        ],
        [("x", F, [1, 16])],
        [("y", F, [1, 8])],
        [("W", w)],
    )
    return m, (1, 16)


def matmul_1d_weight():
    w = (0.5 * np.tile(TILE[:4], 4)).astype(np.float32)
    m = reports.model(
        [h.make_node("MatMul", ["x", "W"], ["y"])], [("x", F, [2, 16])], [("y", F, [2])], [("W", w)]
    )
    return m, (2, 16)


def shared_weight():
    w = (0.25 * np.tile(TILE, 2)).astype(np.float32).reshape(8, 8)
    m = reports.model(
        [
            h.make_node("MatMul", ["x", "W"], ["a"], name="first"),
            h.make_node("Relu", ["a"], ["r"]),
            h.make_node("MatMul", ["r", "W"], ["y"], name="second"),
        ],
        [("x", F, [1, 8])],
        [("y", F, [1, 8])],
        [("W", w)],
    )
    return m, (1, 8)


CASES = {
    "binary_shared_row_scales": (binary_shared_row_scales, "binary", 8 * 4 + 4 * 4),  # a scale per row pair
    "float16_tiled": (float16_tiled, "tiled", 4 + 2),
    "matmul_1d_weight": (matmul_1d_weight, "tiled", 4 + 4),
    "shared_weight": (shared_weight, "tiled", 4 + 4),
}


@pytest.mark.parametrize("name", sorted(CASES))
def test_compressed_and_counted_once(name):
    factory, fmt, weight_bytes = CASES[name]
    m, shape = factory()
    rep = tbn_tvm.inspect(m).to_dict()
    assert {layer["format"] for layer in rep["layers"]} == {fmt}
    assert rep["total"]["weight_bytes"] == weight_bytes
    x = np.random.default_rng(2).standard_normal(shape).astype(np.float32)
    compiled = tbn_tvm.compile(m, "llvm")
    assert compiled.report()["total"]["built_constant_bytes"] == rep["total"]["constant_bytes"]
    ref = reports.ort(m, {"x": x})[0]
    tol = 2e-3 if name == "float16_tiled" else 1e-5  # onnxruntime sums float16 in float16
    np.testing.assert_allclose(compiled.run(x), ref, rtol=tol, atol=tol * np.abs(ref).max())


def test_shared_weight_layers_named_by_node():
    m, _ = shared_weight()
    layers = tbn_tvm.inspect(m).to_dict()["layers"]
    assert [(layer["name"], layer["weight"]) for layer in layers] == [("first", "W"), ("second", "W")]
    assert layers[0]["shared_with"] == ["second"]


def test_float16_exact_rounding():
    """float16 layers accumulate in float32 and round once: the exactly rounded product."""
    m, shape = float16_tiled()
    x = np.random.default_rng(3).standard_normal(shape).astype(np.float32)
    w = np.asarray(reports.numpy_helper.to_array(m.graph.initializer[0]), np.float64)
    exact = (x.astype(np.float16).astype(np.float64) @ w.T).astype(np.float16).astype(np.float32)
    np.testing.assert_array_equal(tbn_tvm.compile(m, "llvm").run(x), exact)


@pytest.mark.qemu
@pytest.mark.parametrize("name", ["float16_tiled", "shared_weight"])
def test_cortex_m4(name):
    factory, _, weight_bytes = CASES[name]
    m, shape = factory()
    x = np.random.default_rng(4).standard_normal(shape).astype(np.float32)
    compiled = tbn_tvm.compile(m, "cortex-m4")
    report = compiled.report()
    if reports.built_dense_layers(report):  # too small for its compact kernel to beat dense (issue 22)
        (w,) = (i for i in m.graph.initializer if i.name == "W")
        weight_bytes = len(w.raw_data) or np.prod(w.dims) * 4
    assert report["library_weight_bytes"] == weight_bytes  # a shared weight stored once
    ref = reports.ort(m, {"x": x})[0]
    tol = 2e-3 if name == "float16_tiled" else 1e-5
    np.testing.assert_allclose(compiled.run(x), ref, rtol=tol, atol=tol * np.abs(ref).max())
