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
from dataclasses import asdict, dataclass, replace

import numpy as np
import torch
from torch import nn

from tbn_tvm.formats.base import bits_per_weight
from tbn_tvm.torch.attention import TiledMultiheadAttention
from tbn_tvm.torch.bitwise import BitwiseLayer, FrozenBitwise
from tbn_tvm.torch.layers import ALPHA_BITS, FrozenTiled, TiledLayer, tiled_weight
from tbn_tvm.torch.subbit import FrozenSubBit, SubBitConv2d

__all__ = ["summary", "ModelSummary", "LayerSize"]

_DENSE = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.ConvTranspose1d, nn.ConvTranspose2d)


@dataclass(frozen=True)
class LayerSize:
    """Storage of one module (only modules that own parameters or float buffers appear)."""

    name: str
    type: str
    weight_shape: tuple[int, ...] | None
    format: str  # "tiled", "binary", "snn", "bitwise", "zero" (all-zero weight), "dense" (fp32) or "other" (BN, ...)
    p: int | None
    weights: int  # elements of the Linear/Conv weight (0 for "other")
    weight_bits: int  # storage of that weight (see the module docstring)
    other_values: int  # biases, norm parameters, running statistics (fp32)
    detail: str = ""  # "τ=5" for snn, "k=6 t=3" for bitwise
    compiled_bits: int | None = None  # weight bits the compiled model stores, where not weight_bits
    compiled_label: str = ""  # the compiler's format for it (as ``tbn-tvm inspect`` labels it)
    compiled_reason: str = ""  # why it differs (a BatchNorm folded in, an all-zero weight)

    @property
    def compiled_weight_bits(self) -> int:
        """Weight bits of the compiled model (``tbn-tvm inspect``'s ``bytes`` × 8, rounded up to
        bytes there): ``compiled_bits`` where the compiler stores another form, else
        ``weight_bits``."""
        return self.weight_bits if self.compiled_bits is None else self.compiled_bits

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
    trace_note: str = ""  # why BatchNorm folding could not be looked for (torch.fx failed)

    @property
    def total(self) -> dict:
        """Totals: weights, weight_bits, bits_per_weight (weights only), other_values, bits,
        bytes, fp32_bytes and compression (whole model vs fp32), and compiled_weight_bytes (the
        layer weights as the compiler stores them, ``tbn-tvm inspect``'s weight total)."""
        weights = sum(r.weights for r in self.rows)
        weight_bits = sum(r.weight_bits for r in self.rows)
        other = sum(r.other_values for r in self.rows)
        bits = weight_bits + 32 * other
        fp32_bytes = 4 * (weights + other)
        compiled = sum(math.ceil(r.compiled_weight_bits / 8) for r in self.rows if r.weights)
        return {
            "compiled_weight_bytes": compiled,
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
            if r.compiled_bits is None:
                for key in ("compiled_bits", "compiled_label", "compiled_reason"):
                    del d[key]
            else:
                d["compiled_bytes"] = math.ceil(r.compiled_bits / 8)
                d["compiled_bits_per_weight"] = _nan_none(bits_per_weight(r.compiled_bits, r.weights))
            layers.append(d)
        out = {"layers": layers, "total": {k: _nan_none(v) for k, v in self.total.items()}}
        if self.trace_note:
            out["trace_note"] = self.trace_note
        return out

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
        notes = []
        for r in self.rows:
            mark = ""
            if r.compiled_bits is not None:
                notes.append(r)
                mark = f" [{len(notes)}]"
            body.append(
                [
                    (r.name or "(model)") + mark,
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
        footnotes = [
            f"[{i}] {r.name}: compiled {math.ceil(r.compiled_bits / 8):,} bytes at "
            f"{bits_per_weight(r.compiled_bits, r.weights):.4f} bits/weight as {r.compiled_label} "
            f"({r.compiled_reason}; tbn-tvm inspect shows this figure)"
            for i, r in enumerate(notes, 1)
        ]
        if self.trace_note:
            footnotes.append(self.trace_note)
        if markdown:
            lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
            lines += ["| " + " | ".join(row) + " |" for row in body]
            return "\n".join(lines + ([""] + footnotes if footnotes else []))
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
                *(
                    [
                        f"compiled weights: {t['compiled_weight_bytes']:,} bytes (tbn-tvm inspect's weight total)"
                    ]
                    if notes
                    else []
                ),
                *footnotes,
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


def summary(model: nn.Module, compiled: bool = True) -> ModelSummary:
    """Per-layer storage of ``model`` (tiled, binary, dense fp32 and other modules).

    ``print(summary(model))`` shows the table; ``summary(model).to_dict()`` is JSON-ready.

    The figures are the layers' own (the authors' accounting, see the module docstring).  With
    ``compiled`` (default) the compact layers whose weight the compiler stores in another form
    are marked, each with a footnote giving the compiled bytes and why, the figure
    ``tbn-tvm inspect`` shows: a following BatchNorm folded into the weight (its per-channel
    factor becomes per-output-channel scales; found by tracing the model with ``torch.fx``,
    the table says when that fails), or an all-zero weight (format ``zero``).
    """
    rows = _rows(model)
    if not compiled:
        return ModelSummary(rows)
    return _with_compiled(model, rows)


def _rows(model: nn.Module) -> list[LayerSize]:
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
    return rows


# ------------------------------------------------------------------ what the compiler stores
_COMPACT = (TiledLayer, FrozenTiled, SubBitConv2d, FrozenSubBit, BitwiseLayer, FrozenBitwise)


def _batchnorm_after(model: nn.Module) -> tuple[dict[str, str], str]:
    """``{layer name: BatchNorm name}`` for every compact layer whose output goes only into an
    inference BatchNorm (what the compiler folds), from a ``torch.fx`` trace; and a note when
    the model cannot be traced (then ``{}``)."""
    import torch.fx as fx

    class Tracer(fx.Tracer):
        def is_leaf_module(self, m: nn.Module, qualname: str) -> bool:
            if isinstance(m, _COMPACT + _DENSE + (nn.modules.batchnorm._BatchNorm, TiledMultiheadAttention)):
                return True
            return super().is_leaf_module(m, qualname)

    if not any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules()):
        return {}, ""
    try:
        graph = Tracer().trace(model)
    except Exception as e:  # data-dependent control flow and the like
        reason = " ".join(str(e).split())[:120]
        return {}, (
            f"note: the model could not be traced with torch.fx ({type(e).__name__}: {reason}), so "
            "BatchNorm layers the compiler folds into the layer before them are not shown here; "
            "tbn-tvm inspect on the export shows the compiled bytes"
        )
    modules = dict(model.named_modules())
    found: dict[str, str] = {}
    for node in graph.nodes:
        if node.op != "call_module" or not isinstance(modules.get(node.target), _COMPACT):
            continue
        users = list(node.users)
        if len(users) != 1 or users[0].op != "call_module" or users[0].args[:1] != (node,):
            continue
        bn = modules.get(users[0].target)
        if isinstance(bn, nn.modules.batchnorm._BatchNorm) and bn.running_var is not None:
            found[node.target] = users[0].target
    return found, ""


@torch.no_grad()
def _inference_weight(m: nn.Module) -> torch.Tensor:
    """The weight the layer computes with at inference (framework layout)."""
    if isinstance(m, FrozenTiled | FrozenSubBit | FrozenBitwise):
        return m.weight()
    if isinstance(m, TiledLayer):
        return tiled_weight(m.weight, m.p, m.alpha_weight, m.alpha, ste=False)
    return m.to_dense().weight


def _bn_factor(bn: nn.modules.batchnorm._BatchNorm) -> np.ndarray:
    """``γ / sqrt(var + ε)`` per channel, in float64 rounded to float32 once, as the compiler
    folds it (``tbn_tvm.frontend.layers.folded_affines``)."""
    var = bn.running_var.detach().double().cpu().numpy()
    gamma = bn.weight.detach().double().cpu().numpy() if bn.weight is not None else np.ones_like(var)
    return (gamma / np.sqrt(var + bn.eps)).astype(np.float32)


def _operand(w: np.ndarray, op: str) -> np.ndarray:
    """The weight as the compiler's detection takes it: a Linear's ``[out, in]`` as ``[in, out]``."""
    return np.ascontiguousarray(w.T) if op == "matmul" else w


def _with_compiled(model: nn.Module, rows: list[LayerSize]) -> ModelSummary:
    from tbn_tvm.formats import detect_layer_weight, fold_keeps_format

    folds, note = _batchnorm_after(model)
    modules = dict(model.named_modules())
    out = []
    for row in rows:
        m = modules.get(row.name)
        if not isinstance(m, _COMPACT) or not row.weights:
            out.append(row)
            continue
        w = _inference_weight(m).detach().float().cpu().numpy()
        op = "matmul" if w.ndim == 2 else "conv"
        before = _operand(w, op)
        fmt, reason = None, ""
        bn_name = folds.get(row.name)
        if bn_name is not None:
            factor = _bn_factor(modules[bn_name])
            after = _operand((w * factor.reshape((-1,) + (1,) * (w.ndim - 1))).astype(np.float32), op)
            if fold_keeps_format(before, after, op):
                fmt = detect_layer_weight(after, op).format
                reason = f"BatchNorm '{bn_name}' is folded into this weight"
                if fmt.num_scales and fmt.alpha_kind in ("per_channel", "per_chunk"):
                    reason += f": its per-channel factor gives {fmt.num_scales} {fmt.alpha_kind} scales"
        if fmt is None and not np.any(w):
            fmt, reason = detect_layer_weight(before, op).format, "every weight is 0"
        if fmt is None or (fmt.storage_bits() == row.weight_bits and fmt.kind == row.format):
            out.append(row)
            continue
        out.append(
            replace(
                row,
                format="zero" if fmt.kind == "zero" else row.format,
                compiled_bits=fmt.storage_bits(),
                compiled_label=fmt.label(),
                compiled_reason=reason,
            )
        )
    return ModelSummary(out, note)
