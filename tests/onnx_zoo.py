"""Small ONNX test models with tiled, binary and dense weights, plus their numpy references.

This is a helper module for the tests, not a test file.  Nothing here imports the compiler: the
tiled-weight generator follows the definition in the project's research notes (flatten the
weight row-major, n values; the tile t is n/p signs; the flat weight is t repeated p times, copy k
scaled by alpha_k > 0) and every model carries a numpy forward pass written from the math of its
ONNX operators, so tests can check onnxruntime against numpy and the compiler against
onnxruntime.

>>> import numpy as np
>>> w = tiled_weight((8, 6), p=4, rng=np.random.default_rng(0))
>>> flat = w.ravel()
>>> bool(np.all(np.sign(flat[:12]) == np.sign(flat[12:24])))
True
>>> zm = gemm_tiled_bias()
>>> [(layer.format, layer.p) for layer in zm.layers]
[('tiled', 4)]
"""

from __future__ import annotations

import dataclasses
import gzip
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

OPSET = 17
IR_VERSION = 8
REPO_ROOT = Path(__file__).resolve().parents[1]
DATA_DIR = REPO_ROOT / "tbn_tvm" / "data"
AUTHORS_MLP_NPZ = DATA_DIR / "tbn-authors-mnist-mlp.npz"
MNIST_DIR = DATA_DIR / "mnist"

ALPHAS = ("per_copy", "single", "per_channel")


# --------------------------------------------------------------------------------------------
# Tiled weights
# --------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Tiled:
    """A tiled weight and the parts it was made from (framework layout)."""

    weight: np.ndarray  # float32, the requested shape
    tile: np.ndarray  # float32 +-1, length L = n / p
    scales: np.ndarray  # float32 > 0: p (per_copy), 1 (single) or shape[0] (per_channel) values
    p: int
    alpha: str

    @property
    def L(self) -> int:  # noqa: N802 - the paper's name
        return int(self.tile.size)


