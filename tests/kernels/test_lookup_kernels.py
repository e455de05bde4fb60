"""Issue 23's look-up kernels against independent references.

* The SNN codeword convolution (:mod:`tbn_tvm.kernels.codeword_conv`) against onnxruntime on
  the dense weight and against a numpy re-implementation of SNN's formula (Wang et al., ICCV
  2021: each codeword convolved with each input channel once, every filter gathering its
  codewords' responses by index and scaling), on adversarial shapes: strides, asymmetric and
  oversized pads, dilation, groups, 1-D, 2x2/5x5/3x5 kernels, a width that no position tile
  divides, one codeword, batch 2; on the host with its own schedule and left to the generic
  rules, and on QEMU Cortex-M4.
* T-MAC's bit-plane look-up kernel (:mod:`tbn_tvm.kernels.bitplane_lut`) against onnxruntime
  and a numpy re-implementation of T-MAC's formula (Wei et al., EuroSys 2025: tables of each
  group's subset sums, ``k`` look-ups per group, ``Σ_b c_b·plane_b``), for rows that do not
  start on a word boundary, rows shorter than a word, k = 1..8, one or per-row α, several input
  rows, and convolutions (im2col patches); the host's GEMV and decoded forms too.
* NaN and ±inf inputs: the codeword convolution follows IEEE like the direct convolution; the
  bit-plane look-up kernel makes every output of a vector holding NaN or ±inf NaN (documented).
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import reports
from onnx import TensorProto as T
from onnx import helper as h

tbn_tvm = pytest.importorskip("tbn_tvm")


# ------------------------------------------------------------------------------- references
def snn_reference(x, book, idx, scales, strides, pads, dilation, groups):
    """SNN's look-up convolution in numpy (float64), written from the paper: the responses
    ``R[b, ci, c, p]`` of every codeword ``c`` (±1, ``[C, *k]``) on every input channel, then
    ``y[b, o, p] = s_o · Σ_i R[b, g(o)·I_g + i, idx[o, i], p]``.  1-D or 2-D (NC[H]W)."""
    x = x.astype(np.float64)
    nd = x.ndim - 2
    ksize = book.shape[1:]
    xp = np.pad(x, [(0, 0), (0, 0)] + [(pads[d], pads[d + nd]) for d in range(nd)])
    out = [(xp.shape[2 + d] - dilation[d] * (ksize[d] - 1) - 1) // strides[d] + 1 for d in range(nd)]
    B, cin = x.shape[:2]
    C = book.shape[0]
    R = np.zeros((B, cin, C, *out))
    for taps in np.ndindex(*ksize):
        window = xp[
            (slice(None), slice(None))
            + tuple(
                slice(
                    taps[d] * dilation[d], taps[d] * dilation[d] + strides[d] * (out[d] - 1) + 1, strides[d]
                )
                for d in range(nd)
            )
        ]
        R += window[:, :, None] * book[(slice(None), *taps)].reshape(1, 1, C, *[1] * nd)
    O, Ig = idx.shape
    og = O // groups
    y = np.zeros((B, O, *out))
    for o in range(O):
        for i in range(Ig):
            y[:, o] += R[:, (o // og) * Ig + i, idx[o, i]]
        y[:, o] *= scales[o]
    return y


def tmac_reference(x, q, alpha, k, g):
    """T-MAC's bit-serial table look-up in numpy (float64): two's-complement planes of ``q``
    (``[N, K]``), for every group of ``g`` inputs the table of its ``2^g`` subset sums, each
    row taking one entry per plane and group, ``y = α · Σ_b c_b Σ_grp T[grp, field_b]``."""
    x = x.astype(np.float64)
    M, K = x.shape
    Kp = -(-K // g) * g
    xp = np.zeros((M, Kp))
    xp[:, :K] = x
    codes = np.where(q < 0, q + (1 << k), q)
    planes = [(codes >> b) & 1 for b in range(k)]
    coef = [2.0**b for b in range(k - 1)] + [-(2.0 ** (k - 1))]
    subsets = np.array([[(e >> t) & 1 for t in range(g)] for e in range(1 << g)], np.float64)
    tables = np.einsum("et,mgt->mge", subsets, xp.reshape(M, Kp // g, g))  # [M, groups, 2^g]
    y = np.zeros((M, q.shape[0]))
    for b, c in enumerate(coef):
        bits = np.zeros((q.shape[0], Kp), np.int64)
        bits[:, :K] = planes[b]
        fields = (bits.reshape(q.shape[0], Kp // g, g) << np.arange(g)).sum(-1)  # [N, groups]
        y += c * np.take_along_axis(tables[:, None], fields[None, :, :, None], 3)[..., 0].sum(-1)
    return y * np.asarray(alpha, np.float64).reshape(1, -1)


def test_references_agree_with_the_plain_formulas():
    """The references themselves against plain numpy products (so a wrong reference fails)."""
    rng = np.random.default_rng(0)
    q = rng.integers(-8, 8, (5, 37))
    x = rng.standard_normal((2, 37))
    alpha = rng.uniform(0.1, 1, 5)
    np.testing.assert_allclose(tmac_reference(x, q, alpha, 4, 4), x @ (q * alpha[:, None]).T, rtol=1e-12)
    book = np.where(rng.random((4, 3, 3)) < 0.5, -1.0, 1.0)
    idx = rng.integers(0, 4, (6, 2))
    scales = rng.uniform(0.1, 1, 6)
    w = book[idx] * scales[:, None, None, None]
    xi = rng.standard_normal((1, 4, 6, 7))
    y = snn_reference(xi, book, idx, scales, (2, 1), (1, 0, 0, 2), (1, 2), 2)
    direct = np.zeros_like(y)
    xp = np.pad(xi, [(0, 0), (0, 0), (1, 0), (0, 2)])
    for o in range(6):
        for oy in range(y.shape[2]):
            for ox in range(y.shape[3]):
                patch = xp[0, (o // 3) * 2 : (o // 3) * 2 + 2, oy * 2 : oy * 2 + 3, ox : ox + 5 : 2]
                direct[0, o, oy, ox] = (patch * w[o]).sum()
    np.testing.assert_allclose(y, direct, rtol=1e-12, atol=1e-12)


# ------------------------------------------------------------------------------- models
def snn_conv(rng, O, I, ksize, C, hw, pads, strides=None, dilation=None, groups=1, batch=1):
    """A Conv whose weight is ``s_o · codeword[idx]`` with ``C`` distinct ±1 codewords, each used."""
    nd = len(ksize)
    kk = math.prod(ksize)
    codes = rng.choice(2**kk, size=C, replace=False)
    book = np.where((codes[:, None] >> np.arange(kk)) & 1, 1.0, -1.0).reshape(C, *ksize)
    idx = rng.integers(0, C, (O, I // groups))
    idx.flat[:C] = np.arange(C)
    scales = rng.uniform(0.05, 1.0, O).astype(np.float32)
    w = (book[idx] * scales.reshape(-1, *[1] * (nd + 1))).astype(np.float32)
    strides = strides or (1,) * nd
    dilation = dilation or (1,) * nd
    spatial = [hw] * nd
    out = [
        (spatial[d] + pads[d] + pads[d + nd] - dilation[d] * (ksize[d] - 1) - 1) // strides[d] + 1
        for d in range(nd)
    ]
    node = h.make_node(
        "Conv",
        ["x", "W"],
        ["y"],
        pads=list(pads),
        strides=list(strides),
        dilations=list(dilation),
        group=groups,
    )
    m = reports.model(
        [node], [("x", T.FLOAT, [batch, I, *spatial])], [("y", T.FLOAT, [batch, O, *out])], [("W", w)]
    )
    x = rng.standard_normal((batch, I, *spatial)).astype(np.float32)
    ref = snn_reference(x, book, idx, scales, strides, pads, dilation, groups)
    return m, x, ref


SNN_CASES = {
    # name: (O, I, ksize, C, hw, pads, strides, dilation, groups, batch)
    "wide_3x3": (32, 16, (3, 3), 16, 7, (1, 1, 1, 1), None, None, 1, 1),
    "stride2_asym_pad": (16, 8, (3, 3), 8, 9, (0, 1, 2, 1), (2, 2), None, 1, 1),
    "dilation2": (12, 6, (3, 3), 5, 9, (2, 2, 2, 2), None, (2, 2), 1, 1),
    "groups2": (16, 8, (3, 3), 6, 7, (1, 1, 1, 1), None, None, 2, 1),
    "width13_batch2": (8, 4, (3, 3), 4, 13, (1, 1, 1, 1), None, None, 1, 2),
    "kernel5x5": (8, 3, (5, 5), 7, 8, (2, 2, 2, 2), None, None, 1, 1),
    "kernel3x5": (8, 4, (3, 5), 6, 8, (1, 2, 1, 2), None, None, 1, 1),
    "kernel2x2_one_codeword_pair": (12, 5, (2, 2), 2, 6, (0, 0, 0, 0), None, None, 1, 1),
    "conv1d_k9": (16, 8, (9,), 12, 20, (4, 4), None, None, 1, 1),
    "oversized_pad": (8, 4, (3, 3), 8, 4, (3, 2, 3, 2), None, None, 1, 1),
}


def _force_codeword(monkeypatch):
    """Take the codeword convolution wherever it applies (the cost model may prefer another
    kernel for a small layer; the numerics are what is tested here)."""
    import tbn_tvm.kernels.codeword_conv as cw

    monkeypatch.setattr(cw, "host_pays", lambda fmt, layer: True)
    monkeypatch.setattr(
        cw, "kernel_for", lambda fmt, layer: cw.kernel(fmt, layer) if cw.applies(fmt, layer) else None
    )


def _kernels(compiled) -> list[str]:
    return [s["kernel"] for s in compiled.report().get("steps", [])] or [
        layer.get("kernel", "") for layer in compiled.report()["layers"]
    ]


def _check(got, ort_ref, numpy_ref):
    scale = np.abs(ort_ref).max()
    np.testing.assert_allclose(got, ort_ref, rtol=1e-5, atol=1e-5 * scale)
    np.testing.assert_allclose(got, numpy_ref, rtol=1e-5, atol=1e-5 * scale)


@pytest.mark.parametrize("schedule", ["own", "generic"])
@pytest.mark.parametrize("case", sorted(SNN_CASES))
def test_codeword_conv_host(case, schedule, monkeypatch):
    _force_codeword(monkeypatch)
    if schedule == "generic":  # left to the default rules of the host schedules
        from tbn_tvm.schedules import cpu_lut

        monkeypatch.setattr(cpu_lut, "handles", lambda names: False)
    rng = np.random.default_rng(sorted(SNN_CASES).index(case))
    m, x, ref = snn_conv(rng, *SNN_CASES[case])
    compiled = tbn_tvm.compile(m, "llvm")
    layer = compiled.report()["layers"][0]
    if layer["label"].startswith("codebook"):
        assert layer["kernel"] == "codeword_conv"
    _check(compiled.run(x).reshape(ref.shape), reports.ort(m, {"x": x})[0], ref)


@pytest.mark.qemu
@pytest.mark.parametrize("case", ["stride2_asym_pad", "groups2", "width13_batch2", "kernel3x5", "conv1d_k9"])
def test_codeword_conv_cortex_m4(case, monkeypatch):
    _force_codeword(monkeypatch)
    rng = np.random.default_rng(sorted(SNN_CASES).index(case))
    m, x, ref = snn_conv(rng, *SNN_CASES[case])
    compiled = tbn_tvm.compile(m, "cortex-m4")
    assert compiled.report()["layers"][0]["kernel"] == "codeword_conv"
    _check(compiled.run(x).reshape(ref.shape), reports.ort(m, {"x": x})[0], ref)


def bitplane_gemm(rng, N, K, k, per_row, M=1):
    q = rng.integers(-(1 << (k - 1)), 1 << (k - 1), (N, K))
    q.flat[: min(q.size, 2)] = [-(1 << (k - 1)), (1 << (k - 1)) - 1][: min(q.size, 2)]  # the whole range
    alpha = rng.uniform(0.01, 1.0, N if per_row else 1).astype(np.float32)
    w = (q.astype(np.float32) * alpha.reshape(-1, 1)).astype(np.float32)
    m = reports.model(
        [h.make_node("Gemm", ["x", "W"], ["y"], transB=1)],
        [("x", T.FLOAT, [M, K])],
        [("y", T.FLOAT, [M, N])],
        [("W", w)],
    )
    x = rng.standard_normal((M, K)).astype(np.float32)
    return m, x, q, np.broadcast_to(alpha, (N,))


BITPLANE_GEMMS = {
    # name: (N, K, k, per_row α, M, g)
    "k4_row_not_word_aligned": (40, 37, 4, True, 1, 8),
    "k8_single_alpha": (24, 64, 8, False, 1, 4),
    "k2_three_rows": (16, 33, 2, True, 3, 2),
    "k1_short_row": (10, 7, 1, True, 1, 4),
    "k3_rows_of_100": (9, 100, 3, False, 2, 8),
}


@pytest.mark.parametrize("case", sorted(BITPLANE_GEMMS))
def test_tmac_reference_matches_onnxruntime(case):
    """The numpy T-MAC reference on the same weights the kernels get (a check of the weights
    and of the reference; the kernels are checked against both below)."""
    N, K, k, per_row, M, g = BITPLANE_GEMMS[case]
    m, x, q, alpha = bitplane_gemm(np.random.default_rng(1), N, K, k, per_row, M)
    ref = reports.ort(m, {"x": x})[0]
    np.testing.assert_allclose(
        tmac_reference(x, q, alpha, k, g), ref, rtol=1e-5, atol=1e-5 * np.abs(ref).max()
    )


def _force_lut(monkeypatch, g):
    """The look-up kernel with groups of ``g`` on an MCU, never built dense."""
    from tbn_tvm.kernels import cost

    monkeypatch.setattr(cost, "bitplane_group", lambda layer, fmt: g)
    monkeypatch.setattr(cost, "built_dense_note", lambda *a, **kw: None)


@pytest.mark.qemu
@pytest.mark.parametrize("case", sorted(BITPLANE_GEMMS))
def test_bitplane_lookup_gemm_cortex_m4(case, monkeypatch):
    N, K, k, per_row, M, g = BITPLANE_GEMMS[case]
    _force_lut(monkeypatch, g)
    m, x, q, alpha = bitplane_gemm(np.random.default_rng(1), N, K, k, per_row, M)
    compiled = tbn_tvm.compile(m, "cortex-m4")
    layer = compiled.report()["layers"][0]
    assert layer["label"] == f"bitplane k={k}" and layer["kernel"] == "bitplane_lut", layer
    _check(compiled.run(x).reshape(M, N), reports.ort(m, {"x": x})[0], tmac_reference(x, q, alpha, k, g))


@pytest.mark.parametrize("form", ["auto", "bitserial", "decoded", "lut"])
@pytest.mark.parametrize("case", ["k4_row_not_word_aligned", "k3_rows_of_100", "k2_three_rows"])
def test_bitplane_gemm_host_forms(case, form, monkeypatch):
    """Every host form of a bit-plane matmul (the form a tuning database may set per layer):
    the GEMV on packed integer fields (``auto`` for few rows), the GEMV with the integers
    rebuilt in vector lanes from the planes (``bitserial``), the weight decoded once per call
    and a GEMM, and the look-up kernel."""
    N, K, k, per_row, M, g = BITPLANE_GEMMS[case]
    m, x, q, alpha = bitplane_gemm(np.random.default_rng(1), N, K, k, per_row, M)
    if form != "auto":
        from tbn_tvm.passes import pipeline

        prepare = pipeline.prepare
        monkeypatch.setattr(pipeline, "prepare", lambda mod, **kw: prepare(mod, **{**kw, "forms": form}))
    from tbn_tvm.kernels import bitplane_lut

    compiled = tbn_tvm.compile(m, "llvm")
    want = {
        "auto": "bitplane_packed_gemv" if M <= bitplane_lut.PACKED_MAX_ROWS else "bitplane_gemm",
        "bitserial": "bitplane_gemv",
        "decoded": "bitplane_gemm",
        "lut": "bitplane_lut",
    }
    assert compiled.report()["layers"][0]["kernel"] == want[form]
    _check(compiled.run(x).reshape(M, N), reports.ort(m, {"x": x})[0], tmac_reference(x, q, alpha, k, 4))


# ------------------------------------------------------------------------------- NaN and ±inf
def _poison(x, rng):
    """``x`` with a NaN, a +inf and a -inf at random positions of its first sample."""
    x = x.copy()
    flat = x.reshape(x.shape[0], -1)
    where = rng.choice(flat.shape[1], 3, replace=False)
    flat[0, where] = [np.nan, np.inf, -np.inf]
    return x


@pytest.mark.parametrize("target", ["llvm", pytest.param("cortex-m4", marks=pytest.mark.qemu)])
def test_codeword_conv_non_finite_inputs_follow_ieee(target, monkeypatch):
    """NaN and ±inf reach exactly the outputs they reach in the direct convolution, with the
    same signs (each tap enters a response once, with its sign; nothing is multiplied)."""
    _force_codeword(monkeypatch)
    rng = np.random.default_rng(7)
    m, x, _ = snn_conv(rng, 16, 8, (3, 3), 8, 9, (1, 1, 1, 1))
    x = _poison(x, rng)
    ref = reports.ort(m, {"x": x})[0]
    got = tbn_tvm.compile(m, target).run(x).reshape(ref.shape)
    assert np.isnan(ref).any() and np.isinf(ref).any() and np.isfinite(ref).any()
    np.testing.assert_array_equal(np.isnan(got), np.isnan(ref))
    np.testing.assert_array_equal(np.isinf(got), np.isinf(ref))
    np.testing.assert_array_equal(np.sign(got[np.isinf(ref)]), np.sign(ref[np.isinf(ref)]))
    finite = np.isfinite(ref)
    np.testing.assert_allclose(got[finite], ref[finite], rtol=1e-5, atol=1e-5 * np.abs(ref[finite]).max())


@pytest.mark.qemu
def test_bitplane_lookup_non_finite_inputs(monkeypatch):
    """The look-up kernel's documented rule: a vector holding NaN or ±inf gives NaN in every
    output (the direct product gives NaN or ±inf there); other vectors are unaffected."""
    _force_lut(monkeypatch, 4)
    rng = np.random.default_rng(3)
    m, x, _, _ = bitplane_gemm(rng, 12, 40, 4, True, M=3)
    compiled = tbn_tvm.compile(m, "cortex-m4")
    for poison in (np.nan, np.inf, -np.inf):
        xp = x.copy()
        xp[1, 17] = poison
        ref = reports.ort(m, {"x": xp})[0]
        got = compiled.run(xp).reshape(ref.shape)
        assert not np.isfinite(ref[1]).any()  # every row: ±inf·w, or inf·0 / NaN = NaN
        assert np.isnan(got[1]).all(), got[1]
        for row in (0, 2):
            np.testing.assert_allclose(got[row], ref[row], rtol=1e-5, atol=1e-5 * np.abs(ref[row]).max())


@pytest.mark.parametrize("form", ["auto", "decoded"])
def test_bitplane_host_non_finite_inputs_follow_ieee(form, monkeypatch):
    """The host forms multiply: NaN, ±inf and inf·0 as in the direct product."""
    rng = np.random.default_rng(4)
    m, x, q, _ = bitplane_gemm(rng, 12, 40, 4, True, M=3)
    if form != "auto":
        from tbn_tvm.passes import pipeline

        prepare = pipeline.prepare
        monkeypatch.setattr(pipeline, "prepare", lambda mod, **kw: prepare(mod, **{**kw, "forms": form}))
    x = _poison(x, rng)
    ref = reports.ort(m, {"x": x})[0]
    got = tbn_tvm.compile(m, "llvm").run(x).reshape(ref.shape)
    np.testing.assert_array_equal(np.isnan(got), np.isnan(ref))
    np.testing.assert_array_equal(got[np.isinf(ref)], ref[np.isinf(ref)])
    finite = np.isfinite(ref)
    np.testing.assert_allclose(got[finite], ref[finite], rtol=1e-5, atol=1e-5 * np.abs(ref[finite]).max())


# ------------------------------------------------------------------------------- plans
def test_segments_cover_every_tap_once():
    from tbn_tvm.kernels.codeword_conv import MAX_SEGMENT, segments

    for ksize in [(3, 3), (5, 5), (3, 5), (2, 2), (9,), (1, 7), (4,)]:
        segs = segments(ksize)
        taps = sorted(first + t for first, _, length in segs for t in range(length))
        assert taps == list(range(math.prod(ksize))), ksize
        assert all(1 <= length <= MAX_SEGMENT for _, _, length in segs)
        assert all((first % ksize[-1]) + length <= ksize[-1] for first, _, length in segs)  # inside a row


@pytest.mark.parametrize("width", [1, 4, 7, 12, 13, 28, 31])
@pytest.mark.parametrize("cin,codewords", [(4, 4), (48, 16), (128, 64), (512, 64)])
def test_position_tiles_fit_and_cover(width, cin, codewords):
    from tbn_tvm.kernels.codeword_conv import MAX_TILE, RESPONSE_BYTES, host_width, position_tile

    tile, computed = position_tile(width, cin, codewords)
    assert 1 <= tile <= MAX_TILE and computed % tile == 0 and width <= computed < width + tile
    assert tile == 1 or 4 * cin * codewords * tile <= RESPONSE_BYTES
    hw = host_width(width)
    assert hw >= width and (hw % 4 == 0 and hw - width < 8)


# ------------------------------------------------------------------------------- acceptance
@pytest.mark.qemu
def test_acceptance_codebook_conv_costs_under_half_of_binary():
    """Issue 23: a codebook conv of 96 filters x 48 channels, 3x3, τ = 4, at 12x12 takes at most
    half the instructions of the same conv with unstructured binary weights on QEMU M4, within
    1e-5 of onnxruntime (measured: 3,563,272 vs 10,820,976, 0.33x)."""
    rng = np.random.default_rng(0)
    m, x, ref = snn_conv(rng, 96, 48, (3, 3), 16, 12, (1, 1, 1, 1))
    w = np.asarray(reports.initializer(m, "W"))
    signs = np.where(rng.random(w.shape) < 0.5, -1.0, 1.0)
    wb = (signs * np.abs(w).reshape(96, -1).max(1)[:, None, None, None]).astype(np.float32)
    mb = reports.model(
        list(m.graph.node), [("x", T.FLOAT, [1, 48, 12, 12])], [("y", T.FLOAT, [1, 96, 12, 12])], [("W", wb)]
    )
    code, binary = tbn_tvm.compile(m, "cortex-m4"), tbn_tvm.compile(mb, "cortex-m4")
    layers = [b.report()["layers"][0] for b in (code, binary)]
    assert [la["label"] for la in layers] == ["codebook τ=4", "binary"]
    assert layers[0]["kernel"] == "codeword_conv"
    assert layers[0]["instructions"] <= 0.5 * layers[1]["instructions"], layers
    _check(code.run(x).reshape(ref.shape), reports.ort(m, {"x": x})[0], ref)


@pytest.mark.qemu
def test_acceptance_bitplane_gemm_costs_under_half_of_dense():
    """Issue 23: a 4-bit bit-plane GEMM 128x512 takes at most half the instructions of its
    --no-compress build on QEMU M4, within 1e-5 of onnxruntime (measured: 200,001 vs 459,775,
    0.43x)."""
    rng = np.random.default_rng(0)
    m, x, q, alpha = bitplane_gemm(rng, 128, 512, 4, False)
    lut, dense = tbn_tvm.compile(m, "cortex-m4"), tbn_tvm.compile(m, "cortex-m4", compress=False)
    layer = lut.report()["layers"][0]
    assert layer["label"] == "bitplane k=4" and layer["kernel"] == "bitplane_lut", layer
    counts = [b.report()["measured"]["instructions_per_inference"] for b in (lut, dense)]
    assert counts[0] <= 0.5 * counts[1], counts
    _check(lut.run(x).reshape(1, 128), reports.ort(m, {"x": x})[0], tmac_reference(x, q, alpha, 4, 8))


@pytest.mark.parametrize("lanes,cores", [(16, 2), (8, 1)])
@pytest.mark.parametrize(
    "case",
    [
        "wide_3x3",
        "stride2_asym_pad",
        "groups2",
        "width13_batch2",
        "conv1d_k9",
        "gemv",
        "gemv_tail",
        "packed",
        "packed_tail",
        "packed_tail_only",
        "decoded",
    ],
)
def test_host_schedules_apply(case, lanes, cores):
    """The host schedules of :mod:`tbn_tvm.schedules.cpu_lut` apply (a schedule that raised
    would leave the kernel to the generic rules: right, but several times slower) and put the
    inner loops in vectors."""
    from tbn_tvm.formats import detect_layer_weight
    from tbn_tvm.kernels import Layer, bitplane_lut, codeword_conv
    from tbn_tvm.schedules import cpu_decoded, cpu_lut

    rng = np.random.default_rng(0)
    if case in SNN_CASES:
        O, I, ksize, C, hw, pads, strides, dilation, groups, batch = SNN_CASES[case]
        m, x, ref = snn_conv(rng, *SNN_CASES[case])
        w = np.asarray(reports.initializer(m, "W"))
        nd = len(ksize)
        layer = Layer(
            "cv",
            f"conv{nd}d",
            x.shape,
            ref.shape,
            strides=strides or (1,) * nd,
            padding=pads,
            dilation=dilation or (1,) * nd,
            groups=groups,
        )
        func = codeword_conv.kernel(detect_layer_weight(w, "conv").format, layer).func
        scheduled = cpu_lut.schedule(func, lanes, cores)
    else:
        N, K, M = {
            "gemv": (64, 256, 1),
            "gemv_tail": (24, 77, 2),
            "packed": (128, 512, 1),
            "packed_tail": (40, 37, 3),
            "packed_tail_only": (24, 5, 1),
            "decoded": (40, 96, 16),
        }[case]
        fmt = detect_layer_weight(
            np.ascontiguousarray((rng.integers(-8, 8, (N, K)) * 0.5).astype(np.float32).T), "matmul"
        ).format
        form = {"gemv": "bitserial", "gemv_tail": "bitserial", "decoded": "decoded"}.get(case, "auto")
        layer = Layer("fc", "matmul", (M, K), (M, N), order="transposed", form=form)
        built = bitplane_lut.kernel_for(fmt, layer)
        if case == "decoded":
            assert built.kind == bitplane_lut.KIND_DECODED
            scheduled = cpu_decoded.schedule_gemm(
                built.func, lanes, cores, cpu_decoded.accumulator_registers(lanes)
            )
        else:
            assert built.kind == (
                bitplane_lut.KIND_PACKED if case.startswith("packed") else bitplane_lut.KIND_GEMV
            )
            scheduled = cpu_lut.schedule(built.func, lanes, cores)
    assert "T.vectorized" in scheduled.script()
