"""Turn an existing PyTorch model into a Tiled Bit Network, following the authors' rules.

Rules (Gorbett et al.; code ``min_compress_size`` and the per-layer lists of their configs), applied
to every layer :func:`tbnify` handles, in registration order — ``nn.Linear`` / ``nn.Conv1d`` /
``nn.Conv2d``, their subclasses that keep the parent's ``forward`` (such as timm's ``Linear``),
and the two projections of ``nn.MultiheadAttention`` (``<name>.in_proj``, the packed Q/K/V
weight ``[3E, E]`` tiled as one weight, and ``<name>.out_proj``; see
:class:`~tbn_tvm.torch.attention.TiledMultiheadAttention`):

1. an entry of ``overrides`` for the layer wins (an int ``p``, or ``None`` = keep full precision);
2. the first and the last such layer get ``p = 1`` (binary, not tiled) when
   ``keep_first_last_binary`` is true (the default);
3. a layer with fewer than ``min_size`` weights gets ``p = 1`` (binary, **not** full precision);
4. every other layer gets ``p``; if ``p`` does not divide its number of weights it falls back to
   ``p = 1`` (and the plan says so).

Every other module with a weight (``Conv3d``, ``ConvTranspose*``, ``Embedding``, a subclass that
overrides ``forward``, an attention with separate ``kdim``/``vdim`` projections, a layer that is
already tiled/sub-bit/bit-wise) is left alone, and the plan says why
(``tiling_plan(..., include_untouched=True)``); :func:`tbnify` prints a one-line account of
what it tiled, kept binary and left alone, and warns when it tiled nothing.

The authors' default ``min_size`` is 64,000 (150,000 for ImageNet); for the small models of this
project pass a small value (e.g. ``min_size=0``) so that the hidden layers really are tiled.

>>> from torch import nn
>>> model = nn.Sequential(nn.Conv2d(1, 32, 3), nn.ReLU(), nn.Conv2d(32, 64, 3), nn.ReLU(),
...                       nn.Flatten(), nn.Linear(64 * 4 * 4, 10))
>>> for row in tiling_plan(model, p=4, min_size=0):
...     print(row.name, row.p, row.reason)
0 1 first layer
2 4 tiled
5 1 last layer
"""

from __future__ import annotations

import fnmatch
import sys
import warnings
from collections.abc import Mapping
from dataclasses import dataclass

from torch import nn

from tbn_tvm.torch.attention import TiledMultiheadAttention
from tbn_tvm.torch.bitwise import BitwiseLayer
from tbn_tvm.torch.layers import (
    AlphaMode,
    AlphaSource,
    TiledConv1d,
    TiledConv2d,
    TiledLayer,
    TiledLinear,
    TilingError,
)
from tbn_tvm.torch.subbit import SubBitConv2d

__all__ = ["tbnify", "tiling_plan", "plan_line", "tileable_base", "LayerPlan", "TILEABLE"]

TILEABLE: dict[type, type] = {nn.Linear: TiledLinear, nn.Conv1d: TiledConv1d, nn.Conv2d: TiledConv2d}
"""Dense layer type -> tiled replacement: these types and their subclasses that keep the
parent's forward (see :func:`tileable_base`); ``nn.MultiheadAttention`` becomes a
:class:`~tbn_tvm.torch.attention.TiledMultiheadAttention`."""

_CONVERTED = (TiledLayer, BitwiseLayer, SubBitConv2d)
#: Kinds of the plan rows of attention projections (replaced with their attention module).
_MHA_IN, _MHA_OUT = "MultiheadAttention.in_proj", "MultiheadAttention.out_proj"


