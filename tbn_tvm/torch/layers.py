"""Tiled Bit Network layers: drop-in ``nn.Linear`` / ``nn.Conv1d`` / ``nn.Conv2d`` with a ``p``.

The forward pass is exactly the authors' (Gorbett et al., CIKM 2024, code ``GetSubnetBinaryTiled``
and ``alpha_scaling``), for a latent weight ``W`` with ``n = W.numel()`` elements:

1. flatten ``W`` row-major and cut it into ``p`` contiguous chunks of ``q = n / p`` elements;
2. ``s = Σ_k chunk_k`` (a **sum**, not a mean);
3. ``t = where(s > 0, +1, -1)`` — the tile, ``q`` bits (``s == 0`` gives ``-1``);
4. ``B = tile(t, p)`` reshaped to ``W.shape``;
5. copy ``k`` of the tile is scaled by ``α_k = mean |A|`` over chunk ``k`` (``alpha="per_copy"``)
   or every copy by ``α = mean |A|`` (``alpha="single"``), where ``A`` is a separate tensor of
   ``W``'s shape (``alpha_source="A"``, the default) or ``W`` itself (``alpha_source="W"``);
6. the result ``B̂`` is used as the weight of an ordinary linear / convolution.

Backward (training mode): a straight-through estimator with an identity Jacobian from ``B`` to
``W`` (each element of ``W`` receives the gradient of its own position of ``B``; no clipping).
``α`` is an ordinary differentiable function of ``A`` (or ``W``), so ``A`` learns through it.
In eval mode and under ONNX export the sign is a plain ``where`` with no STE.

``p = 1`` is a plain binary-weight layer (``sign(W) · mean |A|``).

>>> import torch
>>> from tbn_tvm.torch import TiledLinear
>>> layer = TiledLinear(64, 32, bias=False, p=4)
>>> layer(torch.randn(2, 64)).shape
torch.Size([2, 32])
>>> layer.tile().shape, layer.alphas().shape       # 64*32/4 bits and 4 scales
(torch.Size([512]), torch.Size([4]))
"""

from __future__ import annotations

import math
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from tbn_tvm.errors import TBNError

__all__ = [
    "TilingError",
    "TiledLinear",
    "TiledConv1d",
    "TiledConv2d",
    "TiledLayer",
    "FrozenTiled",
    "tiled_sign",
    "tiled_weight",
    "is_tiled",
]

AlphaMode = Literal["per_copy", "single"]
AlphaSource = Literal["A", "W"]
ALPHA_BITS = 32
"""Storage cost of one scale α (fp32), as in the authors' ``model_stats``."""


class TilingError(TBNError, ValueError):
    """A layer cannot be tiled as asked (``p`` does not divide its size, unknown option, ...)."""


# ------------------------------------------------------------------------- the formula itself
def _sign_tile(w: torch.Tensor, p: int) -> torch.Tensor:
    """``t = where(Σ_k chunk_k(w) > 0, 1, -1)`` as a ``[q]`` tensor (no autograd)."""
    s = w.detach().reshape(p, -1).sum(dim=0)
    # sign(sign(s) - 1/2) maps s > 0 to +1 and s <= 0 to -1 exactly; it is a few times faster on
    # CPU than torch.where (bool tensors are slow) and gives the same result.
    return torch.sign(torch.sign(s).sub_(0.5))


class _TiledSignSTE(torch.autograd.Function):
    """``W -> B = tile(t, p)`` with the identity straight-through gradient."""

    @staticmethod
    def forward(ctx, w: torch.Tensor, p: int) -> torch.Tensor:  # noqa: D102
        return _sign_tile(w, p).expand(p, -1).reshape(w.shape)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):  # noqa: D102
        return grad, None


