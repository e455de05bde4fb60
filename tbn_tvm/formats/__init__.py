"""Weight formats: one module each (detect, pack, numpy decode, storage accounting, TIR read).

:func:`detect_layer_weight` is the single entry point the passes and ``inspect`` share, so both
always agree on what a layer is.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from tbn_tvm.formats.dense import DenseFormat
from tbn_tvm.formats.tiled import TiledFormat
from tbn_tvm.formats.tiled import detect as detect_tiled

__all__ = ["DenseFormat", "TiledFormat", "LayerWeight", "detect_layer_weight"]


@dataclass(frozen=True)
class LayerWeight:
    """What one layer's weight constant was found to be.

    ``order`` says how the stored constant maps to the flattened layout the format describes:
    ``"stored"`` means the constant's own row-major order (conv kernels, or a matmul operand
    tiled along its ``[in, out]`` order); ``"transposed"`` means the format describes the
    transpose of the stored ``[in, out]`` matmul operand, i.e. the ``[out, in]`` weight of a
    Linear layer.
    """

    format: TiledFormat | DenseFormat
    order: str = "stored"


def detect_layer_weight(weight: np.ndarray, op: str) -> LayerWeight:
    """Detect the format of a layer weight as it is stored in the graph.

    ``op`` is ``"matmul"`` for a weight ``W`` used as ``x @ W`` (shape ``[in, out]``) or
    ``"conv"`` for a convolution kernel (``[O, I/groups, *kernel]``).  For matmul operands both
    flattening orders are tried (``[out, in]`` first, as a Linear layer stores it), and the more
    compact exact form wins.
    """
    weight = np.asarray(weight)
    if op == "conv":
        fmt = detect_tiled(weight)
        return LayerWeight(fmt if fmt is not None else DenseFormat(tuple(weight.shape)), "stored")
    if op != "matmul" or weight.ndim != 2:
        raise ValueError(f"unknown layer kind {op!r} for weight of shape {weight.shape}")
    candidates = []
    as_oi = detect_tiled(np.ascontiguousarray(weight.T))
    if as_oi is not None:
        candidates.append(LayerWeight(as_oi, "transposed"))
    as_io = detect_tiled(weight)
    if as_io is not None:
        candidates.append(LayerWeight(as_io, "stored"))
    if not candidates:
        return LayerWeight(DenseFormat((weight.shape[1], weight.shape[0])), "transposed")
    return min(candidates, key=lambda c: c.format.storage_bits())