def tileable_base(module: nn.Module) -> type | None:
    """The :data:`TILEABLE` type ``module`` is tiled as: its own type, or the parent of a
    subclass that keeps the parent's ``forward`` (and, for a conv, ``_conv_forward``), such as
    timm's ``Linear``; None for anything else (a subclass with its own forward, an already
    tiled, sub-bit or bit-wise layer).

    >>> class Linear(nn.Linear):  # timm.layers.Linear keeps nn.Linear.forward
    ...     pass
    >>> tileable_base(Linear(4, 4)).__name__, tileable_base(nn.Conv3d(1, 1, 1))
    ('Linear', None)
    """
    kind = type(module)
    if kind in TILEABLE:
        return kind
    if isinstance(module, _CONVERTED):
        return None
    for base in TILEABLE:
        if isinstance(module, base) and kind.forward is base.forward:
            if base is nn.Linear or kind._conv_forward is base._conv_forward:
                return base
    return None


def _has_weight(module: nn.Module) -> bool:
    """Whether ``module`` itself owns a layer weight (a parameter ``weight`` or ``*_weight`` of
    two or more dimensions; norms' 1-D weights are not)."""
    return any(
        p is not None and p.ndim >= 2 and (n == "weight" or n.endswith("_weight"))
        for n, p in module.named_parameters(recurse=False)
    )


def _own_weights(module: nn.Module) -> tuple[tuple[int, ...], int]:
    shapes = [tuple(p.shape) for p in module.parameters() if p.ndim >= 2]
    return (shapes[0] if len(shapes) == 1 else ()), sum(
        int(p.numel()) for p in module.parameters() if p.ndim >= 2
    )


def _walk(model: nn.Module) -> list[tuple[LayerPlan, bool]]:
    """Every weighted module in registration order: ``(row, handled)``; a handled row has
    ``p=None`` and ``reason=""`` (the rules fill them in), a left-alone row its reason."""
    out: list[tuple[LayerPlan, bool]] = []
    skip: list[str] = []
    for name, m in model.named_modules():
        if any(name.startswith(prefix) for prefix in skip):
            continue
        if isinstance(m, nn.MultiheadAttention):
            skip.append(f"{name}.")
            if m._qkv_same_embed_dim and m.in_proj_weight is not None:
                w = m.in_proj_weight
                out.append((LayerPlan(f"{name}.in_proj", _MHA_IN, tuple(w.shape), w.numel(), None, ""), True))
                w = m.out_proj.weight
                out.append(
                    (LayerPlan(f"{name}.out_proj", _MHA_OUT, tuple(w.shape), w.numel(), None, ""), True)
                )
            else:
                shape, n = _own_weights(m)
                reason = "type not handled: MultiheadAttention with kdim/vdim != embed_dim (separate q/k/v weights)"
                out.append((LayerPlan(name, "MultiheadAttention", shape, n, None, reason), False))
            continue
        base = tileable_base(m)
        if base is not None:
            out.append(
                (LayerPlan(name, type(m).__name__, tuple(m.weight.shape), m.weight.numel(), None, ""), True)
            )
            continue
        if isinstance(m, _CONVERTED):
            shape, n = _own_weights(m)
            out.append(
                (LayerPlan(name, type(m).__name__, shape, n, None, f"already a {type(m).__name__}"), False)
            )
            skip.append(f"{name}.")
            continue
        if _has_weight(m):
            shape, n = _own_weights(m)
            parent = next((b for b in TILEABLE if isinstance(m, b)), None)
            why = f"{type(m).__name__} overrides {parent.__name__}.forward" if parent else type(m).__name__
            out.append((LayerPlan(name, type(m).__name__, shape, n, None, f"type not handled: {why}"), False))
    return out


@dataclass(frozen=True)
class LayerPlan:
    """What :func:`tbnify` does with one layer: ``p`` (``None`` = stays full precision) and why."""

    name: str
    kind: str
    weight_shape: tuple[int, ...]
    numel: int
    p: int | None
    reason: str


def _override_for(name: str, overrides: Mapping[str, int | None], used: set[str]) -> tuple[bool, int | None]:
    if name in overrides:
        used.add(name)
        return True, overrides[name]
    for pattern, value in overrides.items():
        if fnmatch.fnmatchcase(name, pattern):
            used.add(pattern)
            return True, value
    return False, None


