"""Deterministic ONNX models for the benchmarks (numpy + ``onnx.helper``, fixed seeds).

Every weight is written the way exporters write a Tiled Bit Network: dense float32 values in the
framework layout (``Gemm`` with ``transB=1`` and ``[out, in]`` weights, ``Conv`` with ``OIHW``
weights, BatchNorm folded into the conv weight and bias).  A tiled weight of ``n`` elements is
one random ±1 tile of ``n / p`` signs, repeated ``p`` times over the row-major flattened weight,
copy ``k`` scaled by its own ``alpha_k > 0`` (the paper's layer with one α per copy); ``p = 1``
is a plain binary layer with one α.  Nothing here imports the compiler.

Models (the batch size is a parameter; the batch dimension is fixed in the file, because the
compiler takes static shapes and onnxruntime checks the declared ones):

* :func:`authors_mlp` - the paper authors' MNIST MLP (784 -> 128 -> 10, fc1 tiled p = 4), the
  bundled ``tbn_tvm.zoo`` model with its batch dimension set;
* :func:`wide_mlp` - 4096 -> 4096 -> 4096 -> 10 with ReLU, both hidden layers tiled at ``p``,
  the classifier binary (p = 1, one α);
* :func:`tiled_resnet` - a small ResNet-style CNN on 3x32x32 images: a binary 3x3 stem, three
  residual blocks of two tiled 3x3 convs (p = 4, 4, 8) with BatchNorm folded in (per-channel
  scales and biases), binary 1x1 projection shortcuts, global average pooling, a binary FC.
* :func:`bitplane_gemm`, :func:`codebook_conv` - issue 23's sub-bit layers: a 4-bit bit-plane
  GEMM 128x512, and a codebook conv 96x48x3x3 (τ = 4) at 12x12 with its unstructured binary twin.

>>> m = wide_mlp(p=8, batch=1, width=64)
>>> [n.op_type for n in m.graph.node]
['Gemm', 'Relu', 'Gemm', 'Relu', 'Gemm']
>>> sample_input("wide_mlp", m).shape
(1, 64)
"""

from __future__ import annotations

import math

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

OPSET = 17
IR_VERSION = 9  # readable by onnxruntime releases of 2024-2026

#: Residual stages of :func:`tiled_resnet`: (output channels, stride, p of the 3x3 convs).
RESNET_STAGES = ((32, 1, 4), (64, 2, 4), (128, 2, 8))


# ------------------------------------------------------------------------------- tiled weights
def _alphas(rng: np.random.Generator, count: int, fan_in: int) -> np.ndarray:
    """``count`` distinct positive scales around ``1 / sqrt(fan_in)`` (keeps activations O(1))."""
    while True:
        a = (rng.uniform(0.5, 1.5, size=count) / math.sqrt(fan_in)).astype(np.float32)
        if np.unique(a).size == count:
            return a


def tiled_weight(shape: tuple[int, ...], p: int, rng: np.random.Generator) -> np.ndarray:
    """A float32 weight of ``shape`` made of one ±1 tile of ``n / p`` signs repeated ``p`` times
    along the row-major flattened weight, copy ``k`` scaled by ``alpha_k`` (``p = 1``: binary)."""
    n = math.prod(shape)
    if n % p:
        raise ValueError(f"p={p} does not divide the {n} weights of shape {shape}")
    length = n // p
    tile = np.where(rng.random(length) < 0.5, -1.0, 1.0).astype(np.float32)
    alphas = _alphas(rng, p, math.prod(shape[1:]))
    flat = np.tile(tile, p) * np.repeat(alphas, length)
    return flat.reshape(shape)


def fold_batchnorm(weight: np.ndarray, rng: np.random.Generator, eps: float = 1e-5):
    """Fold a random (positive-γ) BatchNorm into a conv weight: per-output-channel scales on the
    weight and a bias, as exporters do.  Returns ``(weight, bias)``, both float32."""
    out = weight.shape[0]
    gamma = rng.uniform(0.5, 1.5, out).astype(np.float32)
    beta = rng.normal(0.0, 0.1, out).astype(np.float32)
    mean = rng.normal(0.0, 0.1, out).astype(np.float32)
    var = rng.uniform(0.5, 1.5, out).astype(np.float32)
    scale = (gamma / np.sqrt(var + np.float32(eps))).astype(np.float32)
    w = (weight * scale.reshape(-1, *([1] * (weight.ndim - 1)))).astype(np.float32)
    b = (beta - mean * scale).astype(np.float32)
    return w, b


