"""Weight formats: one module each behind the contract of :mod:`tbn_tvm.formats.base`.

:data:`FORMATS` is the registry: every format in it is tried on each weight and the cheapest
exact form wins; a weight that none reproduces exactly stays :class:`DenseFormat`.
:func:`detect_layer_weight` is the single entry point the passes and ``inspect`` share, so both
always agree on what a layer is.

>>> import numpy as np
>>> w = np.tile(np.float32([0.5, -0.5, 0.5, 0.5]), 8).reshape(4, 8)   # Linear [out=4, in=8]
>>> lw = detect_layer_weight(np.ascontiguousarray(w.T), "matmul")    # stored as x @ W: [in, out]
>>> lw.format.label(), lw.order
('tiled p=8 L=4', 'transposed')
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from tbn_tvm.formats.base import FLOAT_DTYPES, OPS, Buffer, WeightFormat, bits_per_weight
from tbn_tvm.formats.dense import DenseFormat
from tbn_tvm.formats.tiled import TiledFormat

__all__ = [
    "FLOAT_DTYPES",
    "FORMATS",
    "Buffer",
    "DenseFormat",
    "LayerWeight",
    "TiledFormat",
    "WeightFormat",
    "bits_per_weight",
    "detect_layer_weight",
    "format_classes",
    "detect_weight",
]

#: The compact formats (``module:Class``), tried on every weight; the cheapest exact form wins
#: (ties: first listed).  Adding a format is one module and one line here.
FORMATS: list[str] = [
    "tbn_tvm.formats.tiled:TiledFormat",
    "tbn_tvm.formats.bitplane:BitplaneFormat",
    "tbn_tvm.formats.codebook:CodebookFormat",
]


def format_classes() -> list[type[WeightFormat]]:
    """The classes of :data:`FORMATS`, imported on first use."""
    import importlib

    out = []
    for path in FORMATS:
        module, _, cls = path.partition(":")
        out.append(getattr(importlib.import_module(module), cls))
    return out


@dataclass(frozen=True)
class LayerWeight:
    """What one layer's weight constant was found to be.

    ``order`` says how the stored constant maps to the flattened layout the format describes:
    ``"stored"`` means the constant's own row-major order (conv kernels, or a matmul operand
    tiled along its ``[in, out]`` order); ``"transposed"`` means the format describes the
    transpose of the stored ``[in, out]`` matmul operand, i.e. the ``[out, in]`` weight of a
    Linear layer.
    """

    format: WeightFormat
    order: str = "stored"

    @property
    def compact(self) -> bool:
        return self.format.compact


def detect_weight(weight: np.ndarray, op: str, below: int | None = None) -> WeightFormat | None:
    """The cheapest exact compact form of ``weight`` (framework layout) among :data:`FORMATS`.

    Only forms cheaper than the dense weight (and than ``below`` bits, when given) count.  The
    formats are tried in registry order; one whose :meth:`~WeightFormat.storage_lower_bound`
    cannot beat the cheapest form found so far is not tried (it could at best tie, and ties go
    to the earlier format): the exhaustive bit-plane search never runs on a weight already found
    tiled at a fraction of a bit per weight."""
    w = np.asarray(weight)
    best: WeightFormat | None = None
    best_bits = 8 * w.dtype.itemsize * w.size
    if below is not None:
        best_bits = min(best_bits, below)
    for cls in format_classes():
        if cls.storage_lower_bound(tuple(int(d) for d in w.shape), op) >= best_bits:
            continue
        found = cls.detect(w, op)
        if found is None:
            continue
        bits = found.storage_bits()
        if bits < best_bits:
            best, best_bits = found, bits
    return best


#: Detected layer weights by content (see :func:`detect_layer_weight`); ``inspect`` and the
#: CompressWeights pass of one compile ask about the same weights.
_DETECTED: dict[tuple, tuple] = {}
_DETECTED_MAX = 256


def _content_key(weight: np.ndarray, op: str) -> tuple:
    import hashlib

    a = np.ascontiguousarray(weight)
    h = hashlib.blake2b(f"{a.dtype.str}{a.shape}{op}".encode(), digest_size=20)
    h.update(a.reshape(-1).view(np.uint8) if a.size else b"")
    return (h.digest(), a.shape, a.dtype.str, op)


def detect_layer_weight(weight: np.ndarray, op: str) -> LayerWeight:
    """Detect the format of a layer weight as it is stored in the graph.

    ``op`` is ``"matmul"`` for a weight ``W`` used as ``x @ W`` (shape ``[in, out]``; a 1-D
    ``W`` of shape ``[in]`` is a single output), ``"conv"`` for a convolution kernel
    (``[O, I/groups, *kernel]``) or ``"conv_transpose"`` (``[I, O/groups, *kernel]``).  For matmul
    operands both flattening orders are tried (``[out, in]`` first, as a Linear layer stores it),
    and the more compact exact form wins.

    Results are remembered by the weight's content (``inspect`` and the compiler's pass detect
    the same weights once per compile); a dense result keeps no copy of the weight.
    """
    weight = np.asarray(weight)
    if op not in OPS:
        raise ValueError(f"unknown layer kind {op!r}")
    key = _content_key(weight, op)
    hit = _DETECTED.get(key)
    if hit is not None:
        fmt, order = hit
        if fmt is None:  # dense: rebuilt around the caller's array
            return _dense(weight, op)
        return LayerWeight(fmt, order)
    found = _detect_layer_weight(weight, op)
    if len(_DETECTED) >= _DETECTED_MAX:
        _DETECTED.pop(next(iter(_DETECTED)))
    _DETECTED[key] = (found.format if found.compact else None, found.order)
    return found


def _dense(weight: np.ndarray, op: str) -> LayerWeight:
    if op != "matmul":
        return LayerWeight(DenseFormat.detect(weight, op), "stored")
    w = weight[:, None] if weight.ndim == 1 else weight
    return LayerWeight(DenseFormat.detect(np.ascontiguousarray(w.T), op), "transposed")


def _detect_layer_weight(weight: np.ndarray, op: str) -> LayerWeight:
    if op != "matmul":
        fmt = detect_weight(weight, op)
        return LayerWeight(fmt if fmt is not None else DenseFormat.detect(weight, op), "stored")
    if weight.ndim == 1:
        weight = weight[:, None]
    if weight.ndim != 2:
        raise ValueError(f"a matmul weight must be 1-D or 2-D, got shape {weight.shape}")
    # [out, in] first; the stored order only where it is strictly cheaper (a tie keeps [out, in])
    as_oi = detect_weight(np.ascontiguousarray(weight.T), op)
    as_io = detect_weight(weight, op, below=as_oi.storage_bits() if as_oi is not None else None)
    if as_io is not None:
        return LayerWeight(as_io, "stored")
    if as_oi is not None:
        return LayerWeight(as_oi, "transposed")
    return LayerWeight(DenseFormat.detect(np.ascontiguousarray(weight.T), op), "transposed")


def fold_keeps_format(before: np.ndarray, after: np.ndarray, op: str) -> bool:
    """Whether folding a per-output-channel scale into a layer weight (``before`` -> ``after``,
    both as :func:`detect_layer_weight` takes them) keeps it as compact: the folded weight is
    compact too, in no more bits than the unfolded one plus the scale vector folding removes.

    The FoldAffine pass and ``inspect`` both apply it.  A tiled weight stays tiled (the factor
    joins its per-row scales); an integer grid ``α·q`` (bit-plane) usually does not (``α·q·γ/σ``
    rounds off the grid): its BatchNorm then stays an epilogue multiply-add, fused into the
    layer's kernel.
    """
    old = detect_layer_weight(np.asarray(before), op)
    if not old.compact:
        return True
    new = detect_layer_weight(np.asarray(after), op)
    if not new.compact:
        return False
    channels = after.shape[0] if op == "conv" else (after.shape[-1] if after.ndim == 2 else 1)
    return new.format.storage_bits() <= old.format.storage_bits() + 32 * channels