def tiling_plan(
    model: nn.Module,
    p: int = 4,
    min_size: int = 64000,
    keep_first_last_binary: bool = True,
    overrides: Mapping[str, int | None] | None = None,
    include_untouched: bool = False,
) -> list[LayerPlan]:
    """The per-layer decisions of :func:`tbnify`, without changing the model.

    One :class:`LayerPlan` per layer ``tbnify`` handles (see the module docstring); with
    ``include_untouched`` also one (``p=None``) per other module with a weight, whose ``reason``
    says why it is left alone.  ``overrides`` maps a layer name (as in ``model.named_modules()``;
    ``<attention>.in_proj`` / ``<attention>.out_proj`` for an attention's projections) or a glob
    pattern (``"features.*"``) to a ``p`` or to ``None`` (keep that layer full precision).  An
    exact name wins over patterns; patterns are tried in the mapping's order.  Raises
    :class:`~tbn_tvm.torch.TilingError` for a ``p`` that is not a positive integer, a negative
    ``min_size``, an override that matches no layer or whose ``p`` does not divide the layer.
    """
    if not isinstance(p, int) or isinstance(p, bool) or p < 1:
        raise TilingError(f"p must be a positive integer, got {p!r}")
    if min_size < 0:
        raise TilingError(f"min_size must be >= 0, got {min_size}")
    overrides = dict(overrides or {})
    for key, value in overrides.items():
        if value is not None and (not isinstance(value, int) or isinstance(value, bool) or value < 1):
            raise TilingError(f"override {key!r}: p must be a positive integer or None, got {value!r}")
    walked = _walk(model)
    layers = [row for row, handled in walked if handled]
    index = {row.name: i for i, row in enumerate(layers)}
    used: set[str] = set()
    plan = []
    for row, handled in walked:
        if not handled:
            if include_untouched:
                plan.append(row)
            continue
        i, name, n = index[row.name], row.name, row.numel
        hit, value = _override_for(name, overrides, used)
        if hit:
            if value is not None and n % value:
                raise TilingError(f"override {name!r}: p={value} does not divide its {n} weights")
            lp, reason = value, "override" if value is not None else "override: full precision"
        elif keep_first_last_binary and i == 0:
            lp, reason = 1, "first layer"
        elif keep_first_last_binary and i == len(layers) - 1:
            lp, reason = 1, "last layer"
        elif n < min_size:
            lp, reason = 1, f"{n} < min_size {min_size}"
        elif n % p:
            lp, reason = 1, f"p={p} does not divide {n}"
        else:
            lp, reason = p, "tiled" if p > 1 else "binary"
        plan.append(LayerPlan(name, row.kind, row.weight_shape, n, lp, reason))
    unknown = [k for k in overrides if k not in used]
    if unknown:
        names = ", ".join(row.name for row in layers[:8]) + (", ..." if len(layers) > 8 else "")
        raise TilingError(
            f"overrides match no layer tbnify handles: {', '.join(map(repr, unknown))}",
            hint=f"layers are: {names}",
        )
    return plan


def _names(rows: list[LayerPlan], limit: int = 4) -> str:
    names = [r.name or "(model)" for r in rows]
    return ", ".join(names[:limit]) + (f" and {len(names) - limit} more" if len(names) > limit else "")


def plan_line(plan: list[LayerPlan], p: int) -> str:
    """One line saying what :func:`tbnify` does with the layers of ``plan`` (from
    :func:`tiling_plan` with ``include_untouched=True``): how many are tiled at ``p``, which
    are kept binary and why, which are left alone and why.

    >>> from torch import nn
    >>> model = nn.Sequential(nn.Embedding(16, 8), nn.Linear(8, 64), nn.ReLU(), nn.Linear(64, 64),
    ...                       nn.ReLU(), nn.Linear(64, 2))
    >>> print(plan_line(tiling_plan(model, p=4, include_untouched=True), 4))  # doctest: +NORMALIZE_WHITESPACE
    tbnify: 0 of 3 layers tiled at p=4; binary: 1 (first layer), 3 (under min_size 64,000),
    5 (last layer); left alone: 0 (type not handled: Embedding)
    """
    handled = [r for r in plan if not _untouched(r)]
    untouched = [r for r in plan if r.p is None]
    tiled = [r for r in plan if r.p is not None and r.p > 1]
    binary = [r for r in plan if r.p == 1]
    parts = [f"tbnify: {len(tiled)} of {len(handled)} layers tiled at p={p}"]
    if binary:
        groups: dict[str, list[LayerPlan]] = {}
        for r in binary:
            groups.setdefault(_why_binary(r), []).append(r)
        parts.append("binary: " + ", ".join(f"{_names(rs)} ({why})" for why, rs in groups.items()))
    if untouched:
        groups = {}
        for r in untouched:
            groups.setdefault(r.reason, []).append(r)
        parts.append("left alone: " + ", ".join(f"{_names(rs)} ({why})" for why, rs in groups.items()))
    return "; ".join(parts)