# ------------------------------------------------------------------------------- graph helpers
def _model(name: str, nodes, inputs, outputs, inits) -> onnx.ModelProto:
    graph = helper.make_graph(nodes, name, inputs, outputs, inits)
    model = helper.make_model(
        graph, opset_imports=[helper.make_opsetid("", OPSET)], producer_name="tbn-tvm-bench"
    )
    model.ir_version = IR_VERSION
    onnx.checker.check_model(model)
    return model


def _with_batch(model: onnx.ModelProto, batch: int) -> onnx.ModelProto:
    """A copy of ``model`` whose graph inputs and outputs have batch dimension ``batch``."""
    out = onnx.ModelProto()
    out.CopyFrom(model)
    for vi in [*out.graph.input, *out.graph.output]:
        dim = vi.type.tensor_type.shape.dim[0]
        dim.Clear()
        dim.dim_value = batch
    onnx.checker.check_model(out)
    return out


# ------------------------------------------------------------------------------- the models
def authors_mlp(batch: int = 1) -> onnx.ModelProto:
    """The bundled authors' MNIST MLP (``tbn_tvm.zoo.authors_mnist_mlp``), batch ``batch``."""
    from tbn_tvm import zoo

    model = zoo.authors_mnist_mlp()
    return model if batch == 1 else _with_batch(model, batch)


def wide_mlp(
    p: int, batch: int = 1, width: int = 4096, depth: int = 2, classes: int = 10, seed: int = 0
) -> onnx.ModelProto:
    """``width -> width (x depth) -> classes`` with ReLU, no biases: the ``depth`` hidden layers
    tiled at ``p`` with one α per copy, the classifier binary (p = 1, one α)."""
    rng = np.random.default_rng(seed)
    nodes, inits, cur = [], [], "input"
    for i in range(depth):
        name = f"fc{i + 1}"
        inits.append(numpy_helper.from_array(tiled_weight((width, width), p, rng), f"{name}.weight"))
        nodes.append(helper.make_node("Gemm", [cur, f"{name}.weight"], [f"{name}_out"], transB=1, name=name))
        nodes.append(helper.make_node("Relu", [f"{name}_out"], [f"relu{i + 1}_out"], name=f"relu{i + 1}"))
        cur = f"relu{i + 1}_out"
    name = f"fc{depth + 1}"
    inits.append(numpy_helper.from_array(tiled_weight((classes, width), 1, rng), f"{name}.weight"))
    nodes.append(helper.make_node("Gemm", [cur, f"{name}.weight"], ["logits"], transB=1, name=name))
    return _model(
        f"tbn_mlp{width}_p{p}",
        nodes,
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, [batch, width])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [batch, classes])],
        inits,
    )


def tiled_resnet(
    batch: int = 1,
    image: int = 32,
    stem: int = 32,
    stages: tuple[tuple[int, int, int], ...] = RESNET_STAGES,
    classes: int = 10,
    seed: int = 0,
) -> onnx.ModelProto:
    """A small ResNet-style CNN on ``3 x image x image`` inputs (see the module docstring).

    ``stages`` lists ``(channels, stride, p)`` per residual block; the 1x1 projection shortcut
    (binary, BatchNorm folded) appears where the channels or the resolution change."""
    rng = np.random.default_rng(seed)
    nodes, inits = [], []

    def conv(x: str, name: str, cin: int, cout: int, k: int, stride: int, p: int) -> str:
        w, b = fold_batchnorm(tiled_weight((cout, cin, k, k), p, rng), rng)
        inits.append(numpy_helper.from_array(w, f"{name}.weight"))
        inits.append(numpy_helper.from_array(b, f"{name}.bias"))
        pad = k // 2
        nodes.append(
            helper.make_node(
                "Conv",
                [x, f"{name}.weight", f"{name}.bias"],
                [f"{name}_out"],
                name=name,
                kernel_shape=[k, k],
                strides=[stride, stride],
                pads=[pad] * 4,
            )
        )
        return f"{name}_out"

    def relu(x: str, name: str) -> str:
        nodes.append(helper.make_node("Relu", [x], [f"{name}_out"], name=name))
        return f"{name}_out"

    cur = relu(conv("input", "stem", 3, stem, 3, 1, 1), "stem_relu")
    cin = stem
    for i, (cout, stride, p) in enumerate(stages, start=1):
        h = relu(conv(cur, f"block{i}.conv1", cin, cout, 3, stride, p), f"block{i}.relu1")
        h = conv(h, f"block{i}.conv2", cout, cout, 3, 1, p)
        short = (
            cur if stride == 1 and cin == cout else conv(cur, f"block{i}.shortcut", cin, cout, 1, stride, 1)
        )
        nodes.append(helper.make_node("Add", [h, short], [f"block{i}.add_out"], name=f"block{i}.add"))
        cur = relu(f"block{i}.add_out", f"block{i}.relu2")
        cin = cout
    nodes.append(helper.make_node("GlobalAveragePool", [cur], ["pool_out"], name="pool"))
    nodes.append(helper.make_node("Flatten", ["pool_out"], ["flat_out"], name="flatten", axis=1))
    inits.append(numpy_helper.from_array(tiled_weight((classes, cin), 1, rng), "fc.weight"))
    inits.append(numpy_helper.from_array(rng.normal(0, 0.1, classes).astype(np.float32), "fc.bias"))
    nodes.append(
        helper.make_node("Gemm", ["flat_out", "fc.weight", "fc.bias"], ["logits"], transB=1, name="fc")
    )
    return _model(
        "tbn_resnet",
        nodes,
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, [batch, 3, image, image])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [batch, classes])],
        inits,
    )


