"""Bit-wise weight training: layers whose weights are sign-magnitude integers with learned bits.

Cristian Ivan, "Bit-wise Training of Neural Network Weights" (arXiv 2202.09571, 2022; code
``stracini-git/bitwise-weight-training``, ``localLayers.py`` / ``localFunctions.py``).  A
:class:`BitwiseLinear` / :class:`BitwiseConv2d` with ``k`` bits per weight holds ``k`` latent
real-valued *bit planes* ``x_0 … x_{k−1}`` of the weight's shape (the authors' layout: planes
``0 … k−2`` are the magnitude bits, least significant first, plane ``k−1`` is the sign):

    b_i = H(x_i) = 1 if x_i > 0 else 0                 (magnitude bits, i < k − 1)
    s   = H(x_{k−1})                                   (sign bit)
    W   = α · (−1)^s · Σ_{i<k−1} b_i · 2^i

so ``W/α`` is an integer in ``[−(2^(k−1) − 1), 2^(k−1) − 1]`` stored in ``k`` bits (the
sign counts as one of the ``k``, as in the authors' ``nbits``).  A weight whose magnitude bits
are all 0 is exactly 0.

Backward (training mode): straight-through, as the authors' ``to_bit`` (gradient identity) and
``to_sign`` (gradient ``−dy``): ``∂L/∂x_i = α · (−1)^s · 2^i · ∂L/∂W`` and
``∂L/∂x_{k−1} = −α · Σ b_i 2^i · ∂L/∂W``.

Trainable bits: ``trainable=t`` trains the ``t`` most significant planes (the sign and the top
``t − 1`` magnitude bits, the authors' "first 3 most significant bits" for ``t = 3``); the other
planes are buffers (``frozen_bits``), so no optimiser, weight decay or momentum can move them.
A sequence of ``k`` flags, least significant first (the authors' ``trainableBits``,
e.g. ``[0, 0, 0, 1, 1, 1]``), chooses any planes.

Initialisation (``init="quantize"``, default): the layer's float initial weight (torch's default,
or the dense weight in :func:`bitwiseify`) is quantised, ``α = max|W₀| / (2^(k−1) − 1)`` (per
layer or per output channel) and ``q = round(W₀/α)``; each latent plane starts at ``±a·|n|``
with the sign of its bit of ``q``, ``n ~ N(0, 1)`` and ``a = sqrt(2 / fan_in)`` (the authors'
``kernel_to_bit_tensor``).  ``init="random"`` is the authors' own start: latent planes
``a·N(0, 1)``, re-drawn where all magnitude bits are 0, and ``α`` such that
``std(α·q) = sqrt(2 / fan_in)`` (their ``calc_scaling_factor``).  ``α`` is a buffer (the authors
do not train it); ``learn_alpha=True`` makes it a parameter.

Export: :meth:`BitwiseLayer.to_dense` is a plain layer with the constant ``α · q``, exactly the
eval-mode weight (``export_onnx(form="dense")``, where a following BatchNorm is folded into it
and the product is no longer exactly on a grid); :meth:`BitwiseLayer.freeze` is the compact
:class:`FrozenBitwise` (``form="tile"``, the default): the integers ``q`` (int8 for ``k ≤ 8``)
and ``α`` rebuilt by ``Cast → Mul`` into the same constant, with BatchNorm left separate.  The
compiler's ``bitplane`` format finds ``α`` and the integer grid again.
Storage: ``k`` bits per weight plus 32 per ``α``.

>>> import torch
>>> layer = BitwiseLinear(16, 8, k=6, trainable=3)
>>> q = layer.integer_weight()
>>> bool(q.abs().max() <= 31), torch.equal(layer.weight, layer.alpha * q.float())
(True, True)
>>> sorted(name for name, _ in layer.named_parameters()), layer.trainable_mask
(['bias', 'bits'], (False, False, False, True, True, True))
"""

from __future__ import annotations

import fnmatch
import math
from collections.abc import Sequence
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from tbn_tvm.torch.layers import ALPHA_BITS, TilingError, _exporting