def _why_binary(row: LayerPlan) -> str:
    """The reason of a binary row, without its layer's own numbers (so that rows group)."""
    if " < min_size " in row.reason:
        return f"under min_size {int(row.reason.rsplit(' ', 1)[1]):,}"
    if row.reason.startswith("p=") and " does not divide " in row.reason:
        return f"{row.reason.split(' ', 1)[0]} does not divide their size"
    return row.reason


def _nothing_tiled(plan: list[LayerPlan], p: int, min_size: int) -> str:
    """The warning's text when ``p > 1`` and no layer was tiled."""
    handled = [r for r in plan if not _untouched(r)]
    if not handled and any(r.reason.startswith("already") for r in plan):
        return (
            f"tbnify tiled nothing at p={p}: every layer it handles is already converted ("
            + _names([r for r in plan if r.reason.startswith("already")])
            + ")"
        )
    if not handled:
        return (
            f"tbnify tiled nothing at p={p}: the model has no layer it handles (Linear, Conv1d, "
            "Conv2d, their subclasses that keep the parent's forward, MultiheadAttention)"
        )
    small = [r for r in handled if r.reason.endswith(f"< min_size {min_size}")]
    if small:
        largest = max(r.numel for r in small)
        return (
            f"tbnify tiled nothing at p={p}: {len(small)} of {len(handled)} layers have fewer than "
            f"min_size={min_size:,} weights (the largest {largest:,}) and were made binary; pass "
            "a smaller min_size (e.g. min_size=0) to tile them"
        )
    return f"tbnify tiled nothing at p={p}: " + plan_line(plan, p).removeprefix("tbnify: ")


def _disable_fast_paths(model: nn.Module) -> None:
    """``nn.TransformerEncoderLayer`` (in eval mode without gradients) and
    ``nn.TransformerEncoder`` (with a padding mask) have fast paths that read their layers'
    ``.weight`` tensors directly — the latent weights of tiled layers.  Where such a module
    holds a tiled layer, turn them off: a no-op forward pre-hook (the layer then takes its
    ordinary path) and ``use_nested_tensor = False``."""
    for m in model.modules():
        tiled = any(isinstance(c, TiledLayer | TiledMultiheadAttention) for c in m.modules())
        if not tiled:
            continue
        if isinstance(m, nn.TransformerEncoderLayer) and _no_fast_path not in m._forward_pre_hooks.values():
            m.register_forward_pre_hook(_no_fast_path)
        if isinstance(m, nn.TransformerEncoder):
            m.use_nested_tensor = False


def _no_fast_path(module: nn.Module, args) -> None:
    """A forward pre-hook that does nothing: its presence turns off
    ``nn.TransformerEncoderLayer``'s fast path (see :func:`_disable_fast_paths`)."""
    return None