class _TiledWeightSTE(torch.autograd.Function):
    """``(W, α) -> B̂ = tile(t, p) * α`` with the identity STE from ``B`` to ``W``.

    The same values and gradients as ``_TiledSignSTE.apply(W, p) * α`` (chain rule through the
    product), in one pass: ``dW = g · α_k`` on chunk ``k`` and ``dα_k = Σ_{chunk k} g · t``.
    """

    @staticmethod
    def forward(ctx, w: torch.Tensor, scales: torch.Tensor, p: int) -> torch.Tensor:  # noqa: D102
        t = _sign_tile(w, p)
        ctx.save_for_backward(t, scales)
        ctx.p = p
        return (t.expand(p, -1) * scales.reshape(-1, 1)).reshape(w.shape)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):  # noqa: D102
        t, scales = ctx.saved_tensors
        g = grad.reshape(ctx.p, -1)
        grad_w = grad_a = None
        if ctx.needs_input_grad[0]:
            grad_w = (g * scales.reshape(-1, 1)).reshape(grad.shape)
        if ctx.needs_input_grad[1]:
            per_copy = (g * t).sum(dim=1)
            grad_a = per_copy if scales.numel() == ctx.p else per_copy.sum().reshape(scales.shape)
        return grad_w, grad_a, None


def tiled_sign(w: torch.Tensor, p: int, ste: bool = True) -> torch.Tensor:
    """The unscaled tiled binary tensor ``B`` of the same shape as ``w`` (values ±1).

    With ``ste=True`` the gradient passes straight through (identity); with ``ste=False`` the
    result is a plain, non-differentiable computation (what is exported).

    >>> w = torch.tensor([[1.0, -2.0], [-3.0, 3.0]])          # chunks [1,-2] + [-3,3] = [-2, 1]
    >>> tiled_sign(w, 2)
    tensor([[-1.,  1.],
            [-1.,  1.]])
    """
    _check_divisible(w.numel(), p, "tensor")
    if ste:
        return _TiledSignSTE.apply(w, p)
    return _sign_tile(w, p).expand(p, -1).reshape(w.shape)


def _alphas(src: torch.Tensor, p: int, alpha: AlphaMode) -> torch.Tensor:
    if alpha == "per_copy":
        return src.abs().reshape(p, -1).mean(dim=1)
    return src.abs().mean().reshape(1)


def tiled_weight(
    w: torch.Tensor,
    p: int,
    a: torch.Tensor | None = None,
    alpha: AlphaMode = "per_copy",
    ste: bool = True,
) -> torch.Tensor:
    """The scaled tiled weight ``B̂`` for latent weight ``w`` and scale tensor ``a``.

    ``a=None`` takes the scales from ``w`` itself (``alpha_source="W"``).  With ``ste=True``
    gradients reach ``w`` (straight through) and ``a`` (through the α's).

    >>> w = torch.tensor([1.0, -2.0, -3.0, 3.0])
    >>> tiled_weight(w, 2, a=torch.tensor([1.0, 1.0, 2.0, 4.0]))   # α = [1, 3]
    tensor([-1.,  1., -3.,  3.])
    """
    _check_divisible(w.numel(), p, "tensor")
    src = w if a is None else a
    if src.shape != w.shape:
        raise TilingError(f"scale tensor A has shape {list(src.shape)}, W has {list(w.shape)}")
    scales = _alphas(src, p, alpha)
    if ste:
        return _TiledWeightSTE.apply(w, scales, p)
    with torch.no_grad():
        t = _sign_tile(w, p)
        return (t.expand(p, -1) * scales.reshape(-1, 1)).reshape(w.shape)


def _check_divisible(n: int, p: int, what: str) -> None:
    if not isinstance(p, int) or isinstance(p, bool) or p < 1:
        raise TilingError(f"p must be a positive integer, got {p!r}")
    if n % p:
        raise TilingError(
            f"{what} has {n} weights, which p={p} does not divide",
            hint="choose a p that divides the number of weights",
        )


