"""Size table of a (tiled) model, in the spirit of ``larq.models.summary``.

Accounting, as the compiled model stores it (the same figures as ``tbn-tvm inspect``):

* a tiled layer (``TiledLinear`` / ``TiledConv*``) stores its ``n/p`` tile bits packed in 32-bit
  words plus 32 bits per scale α;
* a sub-bit conv (:class:`~tbn_tvm.torch.SubBitConv2d`, format ``snn``) stores ``τ`` bits per
  ``(out, in)`` kernel index, its codebook of ``2^τ`` kernels of ``kh·kw`` bits and one 32-bit α
  per output channel: ``τ·O·I/g + kh·kw·2^τ + 32·O`` bits, i.e. ``τ/9`` bit per weight of a 3×3
  layer plus the amortised codebook and scales;
* a bit-wise layer (:class:`~tbn_tvm.torch.BitwiseLinear` / ``BitwiseConv2d``, format
  ``bitwise``) stores ``k`` bits per weight plus 32 bits per α (one per layer or per output
  channel): ``k·n + 32·#α``;
* a dense (full-precision) Linear/Conv weight costs 32 bits per element;
* biases, BatchNorm parameters and running statistics are counted as fp32 "other" values.

The latent training tensors (``W`` and ``A`` of a tiled layer, the latent kernels of a sub-bit
layer, the latent bit planes of a bit-wise layer) are not stored at inference and are not
counted.

>>> from torch import nn
>>> from tbn_tvm.torch import tbnify
>>> model = tbnify(nn.Sequential(nn.Linear(64, 256, bias=False), nn.ReLU(),
...                              nn.Linear(256, 256, bias=False), nn.ReLU(),
...                              nn.Linear(256, 10, bias=False)), p=4, min_size=0)
>>> s = summary(model)
>>> s.total["weight_bits"], round(s.total["bits_per_weight"], 4)
(35520, 0.4205)
>>> print(s)                                               # doctest: +SKIP
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import torch
from torch import nn

from tbn_tvm.formats.base import bits_per_weight
from tbn_tvm.torch.bitwise import BitwiseLayer, FrozenBitwise
from tbn_tvm.torch.layers import ALPHA_BITS, FrozenTiled, TiledLayer
from tbn_tvm.torch.subbit import FrozenSubBit, SubBitConv2d

__all__ = ["summary", "ModelSummary", "LayerSize"]

_DENSE = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.ConvTranspose1d, nn.ConvTranspose2d)


@dataclass(frozen=True)
class LayerSize:
    """Storage of one module (only modules that own parameters or float buffers appear)."""

    name: str
    type: str
    weight_shape: tuple[int, ...] | None
    format: str  # "tiled", "binary", "snn", "bitwise", "dense" (fp32 weight) or "other" (BN, ...)
    p: int | None
    weights: int  # elements of the Linear/Conv weight (0 for "other")
    weight_bits: int  # storage of that weight (see the module docstring)
    other_values: int  # biases, norm parameters, running statistics (fp32)
    detail: str = ""  # "τ=5" for snn, "k=6 t=3" for bitwise

    @property
    def param(self) -> str:
        """The format's parameter as text: ``p``, ``τ=…`` or ``k=… t=…`` (``-`` for none)."""
        return str(self.p) if self.p else self.detail or "-"

    @property
    def bits(self) -> int:
        """All storage of the module, in bits."""
        return self.weight_bits + 32 * self.other_values

    @property
    def bytes(self) -> int:
        """All storage of the module, in bytes (bit-packed tile, rounded up)."""
        return math.ceil(self.bits / 8)

    @property
    def compression(self) -> float:
        """fp32 size of the module divided by its stored size."""
        return 32 * (self.weights + self.other_values) / self.bits if self.bits else math.nan

    @property
    def bits_per_weight(self) -> float:
        """Weight storage bits per weight element (``nan`` for "other" modules)."""
        return bits_per_weight(self.weight_bits, self.weights)