def _is_primitive(signs: np.ndarray) -> bool:
    """True when ``signs`` is not a repetition of a shorter block (so p is exactly n / L)."""
    length = signs.size
    for d in range(1, length):
        if length % d == 0 and np.array_equal(signs, np.tile(signs[:d], length // d)):
            return False
    return True


def _distinct_positive(rng: np.random.Generator, count: int, low: float = 0.05, high: float = 1.0):
    while True:
        values = rng.uniform(low, high, size=count).astype(np.float32)
        if np.unique(values).size == count:
            return values


def make_tiled(
    shape: Sequence[int],
    p: int | None = None,
    alpha: str = "per_copy",
    rng: np.random.Generator | None = None,
    L: int | None = None,  # noqa: N803 - the paper's name
) -> Tiled:
    """A random tiled weight of ``shape`` with compression factor ``p`` (or tile length ``L``).

    ``alpha``: ``"per_copy"`` (one positive scale per copy of the tile, all distinct),
    ``"single"`` (one scale) or ``"per_channel"`` (sign-periodic, each output row ``shape[0]``
    scaled by its own positive scale, as BatchNorm folding writes it).  The tile is drawn so that
    it is not itself periodic, hence ``p`` is the largest compression factor the weight has.
    """
    if alpha not in ALPHAS:
        raise ValueError(f"alpha must be one of {ALPHAS}, not {alpha!r}")
    rng = rng if rng is not None else np.random.default_rng(0)
    shape = tuple(int(s) for s in shape)
    n = math.prod(shape)
    if p is None and L is None:
        raise ValueError("give p or L")
    if p is None:
        p = n // L
    if L is None:
        L = n // p
    if p * L != n:
        raise ValueError(f"p={p} x L={L} != n={n} for shape {shape}")
    while True:
        tile = rng.choice(np.array([-1.0, 1.0], dtype=np.float32), size=L)
        if _is_primitive(tile):
            break
    flat_signs = np.tile(tile, p)
    if alpha == "per_copy":
        scales = _distinct_positive(rng, p) if p > 1 else _distinct_positive(rng, 1)
        flat = flat_signs * np.repeat(scales, L)
    elif alpha == "single":
        scales = _distinct_positive(rng, 1)
        flat = flat_signs * scales[0]
    else:
        scales = _distinct_positive(rng, shape[0])
        flat = flat_signs * np.repeat(scales, n // shape[0])
    return Tiled(flat.reshape(shape).astype(np.float32), tile, scales, p, alpha)


def tiled_weight(
    shape: Sequence[int],
    p: int | None = None,
    alpha: str = "per_copy",
    rng: np.random.Generator | None = None,
    L: int | None = None,  # noqa: N803
) -> np.ndarray:
    """The float32 tiled weight of :func:`make_tiled` (framework layout, row-major)."""
    return make_tiled(shape, p, alpha, rng, L).weight


def flip_one_sign(weight: np.ndarray, index: int) -> np.ndarray:
    out = weight.copy().ravel()
    out[index] = -out[index]
    return out.reshape(weight.shape)


# --------------------------------------------------------------------------------------------
# What a test expects the compiler to report about each weighted layer
# --------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class LayerSpec:
    """Expected report entry of one weighted layer (graph order)."""

    weight_shape: tuple[int, ...]  # framework layout: [out, in], [O, I/g, kh, kw], [O, I, k]
    format: str  # "tiled" | "binary" | "dense"
    p: int | None = None  # tiled/binary
    alpha: frozenset[str] = frozenset()  # accepted alpha labels (tiled/binary)
    L: int | None = None  # tile length in bits (tiled/binary)
    n_scales: int = 0
    bias: int = 0  # bias elements
    stored_shape: tuple[int, ...] | None = None  # shape in the ONNX file when it differs
    # other reports that are also right (lossless encodings the definition does not name)
    alternatives: tuple[LayerSpec, ...] = ()

    @property
    def numel(self) -> int:
        return math.prod(self.weight_shape)

    def accepted_bytes(self) -> set[int]:
        """Weight storage: tile bits in uint32 words + 4 bytes per scale, or 4 bytes/element
        (one value per accepted alpha label)."""
        if self.format == "dense":
            return {4 * self.numel}
        counts = {"per_copy": self.p, "single": 1, "per_channel": self.weight_shape[0]}
        n_scales = {counts[a] for a in self.alpha if a in counts} | {self.n_scales}
        return {4 * math.ceil(self.L / 32) + 4 * k for k in n_scales}

    @property
    def compact_bytes(self) -> int:
        """The largest accepted weight storage (bytes), alternatives included."""
        return max([max(self.accepted_bytes())] + [a.compact_bytes for a in self.alternatives])

    def shapes(self) -> set[tuple[int, ...]]:
        s = {self.weight_shape}
        if self.stored_shape is not None:
            s.add(self.stored_shape)
        return s


def _tiled_spec(t: Tiled, shape, bias: int = 0, stored_shape=None, alpha=None) -> LayerSpec:
    n_scales = {"per_copy": t.p, "single": 1, "per_channel": shape[0]}[t.alpha]
    fmt = "binary" if t.p == 1 else "tiled"
    labels = frozenset({t.alpha} if alpha is None else alpha)
    if n_scales == 1:  # one scale is "single", whatever the weight was built as
        labels |= {"single"}
    spec = LayerSpec(tuple(shape), fmt, t.p, labels, t.L, n_scales, bias, stored_shape)
    if 2 * spec.compact_bytes > 4 * spec.numel:  # saves less than 2x: keeping it dense is fine too
        spec = dataclasses.replace(spec, alternatives=(_dense_spec(shape, bias, stored_shape),))
    return spec


def _dense_spec(shape, bias: int = 0, stored_shape=None, alternatives=()) -> LayerSpec:
    return LayerSpec(tuple(shape), "dense", bias=bias, stored_shape=stored_shape, alternatives=alternatives)


# --------------------------------------------------------------------------------------------
# Numpy references of the ONNX operators used here (float64 inside)
# --------------------------------------------------------------------------------------------
def np_conv(x, w, b=None, strides=None, pads=None, dilations=None, group=1):
    """N-d convolution (ONNX Conv semantics, NC* layout), written out with numpy."""
    x = np.asarray(x, np.float64)
    w = np.asarray(w, np.float64)
    nd = w.ndim - 2
    strides = strides or [1] * nd
    dilations = dilations or [1] * nd
    pads = pads or [0] * (2 * nd)
    xp = np.pad(x, [(0, 0), (0, 0)] + [(pads[i], pads[i + nd]) for i in range(nd)])
    k = w.shape[2:]
    out = [(xp.shape[2 + i] - dilations[i] * (k[i] - 1) - 1) // strides[i] + 1 for i in range(nd)]
    n_out, cg = w.shape[0], w.shape[1]
    og = n_out // group
    y = np.zeros((x.shape[0], n_out, *out))
    for g in range(group):
        xg = xp[:, g * cg : (g + 1) * cg]
        wg = w[g * og : (g + 1) * og]
        for kidx in np.ndindex(*k):
            sl = tuple(
                slice(
                    kidx[i] * dilations[i], kidx[i] * dilations[i] + strides[i] * (out[i] - 1) + 1, strides[i]
                )
                for i in range(nd)
            )
            patch = xg[(slice(None), slice(None)) + sl]
            y[:, g * og : (g + 1) * og] += np.einsum("nc...,oc->no...", patch, wg[(Ellipsis,) + kidx])
    if b is not None:
        y += np.asarray(b, np.float64).reshape((1, -1) + (1,) * nd)
    return y


def np_batchnorm(x, gamma, beta, mean, var, eps):
    shape = (1, -1) + (1,) * (x.ndim - 2)
    r = lambda a: np.asarray(a, np.float64).reshape(shape)  # noqa: E731
    return (x - r(mean)) / np.sqrt(r(var) + eps) * r(gamma) + r(beta)


def np_lp_normalize(x, axis=-1):
    return x / np.sqrt(np.sum(x * x, axis=axis, keepdims=True))


# --------------------------------------------------------------------------------------------
# A tiny graph builder that writes the ONNX graph and the numpy forward pass side by side
# --------------------------------------------------------------------------------------------
Fn = Callable[[dict], np.ndarray]


@dataclass
class _T:
    name: str
    fn: Fn
    shape: tuple[int, ...]


@dataclass
class _Builder:
    nodes: list = field(default_factory=list)
    inits: list = field(default_factory=list)
    inputs: list = field(default_factory=list)
    layers: list = field(default_factory=list)
    _count: int = 0

    def _name(self, base: str) -> str:
        self._count += 1
        return f"{base}{self._count}"

    def const(self, array: np.ndarray, name: str) -> str:
        self.inits.append(numpy_helper.from_array(np.asarray(array), name))
        return name

    def input(self, name: str, shape: Sequence) -> _T:
        self.inputs.append(helper.make_tensor_value_info(name, TensorProto.FLOAT, list(shape)))
        return _T(name, lambda env, n=name: np.asarray(env[n], np.float64), tuple(shape))

    def node(self, op: str, inputs: list[str], name: str | None = None, **attrs) -> str:
        name = name or self._name(op.lower())
        out = name + "_out"
        self.nodes.append(helper.make_node(op, inputs, [out], name=name, **attrs))
        return out

    # -- layers ---------------------------------------------------------------------------
    def gemm(self, x: _T, w: np.ndarray, b=None, trans_b: int = 1, name=None, w_name=None) -> _T:
        """y = x W^T + b with W in [out, in] layout; trans_b=0 stores W^T ([in, out])."""
        name = name or self._name("gemm")
        stored = w if trans_b else w.T.copy()
        ins = [x.name, self.const(stored, w_name or f"{name}.weight")]
        if b is not None:
            ins.append(self.const(b, f"{name}.bias"))
        out = self.node("Gemm", ins, name=name, transB=trans_b)
        wd = w.astype(np.float64)
        bd = None if b is None else b.astype(np.float64)

        def fn(env, f=x.fn):
            y = f(env) @ wd.T
            return y if bd is None else y + bd

        return _T(out, fn, (x.shape[0], w.shape[0]))

    def gemm_from(self, x: _T, w_name: str, w: np.ndarray, b=None, name=None) -> _T:
        """Gemm transB=1 whose weight ``w_name`` is computed by other nodes (value ``w``)."""
        name = name or self._name("gemm")
        ins = [x.name, w_name] + ([self.const(b, f"{name}.bias")] if b is not None else [])
        out = self.node("Gemm", ins, name=name, transB=1)
        wd = w.astype(np.float64)
        bd = None if b is None else b.astype(np.float64)

        def fn(env, f=x.fn):
            y = f(env) @ wd.T
            return y if bd is None else y + bd

        return _T(out, fn, (x.shape[0], w.shape[0]))

    def matmul(self, x: _T, w: np.ndarray, name=None) -> _T:
        """y = x @ W^T, the weight stored transposed ([in, out]) as MatMul needs it."""
        name = name or self._name("matmul")
        out = self.node("MatMul", [x.name, self.const(w.T.copy(), f"{name}.weight")], name=name)
        wd = w.astype(np.float64)
        return _T(out, lambda env, f=x.fn: f(env) @ wd.T, x.shape[:-1] + (w.shape[0],))

    def conv(
        self,
        x: _T,
        w: np.ndarray,
        b=None,
        strides=None,
        pads=None,
        dilations=None,
        group=1,
        name=None,
        w_name=None,
        w_const=True,
    ) -> _T:
        name = name or self._name("conv")
        nd = w.ndim - 2
        strides = strides or [1] * nd
        pads = pads or [0] * (2 * nd)
        dilations = dilations or [1] * nd
        wn = w_name or f"{name}.weight"
        if w_const:
            self.const(w, wn)
        ins = [x.name, wn] + ([self.const(b, f"{name}.bias")] if b is not None else [])
        out = self.node(
            "Conv",
            ins,
            name=name,
            strides=list(strides),
            pads=list(pads),
            dilations=list(dilations),
            group=group,
            kernel_shape=list(w.shape[2:]),
        )

        def fn(env, f=x.fn):
            return np_conv(f(env), w, b, strides, pads, dilations, group)

        spatial = tuple(
            (x.shape[2 + i] + pads[i] + pads[i + nd] - dilations[i] * (w.shape[2 + i] - 1) - 1) // strides[i]
            + 1
            for i in range(nd)
        )
        return _T(out, fn, (x.shape[0], w.shape[0]) + spatial)

    def batchnorm(self, x: _T, gamma, beta, mean, var, eps=1e-5, name=None) -> _T:
        name = name or self._name("bn")
        ins = [x.name] + [
            self.const(a.astype(np.float32), f"{name}.{k}")
            for k, a in zip(("scale", "bias", "mean", "var"), (gamma, beta, mean, var), strict=True)
        ]
        out = self.node("BatchNormalization", ins, name=name, epsilon=eps)
        return _T(out, lambda env, f=x.fn: np_batchnorm(f(env), gamma, beta, mean, var, eps), x.shape)

    def relu(self, x: _T) -> _T:
        return _T(self.node("Relu", [x.name]), lambda env, f=x.fn: np.maximum(f(env), 0.0), x.shape)

    def add(self, a: _T, b: _T) -> _T:
        return _T(self.node("Add", [a.name, b.name]), lambda env, f=a.fn, g=b.fn: f(env) + g(env), a.shape)

    def flatten(self, x: _T) -> _T:
        out = self.node("Flatten", [x.name], axis=1)
        return _T(
            out, lambda env, f=x.fn: f(env).reshape(f(env).shape[0], -1), (x.shape[0], math.prod(x.shape[1:]))
        )

    def lp_normalize(self, x: _T, name=None) -> _T:
        out = self.node("LpNormalization", [x.name], name=name, axis=-1, p=2)
        return _T(out, lambda env, f=x.fn: np_lp_normalize(f(env)), x.shape)

    def finish(
        self,
        name: str,
        outputs: list[_T],
        layers: list[LayerSpec],
        extra_const_bytes: int = 0,
        out_names: list[str] | None = None,
    ) -> ZooModel:
        out_names = out_names or (["y"] if len(outputs) == 1 else [f"y{i}" for i in range(len(outputs))])
        outs = []
        for t, n in zip(outputs, out_names, strict=True):
            self.nodes.append(helper.make_node("Identity", [t.name], [n], name=f"out_{n}"))
            outs.append(helper.make_tensor_value_info(n, TensorProto.FLOAT, list(t.shape)))
        graph = helper.make_graph(self.nodes, name, self.inputs, outs, initializer=self.inits)
        model = helper.make_model(
            graph, opset_imports=[helper.make_opsetid("", OPSET)], producer_name="tbn-tvm-tests"
        )
        model.ir_version = IR_VERSION
        onnx.checker.check_model(model, full_check=True)
        inputs = {i.name: tuple(d.dim_value for d in i.type.tensor_type.shape.dim) for i in self.inputs}
        fns = [t.fn for t in outputs]

        def reference(env: dict) -> list[np.ndarray]:
            return [f(env).astype(np.float32) for f in fns]

        return ZooModel(
            name,
            model,
            inputs,
            dict(zip(out_names, [t.shape for t in outputs], strict=True)),
            reference,
            layers,
            extra_const_bytes,
        )


@dataclass
class ZooModel:
    """One test model: the ONNX proto, its static input/output shapes, a numpy reference and
    the report entries a compiler should produce for its weighted layers (graph order)."""

    name: str
    model: onnx.ModelProto
    inputs: dict[str, tuple[int, ...]]
    outputs: dict[str, tuple[int, ...]]
    reference: Callable[[dict], list[np.ndarray]]
    layers: list[LayerSpec]
    extra_const_bytes: int = 0  # other constants a build may keep (BatchNorm parameters)

    @property
    def input_name(self) -> str:
        return next(iter(self.inputs))

    @property
    def input_shape(self) -> tuple[int, ...]:
        return next(iter(self.inputs.values()))

    @property
    def output_shape(self) -> tuple[int, ...]:
        return next(iter(self.outputs.values()))

    def sample(self, seed: int = 0, n: int | None = None) -> dict[str, np.ndarray]:
        """Random float32 inputs: one sample of each input's shape, or ``n`` stacked ([n, *shape])."""
        rng = np.random.default_rng(seed)
        lead = () if n is None else (n,)
        return {k: rng.standard_normal(lead + s).astype(np.float32) for k, s in self.inputs.items()}

    def forward(self, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
        """The numpy reference on one sample (each input of its model shape)."""
        return self.reference(feeds)

    def save(self, path: Path) -> Path:
        path = Path(path)
        onnx.save(self.model, str(path))
        return path

    @property
    def bias_bytes(self) -> int:
        return 4 * sum(layer.bias for layer in self.layers)

    @property
    def compact_weight_bytes(self) -> int:
        return sum(layer.compact_bytes for layer in self.layers)

    @property
    def fp32_bytes(self) -> int:
        return 4 * sum(layer.numel for layer in self.layers)

    @property
    def built_constant_budget(self) -> float:
        """Upper bound on constant bytes in a built module: compact weights + biases + extras, +1 %."""
        return 1.01 * (self.compact_weight_bytes + self.bias_bytes + self.extra_const_bytes)


# --------------------------------------------------------------------------------------------
# The zoo
# --------------------------------------------------------------------------------------------
def _rng(seed: int) -> np.random.Generator:
    return np.random.default_rng(seed)


def _bias(rng, n):
    return rng.uniform(-0.5, 0.5, size=n).astype(np.float32)


def gemm_tiled_bias() -> ZooModel:
    """Gemm transB=1, W [32, 64] tiled p=4 with 4 alphas, bias."""
    rng = _rng(1)
    b = _Builder()
    x = b.input("x", (1, 64))
    t = make_tiled((32, 64), 4, "per_copy", rng)
    y = b.gemm(x, t.weight, _bias(rng, 32), name="fc")
    return b.finish("gemm_tiled_bias", [y], [_tiled_spec(t, (32, 64), bias=32)])


def gemm_transb0() -> ZooModel:
    """Gemm transB=0: B is W^T ([in, out]); W [24, 48] tiled p=8, one alpha; bias; batch 2."""
    rng = _rng(2)
    b = _Builder()
    x = b.input("x", (2, 48))
    t = make_tiled((24, 48), 8, "single", rng)
    y = b.gemm(x, t.weight, _bias(rng, 24), trans_b=0, name="fc")
    return b.finish("gemm_transb0", [y], [_tiled_spec(t, (24, 48), bias=24, stored_shape=(48, 24))])


def matmul_in_out() -> ZooModel:
    """MatMul with an [in, out] weight (W^T of a [40, 96] Linear weight tiled p=4)."""
    rng = _rng(3)
    b = _Builder()
    x = b.input("x", (1, 96))
    t = make_tiled((40, 96), 4, "per_copy", rng)
    y = b.matmul(x, t.weight, name="fc")
    return b.finish("matmul_in_out", [y], [_tiled_spec(t, (40, 96), stored_shape=(96, 40))])


def matmul_3d() -> ZooModel:
    """MatMul of a 3-D input [B=2, T=5, in=32] with an [in, out] tiled weight (p=2)."""
    rng = _rng(4)
    b = _Builder()
    x = b.input("x", (2, 5, 32))
    t = make_tiled((16, 32), 2, "per_copy", rng)
    y = b.matmul(x, t.weight, name="fc")
    return b.finish("matmul_3d", [y], [_tiled_spec(t, (16, 32), stored_shape=(32, 16))])


def conv2d_tiled() -> ZooModel:
    """Conv2d stride 2, padding 2, dilation 2, groups 2, bias; W [8, 2, 3, 3] tiled p=4."""
    rng = _rng(5)
    b = _Builder()
    x = b.input("x", (1, 4, 13, 13))
    t = make_tiled((8, 2, 3, 3), 4, "per_copy", rng)
    y = b.conv(
        x, t.weight, _bias(rng, 8), strides=[2, 2], pads=[2, 2, 2, 2], dilations=[2, 2], group=2, name="conv"
    )
    return b.finish("conv2d_tiled", [y], [_tiled_spec(t, (8, 2, 3, 3), bias=8)])


def conv1d_tiled() -> ZooModel:
    """Conv1d stride 2, padding 2, bias; W [12, 6, 5] tiled p=4."""
    rng = _rng(6)
    b = _Builder()
    x = b.input("x", (1, 6, 20))
    t = make_tiled((12, 6, 5), 4, "per_copy", rng)
    y = b.conv(x, t.weight, _bias(rng, 12), strides=[2], pads=[2, 2], name="conv")
    return b.finish("conv1d_tiled", [y], [_tiled_spec(t, (12, 6, 5), bias=12)])


def expand_form_gemm() -> ZooModel:
    """The exporter's unfolded form: tile [1, L] -Expand-> [p, L] -Mul alphas [p, 1]- -Reshape->
    W [32, 48] (p=4), then Gemm transB=1 with bias."""
    rng = _rng(7)
    b = _Builder()
    x = b.input("x", (1, 48))
    t = make_tiled((32, 48), 4, "per_copy", rng)
    tile = b.const(t.tile.reshape(1, -1), "fc.tile")
    shp = b.const(np.array([t.p, t.L], np.int64), "fc.expand_shape")
    alphas = b.const(t.scales.reshape(-1, 1), "fc.alphas")
    wshape = b.const(np.array([32, 48], np.int64), "fc.weight_shape")
    e = b.node("Expand", [tile, shp], name="fc_expand")
    m = b.node("Mul", [e, alphas], name="fc_mul")
    w = b.node("Reshape", [m, wshape], name="fc_reshape")
    y = b.gemm_from(x, w, t.weight, _bias(rng, 32), name="fc")
    return b.finish("expand_form_gemm", [y], [_tiled_spec(t, (32, 48), bias=32)])


def tile_form_conv() -> ZooModel:
    """The exporter's unfolded form with Tile: tile [L] -Tile p-> [p L] -Reshape-> [p, L]
    -Mul alphas [p, 1]- -Reshape-> W [8, 4, 3, 3] (p=4), then Conv (padding 1, bias)."""
    rng = _rng(8)
    b = _Builder()
    x = b.input("x", (1, 4, 9, 9))
    t = make_tiled((8, 4, 3, 3), 4, "per_copy", rng)
    tile = b.const(t.tile, "conv.tile")
    reps = b.const(np.array([t.p], np.int64), "conv.repeats")
    pl = b.const(np.array([t.p, t.L], np.int64), "conv.pl")
    alphas = b.const(t.scales.reshape(-1, 1), "conv.alphas")
    wshape = b.const(np.array(t.weight.shape, np.int64), "conv.weight_shape")
    r = b.node("Tile", [tile, reps], name="conv_tile")
    r = b.node("Reshape", [r, pl], name="conv_reshape_pl")
    r = b.node("Mul", [r, alphas], name="conv_mul")
    w = b.node("Reshape", [r, wshape], name="conv_reshape_w")
    y = b.conv(x, t.weight, _bias(rng, 8), pads=[1, 1, 1, 1], name="conv", w_name=w, w_const=False)
    return b.finish("tile_form_conv", [y], [_tiled_spec(t, (8, 4, 3, 3), bias=8)])


def bn_folded_conv() -> ZooModel:
    """BatchNorm folded into a tiled conv: sign-periodic filters (p=4), each output channel with
    its own positive scale; bias."""
    rng = _rng(9)
    b = _Builder()
    x = b.input("x", (1, 4, 8, 8))
    t = make_tiled((16, 4, 3, 3), 4, "per_channel", rng)
    y = b.conv(x, t.weight, _bias(rng, 16), pads=[1, 1, 1, 1], name="conv")
    return b.finish("bn_folded_conv", [y], [_tiled_spec(t, (16, 4, 3, 3), bias=16)])


def bn_folded_gemm() -> ZooModel:
    """Per-row positive scales on a sign-periodic Linear weight [24, 40] (p=3); bias."""
    rng = _rng(10)
    b = _Builder()
    x = b.input("x", (1, 40))
    t = make_tiled((24, 40), 3, "per_channel", rng)
    y = b.gemm(x, t.weight, _bias(rng, 24), name="fc")
    return b.finish("bn_folded_gemm", [y], [_tiled_spec(t, (24, 40), bias=24)])


def conv_bn() -> ZooModel:
    """Un-folded Conv (tiled p=2, no bias) -> BatchNormalization -> Relu."""
    rng = _rng(11)
    b = _Builder()
    x = b.input("x", (1, 4, 8, 8))
    t = make_tiled((8, 4, 3, 3), 2, "per_copy", rng)
    c = b.conv(x, t.weight, None, pads=[1, 1, 1, 1], name="conv")
    gamma = rng.uniform(0.5, 1.5, 8).astype(np.float32)
    beta = _bias(rng, 8)
    mean = _bias(rng, 8)
    var = rng.uniform(0.5, 2.0, 8).astype(np.float32)
    y = b.relu(b.batchnorm(c, gamma, beta, mean, var, name="bn"))
    # a compiler may fold BN into the conv (per-channel scales) or keep it
    spec = _tiled_spec(t, (8, 4, 3, 3), alpha={"per_copy", "per_channel"})
    return b.finish("conv_bn", [y], [spec], extra_const_bytes=4 * 4 * 8)


def gemm_l_not_dividing_k() -> ZooModel:
    """Linear 10x128 tiled p=4: L=320 is not a multiple of the row length K=128."""
    rng = _rng(12)
    b = _Builder()
    x = b.input("x", (1, 128))
    t = make_tiled((10, 128), 4, "per_copy", rng)
    y = b.gemm(x, t.weight, _bias(rng, 10), name="fc")
    return b.finish("gemm_l_not_dividing_k", [y], [_tiled_spec(t, (10, 128), bias=10)])


def gemm_l_k_coprime() -> ZooModel:
    """Linear 6x100 tiled p=4: L=150, K=100, neither divides the other."""
    rng = _rng(13)
    b = _Builder()
    x = b.input("x", (1, 100))
    t = make_tiled((6, 100), 4, "per_copy", rng)
    y = b.gemm(x, t.weight, None, name="fc")
    return b.finish("gemm_l_k_coprime", [y], [_tiled_spec(t, (6, 100))])


def gemm_binary() -> ZooModel:
    """A plain binary layer (p=1, one alpha): W [16, 32]."""
    rng = _rng(14)
    b = _Builder()
    x = b.input("x", (1, 32))
    t = make_tiled((16, 32), 1, "single", rng)
    y = b.gemm(x, t.weight, None, name="fc")
    return b.finish("gemm_binary", [y], [_tiled_spec(t, (16, 32))])


def gemm_dense() -> ZooModel:
    """A random dense layer W [16, 32] with bias: must stay dense."""
    rng = _rng(15)
    b = _Builder()
    x = b.input("x", (1, 32))
    w = (rng.standard_normal((16, 32)) * 0.2).astype(np.float32)
    y = b.gemm(x, w, _bias(rng, 16), name="fc")
    return b.finish("gemm_dense", [y], [_dense_spec((16, 32), bias=16)])


def gemm_flipped_sign() -> ZooModel:
    """A tiled weight (W [10, 48], p=4, distinct alphas, copy boundaries inside rows) with one
    sign flipped: no longer tiled (no p > 1), but still exactly ±alpha per copy of 120
    elements: its cheapest exact form is binary (480 sign bits) with 4 per-chunk scales."""
    rng = _rng(16)
    b = _Builder()
    x = b.input("x", (1, 48))
    t = make_tiled((10, 48), 4, "per_copy", rng)
    w = flip_one_sign(t.weight, 200)
    y = b.gemm(x, w, None, name="fc")
    spec = LayerSpec((10, 48), "binary", 1, frozenset({"per_chunk"}), 480, 4)
    return b.finish("gemm_flipped_sign", [y], [spec])


def gemm_perturbed_magnitude() -> ZooModel:
    """A tiled weight (W [12, 40], p=4, distinct alphas) with one element's magnitude changed
    by 1.0001x: not sign times a scale, nor a small integer times one (a change by 1.5x would
    be: a 3-bit grid, which the bit-plane format stores exactly), so it must stay dense."""
    rng = _rng(23)
    b = _Builder()
    x = b.input("x", (1, 40))
    t = make_tiled((12, 40), 4, "per_copy", rng)
    w = t.weight.copy()
    w.flat[173] *= np.float32(1.0001)
    y = b.gemm(x, w, _bias(rng, 12), name="fc")
    return b.finish("gemm_perturbed_magnitude", [y], [_dense_spec((12, 40), bias=12)])


def mlp() -> ZooModel:
    """64 -> 64 (tiled p=4, bias) -> Relu -> 32 (binary) -> Relu -> 10 (dense, bias)."""
    rng = _rng(17)
    b = _Builder()
    x = b.input("x", (1, 64))
    t1 = make_tiled((64, 64), 4, "per_copy", rng)
    t2 = make_tiled((32, 64), 1, "single", rng)
    w3 = (rng.standard_normal((10, 32)) * 0.3).astype(np.float32)
    h = b.relu(b.gemm(x, t1.weight, _bias(rng, 64), name="fc1"))
    h = b.relu(b.gemm(h, t2.weight, None, name="fc2"))
    y = b.gemm(h, w3, _bias(rng, 10), name="fc3")
    layers = [_tiled_spec(t1, (64, 64), bias=64), _tiled_spec(t2, (32, 64)), _dense_spec((10, 32), bias=10)]
    return b.finish("mlp", [y], layers)


def cnn() -> ZooModel:
    """[1,3,12,12] -> conv 16 (tiled p=4, pad 1, bias) -> Relu -> conv 8 (stride 2, pad 1,
    per-channel scales p=2, bias) -> Relu -> Flatten -> Gemm 10 (binary) ."""
    rng = _rng(18)
    b = _Builder()
    x = b.input("x", (1, 3, 12, 12))
    t1 = make_tiled((16, 3, 3, 3), 4, "per_copy", rng)
    t2 = make_tiled((8, 16, 3, 3), 2, "per_channel", rng)
    t3 = make_tiled((10, 8 * 6 * 6), 1, "single", rng)
    h = b.relu(b.conv(x, t1.weight, _bias(rng, 16), pads=[1, 1, 1, 1], name="conv1"))
    h = b.relu(b.conv(h, t2.weight, _bias(rng, 8), strides=[2, 2], pads=[1, 1, 1, 1], name="conv2"))
    y = b.gemm(b.flatten(h), t3.weight, None, name="fc")
    layers = [
        _tiled_spec(t1, (16, 3, 3, 3), bias=16),
        _tiled_spec(t2, (8, 16, 3, 3), bias=8),
        _tiled_spec(t3, (10, 288)),
    ]
    return b.finish("cnn", [y], layers)


def two_inputs() -> ZooModel:
    """Inputs a, b [1, 32]: y = Gemm(a + b, W tiled p=2 [16, 32])."""
    rng = _rng(19)
    b = _Builder()
    a = b.input("a", (1, 32))
    c = b.input("b", (1, 32))
    t = make_tiled((16, 32), 2, "per_copy", rng)
    y = b.gemm(b.add(a, c), t.weight, None, name="fc")
    return b.finish("two_inputs", [y], [_tiled_spec(t, (16, 32))])


def two_outputs() -> ZooModel:
    """x [1, 32] -> y0 = Gemm(tiled p=4 [16, 32]); y1 = Gemm(Relu(y0), dense [8, 16])."""
    rng = _rng(20)
    b = _Builder()
    x = b.input("x", (1, 32))
    t = make_tiled((16, 32), 4, "per_copy", rng)
    w2 = (rng.standard_normal((8, 16)) * 0.3).astype(np.float32)
    y0 = b.gemm(x, t.weight, None, name="fc1")
    y1 = b.gemm(b.relu(y0), w2, None, name="fc2")
    return b.finish("two_outputs", [y0, y1], [_tiled_spec(t, (16, 32)), _dense_spec((8, 16))])


def random_tiled_gemm(rows: int, cols: int, p: int, alpha: str, seed: int, bias: bool = True) -> ZooModel:
    """Gemm transB=1 with a random tiled weight [rows, cols] (for property tests)."""
    rng = _rng(seed)
    b = _Builder()
    x = b.input("x", (1, cols))
    t = make_tiled((rows, cols), p, alpha, rng)
    y = b.gemm(x, t.weight, _bias(rng, rows) if bias else None, name="fc")
    spec = _tiled_spec(t, (rows, cols), bias=rows if bias else 0)
    return b.finish(f"random_tiled_gemm_{rows}x{cols}_p{p}_{alpha}", [y], [spec])


# Models with one input and one output, each a case the compiler must handle.
ZOO: dict[str, Callable[[], ZooModel]] = {
    f.__name__: f
    for f in (
        gemm_tiled_bias,
        gemm_transb0,
        matmul_in_out,
        matmul_3d,
        conv2d_tiled,
        conv1d_tiled,
        expand_form_gemm,
        tile_form_conv,
        bn_folded_conv,
        bn_folded_gemm,
        conv_bn,
        gemm_l_not_dividing_k,
        gemm_l_k_coprime,
        gemm_binary,
        gemm_dense,
        gemm_flipped_sign,
        gemm_perturbed_magnitude,
        mlp,
        cnn,
    )
}
MULTI_IO: dict[str, Callable[[], ZooModel]] = {f.__name__: f for f in (two_inputs, two_outputs)}


# --------------------------------------------------------------------------------------------
# Models the compiler must reject
# --------------------------------------------------------------------------------------------
def unsupported_op_model() -> tuple[onnx.ModelProto, str, str]:
    """Gemm then LpNormalization, an op TVM 0.27's Relax ONNX importer has no converter for.
    Returns (model, op_type, node_name)."""
    rng = _rng(21)
    b = _Builder()
    x = b.input("x", (1, 32))
    h = b.gemm(x, tiled_weight((16, 32), 4, rng=rng), None, name="fc")
    y = b.lp_normalize(h, name="l2norm_node")
    return b.finish("unsupported_op", [y], []).model, "LpNormalization", "l2norm_node"


def dynamic_batch_model() -> onnx.ModelProto:
    """Gemm whose input has a symbolic batch dimension ("N", 32)."""
    w = tiled_weight((16, 32), 4, rng=_rng(22))
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 32])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 16])
    node = helper.make_node("Gemm", ["x", "fc.weight"], ["y"], name="fc", transB=1)
    graph = helper.make_graph(
        [node], "dynamic_batch", [x], [y], initializer=[numpy_helper.from_array(w, "fc.weight")]
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)])
    model.ir_version = IR_VERSION
    onnx.checker.check_model(model)
    return model