# ---------------------------------------------------------------------------------- the layers
class TiledLayer(nn.Module):
    """Behaviour shared by :class:`TiledLinear`, :class:`TiledConv1d` and :class:`TiledConv2d`.

    Attributes: ``weight`` is the latent tensor ``W`` (same shape and initialisation as the
    dense layer's weight), ``alpha_weight`` is ``A`` (``None`` when ``alpha_source="W"``),
    ``p``, ``alpha`` and ``alpha_source`` are the tiling options.
    """

    weight: nn.Parameter
    alpha_weight: nn.Parameter | None
    p: int
    alpha: AlphaMode
    alpha_source: AlphaSource

    def _setup_tiling(self, p: int, alpha: str, alpha_source: str) -> None:
        if alpha not in ("per_copy", "single"):
            raise TilingError(f"alpha must be 'per_copy' or 'single', got {alpha!r}")
        if alpha_source not in ("A", "W"):
            raise TilingError(f"alpha_source must be 'A' or 'W', got {alpha_source!r}")
        _check_divisible(self.weight.numel(), p, f"{type(self).__name__} weight {list(self.weight.shape)}")
        self.p = p
        self.alpha = alpha  # type: ignore[assignment]
        self.alpha_source = alpha_source  # type: ignore[assignment]
        if alpha_source == "A":
            self.alpha_weight = nn.Parameter(torch.empty_like(self.weight))
            # The authors initialise A with kaiming_normal (fan_in, relu); W keeps torch's default.
            nn.init.kaiming_normal_(self.alpha_weight, mode="fan_in", nonlinearity="relu")
        else:
            self.register_parameter("alpha_weight", None)

    def reset_parameters(self) -> None:  # called by the nn.Linear / nn.ConvNd constructors
        super().reset_parameters()  # type: ignore[misc]
        if getattr(self, "alpha_weight", None) is not None:
            nn.init.kaiming_normal_(self.alpha_weight, mode="fan_in", nonlinearity="relu")

    # -- the quantities of the paper --------------------------------------------------------
    @property
    def tile_length(self) -> int:
        """``q = n / p``: the number of bits in the tile."""
        return self.weight.numel() // self.p

    def alphas(self) -> torch.Tensor:
        """The scales: ``p`` values (``alpha="per_copy"``) or one (``alpha="single"``)."""
        src = self.weight if self.alpha_weight is None else self.alpha_weight
        return _alphas(src, self.p, self.alpha)

    def tile(self) -> torch.Tensor:
        """The ±1 tile ``t`` (``q`` values, no gradient)."""
        return _sign_tile(self.weight, self.p)

    def binary_weight(self) -> torch.Tensor:
        """The weight ``B̂`` the layer computes with (STE in training mode, plain sign otherwise)."""
        ste = self.training and not _exporting()
        return tiled_weight(self.weight, self.p, self.alpha_weight, self.alpha, ste=ste)

    def storage_bits(self) -> int:
        """Bits to store the weight at inference: ``q`` tile bits + 32 per α (bias not included)."""
        n_alpha = self.p if self.alpha == "per_copy" else 1
        return self.tile_length + ALPHA_BITS * n_alpha

    # -- conversions ------------------------------------------------------------------------
    def _tiling_repr(self) -> str:
        return f"p={self.p}, alpha={self.alpha!r}, alpha_source={self.alpha_source!r}"

    def load_dense_weight(self, weight: torch.Tensor) -> None:
        """Start from a dense weight (e.g. a trained model): ``W`` and ``A`` both copy it."""
        with torch.no_grad():
            self.weight.copy_(weight)
            if self.alpha_weight is not None:
                self.alpha_weight.copy_(weight)

    def to_dense(self) -> nn.Module:
        """A plain ``nn.Linear`` / ``nn.ConvNd`` whose weight is ``B̂`` (inference, no grad)."""
        raise NotImplementedError

    def freeze(self) -> FrozenTiled:
        """The compact inference form: ±1 tile and scales as buffers (see :class:`FrozenTiled`)."""
        return FrozenTiled(self)


def _exporting() -> bool:
    try:
        if torch.onnx.is_in_onnx_export():
            return True
    except AttributeError:  # pragma: no cover - very old torch
        pass
    compiler = getattr(torch, "compiler", None)
    return bool(compiler is not None and hasattr(compiler, "is_exporting") and compiler.is_exporting())