@dataclass
class ModelSummary:
    """The rows of :func:`summary` and their totals; ``str()`` gives the table."""

    rows: list[LayerSize]

    @property
    def total(self) -> dict:
        """Totals: weights, weight_bits, bits_per_weight (weights only), other_values, bits,
        bytes, fp32_bytes and compression (whole model vs fp32)."""
        weights = sum(r.weights for r in self.rows)
        weight_bits = sum(r.weight_bits for r in self.rows)
        other = sum(r.other_values for r in self.rows)
        bits = weight_bits + 32 * other
        fp32_bytes = 4 * (weights + other)
        return {
            "weights": weights,
            "weight_bits": weight_bits,
            "bits_per_weight": weight_bits / weights if weights else math.nan,
            "other_values": other,
            "bits": bits,
            "bytes": math.ceil(bits / 8),
            "fp32_bytes": fp32_bytes,
            "compression": 8 * fp32_bytes / bits if bits else math.nan,
        }

    def to_dict(self) -> dict:
        """JSON-ready: ``{"layers": [...], "total": {...}}``."""
        layers = []
        for r in self.rows:
            d = asdict(r)
            d["weight_shape"] = list(r.weight_shape) if r.weight_shape else None
            d.update(
                bits=r.bits,
                bytes=r.bytes,
                bits_per_weight=_nan_none(r.bits_per_weight),
                compression=_nan_none(r.compression),
            )
            layers.append(d)
        return {"layers": layers, "total": {k: _nan_none(v) for k, v in self.total.items()}}

    def table(self, markdown: bool = False) -> str:
        """The table as text (``markdown=True``: a GitHub markdown table)."""
        head = [
            "layer",
            "type",
            "weight shape",
            "format",
            "p/τ/k",
            "bits/weight",
            "other fp32",
            "bytes",
            "compression",
        ]
        body = []
        for r in self.rows:
            body.append(
                [
                    r.name or "(model)",
                    r.type,
                    "x".join(map(str, r.weight_shape)) if r.weight_shape else "-",
                    r.format,
                    r.param,
                    f"{r.bits_per_weight:.4f}" if r.weights else "-",
                    str(r.other_values),
                    f"{r.bytes:,}",
                    f"{r.compression:.1f}x",
                ]
            )
        t = self.total
        body.append(
            [
                "total",
                "",
                f"{t['weights']:,} weights",
                "",
                "",
                f"{t['bits_per_weight']:.4f}",
                str(t["other_values"]),
                f"{t['bytes']:,}",
                f"{t['compression']:.1f}x",
            ]
        )
        if markdown:
            lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
            lines += ["| " + " | ".join(row) + " |" for row in body]
            return "\n".join(lines)
        widths = [max(len(row[i]) for row in [head, *body]) for i in range(len(head))]
        right = {4, 5, 6, 7, 8}

        def fmt(row: list[str]) -> str:
            return "  ".join(
                c.rjust(w) if i in right else c.ljust(w)
                for i, (c, w) in enumerate(zip(row, widths, strict=True))
            ).rstrip()

        rule = "-" * len(fmt(head))
        return "\n".join(
            [
                fmt(head),
                rule,
                *map(fmt, body[:-1]),
                rule,
                fmt(body[-1]),
                f"fp32 size {t['fp32_bytes']:,} bytes -> {t['bytes']:,} bytes",
            ]
        )

    def __str__(self) -> str:
        return self.table()


def _nan_none(v):
    return None if isinstance(v, float) and math.isnan(v) else v


def _other_values(module: nn.Module, skip: set[str]) -> int:
    n = 0
    for name, t in list(module.named_parameters(recurse=False)) + list(module.named_buffers(recurse=False)):
        if t is None or name in skip or not torch.is_floating_point(t):
            continue
        if name in getattr(module, "_non_persistent_buffers_set", set()):
            continue
        n += t.numel()
    return n


def summary(model: nn.Module) -> ModelSummary:
    """Per-layer storage of ``model`` (tiled, binary, dense fp32 and other modules).

    ``print(summary(model))`` shows the table; ``summary(model).to_dict()`` is JSON-ready.
    """
    rows = []
    for name, m in model.named_modules():
        if isinstance(m, TiledLayer | FrozenTiled):
            shape = tuple(m.weight.shape) if isinstance(m, TiledLayer) else m.weight_shape
            n = math.prod(shape)
            n_alpha = m.p if m.alpha == "per_copy" else 1
            # the tile packed in 32-bit words plus 32 bits per α: what the compiled model stores,
            # the same figure as ``tbn-tvm inspect`` (tbn_tvm.formats.TiledFormat.storage_bits)
            bits = 32 * math.ceil((n // m.p) / 32) + ALPHA_BITS * n_alpha
            other = _other_values(m, {"weight", "alpha_weight", "tile", "scales"})
            rows.append(
                LayerSize(
                    name, type(m).__name__, shape, "tiled" if m.p > 1 else "binary", m.p, n, bits, other
                )
            )
        elif isinstance(m, SubBitConv2d | FrozenSubBit):
            shape = tuple(m.weight.shape) if isinstance(m, SubBitConv2d) else m.weight_shape
            rows.append(
                LayerSize(
                    name,
                    type(m).__name__,
                    shape,
                    "snn",
                    None,
                    math.prod(shape),
                    m.storage_bits(),
                    _other_values(m, {"weight", "codebook", "step", "seed", "scales"}),
                    f"τ={m.tau}",
                )
            )
        elif isinstance(m, FrozenBitwise):
            rows.append(
                LayerSize(
                    name,
                    type(m).__name__,
                    m.weight_shape,
                    "bitwise",
                    None,
                    math.prod(m.weight_shape),
                    m.storage_bits(),
                    _other_values(m, {"scale"}),
                    f"k={m.k}",
                )
            )
        elif isinstance(m, BitwiseLayer):
            shape = tuple(m._weight_shape)
            rows.append(
                LayerSize(
                    name,
                    type(m).__name__,
                    shape,
                    "bitwise",
                    None,
                    math.prod(shape),
                    m.storage_bits(),
                    _other_values(m, {"bits", "frozen_bits", "alpha"}),
                    f"k={m.k} t={sum(m.trainable_mask)}",
                )
            )
        elif isinstance(m, _DENSE):
            n = m.weight.numel()
            rows.append(
                LayerSize(
                    name,
                    type(m).__name__,
                    tuple(m.weight.shape),
                    "dense",
                    None,
                    n,
                    32 * n,
                    _other_values(m, {"weight"}),
                )
            )
        else:
            other = _other_values(m, set())
            if other:
                rows.append(LayerSize(name, type(m).__name__, None, "other", None, 0, 0, other))
    return ModelSummary(rows)
