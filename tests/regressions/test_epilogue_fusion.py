"""A tiled MatMul + bias + erf-GELU (a ViT MLP's first layer) failed to build on the host:
"Buffer T_add_intermediate is used before its definition" (TVM's reverse_compute_inline
folded the bias add's consumer although the add had a second reader).  Right values:
onnxruntime."""

from __future__ import annotations

import numpy as np
import pytest
import reports
from onnx import TensorProto as T
from onnx import helper as h

tbn_tvm = pytest.importorskip("tbn_tvm.api")


def tiled_matmul_gelu():
    rng = np.random.default_rng(7)
    tile = np.where(rng.random(512) < 0.5, -1.0, 1.0)  # p = 4 copies of a 512-bit tile
    alpha = np.repeat(rng.uniform(0.1, 1.0, 4), 512)
    w = np.ascontiguousarray((np.tile(tile, 4) * alpha).astype(np.float32).reshape(64, 32).T)
    b = rng.normal(0, 0.1, 64).astype(np.float32)
    nodes = [
        h.make_node("MatMul", ["x", "W"], ["mm"], name="mlp.0"),
        h.make_node("Add", ["mm", "B"], ["a"]),
        h.make_node("Div", ["a", "sqrt2"], ["d"]),
        h.make_node("Erf", ["d"], ["e"]),
        h.make_node("Add", ["e", "one"], ["e1"]),
        h.make_node("Mul", ["a", "e1"], ["m"]),
        h.make_node("Mul", ["m", "half"], ["y"]),
    ]
    consts = [("W", w), ("B", b)] + [
        (n, np.array(v, np.float32)) for n, v in (("sqrt2", np.sqrt(2)), ("one", 1.0), ("half", 0.5))
    ]
    m = reports.model(nodes, [("x", T.FLOAT, [1, 17, 32])], [("y", T.FLOAT, [1, 17, 64])], consts)
    x = rng.standard_normal((1, 17, 32)).astype(np.float32)
    return m, x


@pytest.mark.parametrize("target", ["llvm", pytest.param("cortex-m4", marks=pytest.mark.qemu)])
def test_tiled_matmul_bias_gelu(target):
    m, x = tiled_matmul_gelu()
    compiled = tbn_tvm.compile(m, target)
    assert compiled.report()["layers"][0]["format"] == "tiled"
    ref = reports.ort(m, {"x": x})[0]
    np.testing.assert_allclose(compiled.run(x), ref, rtol=1e-5, atol=1e-5 * np.abs(ref).max())