def tbnify(
    model: nn.Module,
    p: int = 4,
    min_size: int = 64000,
    keep_first_last_binary: bool = True,
    overrides: Mapping[str, int | None] | None = None,
    alpha: AlphaMode = "per_copy",
    alpha_source: AlphaSource = "A",
    copy_weights: bool = True,
    verbose: bool = True,
) -> nn.Module:
    """Replace the model's Linear/Conv1d/Conv2d layers (and subclasses that keep their forward)
    by tiled ones and its ``nn.MultiheadAttention`` by
    :class:`~tbn_tvm.torch.attention.TiledMultiheadAttention`, **in place**; returns the model.

    ``min_size`` (default 64,000, the authors') makes every smaller layer binary (``p = 1``)
    instead of tiled: on a small model pass a small value, or nothing is tiled.  See the module
    docstring for the rules and :func:`tiling_plan` for ``overrides``.  With ``copy_weights``
    (default) the latent ``W`` and the scale tensor ``A`` of every new layer start from the old
    dense weight (and the bias is kept), so a trained model can be fine-tuned.

    ``verbose`` (default): print one line on stderr saying how many layers were tiled, which
    were kept binary and why, and which modules with weights were left alone and why
    (:func:`plan_line`).  When ``p > 1`` and nothing was tiled, a ``UserWarning`` says why.
    Raises :class:`~tbn_tvm.torch.TilingError` for bad options (see :func:`tiling_plan`) or a
    model that is itself a single layer.

    >>> from torch import nn
    >>> def mlp():
    ...     return nn.Sequential(nn.Linear(64, 128), nn.ReLU(), nn.Linear(128, 128),
    ...                          nn.ReLU(), nn.Linear(128, 10))
    >>> [m.p for m in tbnify(mlp(), p=8, min_size=0) if hasattr(m, "p")]   # a small model: min_size=0
    [1, 8, 1]
    >>> [m.p for m in tbnify(mlp(), p=8, min_size=0, overrides={"4": 2}) if hasattr(m, "p")]
    [1, 8, 2]

    The first call prints ``tbnify: 1 of 3 layers tiled at p=8; binary: 0 (first layer), 4
    (last layer)`` on stderr.  With the default ``min_size`` the 16,384-weight hidden layer is
    made binary too, and tbnify warns that it tiled nothing.
    """
    rows = tiling_plan(model, p, min_size, keep_first_last_binary, overrides, include_untouched=True)
    plan = {row.name: row for row in rows if not _untouched(row)}
    mha_rows = {row.name for row in rows if row.kind in (_MHA_IN, _MHA_OUT)}
    replaced: dict[int, nn.Module] = {}
    for name, module in list(model.named_modules(remove_duplicate=False)):
        if name in mha_rows:  # a projection: replaced with its attention module
            continue
        if isinstance(module, nn.MultiheadAttention):
            p_in, p_out = plan.get(f"{name}.in_proj"), plan.get(f"{name}.out_proj")
            if id(module) in replaced:
                new = replaced[id(module)]
            elif p_in is None or p_out is None or (p_in.p is None and p_out.p is None):
                continue
            else:
                new = TiledMultiheadAttention.from_mha(
                    module, p_in.p, p_out.p, alpha=alpha, alpha_source=alpha_source, copy_weight=copy_weights
                )
                replaced[id(module)] = new
        else:
            row = plan.get(name)
            if row is None and id(module) in replaced:  # the same module registered twice
                new = replaced[id(module)]
            elif row is None or row.p is None:
                continue
            else:
                if row.reason.startswith("p=") and p > 1:
                    warnings.warn(f"tbnify: layer {name!r} kept at p=1 ({row.reason})", stacklevel=2)
                new = replaced.get(id(module))
                if new is None:
                    base = tileable_base(module)
                    new = TILEABLE[base].from_dense(
                        module, row.p, alpha=alpha, alpha_source=alpha_source, copy_weight=copy_weights
                    )
                    replaced[id(module)] = new
        if name == "":
            raise TilingError(
                "tbnify needs a container model, not a single layer",
                hint="wrap it, e.g. nn.Sequential(layer), or use TiledLinear.from_dense",
            )
        parent_name, _, attr = name.rpartition(".")
        setattr(model.get_submodule(parent_name) if parent_name else model, attr, new)
    _disable_fast_paths(model)
    if verbose:
        print(plan_line(rows, p), file=sys.stderr)
    if p > 1 and not any(row.p is not None and row.p > 1 for row in rows):
        warnings.warn(_nothing_tiled(rows, p, min_size), stacklevel=2)
    return model


def _untouched(row: LayerPlan) -> bool:
    return row.p is None and row.reason.startswith(("type not handled", "already"))