def tiled_gemm(m: int = 16, k: int = 512, n: int = 256, p: int = 4, seed: int = 0) -> onnx.ModelProto:
    """One tiled dense layer, issue 10's tuning criterion: ``y = x[m, k] @ W[n, k]^T`` (Gemm
    ``transB=1``, no bias), ``W`` tiled ``p`` with one scale per copy (:func:`tiled_weight`)."""
    w = tiled_weight((n, k), p, np.random.default_rng(seed))
    return _model(
        f"tiled_gemm_{m}x{k}x{n}_p{p}",
        [helper.make_node("Gemm", ["x", "W"], ["y"], transB=1, name="fc")],
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [m, k])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [m, n])],
        [numpy_helper.from_array(w, "W")],
    )


def bitplane_gemm(
    batch: int = 1, n: int = 128, k: int = 512, bits: int = 4, seed: int = 0
) -> onnx.ModelProto:
    """Issue 23's bit-plane GEMM: ``y = x[batch, k] @ W[n, k]^T`` (Gemm ``transB=1``), ``W = α_n·q``
    with ``q`` uniform ``bits``-bit two's-complement integers (the whole range used) and one
    positive α per output row, written as dense float32 (as a bit-wise network exports)."""
    rng = np.random.default_rng(seed)
    q = rng.integers(-(1 << (bits - 1)), 1 << (bits - 1), (n, k))
    q.flat[:2] = [-(1 << (bits - 1)), (1 << (bits - 1)) - 1]
    alpha = _distinct_scales(rng, n) / np.float32(math.sqrt(k) * (1 << (bits - 1)))
    w = (q.astype(np.float32) * alpha.reshape(-1, 1)).astype(np.float32)
    return _model(
        f"bitplane_gemm_{n}x{k}_k{bits}",
        [helper.make_node("Gemm", ["x", "W"], ["y"], transB=1, name="fc")],
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [batch, k])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [batch, n])],
        [numpy_helper.from_array(w, "W")],
    )


def codebook_conv(
    form: str = "codebook",
    batch: int = 1,
    out: int = 96,
    cin: int = 48,
    image: int = 12,
    tau: int = 4,
    seed: int = 0,
) -> onnx.ModelProto:
    """Issue 23's codebook convolution: Conv 3x3, pad 1, ``out`` filters over ``cin`` channels at
    ``image``x``image``, one positive scale per filter.  ``form="codebook"``: every 3x3 sign kernel
    is one of ``2^tau`` distinct ±1 codewords (SNN, Wang et al., ICCV 2021; each used);
    ``form="binary"``: unstructured random ±1 kernels (the same layer as a plain binary network
    would have it, its twin for the comparison)."""
    if form not in ("codebook", "binary"):
        raise ValueError(f"form must be 'codebook' or 'binary', got {form!r}")
    rng = np.random.default_rng(seed)
    if form == "codebook":
        codes = rng.choice(512, size=1 << tau, replace=False)
        book = np.where((codes[:, None] >> np.arange(9)) & 1, 1.0, -1.0).reshape(-1, 3, 3)
        idx = rng.integers(0, 1 << tau, (out, cin))
        idx.flat[: 1 << tau] = np.arange(1 << tau)
        signs = book[idx]
    else:
        signs = np.where(rng.random((out, cin, 3, 3)) < 0.5, -1.0, 1.0)
    scales = _distinct_scales(rng, out) / np.float32(math.sqrt(9 * cin))
    w = (signs * scales.reshape(-1, 1, 1, 1)).astype(np.float32)
    return _model(
        f"{form}_conv_{out}x{cin}x3x3_{image}",
        [helper.make_node("Conv", ["x", "W"], ["y"], pads=[1, 1, 1, 1], name="conv")],
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [batch, cin, image, image])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [batch, out, image, image])],
        [numpy_helper.from_array(w, "W")],
    )