__all__ = [
    "BitwiseLayer",
    "FrozenBitwise",
    "BitwiseLinear",
    "BitwiseConv2d",
    "bitwiseify",
    "quantize_sign_magnitude",
    "trainable_mask",
]

AlphaKind = Literal["layer", "channel"]
InitKind = Literal["quantize", "random"]
MAX_BITS = 16


def trainable_mask(k: int, trainable: int | Sequence) -> tuple[bool, ...]:
    """The per-plane trainable flags, least significant first (plane ``k−1`` is the sign).

    >>> trainable_mask(6, 3)
    (False, False, False, True, True, True)
    >>> trainable_mask(4, [1, 0, 0, 1])
    (True, False, False, True)
    """
    if isinstance(trainable, bool) or not isinstance(trainable, int | Sequence):
        raise TilingError(f"trainable must be a count or a sequence of {k} flags, got {trainable!r}")
    if isinstance(trainable, int):
        if not 0 <= trainable <= k:
            raise TilingError(f"trainable must be in 0..{k} (the k bits), got {trainable}")
        return tuple(i >= k - trainable for i in range(k))
    flags = tuple(bool(f) for f in trainable)
    if len(flags) != k:
        raise TilingError(f"trainable flags: expected {k} (one per bit, LSB first), got {len(flags)}")
    return flags


def _reduce_dims(w: torch.Tensor, alpha: str) -> tuple[int, ...] | None:
    return None if alpha == "layer" else tuple(range(1, w.ndim))


