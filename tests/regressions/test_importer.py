"""Faults of TVM's ONNX importer as users met them: each smallest case now gives the right value
(onnxruntime / the ONNX reference implementation) or one clean error naming the node.

Kinds: wrong values or outputs where the importer is wrong (kind 2), importer errors surfacing
as internal errors (kind 3), crashes on shapes (kind 5).
"""

from __future__ import annotations

import numpy as np
import pytest
import reports
from onnx import TensorProto as T
from onnx import helper as h
from onnx.reference import ReferenceEvaluator

tbn_tvm = pytest.importorskip("tbn_tvm.api")
from tbn_tvm.errors import TBNError  # noqa: E402

F = T.FLOAT
INF = np.inf


def _ln3():
    m = reports.model(
        [h.make_node("LayerNormalization", ["x", "s", "b"], ["y", "mean", "inv"])],
        [("x", F, [3, 4]), ("s", F, [4]), ("b", F, [4])],
        [("y", F, [3, 4]), ("mean", F, [3, 1]), ("inv", F, [3, 1])],
    )
    return m, {
        "x": np.arange(12, dtype=np.float32).reshape(3, 4),
        "s": np.ones(4, np.float32),
        "b": np.zeros(4, np.float32),
    }


def _isinf(neg, pos):
    def make():
        m = reports.model(
            [h.make_node("IsInf", ["x"], ["y"], detect_negative=neg, detect_positive=pos)],
            [("x", F, [4])],
            [("y", T.BOOL, [4])],
        )
        return m, {"x": np.array([-INF, INF, 0, 1], np.float32)}

    return make


def _scalar_mul():
    m = reports.model([h.make_node("Mul", ["x", "s"], ["y"])], [("x", F, [3]), ("s", F, [])], [("y", F, [3])])
    return m, {"x": np.array([1, 2, 3], np.float32), "s": np.array(2, np.float32)}


def _shape_output():
    m = reports.model([h.make_node("Shape", ["x"], ["y"])], [("x", F, [2, 3])], [("y", T.INT64, [2])])
    return m, {"x": np.zeros((2, 3), np.float32)}


def _relu_nan():
    m = reports.model([h.make_node("Relu", ["x"], ["y"])], [("x", F, [3])], [("y", F, [3])])
    return m, {"x": np.array([np.nan, -1, 2], np.float32)}


def _relu_zero_size():
    m = reports.model([h.make_node("Relu", ["x"], ["y"])], [("x", F, [2, 0])], [("y", F, [2, 0])])
    return m, {"x": np.zeros((2, 0), np.float32)}


RIGHT = {
    "layernorm_mean_invstddev": _ln3,
    "isinf_detect_negative_0": _isinf(0, 1),
    "isinf_detect_positive_0": _isinf(1, 0),
    "isinf_detect_none": _isinf(0, 0),
    "scalar_graph_input": _scalar_mul,
    "shape_node_output": _shape_output,
    "relu_propagates_nan": _relu_nan,
    "zero_size_dimension": _relu_zero_size,
}


def _run(compiled, feeds):
    out = compiled.run(feeds if len(feeds) > 1 else next(iter(feeds.values())))
    return list(out.values()) if isinstance(out, dict) else [out]


@pytest.mark.parametrize("name", sorted(RIGHT))
def test_right_values(name):
    m, feeds = RIGHT[name]()
    expected = ReferenceEvaluator(m).run(None, feeds)
    ort = reports.ort(m, feeds)
    got = _run(tbn_tvm.compile(m, "llvm"), feeds)
    assert len(got) == len(expected)
    for g, e, o in zip(got, expected, ort):
        assert g.shape == e.shape and g.dtype == e.dtype, (g.shape, e.shape, g.dtype, e.dtype)
        np.testing.assert_allclose(g, e, rtol=1e-5, atol=1e-6, equal_nan=True)
        np.testing.assert_allclose(g, o, rtol=1e-5, atol=1e-6, equal_nan=True)


def _reduce_mean_axes_input():
    return reports.model(
        [h.make_node("ReduceMean", ["x", "axes"], ["y"])],
        [("x", F, [2, 3]), ("axes", T.INT64, [1])],
        [("y", F, [2, 1])],
        opset=18,
    )


