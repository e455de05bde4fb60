"""Issue 22: the Cortex-M arena is planned over tensor lifetimes, and an element-wise epilogue
(a residual add) writes into its input's buffer when that input dies there, never while it is
still needed.  Checked on QEMU against onnxruntime (a wrong overwrite changes the outputs)."""

from __future__ import annotations

import numpy as np
import onnx
import onnx_zoo as zoo
import pytest
import reports
from onnx import TensorProto, helper, numpy_helper

pytestmark = pytest.mark.qemu

C, HW = 8, 10
ACT = 4 * C * HW * HW  # bytes of one activation


def residual_model(needed_later: bool, seed: int = 0) -> onnx.ModelProto:
    """``A = relu(conv_a(x))``, then

    * ``needed_later=False``: ``C = relu(conv_b(A) + A)`` (A is also conv_b's input: not in
      place), ``D = conv_c(C) + A`` (A dies: in place);
    * ``needed_later=True``: ``B = relu(conv_b(A))``, ``C = conv_c(B) + A`` (A is read again
      below: not in place), ``D = conv_d(C) + A`` (A dies: in place);

    ``y = GlobalAveragePool(D)``, flattened."""
    rng = np.random.default_rng(seed)
    inits, nodes = [], []

    def conv(x, name, out):
        w = zoo.tiled_weight((C, C, 3, 3), 4, "per_copy", rng)
        inits.append(numpy_helper.from_array(w, f"{name}.w"))
        inits.append(numpy_helper.from_array(rng.normal(0, 0.1, C).astype(np.float32), f"{name}.b"))
        nodes.append(helper.make_node("Conv", [x, f"{name}.w", f"{name}.b"], [out], pads=[1] * 4, name=name))

    def node(op, ins, out):
        nodes.append(helper.make_node(op, ins, [out], name=f"{op.lower()}_{out}"))

    conv("x", "conv_a", "a0")
    node("Relu", ["a0"], "A")
    if needed_later:
        conv("A", "conv_b", "b0")
        node("Relu", ["b0"], "B")
        conv("B", "conv_c", "c0")
        node("Add", ["c0", "A"], "C")
        conv("C", "conv_d", "d0")
    else:
        conv("A", "conv_b", "b0")
        node("Add", ["b0", "A"], "c0")
        node("Relu", ["c0"], "C")
        conv("C", "conv_c", "d0")
    node("Add", ["d0", "A"], "D")
    nodes.append(helper.make_node("GlobalAveragePool", ["D"], ["g"], name="pool"))
    nodes.append(helper.make_node("Flatten", ["g"], ["y"], name="flatten"))
    graph = helper.make_graph(
        nodes,
        "residual",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, C, HW, HW])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, C])],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model, full_check=True)
    return model


@pytest.fixture(scope="module", params=[False, True], ids=["input_of_both", "needed_later"])
def build(request):
    import tbn_tvm

    model = residual_model(request.param)
    b = tbn_tvm.compile(model, "cortex-m4")
    yield request.param, model, b
    b.close()


def test_residual_add_writes_in_place_only_where_its_input_dies(build):
    needed_later, _, b = build
    steps = b.report()["steps"]
    in_place = [s["layers"] for s in steps if s.get("in_place")]
    last = "conv_d" if needed_later else "conv_c"
    assert in_place == [[last]], [(s["layers"], s.get("in_place")) for s in steps]
    plan = b.report()["arena_plan"]["tensors"]
    shared = [t for t in plan if "shares_buffer_of" in t]
    assert len(shared) == 1 and shared[0]["bytes"] == ACT
    # input_of_both: A, C and D would live at once; D takes A's bytes: two activations
    # needed_later: A, B and C live at once when C is computed: three
    assert b.report()["arena_bytes"] == (3 if needed_later else 2) * ACT


def test_outputs_match_onnxruntime(build):
    _, model, b = build
    x = np.random.default_rng(4).standard_normal((3, 1, C, HW, HW)).astype(np.float32)
    ref = np.stack([reports.ort(model, {"x": xi})[0] for xi in x])
    got = b.run(x)
    np.testing.assert_allclose(got.reshape(ref.shape), ref, rtol=1e-5, atol=1e-5 * np.abs(ref).max())
