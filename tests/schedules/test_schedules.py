"""The hand schedules (tbn_tvm.schedules): a scheduled kernel computes what the unscheduled one
does (numpy on the decoded weight is the reference), and has the structure it promises."""

from __future__ import annotations

import numpy as np
import onnx_zoo as zoo
import pytest

tvm = pytest.importorskip("tvm")

from tbn_tvm.formats.tiled import detect  # noqa: E402
from tbn_tvm.kernels import Layer, build  # noqa: E402


def _dense_kernel(rows=48, K=100, p=4, simd=True):
    w = zoo.tiled_weight((rows, K), p, "per_copy", np.random.default_rng(0))
    fmt = detect(w)
    layer = Layer("fc", "matmul", (2, K), (2, rows), order="transposed", simd=simd)
    return w, fmt, build(fmt, layer)


def _conv_kernel(simd=True):
    w = zoo.tiled_weight((16, 4, 3, 3), 4, "per_copy", np.random.default_rng(1))
    fmt = detect(w)
    layer = Layer(
        "c",
        "conv2d",
        (1, 4, 10, 10),
        (1, 16, 10, 10),
        strides=(1, 1),
        padding=(1, 1, 1, 1),
        dilation=(1, 1),
        simd=simd,
    )
    return w, fmt, build(fmt, layer)


def _run(func, target, x, fmt, out_shape):
    lib = tvm.compile(tvm.IRModule({"main": func.with_attr("global_symbol", "main")}), target=target)
    y = tvm.runtime.tensor(np.zeros(out_shape, np.float32))
    lib["main"](tvm.runtime.tensor(x), *[tvm.runtime.tensor(b.data) for b in fmt.buffers()], y)
    return y.numpy()


@pytest.mark.parametrize("rows, K, parallel", [(48, 100, False), (2048, 2048, True)])
def test_cpu_rows_schedule_vectorises_and_matches(rows, K, parallel):
    """The bit-serial GEMV: bits in vectors; over the cores only with enough work to pay for
    the thread pool (tbn_tvm.schedules.cpu_decoded.PARALLEL_MIN_MACS)."""
    from tbn_tvm.schedules.cpu import schedule_rows

    w, fmt, kernel = _dense_kernel(rows, K)
    assert kernel.kind == "rows_dense"
    scheduled = schedule_rows(kernel.func, lanes=8, cores=2)
    text = scheduled.script()
    assert ("T.parallel" in text) == parallel
    if K % 32 == 0:
        assert "T.vectorized" in text
    x = np.random.default_rng(2).standard_normal((2, K)).astype(np.float32)
    ref = x.astype(np.float64) @ w.T.astype(np.float64)
    got = _run(scheduled, tvm.target.Target({"kind": "llvm"}), x, fmt, (2, rows))
    np.testing.assert_allclose(got, ref, rtol=1e-5, atol=1e-5 * np.abs(ref).max())


def test_cpu_conv_schedule_matches():
    from tbn_tvm.schedules.cpu import schedule_rows

    w, fmt, kernel = _conv_kernel()
    scheduled = schedule_rows(kernel.func, lanes=8, cores=2)
    assert "T.parallel" not in scheduled.script()  # 14,400 bit sums: one core (PARALLEL_MIN_MACS)
    x = np.random.default_rng(3).standard_normal((1, 4, 10, 10)).astype(np.float32)
    ref = zoo.np_conv(x.astype(np.float64), w.astype(np.float64), pads=[1, 1, 1, 1])
    got = _run(scheduled, tvm.target.Target({"kind": "llvm"}), x, fmt, (1, 16, 10, 10))
    np.testing.assert_allclose(got, ref, rtol=1e-5, atol=1e-5 * np.abs(ref).max())


@pytest.mark.parametrize("make", [_dense_kernel, _conv_kernel])
def test_mcu_schedule_matches_and_needs_no_scratch(make):
    from tbn_tvm.schedules.cortex_m import schedule_prim_mcu

    w, fmt, kernel = make(simd=False)
    scheduled = schedule_prim_mcu(kernel.func)
    text = scheduled.script()
    # padding and decoding are inlined: no intermediate buffer larger than a row's words
    allocs = [line for line in text.splitlines() if "alloc_buffer" in line]
    assert all("pad" not in line for line in allocs)
    shape = (2, 100) if make is _dense_kernel else (1, 4, 10, 10)
    x = np.random.default_rng(4).standard_normal(shape).astype(np.float32)
    if make is _dense_kernel:
        ref, out = x.astype(np.float64) @ w.T.astype(np.float64), (2, 48)
    else:
        ref, out = zoo.np_conv(x.astype(np.float64), w.astype(np.float64), pads=[1, 1, 1, 1]), (1, 16, 10, 10)
    got = _run(scheduled, tvm.target.Target({"kind": "llvm"}), x, fmt, out)
    np.testing.assert_allclose(got, ref, rtol=1e-5, atol=1e-5 * np.abs(ref).max())


def test_cpu_pass_schedules_every_kernel():
    """The project's kernels get their hand schedules (``rows_*``), TVM's own kernels (the
    bias adds, ReLU) the default schedules of :mod:`tbn_tvm.schedules.cpu_generic`: no kernel
    keeps TVM's unscheduled loop nest."""
    from tvm import relax

    from tbn_tvm.frontend.onnx import load_onnx, to_relax
    from tbn_tvm.passes.pipeline import prepare
    from tbn_tvm.schedules.cpu import schedule_cpu

    zm = zoo.ZOO["mlp"]()
    mod = prepare(to_relax(load_onnx(zm.model))).mod
    target = tvm.target.Target({"kind": "llvm"})
    with target:
        out = schedule_cpu(relax.transform.LegalizeOps()(mod), target)
    scheduled = {
        gv.name_hint
        for gv, f in out.functions_items()
        if isinstance(f, tvm.tirx.PrimFunc) and f.attrs and f.attrs.get("tirx.is_scheduled")
    }
    kinds = {
        gv.name_hint: f.attrs.get("tbn.kernel")
        for gv, f in out.functions_items()
        if isinstance(f, tvm.tirx.PrimFunc) and f.attrs
    }
    prims = {gv.name_hint for gv, f in out.functions_items() if isinstance(f, tvm.tirx.PrimFunc)}
    assert any(str(kinds.get(name) or "").startswith("rows_") for name in scheduled)
    assert scheduled == prims, f"left unscheduled: {sorted(prims - scheduled)}"


def test_tile_on_this_cpu_is_right():
    """ONNX Tile (``x[i % 2, j % 3, k % 4, l % 5]``) on the default CPU.  Left to LLVM's loop
    vectorizer, TVM 0.27's LLVM miscompiled this loop nest on AVX-512 CPUs (NaN and 1e28-1e33
    where x86-64-v3 was exact); the host schedules vectorise element-wise kernels themselves."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    import tbn_tvm

    x = np.random.default_rng(0).standard_normal((2, 3, 4, 5)).astype(np.float32)
    reps = np.array([7, 6, 4, 2], np.int64)
    g = helper.make_graph(
        [helper.make_node("Tile", ["x", "r"], ["y"])],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 3, 4, 5])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [14, 18, 16, 10])],
        [numpy_helper.from_array(reps, "r")],
    )
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 13)])
    onnx.checker.check_model(m)
    cm = tbn_tvm.compile(m, "llvm")
    np.testing.assert_array_equal(cm.run(x), np.tile(x, reps))
