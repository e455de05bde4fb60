"""Index and rounding arithmetic that no target changes, and kernels without a root block on
Cortex-M (issue 20, Cortex-M conformance).

* Resize (nearest) and Upsample read the neighbour ONNX defines, at exact ties too: TVM maps
  coordinates with a float32 reciprocal (wrong at 2 -> 7, 6 -> 21, 10 -> 35 on every target),
  and a fused multiply-add (gcc's default ``-ffp-contract=fast`` on Cortex-M, LLVM's on a host
  CPU with FMA) moved the tie of ONNX's ``test_resize_upsample_sizes_nearest``.
* ``Floor(x * a - 1)`` where ``x * a`` rounds to 1.0 but is exactly below it: each ONNX operator
  rounds its result, so the answer is 0; a multiply-add fused across Mul and Add gives -1.  The
  Cortex-M library is built with ``-ffp-contract=off``; on a host CPU with FMA the element-wise
  product is fenced (``llvm.arithmetic.fence``).
* ScatterElements and MaxUnpool with constant indices: TVM writes their kernels as one block that
  is not ``root``; the Cortex-M schedules crashed on them (``ScheduleError``).

Expected values come from ``onnx.reference`` and onnxruntime, never from tbn-tvm."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper
from onnx.reference import ReferenceEvaluator

import tbn_tvm


def _fma_cpu() -> str | None:
    """An LLVM CPU with FMA that this machine runs, or None."""
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return None
    return "haswell" if " fma " in flags and " avx2 " in flags else None


def _resize(in_shape, out_shape=None, scales=None, opset=19, **attrs) -> onnx.ModelProto:
    inits, inputs = [], ["X", "", "", ""]
    if out_shape is not None:
        inits.append(numpy_helper.from_array(np.array(out_shape, np.int64), "sizes"))
        inputs[3] = "sizes"
    else:
        inits.append(numpy_helper.from_array(np.array(scales, np.float32), "scales"))
        inputs[2] = "scales"
        out_shape = [int(d) for d in (np.array(scales, np.float32) * np.array(in_shape)).astype(int)]
    node = helper.make_node("Resize", inputs[: 4 if inputs[3] else 3], ["Y"], mode="nearest", **attrs)
    graph = helper.make_graph(
        [node],
        "g",
        [helper.make_tensor_value_info("X", TensorProto.FLOAT, list(in_shape))],
        [helper.make_tensor_value_info("Y", TensorProto.FLOAT, list(out_shape))],
        inits,
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])


RESIZES = {
    # ONNX's node test with its sizes as a constant: the tie at row 3
    "node-test-2to7": (_resize([1, 1, 2, 2], [1, 1, 7, 8]), np.float32([[[[1, 2], [3, 4]]]])),
    "wide-2to7": (_resize([1, 16, 2, 2], [1, 16, 7, 8]), None),  # loops too long to fold away
    "6to21": (_resize([1, 2, 6, 6], [1, 2, 21, 21]), None),
    "10to35-ceil": (_resize([1, 1, 10, 10], [1, 1, 35, 35], nearest_mode="round_prefer_ceil"), None),
    "align-corners": (
        _resize([1, 1, 5, 4], [1, 1, 9, 7], coordinate_transformation_mode="align_corners"),
        None,
    ),
    "asymmetric-floor": (
        _resize(
            [1, 1, 3, 5], [1, 1, 7, 11], coordinate_transformation_mode="asymmetric", nearest_mode="floor"
        ),
        None,
    ),
    "pytorch-ceil": (
        _resize(
            [1, 1, 4, 4],
            [1, 1, 1, 10],
            coordinate_transformation_mode="pytorch_half_pixel",
            nearest_mode="ceil",
        ),
        None,
    ),
    "symmetric-scales": (
        _resize([1, 1, 4, 6], scales=[1, 1, 1.7, 0.6], coordinate_transformation_mode="half_pixel_symmetric"),
        None,
    ),
    "downsample-13": (_resize([1, 1, 8, 8], [1, 1, 3, 5], opset=13), None),
}


def _input(model: onnx.ModelProto, given) -> np.ndarray:
    if given is not None:
        return given
    shape = [d.dim_value for d in model.graph.input[0].type.tensor_type.shape.dim]
    return np.arange(int(np.prod(shape)), dtype=np.float32).reshape(shape)  # every value tells its index


def _want(model: onnx.ModelProto, x: np.ndarray) -> np.ndarray:
    want = ReferenceEvaluator(model).run(None, {"X": x})[0]
    return want


@pytest.mark.parametrize("name", sorted(RESIZES))
def test_resize_nearest_reads_the_onnx_neighbour_on_the_host(name):
    model, given = RESIZES[name]
    x = _input(model, given)
    want = _want(model, x)
    if name == "node-test-2to7":  # the case's own expected rows
        assert want[0, 0, 3].tolist() == [1, 1, 1, 1, 2, 2, 2, 2]
    for mcpu in [None, _fma_cpu()] if _fma_cpu() else [None]:
        got = tbn_tvm.compile(model, "llvm", mcpu=mcpu).run(x)
        np.testing.assert_array_equal(got, want, err_msg=f"llvm mcpu={mcpu}")


def test_resize_nearest_agrees_with_onnxruntime_where_it_agrees_with_the_reference():
    import onnxruntime as ort

    agreed = 0
    for model, given in RESIZES.values():
        x = _input(model, given)
        want = _want(model, x)
        got = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(
            None, {"X": x}
        )[0]
        if np.array_equal(got, want):
            agreed += 1
            np.testing.assert_array_equal(tbn_tvm.compile(model, "llvm").run(x), got)
    assert agreed >= 6


def _upsample(opset: int) -> onnx.ModelProto:
    scales = [1.0, 1.0, 2.0, 3.0]
    inits, inputs, attrs = [], ["X"], {"mode": "nearest"}
    if opset >= 9:
        inits.append(numpy_helper.from_array(np.array(scales, np.float32), "scales"))
        inputs.append("scales")
    else:
        attrs["scales"] = scales
    graph = helper.make_graph(
        [helper.make_node("Upsample", inputs, ["Y"], **attrs)],
        "g",
        [helper.make_tensor_value_info("X", TensorProto.FLOAT, [1, 1, 2, 2])],
        [helper.make_tensor_value_info("Y", TensorProto.FLOAT, [1, 1, 4, 6])],
        inits,
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])


@pytest.mark.parametrize("opset", [7, 9])
def test_upsample_nearest_repeats_each_value(opset, monkeypatch):
    """ONNX's ``test_upsample_nearest``: each value repeated 2 x 3 (TVM read the next column).
    The operator table is switched off: it lists Upsample once a conformance run has seen it
    pass."""
    monkeypatch.setenv("TBN_TVM_ALL_OPS", "1")
    x = np.float32([[[[1, 2], [3, 4]]]])
    want = np.repeat(np.repeat(x, 2, axis=2), 3, axis=3)
    np.testing.assert_array_equal(ReferenceEvaluator(_upsample(9)).run(None, {"X": x})[0], want)
    np.testing.assert_array_equal(tbn_tvm.compile(_upsample(opset), "llvm").run(x), want)


# ------------------------------------------------------------------ Floor(x * a - 1)
X_TIE = np.float32(0.34280804)  # x * A is 0.99999999886 exactly, 1.0 once rounded to float32
A_TIE = np.float32(2.9170845)


def _floor_of_mul_add() -> onnx.ModelProto:
    nodes = [
        helper.make_node("Mul", ["x", "a"], ["p"]),
        helper.make_node("Add", ["p", "b"], ["s"]),
        helper.make_node("Floor", ["s"], ["y"]),
    ]
    graph = helper.make_graph(
        nodes,
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])],
        [
            numpy_helper.from_array(np.full((1, 4), A_TIE, np.float32), "a"),
            numpy_helper.from_array(np.float32([-1.0]), "b"),
        ],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def _floor_reference(x: np.ndarray) -> np.ndarray:
    import onnxruntime as ort

    model = _floor_of_mul_add()
    want = ReferenceEvaluator(model).run(None, {"x": x})[0]
    got = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(
        None, {"x": x}
    )[0]
    np.testing.assert_array_equal(got, want)  # the two judges agree
    assert want[0, 0] == 0.0 and np.float64(X_TIE) * np.float64(A_TIE) < 1.0  # the tie this is about
    return want


def test_floor_of_a_product_rounded_to_one_on_the_host():
    """On a CPU with FMA, TVM's LLVM back end fuses the Mul into the Add unless the product is
    fenced (:func:`tbn_tvm.passes.legalize._multiply`)."""
    x = np.full((1, 4), X_TIE, np.float32)
    for mcpu in [None, _fma_cpu()] if _fma_cpu() else [None]:
        got = tbn_tvm.compile(_floor_of_mul_add(), "llvm", mcpu=mcpu).run(x)
        np.testing.assert_array_equal(got, _floor_reference(x), err_msg=f"llvm mcpu={mcpu}")


# ------------------------------------------------------------------ Cortex-M4 on QEMU
@pytest.mark.qemu
def test_floor_of_a_product_rounded_to_one_on_cortex_m4():
    """Without ``-ffp-contract=off`` gcc fuses the Mul and the Add into one ``vfma``: -1."""
    x = np.full((1, 4), X_TIE, np.float32)
    got = tbn_tvm.compile(_floor_of_mul_add(), "cortex-m4", measure=False).run(x)
    np.testing.assert_array_equal(got, _floor_reference(x))


@pytest.mark.qemu
@pytest.mark.parametrize("name", ["node-test-2to7", "6to21", "align-corners"])
def test_resize_nearest_reads_the_onnx_neighbour_on_cortex_m4(name):
    model, given = RESIZES[name]
    x = _input(model, given)
    got = tbn_tvm.compile(model, "cortex-m4", measure=False).run(x)
    np.testing.assert_array_equal(got, _want(model, x))


@pytest.mark.qemu
def test_upsample_nearest_on_cortex_m4(monkeypatch):
    monkeypatch.setenv("TBN_TVM_ALL_OPS", "1")
    x = np.float32([[[[1, 2], [3, 4]]]])
    got = tbn_tvm.compile(_upsample(9), "cortex-m4", measure=False).run(x)
    np.testing.assert_array_equal(got, np.repeat(np.repeat(x, 2, axis=2), 3, axis=3))


def _scatter_elements() -> tuple[onnx.ModelProto, np.ndarray]:
    graph = helper.make_graph(
        [helper.make_node("ScatterElements", ["data", "indices", "updates"], ["y"], axis=1)],
        "g",
        [helper.make_tensor_value_info("data", TensorProto.FLOAT, [2, 5])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 5])],
        [
            numpy_helper.from_array(np.array([[1, 3], [0, -1]], np.int64), "indices"),
            numpy_helper.from_array(np.float32([[1.1, 2.1], [3.1, 4.1]]), "updates"),
        ],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)]), np.arange(
        10, dtype=np.float32
    ).reshape(2, 5)


def _max_unpool() -> tuple[onnx.ModelProto, np.ndarray]:
    graph = helper.make_graph(
        [helper.make_node("MaxUnpool", ["x", "i"], ["y"], kernel_shape=[2, 2], strides=[2, 2])],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 1, 2, 2])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 1, 4, 4])],
        [numpy_helper.from_array(np.array([[[[5, 7], [13, 15]]]], np.int64), "i")],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 11)]), np.float32(
        [[[[1, 2], [3, 4]]]]
    )


@pytest.mark.qemu
@pytest.mark.parametrize("make", [_scatter_elements, _max_unpool], ids=["ScatterElements", "MaxUnpool"])
def test_kernels_without_a_root_block_build_for_cortex_m4(make):
    import onnxruntime as ort

    model, x = make()
    name = model.graph.input[0].name
    want = ReferenceEvaluator(model).run(None, {name: x})[0]
    ort_out = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(
        None, {name: x}
    )[0]
    np.testing.assert_array_equal(ort_out, want)
    got = tbn_tvm.compile(model, "cortex-m4", measure=False).run(x)
    np.testing.assert_array_equal(got, want)
