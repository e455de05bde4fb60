"""PyTorch side of tbn-tvm: tiled, sub-bit (SNN) and bit-wise layers, the conversion helpers
``tbnify`` / ``subbitify`` / ``bitwiseify``, ``summary``, ONNX export and training (``fit``).

>>> import torch
>>> from torch import nn
>>> from tbn_tvm.torch import tbnify, summary
>>> model = nn.Sequential(nn.Linear(64, 256), nn.ReLU(), nn.Linear(256, 256), nn.ReLU(),
...                       nn.Linear(256, 10))
>>> model = tbnify(model, p=4, min_size=0)          # first/last layers binary, the middle one tiled
>>> [m.p for m in model if hasattr(m, "p")]
[1, 4, 1]

Needs ``pip install torch==2.13.0`` (CPU wheel) and, for export, ``onnxscript``.
"""

from __future__ import annotations

from tbn_tvm.torch.attention import TiledMultiheadAttention
from tbn_tvm.torch.bitwise import BitwiseConv2d, BitwiseLayer, BitwiseLinear, bitwiseify
from tbn_tvm.torch.export import ExportResult, export_onnx
from tbn_tvm.torch.fitting import History, evaluate, fit
from tbn_tvm.torch.layers import (
    FrozenTiled,
    TiledConv1d,
    TiledConv2d,
    TiledLayer,
    TiledLinear,
    TilingError,
    is_tiled,
    tiled_sign,
    tiled_weight,
)
from tbn_tvm.torch.subbit import SubBitConv2d, subbitify
from tbn_tvm.torch.summary import ModelSummary, summary
from tbn_tvm.torch.tbnify import tbnify, tiling_plan

__all__ = [
    "TiledLinear",
    "TiledConv1d",
    "TiledConv2d",
    "TiledMultiheadAttention",
    "TiledLayer",
    "FrozenTiled",
    "TilingError",
    "is_tiled",
    "tiled_sign",
    "tiled_weight",
    "tbnify",
    "tiling_plan",
    "summary",
    "ModelSummary",
    "export_onnx",
    "ExportResult",
    "SubBitConv2d",
    "subbitify",
    "BitwiseLinear",
    "BitwiseConv2d",
    "BitwiseLayer",
    "bitwiseify",
    "fit",
    "evaluate",
    "History",
]
