"""The contract every weight format implements.

A *weight format* is one exact, compact description of a layer's weight constant.  The compiler
never names a concrete format: it asks the registry (:data:`tbn_tvm.formats.FORMATS`) for the
cheapest exact form of each weight, then asks that form for everything else.  A format

* **detects** itself in a dense constant (:meth:`WeightFormat.detect`, framework layout:
  ``[out, in]`` for a Linear/Gemm weight, ``[O, I/groups, *kernel]`` for a convolution,
  ``[I, O/groups, *kernel]`` for a transposed convolution) and returns ``None`` unless it
  reproduces the constant bit for bit;
* names its **run-time buffers** (:meth:`buffers`: name, dtype, shape and the packed data), which
  become the kernel's extra arguments and, on a microcontroller, the C arrays ``tbn_<layer>_<name>``;
* gives the **TIR read** of flat element ``i`` from those buffers (:meth:`read`) — the one place
  a kernel learns how to decode the weight;
* gives its **numpy decode** (:meth:`decode`, the reference every test compares against), its
  **storage** (:meth:`storage_bits`, by default the bytes of its buffers) and its
  **inspect fields** (:meth:`label`, :meth:`fields`);
* may offer a **structure kernel** (:meth:`kernel`) that exploits more than element-wise decoding
  (distinct rows of a tiled weight, a codebook's look-up table); without one the generic
  decode-in-kernel compute of :mod:`tbn_tvm.kernels` is used.

Adding a format is one module with a :class:`WeightFormat` subclass plus one line in
:data:`tbn_tvm.formats.FORMATS` (learned from mlc-llm's ``quantization/`` registry and TFLite
Micro's ``decode_state`` interface).
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np

#: The layer kinds a weight can belong to (the ``op`` argument of :meth:`WeightFormat.detect`).
OPS = ("matmul", "conv", "conv_transpose")

#: Weight dtypes the compact formats accept (the compute dtype of the layer).
FLOAT_DTYPES = ("float32", "float16")


@dataclass(frozen=True)
class Buffer:
    """One run-time buffer of a format: ``name`` (a C identifier fragment), and its data."""

    name: str
    data: np.ndarray

    @property
    def dtype(self) -> str:
        return str(self.data.dtype)

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(int(d) for d in self.data.shape)

    @property
    def nbytes(self) -> int:
        return int(self.data.nbytes)


def bits_per_weight(storage_bits: int, n: int) -> float:
    """The one bits-per-weight figure of the project (``inspect`` and ``torch.summary``): every
    bit stored at run time for the weight (packed words, scales, codebooks) over its elements."""
    return storage_bits / n if n else math.nan


class WeightFormat(ABC):
    """Base class of the weight formats (see the module docstring for the contract).

    Subclasses are immutable descriptions of one weight; ``shape`` is the framework layout and
    ``dtype`` the weight's (and the layer's compute) dtype."""

    #: Registry name, also the ``format`` field of ``inspect --json``.
    name: ClassVar[str] = ""
    #: Whether the format replaces the dense constant (False only for the dense fallback).
    compact: ClassVar[bool] = True

    shape: tuple[int, ...]
    dtype: str

    # --------------------------------------------------------------- detection
    @classmethod
    @abstractmethod
    def detect(cls, weight: np.ndarray, op: str) -> WeightFormat | None:
        """The exact form of ``weight`` (framework layout, float32 or float16) for a layer of kind
        ``op`` (one of :data:`OPS`), or None.  Never approximate."""

    @classmethod
    def storage_lower_bound(cls, shape: tuple[int, ...], op: str) -> int:
        """Bits that any form of this format found in a weight of ``shape`` takes at least (0:
        no bound).  The registry skips :meth:`detect` where this cannot beat a form already
        found (speed only; a format need not define it)."""
        return 0

    # --------------------------------------------------------------- run-time buffers
    @abstractmethod
    def buffers(self) -> list[Buffer]:
        """The packed buffers the kernel reads, in argument order."""

    @abstractmethod
    def read(self, bufs: Mapping[str, Any], i):
        """TIR expression of flat element ``i`` (an int64 PrimExpr, row-major in the framework
        layout), in :attr:`dtype`, read from ``bufs`` (buffer name -> TE tensor or TIR buffer)."""

    def placeholders(self) -> dict[str, Any]:
        """One TE placeholder per buffer (int64 shapes), keyed by buffer name."""
        from tvm import te

        from tbn_tvm.kernels import shape64

        return {b.name: te.placeholder(shape64(b.shape), b.dtype, name=b.name) for b in self.buffers()}

    # --------------------------------------------------------------- reference and accounting
    @abstractmethod
    def decode(self) -> np.ndarray:
        """The dense weight this format stands for (numpy, framework layout, :attr:`dtype`)."""

    @property
    def n(self) -> int:
        """Number of weight elements."""
        return math.prod(self.shape)

    def storage_bits(self) -> int:
        """Bits kept at run time (the buffers as stored)."""
        return 8 * sum(b.nbytes for b in self.buffers())

    def storage_bytes(self) -> int:
        return (self.storage_bits() + 7) // 8

    @property
    def kind(self) -> str:
        """The name ``inspect`` shows in its ``format`` column (a format may refine it, e.g.
        ``binary`` for a tile that does not repeat)."""
        return self.name

    @property
    def p(self) -> float:
        """Compression factor in the TBN sense (weights per stored sign); 1 when not tiled."""
        return 1.0

    @property
    def alpha_kind(self) -> str:
        """How the scales are laid out (``single``, ``per_copy``, ``per_channel``, ``per_chunk``
        or ``none``)."""
        return "none"

    @property
    def num_scales(self) -> int:
        return 0

    def label(self) -> str:
        """Short description for tables, e.g. ``tiled p=4 L=196`` or ``codebook τ=5``."""
        return self.kind

    def describe(self) -> str:
        """One line for people."""
        return self.label()

    def fields(self) -> dict:
        """Format-specific fields for ``inspect --json`` (beyond name, shape, bits, bytes)."""
        return {}

    # --------------------------------------------------------------- structure kernels
    def kernel(self, layer):
        """A structure-exploiting kernel for ``layer`` (a :class:`tbn_tvm.kernels.Layer`), as a
        :class:`tbn_tvm.kernels.Kernel`, or None for the generic decode-in-kernel compute."""
        return None


#: What ``inspect`` says of a weight whose decode is not bit for bit the stored one but within
#: one float32 rounding of it (:func:`within_rounding`).
ROUNDED = "exact to float32 rounding"


def within_rounding(decoded: np.ndarray, stored: np.ndarray) -> bool:
    """Whether every decoded value is the stored float32 value or one of its two neighbours.

    A weight written as ``fl32(α·m)`` from a float64 product (numpy-built or BatchNorm-folded
    exports) is the rounding of the real ``α·m``; a format decodes ``fl32(fl32(α)·m)``, the
    rounding of ``α·m`` up to ``α``'s own rounding (2^-24 relative).  Two roundings of
    products that close are the same float32 value or neighbours: a deviation of at most one
    float32 spacing is below the rounding the product went through anyway.  Zeros must stay
    exact zeros."""
    d = np.asarray(decoded, np.float32)
    v = np.asarray(stored, np.float32)
    if d.shape != v.shape or not np.array_equal(d == 0, v == 0):
        return False
    gap = np.abs(d.astype(np.float64) - v.astype(np.float64))
    return bool(np.all(gap <= np.spacing(np.abs(v)).astype(np.float64)))


def as_float(weight: np.ndarray) -> np.ndarray | None:
    """``weight`` if it is a float32/float16 array of finite values with at least two elements
    (what every compact format needs), else None."""
    w = np.asarray(weight)
    if str(w.dtype) not in FLOAT_DTYPES or w.size < 2:
        return None
    if not np.all(np.isfinite(w)):
        return None
    return w