class TiledLinear(TiledLayer, nn.Linear):
    """``nn.Linear`` whose weight is a tiled binary tensor (see the module docstring).

    >>> layer = TiledLinear(256, 128, bias=False, p=8)
    >>> layer.storage_bits()                 # 256*128/8 tile bits + 8 fp32 scales
    4352
    """

    def __init__(
        self,
        in_features: int,
        out_features: int,
        bias: bool = True,
        device=None,
        dtype=None,
        *,
        p: int = 4,
        alpha: AlphaMode = "per_copy",
        alpha_source: AlphaSource = "A",
    ) -> None:
        nn.Linear.__init__(self, in_features, out_features, bias=bias, device=device, dtype=dtype)
        self._setup_tiling(p, alpha, alpha_source)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # noqa: D102
        return F.linear(x, self.binary_weight(), self.bias)

    def extra_repr(self) -> str:  # noqa: D102
        return f"{nn.Linear.extra_repr(self)}, {self._tiling_repr()}"

    @classmethod
    def from_dense(
        cls,
        layer: nn.Linear,
        p: int,
        alpha: AlphaMode = "per_copy",
        alpha_source: AlphaSource = "A",
        copy_weight: bool = True,
    ) -> TiledLinear:
        """A tiled layer with ``layer``'s shape (and, by default, its weight and bias)."""
        new = cls(
            layer.in_features,
            layer.out_features,
            bias=layer.bias is not None,
            device=layer.weight.device,
            dtype=layer.weight.dtype,
            p=p,
            alpha=alpha,
            alpha_source=alpha_source,
        )
        _copy_from(new, layer, copy_weight)
        return new

    def to_dense(self) -> nn.Linear:  # noqa: D102
        dense = nn.Linear(
            self.in_features,
            self.out_features,
            bias=self.bias is not None,
            device=self.weight.device,
            dtype=self.weight.dtype,
        )
        _fill_dense(dense, self)
        return dense


class _TiledConv(TiledLayer):
    _dense_class: type[nn.Module]

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # noqa: D102
        return self._conv_forward(x, self.binary_weight(), self.bias)

    def extra_repr(self) -> str:  # noqa: D102
        return f"{nn.modules.conv._ConvNd.extra_repr(self)}, {self._tiling_repr()}"

    @classmethod
    def from_dense(
        cls,
        layer: nn.modules.conv._ConvNd,
        p: int,
        alpha: AlphaMode = "per_copy",
        alpha_source: AlphaSource = "A",
        copy_weight: bool = True,
    ):
        """A tiled layer with ``layer``'s shape and options (and, by default, its weight and bias)."""
        new = cls(**_conv_kwargs(layer), p=p, alpha=alpha, alpha_source=alpha_source)
        _copy_from(new, layer, copy_weight)
        return new

    def to_dense(self):  # noqa: D102
        dense = self._dense_class(**_conv_kwargs(self))
        _fill_dense(dense, self)
        return dense


