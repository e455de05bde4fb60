"""CompressWeights on small IR: the compact constants replace the dense one; dense stays dense."""

from __future__ import annotations

import numpy as np
import onnx_zoo as zoo
import pytest

tvm = pytest.importorskip("tvm")

from tvm import relax  # noqa: E402

from tbn_tvm.frontend.onnx import load_onnx, to_relax  # noqa: E402
from tbn_tvm.passes.compress_weights import CompressWeights  # noqa: E402
from tbn_tvm.passes.pipeline import constant_bytes  # noqa: E402


def _consts(mod):
    found = []

    @relax.expr_functor.visitor
    class V(relax.PyExprVisitor):
        def visit_generic_const_(self, c):
            found.append(c.value.numpy())

    V().visit_expr(mod["main"])
    return found


def _calls(mod):
    ops = []

    @relax.expr_functor.visitor
    class V(relax.PyExprVisitor):
        def visit_call_(self, call):
            if isinstance(call.op, tvm.ir.Op):
                ops.append(call.op.name)
            for a in call.args:
                self.visit_expr(a)

    V().visit_expr(mod["main"])
    return ops


def _gemm(weight: np.ndarray):
    from onnx import TensorProto, helper, numpy_helper

    out, inp = weight.shape
    g = helper.make_graph(
        [helper.make_node("Gemm", ["x", "W"], ["y"], transB=1)],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, inp])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, out])],
        [numpy_helper.from_array(weight, "W")],
    )
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    m.ir_version = 9
    return m


@pytest.mark.parametrize("reuse_rows", [True, False])
def test_tiled_constant_replaced_by_compact_buffers(reuse_rows):
    w = zoo.tiled_weight((32, 64), 4, "per_copy", np.random.default_rng(0))
    before = to_relax(load_onnx(_gemm(w)))
    assert "relax.matmul" in _calls(before)
    assert any(c.shape == (64, 32) for c in _consts(before))  # the folded dense weight
    p = CompressWeights(reuse_rows=reuse_rows)
    after = p(before)
    consts = _consts(after)
    assert "relax.matmul" not in _calls(after) and "relax.call_tir" in _calls(after)
    assert not any(c.size == w.size for c in consts), "the dense weight must be gone"
    words = [c for c in consts if c.dtype == np.uint32]
    scales = [c for c in consts if c.dtype == np.float32]
    assert [c.shape for c in words] == [(16,)]  # 512 tile bits
    assert [c.shape for c in scales] == [(4,)]  # one alpha per copy
    assert constant_bytes(after) == 16 * 4 + 4 * 4
    layer = p.layers[0]
    assert layer.weight.format.p == 4 and (layer.rows is not None) == reuse_rows
    if reuse_rows:
        assert layer.rows.distinct == 8  # out / p


def test_dense_layer_untouched():
    w = np.random.default_rng(1).standard_normal((8, 16)).astype(np.float32)
    before = to_relax(load_onnx(_gemm(w)))
    after = CompressWeights()(before)
    tvm.ir.assert_structural_equal(before["main"], after["main"])
