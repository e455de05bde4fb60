"""Turn an existing PyTorch model into a Tiled Bit Network, following the authors' rules.

Rules (Gorbett et al.; code ``min_compress_size`` and the per-layer lists of their configs), applied
to every ``nn.Linear`` / ``nn.Conv1d`` / ``nn.Conv2d`` in registration order:

1. an entry of ``overrides`` for the layer wins (an int ``p``, or ``None`` = keep full precision);
2. the first and the last such layer get ``p = 1`` (binary, not tiled) when
   ``keep_first_last_binary`` is true (the default);
3. a layer with fewer than ``min_size`` weights gets ``p = 1`` (binary, **not** full precision);
4. every other layer gets ``p``; if ``p`` does not divide its number of weights it falls back to
   ``p = 1`` (and the plan says so).

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
import warnings
from collections.abc import Mapping
from dataclasses import dataclass

from torch import nn

from tbn_tvm.torch.layers import (
    AlphaMode,
    AlphaSource,
    TiledConv1d,
    TiledConv2d,
    TiledLinear,
    TilingError,
)

__all__ = ["tbnify", "tiling_plan", "LayerPlan", "TILEABLE"]

TILEABLE: dict[type, type] = {nn.Linear: TiledLinear, nn.Conv1d: TiledConv1d, nn.Conv2d: TiledConv2d}
"""Dense layer type -> tiled replacement.  Only these exact types are replaced (subclasses such as
attention's ``NonDynamicallyQuantizableLinear`` are used by their owners' weights directly)."""


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
) -> list[LayerPlan]:
    """The per-layer decisions of :func:`tbnify`, without changing the model.

    ``overrides`` maps a layer name (as in ``model.named_modules()``) or a glob pattern
    (``"features.*"``) to a ``p`` or to ``None`` (keep that layer full precision).  An exact name
    wins over patterns; patterns are tried in the mapping's order.
    """
    if not isinstance(p, int) or isinstance(p, bool) or p < 1:
        raise TilingError(f"p must be a positive integer, got {p!r}")
    if min_size < 0:
        raise TilingError(f"min_size must be >= 0, got {min_size}")
    overrides = dict(overrides or {})
    for key, value in overrides.items():
        if value is not None and (not isinstance(value, int) or isinstance(value, bool) or value < 1):
            raise TilingError(f"override {key!r}: p must be a positive integer or None, got {value!r}")
    layers = [(name, m) for name, m in model.named_modules() if type(m) in TILEABLE]
    used: set[str] = set()
    plan = []
    for i, (name, m) in enumerate(layers):
        n = m.weight.numel()
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
        plan.append(LayerPlan(name, type(m).__name__, tuple(m.weight.shape), n, lp, reason))
    unknown = [k for k in overrides if k not in used]
    if unknown:
        names = ", ".join(name for name, _ in layers[:8]) + (", ..." if len(layers) > 8 else "")
        raise TilingError(
            f"overrides match no Linear/Conv1d/Conv2d layer: {', '.join(map(repr, unknown))}",
            hint=f"layers are: {names}",
        )
    return plan


def tbnify(
    model: nn.Module,
    p: int = 4,
    min_size: int = 64000,
    keep_first_last_binary: bool = True,
    overrides: Mapping[str, int | None] | None = None,
    alpha: AlphaMode = "per_copy",
    alpha_source: AlphaSource = "A",
    copy_weights: bool = True,
) -> nn.Module:
    """Replace the model's Linear/Conv1d/Conv2d layers by tiled ones, **in place**; returns it.

    See the module docstring for the rules and :func:`tiling_plan` for ``overrides``.  With
    ``copy_weights`` (default) the latent ``W`` and the scale tensor ``A`` of every new layer start
    from the old dense weight (and the bias is kept), so a trained model can be fine-tuned.

    >>> from torch import nn
    >>> model = tbnify(nn.Sequential(nn.Linear(64, 128), nn.ReLU(), nn.Linear(128, 128),
    ...                              nn.ReLU(), nn.Linear(128, 10)), p=8, min_size=0,
    ...                overrides={"4": 2})
    >>> [(type(m).__name__, m.p) for m in model if hasattr(m, "p")]
    [('TiledLinear', 1), ('TiledLinear', 8), ('TiledLinear', 2)]
    """
    plan = {row.name: row for row in tiling_plan(model, p, min_size, keep_first_last_binary, overrides)}
    replaced: dict[int, nn.Module] = {}
    for name, module in list(model.named_modules(remove_duplicate=False)):
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
                new = TILEABLE[type(module)].from_dense(
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
    return model
