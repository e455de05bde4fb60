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


def sample_input(kind: str, model: onnx.ModelProto, seed: int = 1) -> np.ndarray:
    """A fixed input for ``model``: pixels in [0, 1) for the MLPs, N(0, 1) for the CNN."""
    dims = [d.dim_value for d in model.graph.input[0].type.tensor_type.shape.dim]
    rng = np.random.default_rng(seed)
    if kind == "tiled_resnet":
        return rng.standard_normal(dims).astype(np.float32)
    return rng.random(dims, dtype=np.float32)