def quantize_sign_magnitude(
    w: torch.Tensor, k: int, alpha: AlphaKind = "layer"
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(α, q)`` with ``q = round(w / α)`` a ``k``-bit sign-magnitude integer (int64) and
    ``α = max|w| / (2^(k−1) − 1)`` per layer (shape ``[]``) or per output channel
    (``[O, 1, ...]``); an all-zero layer or row gets ``α = 1``.

    >>> a, q = quantize_sign_magnitude(torch.tensor([0.5, -1.0, 0.26]), 3)
    >>> round(float(a), 6), q.tolist()
    (0.333333, [2, -3, 1])
    """
    top = (1 << (k - 1)) - 1
    w = w.detach()
    dims = _reduce_dims(w, alpha)
    peak = w.abs().amax() if dims is None else w.abs().amax(dim=dims, keepdim=True)
    a = torch.where(peak > 0, peak / top, torch.ones_like(peak))
    q = torch.round(w / a).clamp_(-top, top).to(torch.int64)
    return a, q


def _planes_from_integers(q: torch.Tensor, k: int, scale: float) -> torch.Tensor:
    """Latent planes ``[k, *q.shape]`` whose bits encode ``q``: ``±scale·|N(0, 1)|`` (torch RNG)."""
    mag = q.abs()
    planes = torch.empty((k, *q.shape), dtype=torch.float32)
    for i in range(k - 1):
        bit = (mag >> i) & 1
        planes[i] = (2.0 * bit.float() - 1.0) * scale * torch.randn(q.shape).abs()
    sign = torch.randn(q.shape).abs() * scale
    # s = H(x) = 1 for a negative weight: x > 0 there, x < 0 for a positive one, random for 0
    planes[k - 1] = torch.where(q < 0, sign, torch.where(q > 0, -sign, torch.randn(q.shape) * scale))
    return planes


def _random_planes(shape: tuple[int, ...], k: int, scale: float) -> torch.Tensor:
    """The authors' ``predefine_nonzeroweight_bittensor``: ``scale·N(0, 1)``, magnitude bits
    re-drawn wherever they are all ``≤ 0`` (no zero weight at the start)."""
    planes = torch.randn((k, *shape)) * scale
    if k > 1:
        while True:
            dead = (planes[: k - 1] <= 0).all(dim=0)
            if not dead.any():
                break
            fresh = torch.randn((k - 1, int(dead.sum()))) * scale
            planes[: k - 1][:, dead] = fresh
    return planes


class BitwiseLayer(nn.Module):
    """Behaviour shared by :class:`BitwiseLinear` and :class:`BitwiseConv2d`.

    Attributes: ``k`` (bits per weight), ``trainable_mask`` (per plane, LSB first, the last is
    the sign), ``bits`` (the trainable latent planes, ``[#trainable, *weight shape]``, or
    ``None``), ``frozen_bits`` (buffer, the other planes), ``alpha`` (``[]`` or ``[O, 1, ...]``,
    a buffer unless ``learn_alpha``).  ``weight`` is a read-only property: the current
    ``α · q`` (differentiable in training mode).
    """

    k: int
    trainable_mask: tuple[bool, ...]
    alpha_kind: str

    @property
    def weight(self) -> torch.Tensor:  # type: ignore[override]
        """The weight the layer computes with, ``α · (−1)^s · Σ b_i 2^i``."""
        params = self.__dict__.get("_parameters")
        if params is not None and "weight" in params:  # only inside the nn.Linear/Conv constructor
            return params["weight"]
        if "k" not in self.__dict__:
            raise AttributeError("weight")
        return self.bitwise_weight()

    def _setup_bits(
        self,
        k: int,
        trainable: int | Sequence,
        alpha: str,
        learn_alpha: bool,
        init: str,
        initial: torch.Tensor | None = None,
    ) -> None:
        if not isinstance(k, int) or isinstance(k, bool) or not 2 <= k <= MAX_BITS:
            raise TilingError(f"k must be an integer in 2..{MAX_BITS} (sign + magnitude bits), got {k!r}")
        if alpha not in ("layer", "channel"):
            raise TilingError(f"alpha must be 'layer' or 'channel', got {alpha!r}")
        if init not in ("quantize", "random"):
            raise TilingError(f"init must be 'quantize' or 'random', got {init!r}")
        mask = trainable_mask(k, trainable)
        w0 = self._parameters.pop("weight").detach()
        if initial is not None:
            w0 = initial.detach().to(w0)
        shape = tuple(w0.shape)
        fan_in = math.prod(shape[1:]) or 1
        scale = math.sqrt(2.0 / fan_in)
        if init == "quantize":
            a, q = quantize_sign_magnitude(w0, k, alpha)  # type: ignore[arg-type]
            planes = _planes_from_integers(q, k, scale)
        else:
            planes = _random_planes(shape, k, scale)
            q = _integers(planes, k)
            dims = _reduce_dims(q, alpha)
            sd = q.float().std() if dims is None else q.float().std(dim=dims, keepdim=True)
            a = torch.where(sd > 0, scale / sd, torch.ones_like(sd))
        planes = planes.to(device=w0.device, dtype=w0.dtype)
        a = a.to(device=w0.device, dtype=w0.dtype)
        self.k = k
        self.trainable_mask = mask
        self.alpha_kind = alpha
        self._trainable_planes = [i for i in range(k) if mask[i]]
        self._frozen_planes = [i for i in range(k) if not mask[i]]
        order = self._trainable_planes + self._frozen_planes
        self._plane_order = [order.index(i) for i in range(k)]  # plane i is row _plane_order[i]
        if self._trainable_planes:
            self.bits = nn.Parameter(planes[self._trainable_planes].clone())
        else:
            self.register_parameter("bits", None)
        self.register_buffer("frozen_bits", planes[self._frozen_planes].clone())
        if learn_alpha:
            self.alpha = nn.Parameter(a.clone())
        else:
            self.register_buffer("alpha", a.clone())
        self._weight_shape = shape

    def reset_parameters(self) -> None:  # nn.Linear / nn.ConvNd constructors call it
        if "k" in self.__dict__:
            raise TilingError("a bit-wise layer is initialised at construction; build a new one")
        super().reset_parameters()  # type: ignore[misc]

    # -- the formula ---------------------------------------------------------------------------
    def latent_planes(self) -> torch.Tensor:
        """All ``k`` latent planes in bit order, ``[k, *weight shape]``."""
        parts = [t for t in (self.bits, self.frozen_bits) if t is not None and len(t)]
        stacked = torch.cat(parts) if len(parts) > 1 else parts[0]
        return stacked[self._plane_order]

    def bitwise_weight(self, ste: bool | None = None) -> torch.Tensor:
        """``α · (−1)^s · Σ_{i<k−1} b_i 2^i``; with ``ste`` (default: in training mode, not
        exporting) gradients reach the trainable planes straight through."""
        if ste is None:
            ste = self.training and not _exporting()
        planes = self.latent_planes()
        hard = (planes > 0).to(planes.dtype)
        if ste:
            delta = planes - planes.detach()  # zero, with the identity gradient
            bits = hard[:-1] + delta[:-1]
            sign = (1.0 - 2.0 * hard[-1]) - delta[-1]
        else:
            bits, sign = hard[:-1], 1.0 - 2.0 * hard[-1]
        pow2 = torch.tensor(
            [float(1 << i) for i in range(self.k - 1)], dtype=planes.dtype, device=planes.device
        )
        magnitude = (bits * pow2.reshape(-1, *[1] * (planes.ndim - 1))).sum(dim=0)
        return self.alpha * (sign * magnitude)

    @torch.no_grad()
    def integer_weight(self) -> torch.Tensor:
        """``q = (−1)^s · Σ b_i 2^i`` (int64, the weight's shape)."""
        return _integers(self.latent_planes(), self.k)

    def storage_bits(self) -> int:
        """``k`` bits per weight plus 32 per ``α`` (bias not included)."""
        return self.k * math.prod(self._weight_shape) + ALPHA_BITS * self.alpha.numel()

    def _bitwise_repr(self) -> str:
        flags = "".join("1" if f else "0" for f in self.trainable_mask)
        return f"k={self.k}, trainable={flags} (LSB first), alpha={self.alpha_kind!r}"

    def to_dense(self) -> nn.Module:
        """A plain ``nn.Linear`` / ``nn.Conv2d`` whose weight is ``α · q`` (inference, no grad)."""
        raise NotImplementedError

    def freeze(self) -> FrozenBitwise:
        """The compact inference form (see :class:`FrozenBitwise`)."""
        return FrozenBitwise(self)


class FrozenBitwise(nn.Module):
    """Inference form of a bit-wise layer: buffers ``intweight`` (``q``; int8 for ``k ≤ 8``, else
    int32) and ``scale`` (``α``); the weight is ``scale · float(intweight)``, exactly the layer's
    eval weight.  Exported to ONNX it is ``Cast → Mul`` in front of the Gemm/Conv."""

    def __init__(self, layer: BitwiseLayer) -> None:
        super().__init__()
        self.kind = "linear" if isinstance(layer, nn.Linear) else "conv2d"
        self.k = layer.k
        self.weight_shape = tuple(layer._weight_shape)
        q = layer.integer_weight()
        with torch.no_grad():
            self.register_buffer("intweight", q.to(torch.int8 if layer.k <= 8 else torch.int32))
            self.register_buffer("scale", layer.alpha.detach().clone())
            self.register_buffer("bias", None if layer.bias is None else layer.bias.detach().clone())
        if self.kind == "conv2d":
            self.stride, self.padding, self.dilation = layer.stride, layer.padding, layer.dilation
            self.groups, self.padding_mode = layer.groups, layer.padding_mode
            self._pad = layer._reversed_padding_repeated_twice
        self.train(False)

    def weight(self) -> torch.Tensor:
        """``α · q``."""
        return self.scale * self.intweight.to(self.scale.dtype)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # noqa: D102
        w = self.weight()
        if self.kind == "linear":
            return F.linear(x, w, self.bias)
        if self.padding_mode != "zeros":
            x = F.pad(x, self._pad, mode=self.padding_mode)
            return F.conv2d(x, w, self.bias, self.stride, 0, self.dilation, self.groups)
        return F.conv2d(x, w, self.bias, self.stride, self.padding, self.dilation, self.groups)

    def storage_bits(self) -> int:
        """``k`` bits per weight plus 32 per ``α``."""
        return self.k * math.prod(self.weight_shape) + ALPHA_BITS * self.scale.numel()

    def extra_repr(self) -> str:  # noqa: D102
        return f"{self.kind}, weight={list(self.weight_shape)}, k={self.k}"


def _integers(planes: torch.Tensor, k: int) -> torch.Tensor:
    hard = (planes.detach() > 0).to(torch.int64)
    mag = sum(hard[i] << i for i in range(k - 1))
    return torch.where(hard[k - 1] == 1, -mag, mag)


class BitwiseLinear(BitwiseLayer, nn.Linear):
    """``nn.Linear`` whose weight is ``α`` times a ``k``-bit sign-magnitude integer with learned
    bits (see the module docstring).  Extra keyword arguments: ``k`` (default 6), ``trainable``
    (default 3), ``alpha`` (``"layer"`` or ``"channel"``), ``learn_alpha``, ``init``."""

    def __init__(
        self,
        in_features: int,
        out_features: int,
        bias: bool = True,
        device=None,
        dtype=None,
        *,
        k: int = 6,
        trainable: int | Sequence = 3,
        alpha: AlphaKind = "layer",
        learn_alpha: bool = False,
        init: InitKind = "quantize",
        initial_weight: torch.Tensor | None = None,
    ) -> None:
        nn.Linear.__init__(self, in_features, out_features, bias=bias, device=device, dtype=dtype)
        self._setup_bits(k, trainable, alpha, learn_alpha, init, initial_weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # noqa: D102
        return F.linear(x, self.bitwise_weight(), self.bias)

    def extra_repr(self) -> str:  # noqa: D102
        return f"{nn.Linear.extra_repr(self)}, {self._bitwise_repr()}"

    @classmethod
    def from_dense(
        cls, layer: nn.Linear, k: int = 6, trainable: int | Sequence = 3, copy_weight: bool = True, **kw
    ):
        """A bit-wise layer with ``layer``'s shape; by default its weight quantised and its bias."""
        new = cls(
            layer.in_features,
            layer.out_features,
            bias=layer.bias is not None,
            device=layer.weight.device,
            dtype=layer.weight.dtype,
            k=k,
            trainable=trainable,
            initial_weight=layer.weight if copy_weight else None,
            **kw,
        )
        _copy_bias(new, layer, copy_weight)
        return new

    @torch.no_grad()
    def to_dense(self) -> nn.Linear:  # noqa: D102
        dense = nn.Linear(
            self.in_features, self.out_features, bias=self.bias is not None, device=self.alpha.device
        )
        _fill(dense, self)
        return dense


class BitwiseConv2d(BitwiseLayer, nn.Conv2d):
    """``nn.Conv2d`` whose weight ``[O, I/g, kh, kw]`` is ``α`` times a ``k``-bit sign-magnitude
    integer with learned bits (see the module docstring).

    >>> conv = BitwiseConv2d(8, 16, 3, padding=1, k=4, trainable=2, alpha="channel")
    >>> conv(torch.randn(1, 8, 5, 5)).shape, conv.alpha.shape
    (torch.Size([1, 16, 5, 5]), torch.Size([16, 1, 1, 1]))
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size,
        stride=1,
        padding=0,
        dilation=1,
        groups: int = 1,
        bias: bool = True,
        padding_mode: str = "zeros",
        device=None,
        dtype=None,
        *,
        k: int = 6,
        trainable: int | Sequence = 3,
        alpha: AlphaKind = "layer",
        learn_alpha: bool = False,
        init: InitKind = "quantize",
        initial_weight: torch.Tensor | None = None,
    ) -> None:
        nn.Conv2d.__init__(
            self,
            in_channels,
            out_channels,
            kernel_size,
            stride=stride,
            padding=padding,
            dilation=dilation,
            groups=groups,
            bias=bias,
            padding_mode=padding_mode,
            device=device,
            dtype=dtype,
        )
        self._setup_bits(k, trainable, alpha, learn_alpha, init, initial_weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # noqa: D102
        return self._conv_forward(x, self.bitwise_weight(), self.bias)

    def extra_repr(self) -> str:  # noqa: D102
        return f"{nn.Conv2d.extra_repr(self)}, {self._bitwise_repr()}"

    @classmethod
    def from_dense(
        cls, layer: nn.Conv2d, k: int = 6, trainable: int | Sequence = 3, copy_weight: bool = True, **kw
    ):
        """A bit-wise layer with ``layer``'s shape and options; by default its weight quantised
        and its bias."""
        new = cls(
            layer.in_channels,
            layer.out_channels,
            layer.kernel_size,
            stride=layer.stride,
            padding=layer.padding,
            dilation=layer.dilation,
            groups=layer.groups,
            bias=layer.bias is not None,
            padding_mode=layer.padding_mode,
            device=layer.weight.device,
            dtype=layer.weight.dtype,
            k=k,
            trainable=trainable,
            initial_weight=layer.weight if copy_weight else None,
            **kw,
        )
        _copy_bias(new, layer, copy_weight)
        return new

    @torch.no_grad()
    def to_dense(self) -> nn.Conv2d:  # noqa: D102
        dense = nn.Conv2d(
            self.in_channels,
            self.out_channels,
            self.kernel_size,
            stride=self.stride,
            padding=self.padding,
            dilation=self.dilation,
            groups=self.groups,
            bias=self.bias is not None,
            padding_mode=self.padding_mode,
            device=self.alpha.device,
        )
        _fill(dense, self)
        return dense


def _copy_bias(new: BitwiseLayer, old: nn.Module, copy_weight: bool) -> None:
    if copy_weight and old.bias is not None:
        with torch.no_grad():
            new.bias.copy_(old.bias)
    new.train(old.training)


def _fill(dense: nn.Module, layer: BitwiseLayer) -> None:
    dense.weight.copy_(layer.bitwise_weight(ste=False))
    if layer.bias is not None:
        dense.bias.copy_(layer.bias)
    dense.train(layer.training)


BITWISE_TYPES: dict[type, type] = {nn.Linear: BitwiseLinear, nn.Conv2d: BitwiseConv2d}


def bitwiseify(
    model: nn.Module,
    k: int = 6,
    trainable: int | Sequence = 3,
    *,
    alpha: AlphaKind = "layer",
    learn_alpha: bool = False,
    init: InitKind = "quantize",
    exclude: Sequence[str] = (),
    copy_weights: bool = True,
) -> nn.Module:
    """Replace every ``nn.Linear`` / ``nn.Conv2d`` (exact types) by its bit-wise twin, **in place**.

    Every such layer is converted (the authors bit-train all of them), except names matching a
    glob of ``exclude``.  With ``copy_weights`` (default) each layer's weight is quantised to
    ``k`` bits (``init="quantize"``) and its bias kept, so the trainable bits start from the
    model's current weights and the frozen low bits keep that quantisation.

    >>> from torch import nn
    >>> model = bitwiseify(nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 4)), k=6,
    ...                    trainable=3, exclude=["2"])
    >>> [type(m).__name__ for m in model]
    ['BitwiseLinear', 'ReLU', 'Linear']
    """
    if type(model) in BITWISE_TYPES:
        raise TilingError(
            "bitwiseify needs a container model, not a single layer",
            hint="wrap it, e.g. nn.Sequential(layer), or use BitwiseLinear.from_dense",
        )
    trainable_mask(k, trainable)  # fail before touching the model
    replaced: dict[int, nn.Module] = {}
    for name, m in list(model.named_modules(remove_duplicate=False)):
        if type(m) not in BITWISE_TYPES or any(fnmatch.fnmatchcase(name, p) for p in exclude):
            continue
        new = replaced.get(id(m))
        if new is None:
            new = BITWISE_TYPES[type(m)].from_dense(
                m, k, trainable, copy_weight=copy_weights, alpha=alpha, learn_alpha=learn_alpha, init=init
            )
            replaced[id(m)] = new
        parent, _, attr = name.rpartition(".")
        setattr(model.get_submodule(parent) if parent else model, attr, new)
    return model