def _primitive_tile(rng: np.random.Generator, length: int) -> np.ndarray:
    """A random ±1 tile of ``length`` signs that is not itself a repetition of a shorter block
    (so the weight's compression factor is exactly the ``p`` it was built with)."""
    while True:
        tile = rng.choice(np.array([-1.0, 1.0], dtype=np.float32), size=length)
        if all(
            length % d or not np.array_equal(tile, np.tile(tile[:d], length // d)) for d in range(1, length)
        ):
            return tile


def _distinct_scales(rng: np.random.Generator, count: int) -> np.ndarray:
    while True:
        values = rng.uniform(0.05, 1.0, size=count).astype(np.float32)
        if np.unique(values).size == count:
            return values


def _tiled_parts(shape: tuple[int, ...], p: int, per_copy: bool, rng: np.random.Generator):
    """``(weight, tile, scales)`` of a tiled weight: one primitive ±1 tile of ``n / p`` signs
    repeated ``p`` times, with one scale per copy (``per_copy``) or one for all."""
    n = math.prod(shape)
    length = n // p
    tile = _primitive_tile(rng, length)
    scales = _distinct_scales(rng, p if per_copy else 1)
    flat = np.tile(tile, p) * (np.repeat(scales, length) if per_copy else scales[0])
    return flat.reshape(shape).astype(np.float32), tile, scales


#: Layers of :func:`conv_bn_cnn`: (name, weight shape, p, one scale per copy).
CNN_LAYERS = (
    ("conv1", (16, 1, 3, 3), 2, False),
    ("conv2", (32, 16, 3, 3), 4, False),
    ("fc1", (64, 32 * 7 * 7), 4, True),
    ("fc2", (10, 64), 1, False),
)


def conv_bn_cnn(form: str = "dense", batch: int = 1, seed: int = 0) -> onnx.ModelProto:
    """A small tiled CNN on 1x28x28 images, a user's model of issue 13: ``(Conv 3x3 pad 1 ->
    BatchNormalization -> Relu -> MaxPool 2x2) x 2 -> Flatten -> Gemm 1568->64 (+bias) -> Relu
    -> Gemm 64->10``; conv1 tiled p=2, conv2 and fc1 p=4, fc2 binary; BatchNorm as its own node
    (inference form, a fifth of the γ negative).  ``form="dense"`` writes every weight as a dense
    float32 initializer; ``form="tile"`` writes what ``tbn_tvm.torch.export_onnx(form="tile")``
    writes: the ±1 tile and the scales as initializers, rebuilt by ``Tile -> Reshape -> Mul ->
    Reshape`` in front of each Conv and ``Expand -> Mul -> Reshape`` in front of each Gemm.
    Both forms compute the same function (same random draws, fixed ``seed``); batch ``batch``."""
    if form not in ("dense", "tile"):
        raise ValueError(f"form must be 'dense' or 'tile', not {form!r}")
    rng = np.random.default_rng(seed)
    inits, nodes = [], []

    def add(name: str, arr) -> str:
        inits.append(numpy_helper.from_array(np.asarray(arr), name))
        return name

    def weight(name: str, shape, p: int, per_copy: bool) -> str:
        w, tile, scales = _tiled_parts(shape, p, per_copy, rng)
        if form == "dense":
            return add(f"{name}.weight", w)
        t = add(f"{name}.tile", tile if len(shape) == 4 else tile.reshape(1, -1))
        alphas = add(f"{name}.alphas", scales.reshape(-1, 1))
        wshape = add(f"{name}.weight_shape", np.array(shape, np.int64))
        if len(shape) == 4:  # Conv: Tile -> Reshape [p, L] -> Mul -> Reshape
            nodes.append(
                helper.make_node(
                    "Tile",
                    [t, add(f"{name}.repeats", np.array([p], np.int64))],
                    [f"{name}.tiled"],
                    name=f"{name}_tile",
                )
            )
            pl = add(f"{name}.pl", np.array([p, tile.size], np.int64))
            nodes.append(
                helper.make_node(
                    "Reshape", [f"{name}.tiled", pl], [f"{name}.rows"], name=f"{name}_reshape_pl"
                )
            )
        else:  # Gemm: Expand [1, L] -> [p, L] -> Mul -> Reshape
            shp = add(f"{name}.expand_shape", np.array([p, tile.size], np.int64))
            nodes.append(helper.make_node("Expand", [t, shp], [f"{name}.rows"], name=f"{name}_expand"))
        nodes.append(
            helper.make_node("Mul", [f"{name}.rows", alphas], [f"{name}.scaled"], name=f"{name}_mul")
        )
        nodes.append(
            helper.make_node(
                "Reshape", [f"{name}.scaled", wshape], [f"{name}.weight"], name=f"{name}_reshape_w"
            )
        )
        return f"{name}.weight"

    def batchnorm(name: str, x: str, c: int) -> str:
        gamma = rng.uniform(0.5, 1.5, c) * np.where(rng.random(c) < 0.2, -1, 1)
        parts = [gamma, rng.normal(0, 0.1, c), rng.normal(0, 0.1, c), rng.uniform(0.5, 2, c)]
        names = [add(f"{name}.{k}", v.astype(np.float32)) for k, v in zip("gbmv", parts)]
        nodes.append(helper.make_node("BatchNormalization", [x, *names], [f"{name}_out"], name=name))
        return f"{name}_out"

    x = "x"
    for i, (name, shape, p, per_copy) in enumerate(CNN_LAYERS[:2]):
        w = weight(name, shape, p, per_copy)
        nodes.append(helper.make_node("Conv", [x, w], [f"{name}_out"], pads=[1, 1, 1, 1], name=name))
        y = batchnorm(f"bn{i + 1}", f"{name}_out", shape[0])
        nodes.append(helper.make_node("Relu", [y], [f"relu{i + 1}_out"], name=f"relu{i + 1}"))
        nodes.append(
            helper.make_node(
                "MaxPool",
                [f"relu{i + 1}_out"],
                [f"pool{i + 1}_out"],
                kernel_shape=[2, 2],
                strides=[2, 2],
                name=f"pool{i + 1}",
            )
        )
        x = f"pool{i + 1}_out"
    nodes.append(helper.make_node("Flatten", [x], ["flat_out"], name="flatten"))
    (n1, s1, p1, c1), (n2, s2, p2, c2) = CNN_LAYERS[2:]
    w1 = weight(n1, s1, p1, c1)
    b1 = add("fc1.bias", rng.normal(0, 0.1, s1[0]).astype(np.float32))
    nodes.append(helper.make_node("Gemm", ["flat_out", w1, b1], ["fc1_out"], transB=1, name="fc1"))
    nodes.append(helper.make_node("Relu", ["fc1_out"], ["relu3_out"], name="relu3"))
    w2 = weight(n2, s2, p2, c2)
    nodes.append(helper.make_node("Gemm", ["relu3_out", w2], ["y"], transB=1, name="fc2"))
    graph = helper.make_graph(
        nodes,
        f"conv_bn_cnn_{form}",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [batch, 1, 28, 28])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [batch, 10])],
        inits,
    )
    model = helper.make_model(
        graph, opset_imports=[helper.make_opsetid("", OPSET)], producer_name="tbn-tvm-bench"
    )
    model.ir_version = IR_VERSION
    onnx.checker.check_model(model, full_check=True)
    return model


def sample_input(kind: str, model: onnx.ModelProto, seed: int = 1) -> np.ndarray:
    """A fixed input for ``model``: pixels in [0, 1) for the MLPs, N(0, 1) for the CNNs."""
    dims = [d.dim_value for d in model.graph.input[0].type.tensor_type.shape.dim]
    rng = np.random.default_rng(seed)
    if kind in ("tiled_resnet", "conv_bn_cnn", "bitplane_gemm", "codebook_conv"):
        return rng.standard_normal(dims).astype(np.float32)
    return rng.random(dims, dtype=np.float32)
