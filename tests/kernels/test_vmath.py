"""The host's vectorisable float32 ``exp``/``erf``/``tanh``/``sigmoid`` (kernels/vmath.py, used by
passes/vector_math.py's legalizations of Exp, Erf, Tanh, Sigmoid, SiLU, GELU, Softmax and
LogSoftmax).

Accuracy: the float32 results of a host build (``tbn_tvm.compile(model, "llvm")``, the path users
get) against float64 references (numpy, ``math.erf``) on dense grids over [-90, 90], the range
where the approximations work hardest, the denormal output range of ``exp`` and denormal
inputs; bounds are those the module docstring states (exp 2 ulp, erf and tanh 6 ulp).  Special
values (±0, ±inf, NaN, overflow, underflow) exactly; through ONNX, with NaN and ±inf in the
inputs, the same special values as onnxruntime.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
from onnx import TensorProto, helper, numpy_helper

tbn_tvm = pytest.importorskip("tbn_tvm.api")

OPS = ("Exp", "Erf", "Tanh", "Sigmoid")
#: max ulp errors the module docstring of tbn_tvm.kernels.vmath states
ULP_BOUND = {"Exp": 2.0, "Erf": 6.0, "Tanh": 6.0}
#: sigmoid has no stated bound: 1 / (1 + e^-x) rounds three times after exp's 2 ulp
SIGMOID_ULP = 4.0
FLT_MIN = float(np.finfo(np.float32).tiny)
N = 1 << 20


def _model(shape, ops=OPS, extra_nodes=(), outputs=None):
    nodes = [helper.make_node(op, ["x"], [op]) for op in ops] + list(extra_nodes)
    outputs = outputs or list(ops)
    g = helper.make_graph(
        nodes,
        "vmath",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, list(shape))],
        [helper.make_tensor_value_info(o, TensorProto.FLOAT, list(shape)) for o in outputs],
    )
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    m.ir_version = 8
    return m


def _ort(m, feeds):
    import onnxruntime as rt

    opts = rt.SessionOptions()
    opts.log_severity_level = 3
    sess = rt.InferenceSession(m.SerializeToString(), opts, providers=["CPUExecutionProvider"])
    return dict(zip([o.name for o in sess.get_outputs()], sess.run(None, feeds)))


@pytest.fixture(scope="module")
def grid_build():
    """One host build of Exp, Erf, Tanh and Sigmoid over N float32 values, and a runner that
    pads a shorter input with zeros."""
    compiled = tbn_tvm.compile(_model([N]), "llvm")

    def run(x: np.ndarray) -> dict[str, np.ndarray]:
        x = np.asarray(x, np.float32).ravel()
        assert x.size <= N
        padded = np.zeros(N, np.float32)
        padded[: x.size] = x
        out = compiled.run({"x": padded})
        return {k: v[: x.size] for k, v in out.items()}

    return run


def _reference(op: str, x: np.ndarray) -> np.ndarray:
    x64 = x.astype(np.float64)
    with np.errstate(over="ignore"):
        if op == "Exp":
            return np.exp(x64)
        if op == "Erf":
            return np.frompyfunc(math.erf, 1, 1)(x64).astype(np.float64)
        if op == "Tanh":
            return np.tanh(x64)
        return 1.0 / (1.0 + np.exp(-x64))


def _ulps(got: np.ndarray, ref64: np.ndarray) -> np.ndarray:
    """|got - ref| in units of the float32 spacing at the correctly rounded result (the denormal
    spacing 2^-149 below FLT_MIN); inf where the rounded result is infinite and got differs."""
    with np.errstate(over="ignore"):
        ref32 = ref64.astype(np.float32)
    out = np.zeros(got.shape)
    inf = np.isinf(ref32)
    out[inf] = np.where(got[inf] == ref32[inf], 0.0, np.inf)
    fin = ~inf
    out[fin] = np.abs(got[fin].astype(np.float64) - ref64[fin]) / np.spacing(np.abs(ref32[fin])).astype(
        np.float64
    )
    return out


def _grids() -> dict[str, np.ndarray]:
    return {
        "[-90, 90]": np.linspace(-90, 90, N, dtype=np.float32),
        "[-9.5, 9.5]": np.linspace(-9.5, 9.5, N, dtype=np.float32),
        # exp's denormal results and its underflow to +0; sigmoid's flush below
        "[-105, -86]": np.linspace(-105, -86, N // 4, dtype=np.float32),
        # denormal and tiny normal inputs
        "denormal inputs": np.linspace(-1.5 * FLT_MIN, 1.5 * FLT_MIN, N // 4, dtype=np.float32),
    }


@pytest.mark.parametrize("grid", list(_grids()))
def test_ulp_bounds_on_dense_grids(grid_build, grid):
    x = _grids()[grid]
    got = grid_build(x)
    worst = {}
    for op in ("Exp", "Erf", "Tanh"):
        u = _ulps(got[op], _reference(op, x))
        i = int(np.argmax(u))
        worst[op] = (float(u[i]), float(x[i]), float(got[op][i]))
    bad = {op: w for op, w in worst.items() if not w[0] <= ULP_BOUND[op]}
    assert not bad, f"max ulp error (ulp, x, result) above the documented bound on {grid}: {bad}"


@pytest.mark.parametrize("grid", list(_grids()))
def test_sigmoid_accuracy_and_range(grid_build, grid):
    """Sigmoid within a few ulp where its result is a normal float; where it is denormal (x
    below about -87.3) within FLT_MIN of the true value (it may flush to zero)."""
    x = _grids()[grid]
    y = grid_build(x)["Sigmoid"]
    ref = _reference("Sigmoid", x)
    assert ((y >= 0) & (y <= 1)).all()
    normal = ref >= FLT_MIN
    u = _ulps(y[normal], ref[normal])
    assert u.max(initial=0) <= SIGMOID_ULP, (u.max(), x[normal][np.argmax(u)])
    assert np.abs(y[~normal] - ref[~normal]).max(initial=0) <= FLT_MIN


@pytest.mark.parametrize("grid", ["[-90, 90]", "[-9.5, 9.5]"])
def test_erf_and_tanh_stay_in_range(grid_build, grid):
    """|erf| <= 1 and |tanh| <= 1 everywhere (the rational approximations reached 1 + 2^-23 on
    |x| in [3.69, 4) and [8.2, 9): sqrt(1 - tanh^2) of such a value is NaN, onnxruntime's is 0)."""
    x = _grids()[grid]
    got = grid_build(x)
    for op in ("Erf", "Tanh"):
        over = np.abs(got[op]) > 1
        assert not over.any(), (
            f"{op} out of [-1, 1] at {over.sum()} points, e.g. {op}({x[over][0]!r}) = {got[op][over][0]!r}"
        )


def test_special_values(grid_build):
    inf, nan = np.inf, np.nan
    x = np.array(
        [
            0.0,
            -0.0,
            inf,
            -inf,
            nan,
            -nan,
            1e-45,
            -1e-45,
            1e-40,
            -1e-40,
            FLT_MIN,
            -FLT_MIN,
            88.72283,
            88.72284,
            89.0,
            3.4e38,
            -3.4e38,
            -103.9,
            -103.98,
            -104.0,
            -87.33655,
        ],
        np.float32,
    )
    got = grid_build(x)
    for op in OPS:
        ref = _reference(op, x)
        with np.errstate(over="ignore"):
            ref32 = ref.astype(np.float32)
        y = got[op]
        assert (np.isnan(y) == np.isnan(ref32)).all(), (op, x, y)
        assert (np.isinf(y) == np.isinf(ref32)).all() and (y[np.isinf(y)] == ref32[np.isinf(y)]).all(), (
            op,
            x,
            y,
        )
        zero = ref32 == 0
        if op != "Sigmoid":  # sigmoid's zeros are underflow, +0 either way
            assert (np.signbit(y[zero]) == np.signbit(ref32[zero])).all(), (op, x[zero], y[zero])
    assert got["Exp"][2] == np.inf and got["Exp"][3] == 0.0
    assert list(got["Erf"][2:4]) == [1.0, -1.0] and list(got["Tanh"][2:4]) == [1.0, -1.0]
    assert list(got["Sigmoid"][2:4]) == [1.0, 0.0]
    for op in ("Exp", "Erf", "Tanh"):
        u = _ulps(got[op][~np.isnan(x)], _reference(op, x[~np.isnan(x)]))
        assert u.max() <= ULP_BOUND[op], (op, u.max())


def _special_inputs(rng) -> np.ndarray:
    inf, nan = np.inf, np.nan
    x = rng.standard_normal((6, 13)).astype(np.float32) * 4
    x[0, :8] = [inf, -inf, nan, 0.0, -0.0, 1e-40, 3.4e38, -3.4e38]
    x[1, 3] = inf  # one +inf in a row: softmax NaN/1/0 patterns
    x[2, 5] = -inf
    x[3, :] = -inf  # a whole row of -inf
    x[4, 7] = nan
    x[5, :2] = [95.0, -95.0]
    return x


def test_onnx_special_values_match_onnxruntime():
    """Exp, Erf, Tanh, Sigmoid, Softmax and LogSoftmax (both axes) of inputs holding NaN, ±inf,
    ±0, denormals and huge values: NaN and inf at the same places with the same signs as
    onnxruntime, finite values within 1e-5 of its largest."""
    x = _special_inputs(np.random.default_rng(0))
    extra = [
        helper.make_node("Softmax", ["x"], ["sm1"], axis=1),
        helper.make_node("LogSoftmax", ["x"], ["ls1"], axis=1),
        helper.make_node("Softmax", ["x"], ["sm0"], axis=0),
        helper.make_node("LogSoftmax", ["x"], ["ls0"], axis=0),
    ]
    outputs = [*OPS, "sm1", "ls1", "sm0", "ls0"]
    m = _model(x.shape, OPS, extra, outputs)
    ref = _ort(m, {"x": x})
    got = tbn_tvm.compile(m, "llvm").run({"x": x})
    for name in outputs:
        r, g = ref[name], got[name]
        assert (np.isnan(r) == np.isnan(g)).all(), (name, np.argwhere(np.isnan(r) != np.isnan(g)))
        ri = np.isinf(r)
        assert (np.isinf(g) == ri).all() and (g[ri] == r[ri]).all(), (
            name,
            np.argwhere(np.isinf(r) != np.isinf(g)),
        )
        fin = np.isfinite(r)
        scale = np.abs(r[fin]).max()
        err = np.abs(g[fin].astype(np.float64) - r[fin]).max()
        assert err <= 1e-5 * scale, (name, err, scale)


def test_gelu_silu_through_vmath_match_onnxruntime():
    """GELU (erf form) and SiLU over [-12, 12]: the polynomials inside fused kernels."""
    x = np.linspace(-12, 12, 4097, dtype=np.float32).reshape(1, 17, 241)
    c = {
        n: numpy_helper.from_array(np.array(v, np.float32), n)
        for n, v in (("r2", 2**0.5), ("one", 1.0), ("half", 0.5))
    }
    nodes = [
        helper.make_node("Div", ["x", "r2"], ["d"]),
        helper.make_node("Erf", ["d"], ["e"]),
        helper.make_node("Add", ["e", "one"], ["e1"]),
        helper.make_node("Mul", ["x", "e1"], ["g1"]),
        helper.make_node("Mul", ["g1", "half"], ["gelu"]),
        helper.make_node("Sigmoid", ["x"], ["s"]),
        helper.make_node("Mul", ["x", "s"], ["silu"]),
    ]
    g = helper.make_graph(
        nodes,
        "acts",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, list(x.shape))],
        [helper.make_tensor_value_info(o, TensorProto.FLOAT, list(x.shape)) for o in ("gelu", "silu")],
        list(c.values()),
    )
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    m.ir_version = 8
    ref = _ort(m, {"x": x})
    got = tbn_tvm.compile(m, "llvm").run({"x": x})
    for name in ("gelu", "silu"):
        err = np.abs(got[name].astype(np.float64) - ref[name]).max()
        assert err <= 1e-5 * np.abs(ref[name]).max(), (name, err)
