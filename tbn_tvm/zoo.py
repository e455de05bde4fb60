"""Models bundled with tbn-tvm, built from data shipped in the package.

>>> model = authors_mnist_mlp()          # doctest: +SKIP
>>> [n.op_type for n in model.graph.node]  # doctest: +SKIP
['Gemm', 'Relu', 'Gemm']
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper


def data_path(*parts: str) -> Path:
    """A file under the package's ``data/`` folder."""
    return Path(str(resources.files("tbn_tvm").joinpath("data", *parts)))


def authors_mnist_mlp() -> onnx.ModelProto:
    """The paper authors' trained MNIST TBN (784 -> 128 ReLU -> 10, no biases) as an ONNX model
    with dense float weights, as a constant-folding exporter writes it.

    Source of the weights: the authors' microcontroller implementation (repository
    mattgorb/tiled_bit_networks, ``c_implementation``, commit c55e976): fc1 is tiled with p = 4
    and one α per copy, fc2 is binary (p = 1) with one α.  Inputs are pixels scaled to [0, 1]."""
    w = np.load(data_path("tbn-authors-mnist-mlp.npz"))
    nodes = [
        helper.make_node("Gemm", ["input", "fc1.weight"], ["fc1_out"], transB=1, name="fc1"),
        helper.make_node("Relu", ["fc1_out"], ["relu_out"], name="relu"),
        helper.make_node("Gemm", ["relu_out", "fc2.weight"], ["logits"], transB=1, name="fc2"),
    ]
    graph = helper.make_graph(
        nodes,
        "tbn_authors_mnist_mlp",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, [1, 784])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [1, 10])],
        [
            numpy_helper.from_array(w["fc1_weight"], "fc1.weight"),
            numpy_helper.from_array(w["fc2_weight"], "fc2.weight"),
        ],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], producer_name="tbn-tvm")
    model.ir_version = 9  # readable by onnxruntime releases of 2024-2026
    onnx.checker.check_model(model)
    return model


def authors_mnist_mlp_reference(images: np.ndarray) -> np.ndarray:
    """numpy forward pass of the same network, straight from the authors' tile bits and α's
    (independent of the dense weights and of the compiler): logits ``[N, 10]``."""
    w = np.load(data_path("tbn-authors-mnist-mlp.npz"))

    def expand(bits_key: str, alphas_key: str, shape: tuple[int, int]) -> np.ndarray:
        n = shape[0] * shape[1]
        tile = np.unpackbits(w[bits_key])  # MSB-first, as np.packbits wrote them
        p = n // tile.size
        signs = np.where(np.tile(tile, p) == 1, 1.0, -1.0).astype(np.float32)
        alphas = np.repeat(w[alphas_key].astype(np.float32), n // w[alphas_key].size)
        return (signs * alphas).reshape(shape)

    w1 = expand("fc1_tile_bits", "fc1_alphas", (128, 784))
    w2 = expand("fc2_tile_bits", "fc2_alphas", (10, 128))
    h = np.maximum(images.astype(np.float32) @ w1.T, 0)
    return h @ w2.T