# --------------------------------------------------------------------------------------------
# The authors' MNIST MLP and the MNIST test set
# --------------------------------------------------------------------------------------------
AUTHORS_ACCURACY = 0.9593
AUTHORS_WEIGHT_BYTES = 3316


def authors_mnist_mlp() -> ZooModel | None:
    """The authors' trained TBN MLP 784 -> 128 (ReLU) -> 10, no biases, as two Gemm transB=1
    with the dense float weights an exporter that folds constants writes.  None if the weights
    are not in the package yet."""
    if not AUTHORS_MLP_NPZ.exists():
        return None
    d = np.load(AUTHORS_MLP_NPZ)
    w1, w2 = d["fc1_weight"].astype(np.float32), d["fc2_weight"].astype(np.float32)
    b = _Builder()
    x = b.input("x", (1, 784))
    h = b.relu(b.gemm(x, w1, None, name="fc1"))
    y = b.gemm(h, w2, None, name="fc2")
    layers = [
        LayerSpec((128, 784), "tiled", 4, frozenset({"per_copy"}), 128 * 784 // 4, 4),
        LayerSpec((10, 128), "binary", 1, frozenset({"single", "per_copy"}), 10 * 128, 1),
    ]
    return b.finish("authors_mnist_mlp", [y], layers)


def authors_mlp_numpy_logits(images: np.ndarray) -> np.ndarray:
    """Numpy forward pass of the authors' MLP on [N, 784] images (float64)."""
    d = np.load(AUTHORS_MLP_NPZ)
    h = np.maximum(images.astype(np.float64) @ d["fc1_weight"].astype(np.float64).T, 0.0)
    return h @ d["fc2_weight"].astype(np.float64).T


def _read_idx_gz(path: Path, offset: int) -> np.ndarray:
    with gzip.open(path, "rb") as f:
        return np.frombuffer(f.read(), np.uint8, offset=offset)


def load_mnist_test() -> tuple[np.ndarray, np.ndarray] | None:
    """(images float32 [10000, 784] in [0, 1], labels int64 [10000]) or None when unavailable.

    Uses ``tbn_tvm.datasets.load_mnist_test`` once it exists, else reads the IDX files in
    ``tbn_tvm/data/mnist/`` directly.
    """
    try:
        from tbn_tvm.datasets import load_mnist_test as package_loader
    except ModuleNotFoundError as e:
        if e.name not in ("tbn_tvm.datasets",):
            raise
        package_loader = None
    if package_loader is not None:
        images, labels = package_loader()
        return np.asarray(images, np.float32).reshape(-1, 784), np.asarray(labels).astype(np.int64)
    img_path = MNIST_DIR / "t10k-images-idx3-ubyte.gz"
    lbl_path = MNIST_DIR / "t10k-labels-idx1-ubyte.gz"
    if not (img_path.exists() and lbl_path.exists()):
        return None
    images = _read_idx_gz(img_path, 16).reshape(-1, 784).astype(np.float32) / 255.0
    labels = _read_idx_gz(lbl_path, 8).astype(np.int64)
    return images, labels


# --------------------------------------------------------------------------------------------
# Comparison helpers
# --------------------------------------------------------------------------------------------
def assert_close(actual, expected, rtol: float = 1e-5, what: str = "") -> None:
    """rtol 1e-5 with an atol of 1e-5 * max|expected| for values near 0."""
    actual = np.asarray(actual)
    expected = np.asarray(expected)
    assert actual.shape == expected.shape, f"{what}: shape {actual.shape} != {expected.shape}"
    atol = rtol * float(np.max(np.abs(expected))) if expected.size else 0.0
    np.testing.assert_allclose(actual, expected, rtol=rtol, atol=atol, err_msg=what)


LAYER_KEYS = {"name", "op", "weight_shape", "format", "p", "alpha", "bits_per_weight", "bytes"}


def _layer_problems(got: dict, exp: LayerSpec) -> list[str]:
    problems = []
    if tuple(got["weight_shape"]) not in exp.shapes():
        problems.append(f"shape {got['weight_shape']}, expected one of {sorted(exp.shapes())}")
    if got["format"] != exp.format:
        problems.append(f"format {got['format']!r}, expected {exp.format!r}")
    if exp.format != "dense":
        if got["p"] != exp.p:
            problems.append(f"p={got['p']}, expected {exp.p}")
        if exp.alpha and got["alpha"] not in exp.alpha:
            problems.append(f"alpha {got['alpha']!r}, expected one of {sorted(exp.alpha)}")
    # bytes: the compact weight storage (tile words + 4 B/scale, or 4 B/element); a bias
    # counted with its layer is tolerated
    accepted = exp.accepted_bytes()
    accepted |= {b + 4 * exp.bias for b in accepted}
    if got["bytes"] not in accepted:
        problems.append(f"bytes {got['bytes']}, expected one of {sorted(accepted)}")
    # bits/weight: storage bits over elements, counted from the words or from the exact tile
    n = exp.numel
    candidates = [8 * got["bytes"] / n]
    if exp.format == "dense":
        candidates.append(32.0)
    else:
        candidates += [
            (exp.L + 32 * k) / n for k in range(1, max(exp.p, exp.weight_shape[0], exp.n_scales) + 1)
        ]
    if not any(math.isclose(got["bits_per_weight"], c, rel_tol=1e-3) for c in candidates):
        problems.append(f"bits_per_weight {got['bits_per_weight']}")
    return problems


def check_layers(layers: list[dict], zm: ZooModel) -> None:
    """Each reported layer (graph order) has the format, p and alpha the model was built with."""
    want = zm.layers
    assert len(layers) == len(want), (
        f"{zm.name}: {len(layers)} layers reported, expected {len(want)}: {layers}"
    )
    for i, (got, exp) in enumerate(zip(layers, want, strict=True)):
        where = f"{zm.name} layer {i} ({got.get('name')})"
        assert LAYER_KEYS <= set(got), f"{where}: missing keys {LAYER_KEYS - set(got)}"
        assert isinstance(got["name"], str) and got["name"], where
        assert isinstance(got["op"], str) and got["op"], where
        problems = _layer_problems(got, exp)
        if problems and any(not _layer_problems(got, alt) for alt in exp.alternatives):
            continue
        assert not problems, f"{where}: " + "; ".join(problems)


def check_total(total: dict, layers: list[dict], zm: ZooModel) -> None:
    assert {"weight_bytes", "fp32_bytes", "compression"} <= set(total)
    assert total["fp32_bytes"] == zm.fp32_bytes
    assert total["weight_bytes"] == sum(layer["bytes"] for layer in layers)
    low = sum(
        min([min(layer.accepted_bytes())] + [min(a.accepted_bytes()) for a in layer.alternatives])
        for layer in zm.layers
    )
    assert low <= total["weight_bytes"] <= zm.compact_weight_bytes + zm.bias_bytes
    assert math.isclose(total["compression"], total["fp32_bytes"] / total["weight_bytes"], rel_tol=1e-3)


def run_onnxruntime(model: onnx.ModelProto, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    opts.inter_op_num_threads = 1
    # keep ORT's own graph rewrites from hiding a bad reference
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    sess = ort.InferenceSession(model.SerializeToString(), opts, providers=["CPUExecutionProvider"])
    return sess.run(None, feeds)


def require_module(name: str):
    """Import ``name`` or skip the calling test module while it is not written yet.

    Only a missing ``name`` itself skips; any other import error fails loudly.
    """
    import importlib

    import pytest

    try:
        return importlib.import_module(name)
    except ModuleNotFoundError as e:
        if e.name == name:
            pytest.skip(f"{name} is not written yet", allow_module_level=True)
        raise
