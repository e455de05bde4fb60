"""The decoded forms' host schedules (schedules/cpu_decoded.py) and the ``auto`` form choice.

Numerics: a sweep of seeded random tiled convolutions and matmuls (strides, paddings,
dilations, batches, output widths and filter counts that are and are not multiples of the
vector width, tile lengths that divide nothing, one α / one α per copy / per-channel scales)
compiled for this machine and checked against numpy's direct formula and onnxruntime.

Schedules: wherever ``auto`` picks the decoded form, its hand schedule must apply (an
unscheduled decoded kernel is correct but tens of times slower than the bit-serial one).
"""

from __future__ import annotations

import numpy as np
import pytest
import reports
from onnx import TensorProto, helper

tbn_tvm = pytest.importorskip("tbn_tvm.api")


def _tiled(shape, L: int, scales: str, rng) -> np.ndarray:
    """A weight of ``shape``: an L-sign tile repeated over the flattened weight; ``scales``:
    ``one`` (one α), ``copy`` (one α per copy; L divides the size) or ``channel`` (one per
    output channel)."""
    n = int(np.prod(shape))
    tile = np.where(rng.random(L) < 0.5, -1.0, 1.0)
    flat = np.tile(tile, -(-n // L))[:n]
    if scales == "copy":
        assert n % L == 0
        flat = flat * np.repeat(rng.uniform(0.2, 1.0, n // L), L)
    w = flat.reshape(shape)
    if scales == "channel":
        w = w * rng.uniform(0.2, 1.0, shape[0]).reshape((-1,) + (1,) * (len(shape) - 1))
    elif scales == "one":
        w = w * 0.3
    return w.astype(np.float32)


def _conv_ref(x, w, b, stride, pad, dil):
    """Direct 2-D convolution (NCHW, OIHW), float64 sums."""
    B, C, H, W = x.shape
    O, _, kh, kw = w.shape
    xp = np.pad(x.astype(np.float64), ((0, 0), (0, 0), (pad, pad), (pad, pad)))
    OH = (H + 2 * pad - dil * (kh - 1) - 1) // stride + 1
    OW = (W + 2 * pad - dil * (kw - 1) - 1) // stride + 1
    y = np.zeros((B, O, OH, OW))
    for i in range(kh):
        for j in range(kw):
            patch = xp[
                :, :, i * dil : i * dil + stride * OH : stride, j * dil : j * dil + stride * OW : stride
            ]
            y += np.einsum("bchw,oc->bohw", patch[:, :, :OH, :OW], w[:, :, i, j].astype(np.float64))
    return (y + b.reshape(1, -1, 1, 1)).astype(np.float32)


def conv_case(seed: int):
    rng = np.random.default_rng(seed)
    C = int(rng.choice([1, 3, 8, 16]))
    O = int(rng.choice([8, 12, 16, 32, 48, 64]))
    k = int(rng.choice([1, 3, 5]))
    stride = int(rng.choice([1, 1, 2]))
    pad = k // 2 if rng.random() < 0.6 else int(rng.integers(0, k // 2 + 1))
    dil = int(rng.choice([1, 1, 2])) if k > 1 else 1
    H = int(rng.choice([8, 11, 16, 24]))
    W = int(rng.choice([8, 13, 16, 32]))
    B = int(rng.choice([1, 1, 2, 3]))
    n = O * C * k * k
    p = int(rng.choice([d for d in (2, 4, 8) if O % d == 0 and O // d >= 4] or [1]))
    scales = str(rng.choice(["one", "copy", "channel"]))
    L = n // p if rng.random() < 0.7 else int(rng.integers(max(2, n // 9), n // 2 + 2))
    if n % L:
        scales = "one" if scales == "copy" else scales
    w = _tiled((O, C, k, k), L, scales, rng)
    b = rng.standard_normal(O).astype(np.float32)
    if (H + 2 * pad - dil * (k - 1) - 1) < 0 or (W + 2 * pad - dil * (k - 1) - 1) < 0:
        H = W = 16
    x = rng.standard_normal((B, C, H, W)).astype(np.float32)
    y = _conv_ref(x, w, b, stride, pad, dil)
    m = reports.model(
        [
            helper.make_node(
                "Conv", ["x", "W", "b"], ["y"], strides=[stride] * 2, pads=[pad] * 4, dilations=[dil] * 2
            )
        ],
        [("x", TensorProto.FLOAT, list(x.shape))],
        [("y", TensorProto.FLOAT, list(y.shape))],
        [("W", w), ("b", b)],
    )
    return m, x, y


def gemm_case(seed: int):
    rng = np.random.default_rng(seed)
    M = int(rng.choice([1, 4, 8, 16, 33]))
    K = int(rng.choice([24, 64, 100, 257]))
    N = int(rng.choice([8, 16, 40, 64]))
    p = int(rng.choice([d for d in (2, 4, 8) if N % d == 0]))
    n = N * K
    L = n // p if rng.random() < 0.7 else int(rng.integers(n // 9, n // 2 + 2))
    scales = str(rng.choice(["one", "copy", "channel"]))
    if n % L:
        scales = "one" if scales == "copy" else scales
    w = _tiled((N, K), L, scales, rng)
    b = rng.standard_normal(N).astype(np.float32)
    x = rng.standard_normal((M, K)).astype(np.float32)
    y = (x.astype(np.float64) @ w.T.astype(np.float64) + b).astype(np.float32)
    m = reports.model(
        [helper.make_node("Gemm", ["x", "W", "b"], ["y"], transB=1)],
        [("x", TensorProto.FLOAT, [M, K])],
        [("y", TensorProto.FLOAT, [M, N])],
        [("W", w), ("b", b)],
    )
    return m, x, y


CASES = [("conv", s) for s in range(14)] + [("gemm", s) for s in range(8)]


@pytest.mark.parametrize("kind,seed", CASES)
def test_decoded_schedules_match_numpy_and_onnxruntime(kind, seed):
    m, x, y = (conv_case if kind == "conv" else gemm_case)(seed)
    ref = reports.ort(m, {"x": x})[0]
    tol = 1e-5 * max(1.0, float(np.abs(ref).max()))
    np.testing.assert_allclose(ref, y, rtol=1e-5, atol=tol)  # the numpy formula is right
    compiled = tbn_tvm.compile(m, "llvm", mcpu="native")
    assert compiled.report()["layers"][0]["format"] in ("tiled", "binary")
    np.testing.assert_allclose(compiled.run(x[None])[0], ref, rtol=1e-5, atol=tol)


def test_auto_picks_decoded_only_where_its_schedule_applies():
    import tvm

    from tbn_tvm.kernels import rows
    from tbn_tvm.schedules.cpu import block_names, schedule_cpu
    from tbn_tvm.schedules.tuning import prepare_for_tuning
    from tbn_tvm.targets import resolve_target

    spec = resolve_target("llvm", "native")
    target = spec.tvm()
    decoded = 0
    for kind, seed in CASES:
        m, _, _ = (conv_case if kind == "conv" else gemm_case)(seed)
        _, _, fused = prepare_for_tuning(m, spec, forms="auto")
        wanted = [
            gv.name_hint
            for gv, func in fused.functions_items()
            if isinstance(func, tvm.tirx.PrimFunc)
            and block_names(func) & {rows.BLOCK_GEMM, rows.BLOCK_CONV_GEMM}
        ]
        with target:
            scheduled = schedule_cpu(fused, target)
        for name in wanted:
            decoded += 1
            func = scheduled[scheduled.get_global_var(name)]
            assert func.attrs.get("tirx.is_scheduled"), (kind, seed, name)
    assert decoded >= len(CASES) // 2, decoded  # the sweep exercises the decoded schedules


def test_auto_keeps_bitserial_for_a_single_row_matmul_and_decodes_batches_and_convs():
    """At batch 1 a matmul's bit-serial GEMV beats decoding the rows first (the kernel it had
    before the decoded form existed); a batch of 16 rows and a convolution take the decoded form.
    The report names the kernel each layer was built with."""
    one, _ = reports.tiled_gemm((64, 256), 64 * 256 // 8)
    assert tbn_tvm.compile(one, "llvm").report()["layers"][0]["kernel"] == "rows_dense"
    batch, _, _ = gemm_case(1)
    assert batch.graph.input[0].type.tensor_type.shape.dim[0].dim_value >= 8
    assert tbn_tvm.compile(batch, "llvm").report()["layers"][0]["kernel"] == "rows_gemm"
    conv, _ = reports.tiled_conv((32, 4, 3, 3), 32 * 4 * 9 // 4)
    assert tbn_tvm.compile(conv, "llvm").report()["layers"][0]["kernel"] == "rows_conv_gemm"
    # the Cortex-M and CUDA back ends keep their own forms
    assert (
        tbn_tvm.compile(conv, "cortex-m4", measure=False).report()["layers"][0]["kernel"] != "rows_conv_gemm"
    )
