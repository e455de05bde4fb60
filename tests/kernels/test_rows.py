"""The row-reuse algebra (kernels/rows.py) checked against numpy on the decoded weights."""

from __future__ import annotations

import math

import numpy as np
import onnx_zoo as zoo
import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from tbn_tvm.formats.tiled import detect
from tbn_tvm.kernels.rows import row_plan


@settings(max_examples=80, deadline=None)
@given(rows=st.integers(1, 24), K=st.integers(1, 40), L=st.integers(1, 200), seed=st.integers(0, 10_000))
def test_distinct_rows_and_row_map(rows, K, L, seed):
    n = rows * K
    if L > n // 2:
        return
    rng = np.random.default_rng(seed)
    tile = np.where(rng.random(L) < 0.5, -1.0, 1.0).astype(np.float32)
    w = (np.tile(tile, -(-n // L))[:n] * np.float32(0.5)).reshape(rows, K)
    fmt = detect(w)
    if fmt is None:  # only when the compact form is not smaller than float32
        assert 32 * (-(-L // 32)) + 32 >= 32 * n
        return
    plan = row_plan(fmt, rows)
    signs = np.sign(w)
    # the algebra: row r starts at bit r*K mod L; offsets are multiples of g = gcd(K, L)
    g = math.gcd(K, fmt.tile_length)
    assert plan.g == g
    d_of = [(r * K % fmt.tile_length) // g for r in range(rows)]
    for r in range(rows):
        d = d_of[r]
        start = d * g
        bits = fmt.tile[(start + np.arange(K)) % fmt.tile_length]
        assert np.array_equal(np.where(bits == 1, 1.0, -1.0), signs[r])
    # rows with the same d are identical; the plan computes min(rows, L/g) of them
    assert len(set(d_of)) <= plan.distinct <= fmt.tile_length // g
    assert len({tuple(s) for s in signs}) <= plan.distinct


def test_plan_rejects_scales_varying_inside_rows():
    w = zoo.tiled_weight((8, 6), 2, "per_copy", np.random.default_rng(0))  # copies of 24 = 4 rows each
    assert row_plan(detect(w), 8) is not None
    # a tile of 9 with an alpha per copy: scales change inside rows of 6 -> no factorisation
    rng = np.random.default_rng(1)
    tile = np.where(rng.random(9) < 0.5, -1.0, 1.0)
    w = (np.tile(tile, 6)[:48] * np.repeat(rng.uniform(0.2, 1, 6), 9)[:48]).astype(np.float32).reshape(8, 6)
    fmt = detect(w)
    assert fmt is not None and row_plan(fmt, 8) is None


@pytest.mark.parametrize("accumulate", ["signed", "shared_sum"])
def test_accumulation_forms_match_numpy(accumulate):
    tvm = pytest.importorskip("tvm")
    from tvm import te

    from tbn_tvm.kernels import Layer
    from tbn_tvm.kernels.rows import dense_rows_te

    rng = np.random.default_rng(2)
    w = zoo.tiled_weight((24, 70), 4, "per_copy", rng)  # K = 70: a partial last word
    fmt = detect(w)
    plan = row_plan(fmt, 24)
    assert plan.distinct == 6
    layer = Layer("fc", "matmul", (3, 70), (3, 24), order="transposed")
    f = te.create_prim_func(dense_rows_te(layer, fmt, plan, accumulate))
    lib = tvm.compile(tvm.IRModule({"main": f}), target="llvm")
    x = rng.standard_normal((3, 70)).astype(np.float32)
    words, scales = fmt.pack()
    y = tvm.runtime.tensor(np.zeros((3, 24), np.float32))
    lib["main"](tvm.runtime.tensor(x), tvm.runtime.tensor(words), tvm.runtime.tensor(scales), y)
    ref = x.astype(np.float64) @ w.T.astype(np.float64)
    np.testing.assert_allclose(y.numpy(), ref, rtol=1e-5, atol=1e-5 * np.abs(ref).max())


# ---------------------------------------------------------------------------------------------
# The plan's indexing, compiled, against a numpy decode (issue: L not dividing n gave garbage)
# ---------------------------------------------------------------------------------------------
def _random_tiled(rng, shape, L, layout):
    """A weight ``w[i] = s[i // S] * sign(tile[i % L])`` built directly from the definition."""
    n = math.prod(shape)
    tile = np.where(rng.random(L) < 0.5, -1.0, 1.0)
    signs = np.tile(tile, -(-n // L))[:n]
    rows = shape[0]
    if layout == "single":
        s = np.full(n, rng.uniform(0.1, 1.0))
    elif layout == "per_row":
        s = np.repeat(rng.uniform(0.1, 1.0, rows) * np.where(rng.random(rows) < 0.3, -1, 1), n // rows)
    else:  # per copy, when copies line up with rows; else per row
        S = L if L % (n // rows) == 0 else n // rows
        s = np.repeat(rng.uniform(0.1, 1.0, -(-n // S)), S)[:n]
    return (signs * s).astype(np.float32).reshape(shape)


def _run_kernel(kernel, x, fmt, out_shape):
    import tvm

    lib = tvm.compile(tvm.IRModule({"main": kernel.func}), target="llvm")
    y = tvm.runtime.tensor(np.zeros(out_shape, np.float32))
    lib["main"](tvm.runtime.tensor(x), *[tvm.runtime.tensor(b.data) for b in fmt.buffers()], y)
    return y.numpy()


@settings(max_examples=40, deadline=None)
@given(
    rows=st.integers(2, 20),
    K=st.integers(1, 45),
    L=st.integers(2, 120),
    layout=st.sampled_from(["single", "per_row", "per_copy"]),
    seed=st.integers(0, 10_000),
)
def test_dense_row_plan_matches_numpy_decode(rows, K, L, layout, seed):
    pytest.importorskip("tvm")
    from tbn_tvm.kernels import Layer, build

    n = rows * K
    assume(L <= n // 2)
    rng = np.random.default_rng(seed)
    w = _random_tiled(rng, (rows, K), L, layout)
    fmt = detect(w)
    assume(fmt is not None)
    assert np.array_equal(fmt.decode(), w)
    layer = Layer("fc", "matmul", (2, K), (2, rows), order="transposed")
    kernel = build(fmt, layer)
    plan = row_plan(fmt, rows)
    if plan is not None:
        assert kernel.kind == "rows_dense"
        # every output row reads a distinct row the kernel computes, and it is the right one
        assert max(plan.row_of(r) for r in range(rows)) < plan.distinct
        for r in range(rows):
            bits = fmt.tile[(plan.start(plan.row_of(r)) + np.arange(K)) % fmt.tile_length]
            scale = fmt.scales[0] if fmt.num_scales == 1 else fmt.scales[r * K // fmt.scale_chunk]
            assert np.array_equal(np.where(bits == 1, scale, -scale), w[r])
    x = rng.standard_normal((2, K)).astype(np.float32)
    ref = x.astype(np.float64) @ w.T.astype(np.float64)
    got = _run_kernel(kernel, x, fmt, (2, rows))
    np.testing.assert_allclose(got, ref, rtol=1e-5, atol=1e-5 * max(1.0, np.abs(ref).max()))


@settings(max_examples=20, deadline=None)
@given(
    O=st.integers(2, 9),
    C=st.integers(1, 3),
    k=st.integers(1, 4),
    L=st.integers(2, 80),
    layout=st.sampled_from(["single", "per_row", "per_copy"]),
    seed=st.integers(0, 10_000),
)
def test_conv_row_plan_matches_numpy_decode(O, C, k, L, layout, seed):
    pytest.importorskip("tvm")
    from tbn_tvm.kernels import Layer, build

    shape = (O, C, k, k)
    n = math.prod(shape)
    assume(L <= n // 2)
    rng = np.random.default_rng(seed)
    w = _random_tiled(rng, shape, L, layout)
    fmt = detect(w)
    assume(fmt is not None)
    H = 6
    out = H - k + 1
    layer = Layer(
        "conv",
        "conv2d",
        (1, C, H, H),
        (1, O, out, out),
        strides=(1, 1),
        padding=(0, 0, 0, 0),
        dilation=(1, 1),
        simd=bool(seed % 2),
    )
    kernel = build(fmt, layer)
    x = rng.standard_normal((1, C, H, H)).astype(np.float32)
    ref = zoo.np_conv(x.astype(np.float64), w.astype(np.float64))
    got = _run_kernel(kernel, x, fmt, (1, O, out, out))
    np.testing.assert_allclose(got, ref, rtol=1e-5, atol=1e-5 * max(1.0, np.abs(ref).max()))


@pytest.mark.parametrize("op", ["matmul", "conv2d"])
def test_decoded_form_matches_numpy(op):
    """The decoded-rows form (distinct rows as float, then a plain GEMM/conv) against numpy."""
    pytest.importorskip("tvm")
    from tbn_tvm.kernels import Layer, build

    rng = np.random.default_rng(5)
    if op == "matmul":
        w = _random_tiled(rng, (12, 30), 45, "per_row")
        layer = Layer("fc", "matmul", (3, 30), (3, 12), order="transposed", form="decoded")
        x = rng.standard_normal((3, 30)).astype(np.float32)
        ref = x.astype(np.float64) @ w.T.astype(np.float64)
    else:
        w = _random_tiled(rng, (8, 3, 3, 3), 27 * 2, "single")
        layer = Layer(
            "c",
            "conv2d",
            (2, 3, 7, 7),
            (2, 8, 4, 4),
            strides=(2, 2),
            padding=(1, 1, 1, 1),
            dilation=(1, 1),
            form="decoded",
        )
        x = rng.standard_normal((2, 3, 7, 7)).astype(np.float32)
        ref = zoo.np_conv(x.astype(np.float64), w.astype(np.float64), strides=[2, 2], pads=[1, 1, 1, 1])
    fmt = detect(w)
    kernel = build(fmt, layer)
    assert kernel.kind in ("rows_gemm", "rows_conv_gemm")
    got = _run_kernel(kernel, x, fmt, ref.shape)
    np.testing.assert_allclose(got, ref, rtol=1e-5, atol=1e-5 * np.abs(ref).max())


@pytest.mark.parametrize("g", [2, 4])
@pytest.mark.parametrize("shape, L", [((24, 70), 420), ((16, 784), 3136), ((10, 13), 26), ((8, 30), 40)])
def test_lut_form_matches_numpy(shape, L, g):
    """The look-up-table form (T-MAC's tables in float32) against numpy on the decoded weight,
    including rows whose length is not a multiple of g (the last group padded with zeros)."""
    pytest.importorskip("tvm")
    from tbn_tvm.kernels import Layer
    from tbn_tvm.kernels.rows import dense_rows_lut_te, make_kernel

    rng = np.random.default_rng(6)
    w = _random_tiled(rng, shape, L, "per_row")
    fmt = detect(w)
    plan = row_plan(fmt, shape[0])
    assume_aligned = plan is not None and plan.aligned
    if not assume_aligned:
        pytest.skip("the LUT form needs rows that do not wrap around the tile")
    layer = Layer("fc", "matmul", (2, shape[1]), (2, shape[0]), order="transposed", simd=False)
    kernel = make_kernel("rows_lut", dense_rows_lut_te(layer, fmt, plan, g), plan)
    x = rng.standard_normal((2, shape[1])).astype(np.float32)
    ref = x.astype(np.float64) @ w.T.astype(np.float64)
    got = _run_kernel(kernel, x, fmt, (2, shape[0]))
    np.testing.assert_allclose(got, ref, rtol=1e-5, atol=1e-5 * np.abs(ref).max())


@pytest.mark.parametrize("case", ["3x3_pad", "5x5_stride2", "1x1"])
def test_conv_lut_form_matches_numpy(case):
    """The im2col look-up-table conv (patch tables per output position) against numpy."""
    pytest.importorskip("tvm")
    from tbn_tvm.kernels import Layer
    from tbn_tvm.kernels.rows import conv_rows_lut_te, make_kernel

    rng = np.random.default_rng(7)
    shape, pads, strides, hw = {
        "3x3_pad": ((16, 8, 3, 3), (1, 1, 1, 1), (1, 1), 7),
        "5x5_stride2": ((12, 2, 5, 5), (2, 2, 2, 2), (2, 2), 9),
        "1x1": ((16, 40, 1, 1), (0, 0, 0, 0), (1, 1), 4),
    }[case]
    O, C, k, _ = shape
    w = _random_tiled(rng, shape, math.prod(shape) // 4, "per_row")
    fmt = detect(w)
    plan = row_plan(fmt, O)
    out = (hw + pads[0] + pads[2] - k) // strides[0] + 1
    layer = Layer(
        "c",
        "conv2d",
        (1, C, hw, hw),
        (1, O, out, out),
        strides=strides,
        padding=pads,
        dilation=(1, 1),
        simd=False,
    )
    kernel = make_kernel("rows_conv_lut", conv_rows_lut_te(layer, fmt, plan, 4), plan)
    x = rng.standard_normal((1, C, hw, hw)).astype(np.float32)
    ref = zoo.np_conv(x.astype(np.float64), w.astype(np.float64), strides=list(strides), pads=list(pads))
    got = _run_kernel(kernel, x, fmt, ref.shape)
    np.testing.assert_allclose(got, ref, rtol=1e-5, atol=1e-5 * np.abs(ref).max())
    from tbn_tvm.schedules.cortex_m import schedule_prim_mcu

    got = _run_kernel(type(kernel)(schedule_prim_mcu(kernel.func), kernel.kind), x, fmt, ref.shape)
    np.testing.assert_allclose(got, ref, rtol=1e-5, atol=1e-5 * np.abs(ref).max())