def _slice_starts_inputs():
    return reports.model(
        [h.make_node("Slice", ["x", "st", "en"], ["y"])],
        [("x", F, [5]), ("st", T.INT64, [1]), ("en", T.INT64, [1])],
        [("y", F, [None])],
    )


def _gemm_k_mismatch():
    w = np.ones((8, 15), np.float32)
    g = h.make_graph(
        [h.make_node("Gemm", ["x", "W"], ["y"], transB=1)],
        "g",
        [h.make_tensor_value_info("x", F, [1, 16])],
        [h.make_tensor_value_info("y", F, [1, 8])],
        [reports.numpy_helper.from_array(w, "W")],
    )
    m = h.make_model(g, opset_imports=[h.make_opsetid("", 17)])
    m.ir_version = 8
    return m


CLEAN = {
    # (model factory, compile kwargs, words the one-line error must contain)
    "reduce_mean_axes_as_graph_input": (_reduce_mean_axes_input, {}, ["ReduceMean", "node 'y'"]),
    "slice_with_input_starts": (_slice_starts_inputs, {}, ["output 'y'", "Slice"]),
    "gemm_weight_disagrees_with_input": (_gemm_k_mismatch, {}, ["shape inference"]),
    "input_shape_wrong_rank": (
        lambda: reports.gemm_5bit_tile()[0],
        {"input_shapes": {"x": [4]}},
        ["rank 2", "--input-shape"],
    ),
    "input_shape_disagrees_with_weights": (
        lambda: reports.tiled_gemm((8, 16), 4)[0],
        {"input_shapes": {"x": [1, 15]}},
        ["15"],
    ),
}


@pytest.mark.parametrize("name", sorted(CLEAN))
def test_clean_errors(name, capfd):
    factory, kwargs, words = CLEAN[name]
    with pytest.raises(TBNError) as err:
        tbn_tvm.compile(factory(), "llvm", **kwargs)
    line = err.value.render()
    assert "\n" not in line and line.startswith("error: ")
    for word in words:
        assert word in line, line
    out, errtxt = capfd.readouterr()
    assert out == "" and errtxt == "", "TVM's own output must not reach the user"


# ---------------------------------------------------------------------------------------------
# NaN and infinities through Relu / Max / Min / Clip, as onnxruntime gives them
# ---------------------------------------------------------------------------------------------
X_SPECIAL = np.array([np.nan, -1, 2, -INF, INF, -0.0, 7], np.float32)


def _unary(op, **attrs):
    return reports.model([h.make_node(op, ["x"], ["y"], **attrs)], [("x", F, [7])], [("y", F, [7])])


NAN_CASES = {
    "relu": lambda: _unary("Relu"),
    "clip_0_6": lambda: reports.model(
        [h.make_node("Clip", ["x", "lo", "hi"], ["y"])],
        [("x", F, [7])],
        [("y", F, [7])],
        [("lo", np.array(0, np.float32)), ("hi", np.array(6, np.float32))],
    ),
    "max_with_constant": lambda: reports.model(
        [h.make_node("Max", ["x", "c"], ["y"])],
        [("x", F, [7])],
        [("y", F, [7])],
        [("c", np.ones(1, np.float32))],
    ),
    "min_with_constant": lambda: reports.model(
        [h.make_node("Min", ["x", "c"], ["y"])],
        [("x", F, [7])],
        [("y", F, [7])],
        [("c", np.ones(1, np.float32))],
    ),
}


@pytest.mark.parametrize("name", sorted(NAN_CASES))
def test_nan_and_inf_like_onnxruntime_host(name):
    m = NAN_CASES[name]()
    expected = reports.ort(m, {"x": X_SPECIAL})[0]
    np.testing.assert_array_equal(tbn_tvm.compile(m, "llvm").run(X_SPECIAL), expected)


@pytest.mark.qemu
@pytest.mark.parametrize("name", ["relu", "clip_0_6"])
def test_nan_and_inf_like_onnxruntime_cortex_m4(name):
    m = NAN_CASES[name]()
    expected = reports.ort(m, {"x": X_SPECIAL})[0]
    np.testing.assert_array_equal(tbn_tvm.compile(m, "cortex-m4").run(X_SPECIAL), expected)
