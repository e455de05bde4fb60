"""Every op the host build accepts builds for Cortex-M too (reported: tirx.fabs unresolved for
Abs/Softplus/Softsign/LpPool; a fused kernel with several outputs crashed the C lowering)."""

from __future__ import annotations

import numpy as np
import pytest
import reports
from onnx import TensorProto as T
from onnx import helper as h

tbn_tvm = pytest.importorskip("tbn_tvm.api")

F = T.FLOAT
X = np.array([[1, -2, 3, -4]], np.float32)


def _unary(op):
    return lambda: reports.model([h.make_node(op, ["x"], ["y"])], [("x", F, [1, 4])], [("y", F, [1, 4])])


CASES = {
    "abs": _unary("Abs"),
    "softplus": _unary("Softplus"),
    "softsign": _unary("Softsign"),
    "lppool": lambda: reports.model(
        [h.make_node("LpPool", ["x"], ["y"], kernel_shape=[2], p=2)],
        [("x", F, [1, 1, 4])],
        [("y", F, [1, 1, 3])],
    ),
    "split_matmul_concat": lambda: reports.model(
        [
            h.make_node("Split", ["x"], ["a", "b"], axis=1, num_outputs=2),
            h.make_node("MatMul", ["b", "W"], ["bw"]),
            h.make_node("Concat", ["a", "bw"], ["y"], axis=1),
        ],
        [("x", F, [1, 4])],
        [("y", F, [1, 4])],
        [("W", np.array([[0.5, -0.5], [0.5, 0.5]], np.float32))],
        opset=18,
    ),
}


@pytest.mark.qemu
@pytest.mark.parametrize("name", sorted(CASES))
def test_builds_and_matches_onnxruntime_on_cortex_m4(name):
    m = CASES[name]()
    x = X.reshape([d.dim_value for d in m.graph.input[0].type.tensor_type.shape.dim])
    expected = reports.ort(m, {"x": x})[0]
    got = tbn_tvm.compile(m, "cortex-m4").run(x)
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-6)


def test_split_matmul_concat_exact_values():
    m = CASES["split_matmul_concat"]()
    np.testing.assert_allclose(reports.ort(m, {"x": X})[0], [[1, -2, -0.5, -3.5]])