class TiledConv1d(_TiledConv, nn.Conv1d):
    """``nn.Conv1d`` whose weight ``[O, I/groups, k]`` is a tiled binary tensor.

    >>> conv = TiledConv1d(16, 32, 3, padding=1, p=4)
    >>> conv(torch.randn(1, 16, 20)).shape
    torch.Size([1, 32, 20])
    """

    _dense_class = nn.Conv1d

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
        p: int = 4,
        alpha: AlphaMode = "per_copy",
        alpha_source: AlphaSource = "A",
    ) -> None:
        nn.Conv1d.__init__(
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
        self._setup_tiling(p, alpha, alpha_source)


class TiledConv2d(_TiledConv, nn.Conv2d):
    """``nn.Conv2d`` whose weight ``[O, I/groups, kh, kw]`` is a tiled binary tensor.

    >>> conv = TiledConv2d(16, 32, 3, padding=1, bias=False, p=8)
    >>> conv(torch.randn(1, 16, 8, 8)).shape
    torch.Size([1, 32, 8, 8])
    """

    _dense_class = nn.Conv2d

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
        p: int = 4,
        alpha: AlphaMode = "per_copy",
        alpha_source: AlphaSource = "A",
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
        self._setup_tiling(p, alpha, alpha_source)


def _conv_kwargs(layer: nn.modules.conv._ConvNd) -> dict:
    return dict(
        in_channels=layer.in_channels,
        out_channels=layer.out_channels,
        kernel_size=layer.kernel_size,
        stride=layer.stride,
        padding=layer.padding,
        dilation=layer.dilation,
        groups=layer.groups,
        bias=layer.bias is not None,
        padding_mode=layer.padding_mode,
        device=layer.weight.device,
        dtype=layer.weight.dtype,
    )


def _copy_from(new: TiledLayer, old: nn.Module, copy_weight: bool) -> None:
    if copy_weight:
        new.load_dense_weight(old.weight)
        if old.bias is not None:
            with torch.no_grad():
                new.bias.copy_(old.bias)
    new.train(old.training)


def _fill_dense(dense: nn.Module, tiled: TiledLayer) -> None:
    with torch.no_grad():
        dense.weight.copy_(tiled_weight(tiled.weight, tiled.p, tiled.alpha_weight, tiled.alpha, ste=False))
        if tiled.bias is not None:
            dense.bias.copy_(tiled.bias)
    dense.train(tiled.training)


def is_tiled(module: nn.Module) -> bool:
    """True for the trainable tiled layers of this module."""
    return isinstance(module, TiledLayer)


# ------------------------------------------------------------------------ compact inference form
class FrozenTiled(nn.Module):
    """Inference form of a tiled layer: the ±1 tile (``[1, q]``) and scales (``[p, 1]`` or
    ``[1, 1]``) as buffers; the weight is rebuilt as ``reshape(expand(tile, [p, q]) * alpha)``.

    Exported to ONNX this gives a ``q``-element initializer followed by Expand → Mul → Reshape,
    which the compiler folds and recognises as tiled.  No parameters, no gradient.

    >>> frozen = TiledLinear(64, 32, p=4).eval().freeze()
    >>> frozen.tile.shape, frozen.scales.shape
    (torch.Size([1, 512]), torch.Size([4, 1]))
    """

    def __init__(self, layer: TiledLayer) -> None:
        super().__init__()
        self.kind = (
            "linear"
            if isinstance(layer, nn.Linear)
            else "conv1d"
            if isinstance(layer, nn.Conv1d)
            else "conv2d"
        )
        self.p = layer.p
        self.alpha = layer.alpha
        self.weight_shape = tuple(layer.weight.shape)
        with torch.no_grad():
            self.register_buffer("tile", layer.tile().reshape(1, -1).clone())
            self.register_buffer("scales", layer.alphas().detach().reshape(-1, 1).clone())
            self.register_buffer("bias", None if layer.bias is None else layer.bias.detach().clone())
        if self.kind != "linear":
            self.stride, self.padding, self.dilation = layer.stride, layer.padding, layer.dilation
            self.groups, self.padding_mode = layer.groups, layer.padding_mode
            self._pad = layer._reversed_padding_repeated_twice
        self.train(False)

    def weight(self) -> torch.Tensor:
        """The dense weight ``B̂`` rebuilt from tile and scales."""
        return (self.tile.expand(self.p, -1) * self.scales).reshape(self.weight_shape)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # noqa: D102
        w = self.weight()
        if self.kind == "linear":
            return F.linear(x, w, self.bias)
        conv = F.conv1d if self.kind == "conv1d" else F.conv2d
        if self.padding_mode != "zeros":
            x = F.pad(x, self._pad, mode=self.padding_mode)
            return conv(x, w, self.bias, self.stride, 0, self.dilation, self.groups)
        return conv(x, w, self.bias, self.stride, self.padding, self.dilation, self.groups)

    def extra_repr(self) -> str:  # noqa: D102
        return f"{self.kind}, weight={list(self.weight_shape)}, p={self.p}, alpha={self.alpha!r}"


def bits_per_weight(n: int, p: int, n_alpha: int) -> float:
    """Storage bits per weight of a tiled layer with ``n`` weights: ``(n/p + 32·n_alpha) / n``."""
    return (n / p + ALPHA_BITS * n_alpha) / n if n else math.nan
