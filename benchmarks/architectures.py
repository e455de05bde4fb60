"""Real architectures for the host benchmarks (issue 19), in plain ``torch.nn`` (no timm, no
torchvision): the structure of eleven published networks, operator kind for operator kind, with a
width (channel multiplier) and, where it helps tests, depth parameters, plus a *held-out* trio
that nobody tunes code on.

Every builder takes ``seed`` (the weights are drawn from ``torch.manual_seed(seed)`` without
touching the caller's random state) and a ``width``; ``width=1`` is the published configuration
(timm's channel counts), the benchmark's full size is :attr:`Spec.full` and a tiny one for tests
:attr:`Spec.small`.  Models are returned untrained, in eval mode, with their default
initialisation; :func:`benchmark_model` makes the model a benchmark measures:

1. build it with the seed;
2. ``tbnify(model, p=4, min_size=4096, keep_first_last_binary=True)`` (:data:`TBNIFY`): every
   ``nn.Linear`` / ``nn.Conv1d`` / ``nn.Conv2d`` of at least 4,096 weights becomes a Tiled Bit
   layer with ``p = 4`` (a tile of n/4 signs and one scale per copy), smaller ones and the first
   and last layer binary (``p = 1``, one scale), which is the paper's rule with ``min_size``
   scaled down from the authors' 64,000 (sized for ImageNet widths) to these reduced-width models,
   so that the layers holding most of the weights are tiled.  Weights ``tbnify`` does not handle
   stay fp32 (position embeddings, class tokens, LayerNorm/BatchNorm parameters);
3. :func:`randomise_norms`: BatchNorm running statistics and affine parameters, LayerNorm affine
   parameters and ConvNeXt's layer-scale γ drawn away from their trivial values;
4. ``eval()``, ``export_onnx`` (the default ``form="tile"``) at the batch asked for (the batch is
   the ONNX input's fixed leading dimension) and a matching random input (:func:`sample_input`).

Shapes are ``[batch, 3, H, W]`` images (64×64 or 32×32) and ``[batch, 1, L]`` audio for M5.
``ARCHITECTURES`` holds the eleven, ``HELD_OUT`` the trio; each maps a name to a :class:`Spec`.

>>> spec = ARCHITECTURES["resnet18d"]
>>> spec.input_shape, spec.small_input_shape
((3, 64, 64), (3, 32, 32))
>>> sorted(HELD_OUT)
['heldout_mobilenetv3', 'heldout_vit', 'heldout_wide_resnet']
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

__all__ = [
    "ARCHITECTURES",
    "HELD_OUT",
    "ALL",
    "TBNIFY",
    "Spec",
    "BenchModel",
    "build",
    "benchmark_model",
    "sample_input",
    "randomise_norms",
    "count_parameters",
    "make_divisible",
]


# ------------------------------------------------------------------------------------ helpers
def make_divisible(v: float, divisor: int = 8, min_value: int | None = None, round_limit: float = 0.9) -> int:
    """timm's channel rounding (``timm.layers.helpers.make_divisible``): ``v`` to the nearest
    multiple of ``divisor`` (at least ``min_value``, default ``divisor``), never more than 10 %
    below ``v``.

    >>> make_divisible(16 * 0.5), make_divisible(24 * 0.5), make_divisible(72 * 0.5, 4)
    (8, 16, 36)
    """
    min_value = min_value or divisor
    new_v = max(min_value, int(v + divisor / 2) // divisor * divisor)
    if new_v < round_limit * v:
        new_v += divisor
    return new_v


def conv_bn(
    cin: int, cout: int, k: int, stride: int = 1, groups: int = 1, act: Callable[[], nn.Module] | None = None
) -> nn.Sequential:
    """Conv2d (no bias, padding k//2) + BatchNorm2d (+ the activation ``act()``)."""
    layers: list[nn.Module] = [
        nn.Conv2d(cin, cout, k, stride, k // 2, groups=groups, bias=False),
        nn.BatchNorm2d(cout),
    ]
    if act is not None:
        layers.append(act())
    return nn.Sequential(*layers)


class SqueezeExcite(nn.Module):
    """timm's ``SqueezeExcite`` (``efficientnet_blocks``): mean over H, W (keepdim), 1×1 conv
    ``chs -> rd`` with bias, ``act``, 1×1 conv ``rd -> chs`` with bias, ``gate``, times the input.
    ``[N, C, H, W] -> [N, C, H, W]``."""

    def __init__(
        self, chs: int, rd: int, act: Callable[[], nn.Module], gate: Callable[[], nn.Module]
    ) -> None:
        super().__init__()
        self.conv_reduce = nn.Conv2d(chs, rd, 1, bias=True)
        self.act1 = act()
        self.conv_expand = nn.Conv2d(rd, chs, 1, bias=True)
        self.gate = gate()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s = x.mean((2, 3), keepdim=True)
        s = self.conv_expand(self.act1(self.conv_reduce(s)))
        return x * self.gate(s)


class LayerNorm2d(nn.LayerNorm):
    """timm's ``LayerNorm2d``: LayerNorm over the channels of an NCHW tensor (permute to NHWC,
    ``F.layer_norm``, permute back).  ``[N, C, H, W] -> [N, C, H, W]``."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.permute(0, 2, 3, 1)
        x = F.layer_norm(x, self.normalized_shape, self.weight, self.bias, self.eps)
        return x.permute(0, 3, 1, 2)


class Mlp(nn.Module):
    """timm's ``Mlp``: Linear, GELU, Linear over the last axis.  ``[..., d] -> [..., d_out]``."""

    def __init__(self, d: int, hidden: int, d_out: int | None = None) -> None:
        super().__init__()
        self.fc1 = nn.Linear(d, hidden)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden, d_out or d)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(x)))


# ------------------------------------------------------------------------------------ ResNet-18-D
class BasicBlockD(nn.Module):
    """timm ``BasicBlock`` with the ``avg_down`` shortcut of ResNet-D (He et al., "Bag of Tricks",
    CVPR 2019): 3×3 conv-BN-ReLU (stride s), 3×3 conv-BN, plus the identity or
    AvgPool2d(2, s, ceil_mode, count_include_pad=False) → 1×1 conv-BN; ReLU."""

    def __init__(self, cin: int, cout: int, stride: int) -> None:
        super().__init__()
        self.conv1 = conv_bn(cin, cout, 3, stride, act=nn.ReLU)
        self.conv2 = conv_bn(cout, cout, 3)
        self.act = nn.ReLU()
        self.downsample: nn.Module = nn.Identity()
        if stride != 1 or cin != cout:
            pool = (
                nn.AvgPool2d(2, stride, ceil_mode=True, count_include_pad=False)
                if stride > 1
                else nn.Identity()
            )
            self.downsample = nn.Sequential(pool, conv_bn(cin, cout, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.conv2(self.conv1(x)) + self.downsample(x))


class ResNet18D(nn.Module):
    """timm ``resnet18d``: deep stem (3×3 s2 conv 3→32-BN-ReLU, 3×3 32→32-BN-ReLU, 3×3 32→64-BN-ReLU),
    3×3 s2 max-pool, four stages of ``layers`` BasicBlocks with widths 64·w, 128·w, 256·w, 512·w
    (stride 2 from the second stage on, avg_down shortcuts), global average pool, Linear.
    ``layers`` may be shorter (the first stages only, for tests).
    ``[N, 3, H, W] -> [N, num_classes]`` (H, W multiples of 32)."""

    def __init__(
        self, width: float = 1.0, num_classes: int = 1000, layers: Sequence[int] = (2, 2, 2, 2)
    ) -> None:
        super().__init__()
        stem = make_divisible(32 * width)
        chs = [make_divisible(c * width) for c in (64, 128, 256, 512)]
        self.stem = nn.Sequential(
            conv_bn(3, stem, 3, 2, act=nn.ReLU),
            conv_bn(stem, stem, 3, act=nn.ReLU),
            conv_bn(stem, chs[0], 3, act=nn.ReLU),
            nn.MaxPool2d(3, 2, 1),
        )
        blocks, cin = [], chs[0]
        for i, (c, n) in enumerate(zip(chs, layers)):
            for j in range(n):
                blocks.append(BasicBlockD(cin, c, 2 if (i > 0 and j == 0) else 1))
                cin = c
        self.layers = nn.Sequential(*blocks)
        self.fc = nn.Linear(cin, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.layers(self.stem(x))
        return self.fc(x.mean((2, 3)))


# ------------------------------------------------------------------------------------ MobileNetV3 / EfficientNet family
@dataclass(frozen=True)
class BlockDef:
    """One row of a timm ``arch_def`` string: ``kind`` ``ds`` (depthwise-separable), ``ir``
    (inverted residual) or ``cn`` (conv-BN-act), ``repeat``, kernel ``k``, stride ``s`` of the
    first repeat, expansion ``e``, output channels ``c``, squeeze-excite ratio ``se`` (0: none),
    ``relu`` (``_nre``: ReLU instead of the network's activation)."""

    kind: str
    repeat: int
    k: int
    s: int
    e: float
    c: int
    se: float = 0.0
    relu: bool = False


class DepthwiseSeparable(nn.Module):
    """timm ``DepthwiseSeparableConv``: k×k depthwise conv-BN-act (stride s), SE, 1×1 conv-BN;
    the input is added when s = 1 and the channel counts match."""

    def __init__(self, cin: int, cout: int, k: int, s: int, act, se: nn.Module | None) -> None:
        super().__init__()
        self.conv_dw = conv_bn(cin, cin, k, s, groups=cin, act=act)
        self.se = se or nn.Identity()
        self.conv_pw = conv_bn(cin, cout, 1)
        self.skip = s == 1 and cin == cout

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.conv_pw(self.se(self.conv_dw(x)))
        return x + y if self.skip else y


class InvertedResidual(nn.Module):
    """timm ``InvertedResidual`` (MobileNetV2/V3, EfficientNet MBConv): 1×1 expand conv-BN-act,
    k×k depthwise conv-BN-act (stride s), SE, 1×1 project conv-BN; the input is added when s = 1
    and the channel counts match."""

    def __init__(self, cin: int, mid: int, cout: int, k: int, s: int, act, se: nn.Module | None) -> None:
        super().__init__()
        self.conv_pw = conv_bn(cin, mid, 1, act=act)
        self.conv_dw = conv_bn(mid, mid, k, s, groups=mid, act=act)
        self.se = se or nn.Identity()
        self.conv_pwl = conv_bn(mid, cout, 1)
        self.skip = s == 1 and cin == cout

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.conv_pwl(self.se(self.conv_dw(self.conv_pw(x))))
        return x + y if self.skip else y


def _mbconv_blocks(
    arch: Sequence[BlockDef],
    cin: int,
    round_chs: Callable[[float], int],
    act,
    se_gate,
    se_act,
    se_from_exp: bool,
    se_round: Callable[[float], int],
) -> tuple[nn.Sequential, int]:
    """The blocks of a timm ``EfficientNetBuilder`` run over ``arch``; returns them and the
    channels out.  ``se_from_exp``: the SE width is a ratio of the expanded channels (MobileNetV3)
    rather than of the block's input (EfficientNet, MnasNet)."""
    blocks = []
    for b in arch:
        block_act = nn.ReLU if b.relu else act
        cout = round_chs(b.c)
        for r in range(b.repeat):
            s = b.s if r == 0 else 1
            if b.kind == "cn":
                blocks.append(conv_bn(cin, cout, b.k, s, act=block_act))
            else:
                mid = cin if b.kind == "ds" else make_divisible(cin * b.e)
                se = None
                if b.se:
                    base = mid if (se_from_exp or b.kind == "ds") else cin
                    se = SqueezeExcite(mid, se_round(base * b.se), se_act or block_act, se_gate)
                if b.kind == "ds":
                    blocks.append(DepthwiseSeparable(cin, cout, b.k, s, block_act, se))
                else:
                    blocks.append(InvertedResidual(cin, mid, cout, b.k, s, block_act, se))
            cin = cout
    return nn.Sequential(*blocks), cin


MOBILENETV3_SMALL = (
    BlockDef("ds", 1, 3, 2, 1, 16, 0.25, relu=True),
    BlockDef("ir", 1, 3, 2, 4.5, 24, relu=True),
    BlockDef("ir", 1, 3, 1, 3.67, 24, relu=True),
    BlockDef("ir", 1, 5, 2, 4, 40, 0.25),
    BlockDef("ir", 2, 5, 1, 6, 40, 0.25),
    BlockDef("ir", 2, 5, 1, 3, 48, 0.25),
    BlockDef("ir", 3, 5, 2, 6, 96, 0.25),
    BlockDef("cn", 1, 1, 1, 1, 576),
)
"""timm ``_gen_mobilenet_v3('mobilenetv3_small_*')``'s arch_def (Howard et al., ICCV 2019, table 2)."""

MOBILENETV3_LARGE = (
    BlockDef("ds", 1, 3, 1, 1, 16, relu=True),
    BlockDef("ir", 1, 3, 2, 4, 24, relu=True),
    BlockDef("ir", 1, 3, 1, 3, 24, relu=True),
    BlockDef("ir", 3, 5, 2, 3, 40, 0.25, relu=True),
    BlockDef("ir", 1, 3, 2, 6, 80),
    BlockDef("ir", 1, 3, 1, 2.5, 80),
    BlockDef("ir", 2, 3, 1, 2.3, 80),
    BlockDef("ir", 2, 3, 1, 6, 112, 0.25),
    BlockDef("ir", 3, 5, 2, 6, 160, 0.25),
    BlockDef("cn", 1, 1, 1, 1, 960),
)
"""timm ``_gen_mobilenet_v3('mobilenetv3_large_*')``'s arch_def (Howard et al., table 1)."""


class MobileNetV3(nn.Module):
    """timm ``MobileNetV3``: 3×3 s2 stem conv-BN-Hardswish, the ``arch`` blocks (Hardswish, or ReLU
    where marked; squeeze-excite with ReLU and a HardSigmoid gate, its width a quarter of the
    expanded channels rounded to 8), global average pool, ``conv_head`` 1×1 conv with bias and no
    BN, Hardswish, flatten, Linear.  ``width`` is timm's channel multiplier (0.5 for
    ``mobilenetv3_small_050``); ``num_features`` (the head width) is not scaled, as in timm.
    ``[N, 3, H, W] -> [N, num_classes]``."""

    def __init__(
        self,
        width: float = 0.5,
        num_classes: int = 1000,
        arch: Sequence[BlockDef] = MOBILENETV3_SMALL,
        num_features: int = 1024,
    ) -> None:
        super().__init__()

        def round_chs(c: float) -> int:
            return make_divisible(c * width)

        stem = round_chs(16)
        self.stem = conv_bn(3, stem, 3, 2, act=nn.Hardswish)
        self.blocks, cin = _mbconv_blocks(
            arch, stem, round_chs, nn.Hardswish, nn.Hardsigmoid, nn.ReLU, True, make_divisible
        )
        self.conv_head = nn.Conv2d(cin, num_features, 1, bias=True)
        self.act2 = nn.Hardswish()
        self.classifier = nn.Linear(num_features, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.blocks(self.stem(x)).mean((2, 3), keepdim=True)
        return self.classifier(torch.flatten(self.act2(self.conv_head(x)), 1))


EFFICIENTNET_B0 = (
    BlockDef("ds", 1, 3, 1, 1, 16, 0.25),
    BlockDef("ir", 2, 3, 2, 6, 24, 0.25),
    BlockDef("ir", 2, 5, 2, 6, 40, 0.25),
    BlockDef("ir", 3, 3, 2, 6, 80, 0.25),
    BlockDef("ir", 3, 5, 1, 6, 112, 0.25),
    BlockDef("ir", 4, 5, 2, 6, 192, 0.25),
    BlockDef("ir", 1, 3, 1, 6, 320, 0.25),
)
"""timm ``_gen_efficientnet``'s arch_def (Tan & Le, ICML 2019, table 1)."""

MNASNET_SMALL = (
    BlockDef("ds", 1, 3, 1, 1, 8),
    BlockDef("ir", 1, 3, 2, 3, 16),
    BlockDef("ir", 2, 3, 2, 6, 16),
    BlockDef("ir", 4, 5, 2, 6, 32, 0.25),
    BlockDef("ir", 3, 3, 1, 6, 32, 0.25),
    BlockDef("ir", 3, 5, 2, 6, 88, 0.25),
    BlockDef("ir", 1, 3, 1, 6, 144),
)
"""timm ``_gen_mnasnet_small``'s arch_def (Tan et al., CVPR 2019, MnasNet-small)."""


class EfficientNet(nn.Module):
    """timm ``EfficientNet``: 3×3 s2 stem conv-BN-act, the ``arch`` MBConv blocks (squeeze-excite
    with the block's activation and a sigmoid gate, its width a ratio of the block's input
    channels), ``conv_head`` 1×1 conv-BN-act to ``num_features``, global average pool, Linear.
    ``act`` is SiLU for ``efficientnet_b0``, ReLU for ``mnasnet_small``.
    ``[N, 3, H, W] -> [N, num_classes]``."""

    def __init__(
        self,
        width: float = 1.0,
        num_classes: int = 1000,
        arch: Sequence[BlockDef] = EFFICIENTNET_B0,
        stem_size: int = 32,
        num_features: int = 1280,
        act: Callable[[], nn.Module] = nn.SiLU,
    ) -> None:
        super().__init__()

        def round_chs(c: float) -> int:
            return make_divisible(c * width)

        stem = round_chs(stem_size)
        self.stem = conv_bn(3, stem, 3, 2, act=act)
        self.blocks, cin = _mbconv_blocks(arch, stem, round_chs, act, nn.Sigmoid, None, False, round)
        self.conv_head = conv_bn(cin, round_chs(num_features), 1, act=act)
        self.classifier = nn.Linear(round_chs(num_features), num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv_head(self.blocks(self.stem(x)))
        return self.classifier(x.mean((2, 3)))


# ------------------------------------------------------------------------------------ ConvNeXt
class ConvNeXtBlock(nn.Module):
    """timm ``ConvNeXtBlock``: 7×7 depthwise conv (bias), LayerNorm over channels, MLP (4×,
    GELU) as 1×1 convs (``conv_mlp=True``, LayerNorm2d) or as Linear layers on NHWC
    (``conv_mlp=False``, permute, LayerNorm, Linear, GELU, Linear, permute), layer-scale γ, plus
    the input.  ``[N, C, H, W] -> [N, C, H, W]``."""

    def __init__(self, dim: int, conv_mlp: bool, ls_init: float = 1e-6) -> None:
        super().__init__()
        self.conv_mlp = conv_mlp
        self.conv_dw = nn.Conv2d(dim, dim, 7, padding=3, groups=dim, bias=True)
        if conv_mlp:
            self.norm: nn.Module = LayerNorm2d(dim, eps=1e-6)
            self.mlp: nn.Module = nn.Sequential(
                nn.Conv2d(dim, 4 * dim, 1, bias=True), nn.GELU(), nn.Conv2d(4 * dim, dim, 1, bias=True)
            )
        else:
            self.norm = nn.LayerNorm(dim, eps=1e-6)
            self.mlp = Mlp(dim, 4 * dim)
        self.gamma = nn.Parameter(ls_init * torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shortcut = x
        x = self.conv_dw(x)
        if self.conv_mlp:
            x = self.mlp(self.norm(x)) * self.gamma.reshape(1, -1, 1, 1)
        else:
            x = self.mlp(self.norm(x.permute(0, 2, 3, 1))) * self.gamma
            x = x.permute(0, 3, 1, 2)
        return x + shortcut


class ConvNeXt(nn.Module):
    """timm ``ConvNeXt`` (Liu et al., CVPR 2022); defaults are ``convnext_atto`` (dims 40, 80,
    160, 320, depths 2, 2, 6, 2, ``conv_mlp=True``): 4×4 stride-4 patchify conv + LayerNorm2d,
    stages of ConvNeXt blocks, between stages LayerNorm2d + 2×2 stride-2 conv, then global average
    pool, LayerNorm, Linear (timm's ``NormMlpClassifierHead``).  ``depths`` may be shorter (the
    first stages only, for tests).
    ``[N, 3, H, W] -> [N, num_classes]`` (H, W multiples of 32)."""

    def __init__(
        self,
        width: float = 1.0,
        num_classes: int = 1000,
        depths: Sequence[int] = (2, 2, 6, 2),
        dims: Sequence[int] = (40, 80, 160, 320),
        conv_mlp: bool = True,
    ) -> None:
        super().__init__()
        dims = [make_divisible(d * width) for d in dims[: len(depths)]]
        self.stem = nn.Sequential(nn.Conv2d(3, dims[0], 4, 4, bias=True), LayerNorm2d(dims[0], eps=1e-6))
        stages = []
        for i, (d, n) in enumerate(zip(dims, depths)):
            layers: list[nn.Module] = []
            if i > 0:
                layers += [LayerNorm2d(dims[i - 1], eps=1e-6), nn.Conv2d(dims[i - 1], d, 2, 2, bias=True)]
            layers += [ConvNeXtBlock(d, conv_mlp) for _ in range(n)]
            stages.append(nn.Sequential(*layers))
        self.stages = nn.Sequential(*stages)
        self.head_norm = nn.LayerNorm(dims[-1], eps=1e-6)
        self.fc = nn.Linear(dims[-1], num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stages(self.stem(x)).mean((2, 3))
        return self.fc(self.head_norm(x))


# ------------------------------------------------------------------------------------ RegNetX
class RegNetBottleneck(nn.Module):
    """timm RegNet ``Bottleneck`` (bottleneck ratio 1, no SE): 1×1 conv-BN-ReLU, 3×3 grouped conv
    (group width ``group_w``, stride s)-BN-ReLU, 1×1 conv-BN, plus the identity or a 1×1 strided
    conv-BN shortcut; ReLU."""

    def __init__(self, cin: int, cout: int, stride: int, group_w: int) -> None:
        super().__init__()
        self.conv1 = conv_bn(cin, cout, 1, act=nn.ReLU)
        self.conv2 = conv_bn(cout, cout, 3, stride, groups=cout // group_w, act=nn.ReLU)
        self.conv3 = conv_bn(cout, cout, 1)
        self.downsample = conv_bn(cin, cout, 1, stride) if (stride != 1 or cin != cout) else nn.Identity()
        self.act = nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.conv3(self.conv2(self.conv1(x))) + self.downsample(x))


class RegNetX(nn.Module):
    """timm ``regnetx_002`` (Radosavovic et al., CVPR 2020, RegNetX-200MF: w0 = 24, wa = 36.44,
    wm = 2.49, depth 13, group width 8, which gives stage widths 24, 56, 152, 368 and depths 1, 1,
    4, 7): 3×3 s2 stem conv 3→32-BN-ReLU, four stages of bottleneck blocks (stride 2 in the first
    block of each), global average pool, Linear.  ``width`` scales the stage widths (rounded to
    the group width); ``depths`` may be shorter (the first stages only, for tests).  ``[N, 3, H, W] -> [N, num_classes]``."""

    def __init__(
        self,
        width: float = 1.0,
        num_classes: int = 1000,
        widths: Sequence[int] = (24, 56, 152, 368),
        depths: Sequence[int] = (1, 1, 4, 7),
        group_w: int = 8,
        stem: int = 32,
    ) -> None:
        super().__init__()
        widths = [make_divisible(w * width, group_w) for w in widths]
        stem = make_divisible(stem * width, group_w)
        self.stem = conv_bn(3, stem, 3, 2, act=nn.ReLU)
        blocks, cin = [], stem
        for w, n in zip(widths, depths):
            for j in range(n):
                blocks.append(RegNetBottleneck(cin, w, 2 if j == 0 else 1, group_w))
                cin = w
        self.blocks = nn.Sequential(*blocks)
        self.fc = nn.Linear(cin, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.blocks(self.stem(x)).mean((2, 3)))


# ------------------------------------------------------------------------------------ GhostNet
class GhostModule(nn.Module):
    """timm GhostNet ``GhostModule`` (Han et al., CVPR 2020): primary 1×1 conv-BN(-ReLU) to
    ceil(out/2) channels, a cheap 3×3 depthwise conv-BN(-ReLU) on it, the two concatenated on
    channels and cut to ``out``.  ``[N, cin, H, W] -> [N, out, H, W]``."""

    def __init__(self, cin: int, out: int, relu: bool) -> None:
        super().__init__()
        self.out = out
        init = math.ceil(out / 2)
        act = nn.ReLU if relu else None
        self.primary_conv = conv_bn(cin, init, 1, act=act)
        self.cheap_operation = conv_bn(init, init, 3, groups=init, act=act)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x1 = self.primary_conv(x)
        x2 = self.cheap_operation(x1)
        return torch.cat([x1, x2], dim=1)[:, : self.out]


class GhostBottleneck(nn.Module):
    """timm ``GhostBottleneck``: ghost module (ReLU) to ``mid``, a k×k depthwise stride-s conv-BN
    when s > 1, squeeze-excite (ReLU, hard-sigmoid gate, width rounded to 4), ghost module (no
    activation) to ``out``; plus the identity, or a k×k depthwise stride-s conv-BN → 1×1 conv-BN
    shortcut."""

    def __init__(self, cin: int, mid: int, out: int, k: int, s: int, se_ratio: float) -> None:
        super().__init__()
        self.ghost1 = GhostModule(cin, mid, relu=True)
        self.conv_dw = conv_bn(mid, mid, k, s, groups=mid) if s > 1 else nn.Identity()
        self.se = (
            SqueezeExcite(mid, make_divisible(mid * se_ratio, 4), nn.ReLU, nn.Hardsigmoid)
            if se_ratio
            else nn.Identity()
        )
        self.ghost2 = GhostModule(mid, out, relu=False)
        if cin == out and s == 1:
            self.shortcut: nn.Module = nn.Identity()
        else:
            self.shortcut = nn.Sequential(conv_bn(cin, cin, k, s, groups=cin), conv_bn(cin, out, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.ghost2(self.se(self.conv_dw(self.ghost1(x))))
        return y + self.shortcut(x)


GHOSTNET_CFGS = (  # k, expansion (mid), out, SE ratio, stride; one tuple of rows per stage
    ((3, 16, 16, 0, 1),),
    ((3, 48, 24, 0, 2),),
    ((3, 72, 24, 0, 1),),
    ((5, 72, 40, 0.25, 2),),
    ((5, 120, 40, 0.25, 1),),
    ((3, 240, 80, 0, 2),),
    (
        (3, 200, 80, 0, 1),
        (3, 184, 80, 0, 1),
        (3, 184, 80, 0, 1),
        (3, 480, 112, 0.25, 1),
        (3, 672, 112, 0.25, 1),
    ),
    ((5, 672, 160, 0.25, 2),),
    ((5, 960, 160, 0, 1), (5, 960, 160, 0.25, 1), (5, 960, 160, 0, 1), (5, 960, 160, 0.25, 1)),
)
"""timm ``ghostnet`` cfgs (Han et al., table 1)."""


class GhostNet(nn.Module):
    """timm ``GhostNet``; ``width=0.5`` is ``ghostnet_050``: 3×3 s2 stem conv-BN-ReLU, ghost
    bottlenecks (``cfgs``, default :data:`GHOSTNET_CFGS`; channels × width rounded to 4), 1×1
    conv-BN-ReLU to 960·w, global average pool, ``conv_head`` 1×1 conv with bias to 1280 (not
    scaled), ReLU, flatten, Linear.  ``[N, 3, H, W] -> [N, num_classes]``."""

    def __init__(self, width: float = 0.5, num_classes: int = 1000, cfgs=GHOSTNET_CFGS) -> None:
        super().__init__()
        stem = make_divisible(16 * width, 4)
        self.stem = conv_bn(3, stem, 3, 2, act=nn.ReLU)
        blocks, cin = [], stem
        for stage in cfgs:
            for k, exp, c, se, s in stage:
                out = make_divisible(c * width, 4)
                blocks.append(GhostBottleneck(cin, make_divisible(exp * width, 4), out, k, s, se))
                cin = out
        out = make_divisible(960 * width, 4)
        blocks.append(conv_bn(cin, out, 1, act=nn.ReLU))
        self.blocks = nn.Sequential(*blocks)
        self.conv_head = nn.Conv2d(out, 1280, 1, bias=True)
        self.act2 = nn.ReLU()
        self.classifier = nn.Linear(1280, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.blocks(self.stem(x)).mean((2, 3), keepdim=True)
        return self.classifier(torch.flatten(self.act2(self.conv_head(x)), 1))


# ------------------------------------------------------------------------------------ MLP-Mixer
class MixerBlock(nn.Module):
    """timm ``MixerBlock`` (Tolstikhin et al., NeurIPS 2021): x + token-mixing MLP over the
    transposed tokens of LayerNorm(x) (hidden 0.5·dim), then x + channel MLP of LayerNorm(x)
    (hidden 4·dim), GELU in both.  ``[N, T, D] -> [N, T, D]``."""

    def __init__(self, dim: int, tokens: int) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=1e-6)
        self.mlp_tokens = Mlp(tokens, dim // 2)
        self.norm2 = nn.LayerNorm(dim, eps=1e-6)
        self.mlp_channels = Mlp(dim, 4 * dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.mlp_tokens(self.norm1(x).transpose(1, 2)).transpose(1, 2)
        return x + self.mlp_channels(self.norm2(x))


class MlpMixer(nn.Module):
    """timm ``MlpMixer`` in miniature (a ``mixer_s32``-style network scaled to 32×32 images):
    ``patch``×``patch`` stride-``patch`` conv patch embedding, flatten to tokens, ``depth`` mixer
    blocks, LayerNorm, mean over tokens, Linear.  ``width`` scales the embedding dim (128).
    ``[N, 3, S, S] -> [N, num_classes]``."""

    def __init__(
        self, width: float = 1.0, num_classes: int = 1000, image: int = 32, patch: int = 4, depth: int = 6
    ) -> None:
        super().__init__()
        dim = make_divisible(128 * width)
        tokens = (image // patch) ** 2
        self.stem = nn.Conv2d(3, dim, patch, patch)
        self.blocks = nn.Sequential(*[MixerBlock(dim, tokens) for _ in range(depth)])
        self.norm = nn.LayerNorm(dim, eps=1e-6)
        self.head = nn.Linear(dim, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x).flatten(2).transpose(1, 2)
        x = self.norm(self.blocks(x))
        return self.head(x.mean(1))


# ------------------------------------------------------------------------------------ DeiT
class Attention(nn.Module):
    """timm ``Attention`` (its non-fused path): one packed ``qkv`` Linear (bias), reshape to
    [3, N, heads, T, head_dim], q·scale @ kᵀ, softmax, @ v, merge heads, ``proj`` Linear.
    ``[N, T, D] -> [N, T, D]``."""

    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        self.heads, self.head_dim = heads, dim // heads
        self.scale = self.head_dim**-0.5
        self.qkv = nn.Linear(dim, 3 * dim, bias=True)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, t, d = x.shape
        qkv = self.qkv(x).reshape(b, t, 3, self.heads, self.head_dim).permute(2, 0, 3, 1, 4)
        q, k, v = qkv.unbind(0)
        attn = ((q * self.scale) @ k.transpose(-2, -1)).softmax(dim=-1)
        return self.proj((attn @ v).transpose(1, 2).reshape(b, t, d))


class EncoderBlock(nn.Module):
    """timm ``Block``: x + attn(LayerNorm(x)); x + MLP(LayerNorm(x)) with GELU, 4× hidden."""

    def __init__(self, dim: int, heads: int, mlp_ratio: float = 4.0) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=1e-6)
        self.attn = Attention(dim, heads)
        self.norm2 = nn.LayerNorm(dim, eps=1e-6)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


class DeiT(nn.Module):
    """timm ``deit_tiny_patch16_224`` (Touvron et al., ICML 2021; a ``VisionTransformer`` with dim
    192, depth 12, 3 heads) on ``image``×``image`` inputs: 16×16 stride-16 conv patch embedding,
    class token, learned position embeddings, encoder blocks, LayerNorm, Linear on the class
    token.  ``width`` scales the dim (a multiple of 8 per head).
    ``[N, 3, S, S] -> [N, num_classes]``."""

    def __init__(
        self,
        width: float = 1.0,
        num_classes: int = 1000,
        image: int = 64,
        patch: int = 16,
        depth: int = 12,
        heads: int = 3,
    ) -> None:
        super().__init__()
        dim = make_divisible(192 * width, 8 * heads)
        tokens = (image // patch) ** 2
        self.patch_embed = nn.Conv2d(3, dim, patch, patch)
        self.cls_token = nn.Parameter(torch.randn(1, 1, dim) * 0.02)
        self.pos_embed = nn.Parameter(torch.randn(1, tokens + 1, dim) * 0.02)
        self.blocks = nn.Sequential(*[EncoderBlock(dim, heads) for _ in range(depth)])
        self.norm = nn.LayerNorm(dim, eps=1e-6)
        self.head = nn.Linear(dim, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.patch_embed(x).flatten(2).transpose(1, 2)
        x = torch.cat([self.cls_token.expand(x.shape[0], -1, -1), x], dim=1) + self.pos_embed
        x = self.norm(self.blocks(x))
        return self.head(x[:, 0])


# ------------------------------------------------------------------------------------ RepVGG
class RepVggBlock(nn.Module):
    """timm ``RepVggBlock`` in its train-time form (Ding et al., CVPR 2021): 3×3 conv-BN +
    1×1 conv-BN (both stride s) + a BatchNorm identity branch (when s = 1 and the channel counts
    match), summed, ReLU."""

    def __init__(self, cin: int, cout: int, stride: int) -> None:
        super().__init__()
        self.identity = nn.BatchNorm2d(cout) if (cin == cout and stride == 1) else None
        self.conv_kxk = conv_bn(cin, cout, 3, stride)
        self.conv_1x1 = conv_bn(cin, cout, 1, stride)
        self.act = nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.conv_1x1(x) + self.conv_kxk(x)
        if self.identity is not None:
            y = y + self.identity(x)
        return self.act(y)


class RepVGG(nn.Module):
    """timm ``repvgg_a0`` (RepVGG-A0: stem block 3→48 stride 2, stages of 2, 4, 14, 1 blocks with
    48, 96, 192, 1280 channels, stride 2 in each stage's first block), global average pool,
    Linear.  ``width`` scales every width; ``depths`` may be shorter (the first stages only).  ``[N, 3, H, W] -> [N, num_classes]``."""

    def __init__(
        self,
        width: float = 1.0,
        num_classes: int = 1000,
        depths: Sequence[int] = (2, 4, 14, 1),
        widths: Sequence[int] = (48, 96, 192, 1280),
        stem: int = 48,
    ) -> None:
        super().__init__()
        stem = make_divisible(stem * width)
        widths = [make_divisible(w * width) for w in widths]
        blocks, cin = [RepVggBlock(3, stem, 2)], stem
        for w, n in zip(widths, depths):
            for j in range(n):
                blocks.append(RepVggBlock(cin, w, 2 if j == 0 else 1))
                cin = w
        self.blocks = nn.Sequential(*blocks)
        self.fc = nn.Linear(cin, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.blocks(x).mean((2, 3)))


# ------------------------------------------------------------------------------------ M5 (audio)
class M5(nn.Module):
    """M5 (Dai et al., "Very deep convolutional neural networks for raw waveforms", ICASSP 2017;
    also the torchaudio speech-command tutorial's model): Conv1d k=80 stride 4 to 128·w channels,
    BN, ReLU, MaxPool1d(4); three blocks of Conv1d k=3 (128·w, 256·w, 512·w channels)-BN-ReLU-
    MaxPool1d(4); global average pool over time, Linear.  ``[N, 1, L] -> [N, num_classes]``
    (L ≥ 4,000 or so)."""

    def __init__(self, width: float = 1.0, num_classes: int = 35) -> None:
        super().__init__()
        chs = [make_divisible(c * width) for c in (128, 128, 256, 512)]
        layers: list[nn.Module] = []
        cin = 1
        for i, c in enumerate(chs):
            k, s = (80, 4) if i == 0 else (3, 1)
            layers += [nn.Conv1d(cin, c, k, s), nn.BatchNorm1d(c), nn.ReLU(), nn.MaxPool1d(4)]
            cin = c
        self.features = nn.Sequential(*layers)
        self.fc = nn.Linear(cin, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.features(x).mean(2))


# ------------------------------------------------------------------------------------ held-out trio
class HeldOutViT(nn.Module):
    """Held-out: a small ViT as a user writes it with ``nn.MultiheadAttention`` (batch_first;
    its q, k, v projections are one packed ``in_proj_weight`` parameter, not ``nn.Linear`` layers,
    and the exporter writes the attention as MatMul/Softmax/Transpose nodes): 4×4 conv
    patch embedding on 32×32 images (64 tokens), class token, position embeddings, pre-norm
    encoder blocks (LayerNorm, MHA, LayerNorm, Linear-GELU-Linear 2×), LayerNorm, Linear on the
    class token.  ``[N, 3, S, S] -> [N, num_classes]``."""

    def __init__(
        self,
        width: float = 1.0,
        num_classes: int = 100,
        image: int = 32,
        patch: int = 4,
        depth: int = 4,
        heads: int = 4,
    ) -> None:
        super().__init__()
        dim = make_divisible(128 * width, 8 * heads)
        tokens = (image // patch) ** 2
        self.embed = nn.Conv2d(3, dim, patch, patch)
        self.cls = nn.Parameter(torch.randn(1, 1, dim) * 0.02)
        self.pos = nn.Parameter(torch.randn(1, tokens + 1, dim) * 0.02)
        self.norms1 = nn.ModuleList(nn.LayerNorm(dim) for _ in range(depth))
        self.attns = nn.ModuleList(nn.MultiheadAttention(dim, heads, batch_first=True) for _ in range(depth))
        self.norms2 = nn.ModuleList(nn.LayerNorm(dim) for _ in range(depth))
        self.mlps = nn.ModuleList(
            nn.Sequential(nn.Linear(dim, 2 * dim), nn.GELU(), nn.Linear(2 * dim, dim)) for _ in range(depth)
        )
        self.norm = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.embed(x).flatten(2).transpose(1, 2)
        x = torch.cat([self.cls.expand(x.shape[0], -1, -1), x], dim=1) + self.pos
        for n1, attn, n2, mlp in zip(self.norms1, self.attns, self.norms2, self.mlps):
            h = n1(x)
            x = x + attn(h, h, h, need_weights=False)[0]
            x = x + mlp(n2(x))
        return self.head(self.norm(x)[:, 0])


class PreActBlock(nn.Module):
    """Wide-ResNet block (Zagoruyko & Komodakis, BMVC 2016): BN-ReLU, 3×3 conv (stride s),
    BN-ReLU, 3×3 conv, plus the input or a 1×1 strided conv of the first BN-ReLU's output."""

    def __init__(self, cin: int, cout: int, stride: int) -> None:
        super().__init__()
        self.bn1 = nn.BatchNorm2d(cin)
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.shortcut = nn.Conv2d(cin, cout, 1, stride, bias=False) if (stride != 1 or cin != cout) else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        o = F.relu(self.bn1(x))
        y = self.conv2(F.relu(self.bn2(self.conv1(o))))
        return y + (self.shortcut(o) if self.shortcut is not None else x)


class WideResNet(nn.Module):
    """Held-out: a wider ResNet, WRN-d-k for 32×32 images (Zagoruyko & Komodakis): 3×3 conv
    3→16, three groups of (d-4)/6 pre-activation blocks with 16k, 32k, 64k channels (stride 1,
    2, 2), BN-ReLU, global average pool, Linear.  Default WRN-10-4 (k = 4·width).
    ``[N, 3, 32, 32] -> [N, num_classes]``."""

    def __init__(self, width: float = 1.0, num_classes: int = 100, depth: int = 10, k: int = 4) -> None:
        super().__init__()
        n = (depth - 4) // 6
        chs = [make_divisible(c * k * width) for c in (16, 32, 64)]
        self.stem = nn.Conv2d(3, 16, 3, 1, 1, bias=False)
        blocks, cin = [], 16
        for i, c in enumerate(chs):
            for j in range(n):
                blocks.append(PreActBlock(cin, c, 2 if (i > 0 and j == 0) else 1))
                cin = c
        self.blocks = nn.Sequential(*blocks)
        self.bn = nn.BatchNorm2d(cin)
        self.fc = nn.Linear(cin, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.bn(self.blocks(self.stem(x))))
        return self.fc(x.mean((2, 3)))


# ------------------------------------------------------------------------------------ the registry
# Tiny configurations for tests: each keeps every operator kind of its network (depthwise k3 and
# k5, stride 1 and 2, residual adds, squeeze-excite, the head) with one or two blocks.
SMALL_MOBILENETV3 = (
    BlockDef("ds", 1, 3, 2, 1, 16, 0.25, relu=True),
    BlockDef("ir", 2, 5, 2, 4, 40, 0.25),
    BlockDef("cn", 1, 1, 1, 1, 576),
)
SMALL_MOBILENETV3_LARGE = (
    BlockDef("ds", 1, 3, 1, 1, 16, relu=True),
    BlockDef("ir", 2, 5, 2, 3, 40, 0.25),
    BlockDef("cn", 1, 1, 1, 1, 960),
)
SMALL_EFFICIENTNET = (BlockDef("ds", 1, 3, 1, 1, 16, 0.25), BlockDef("ir", 2, 5, 2, 6, 24, 0.25))
SMALL_MNASNET = (
    BlockDef("ds", 1, 3, 1, 1, 8),
    BlockDef("ir", 2, 3, 2, 3, 16),
    BlockDef("ir", 1, 5, 2, 6, 32, 0.25),
)
SMALL_GHOSTNET = (((3, 16, 16, 0, 1),), ((5, 72, 40, 0.25, 2),))


@dataclass(frozen=True)
class Spec:
    """One architecture: ``make(width=..., **kwargs)`` builds it; ``full`` are the benchmark's
    keyword arguments and ``input_shape`` its per-sample input (no batch), ``small`` /
    ``small_input_shape`` a tiny configuration of the same operator kinds for tests; ``source``
    cites what it follows."""

    name: str
    make: Callable[..., nn.Module]
    input_shape: tuple[int, ...]
    full: dict
    small: dict
    small_input_shape: tuple[int, ...]
    source: str
    held_out: bool = False
    kwargs: dict = field(default_factory=dict)  # fixed arguments of ``make`` (both sizes)


def _spec(name, make, shape, full, small, small_shape, source, held_out=False, **kwargs) -> Spec:
    return Spec(name, make, shape, full, small, small_shape, source, held_out, kwargs)


ARCHITECTURES: dict[str, Spec] = {
    s.name: s
    for s in (
        _spec(
            "resnet18d",
            ResNet18D,
            (3, 64, 64),
            {"width": 1.0},
            {"width": 0.125, "layers": (1, 1), "num_classes": 10},
            (3, 32, 32),
            "timm resnet18d (He et al., Bag of Tricks, CVPR 2019: ResNet-D)",
        ),
        _spec(
            "mobilenetv3_small_050",
            MobileNetV3,
            (3, 64, 64),
            {"width": 0.5},
            {"width": 0.25, "num_classes": 10, "num_features": 64, "arch": SMALL_MOBILENETV3},
            (3, 32, 32),
            "timm mobilenetv3_small_050 (Howard et al., Searching for MobileNetV3, ICCV 2019)",
            arch=MOBILENETV3_SMALL,
        ),
        _spec(
            "efficientnet_b0",
            EfficientNet,
            (3, 64, 64),
            {"width": 1.0},
            {"width": 0.25, "num_classes": 10, "num_features": 256, "arch": SMALL_EFFICIENTNET},
            (3, 32, 32),
            "timm efficientnet_b0 (Tan & Le, EfficientNet, ICML 2019)",
            arch=EFFICIENTNET_B0,
            act=nn.SiLU,
        ),
        _spec(
            "mnasnet_small",
            EfficientNet,
            (3, 64, 64),
            {"width": 1.0},
            {"width": 0.5, "num_classes": 10, "num_features": 128, "arch": SMALL_MNASNET},
            (3, 32, 32),
            "timm mnasnet_small (Tan et al., MnasNet, CVPR 2019)",
            arch=MNASNET_SMALL,
            stem_size=8,
            act=nn.ReLU,
        ),
        _spec(
            "convnext_atto",
            ConvNeXt,
            (3, 64, 64),
            {"width": 1.0},
            {"width": 0.2, "depths": (1, 1), "num_classes": 10},
            (3, 32, 32),
            "timm convnext_atto (Liu et al., A ConvNet for the 2020s, CVPR 2022)",
        ),
        _spec(
            "regnetx_002",
            RegNetX,
            (3, 64, 64),
            {"width": 1.0},
            {"width": 0.34, "depths": (1, 2), "num_classes": 10},
            (3, 32, 32),
            "timm regnetx_002 (Radosavovic et al., Designing Network Design Spaces, CVPR 2020)",
        ),
        _spec(
            "ghostnet_050",
            GhostNet,
            (3, 64, 64),
            {"width": 0.5},
            {"width": 0.25, "num_classes": 10, "cfgs": SMALL_GHOSTNET},
            (3, 32, 32),
            "timm ghostnet_050 (Han et al., GhostNet, CVPR 2020)",
        ),
        _spec(
            "mixer_tiny",
            MlpMixer,
            (3, 32, 32),
            {"width": 1.0},
            {"width": 0.25, "depth": 1, "num_classes": 10, "image": 16},
            (3, 16, 16),
            "timm MlpMixer / mixer_s32 structure (Tolstikhin et al., MLP-Mixer, NeurIPS 2021), scaled down",
        ),
        _spec(
            "deit_tiny",
            DeiT,
            (3, 64, 64),
            {"width": 1.0},
            {"width": 0.25, "depth": 1, "num_classes": 10, "image": 32},
            (3, 32, 32),
            "timm deit_tiny_patch16_224 (Touvron et al., DeiT, ICML 2021) on 64x64 inputs",
        ),
        _spec(
            "repvgg_a0",
            RepVGG,
            (3, 64, 64),
            {"width": 1.0},
            {"width": 0.17, "depths": (2, 1), "num_classes": 10},
            (3, 32, 32),
            "timm repvgg_a0, train-time form (Ding et al., RepVGG, CVPR 2021)",
        ),
        _spec(
            "m5",
            M5,
            (1, 8000),
            {"width": 1.0},
            {"width": 0.125, "num_classes": 10},
            (1, 4000),
            "M5 (Dai et al., Very deep CNNs for raw waveforms, ICASSP 2017; torchaudio tutorial)",
        ),
    )
}
"""The eleven architectures of issue 19, name -> :class:`Spec`."""

HELD_OUT: dict[str, Spec] = {
    s.name: s
    for s in (
        _spec(
            "heldout_mobilenetv3",
            MobileNetV3,
            (3, 64, 64),
            {"width": 0.75},
            {"width": 0.25, "num_classes": 10, "num_features": 64, "arch": SMALL_MOBILENETV3_LARGE},
            (3, 32, 32),
            "held out: MobileNetV3-Large structure at width 0.75 (Howard et al., ICCV 2019)",
            held_out=True,
            arch=MOBILENETV3_LARGE,
            num_features=1280,
        ),
        _spec(
            "heldout_vit",
            HeldOutViT,
            (3, 32, 32),
            {"width": 1.0},
            {"width": 0.25, "depth": 1, "num_classes": 10, "image": 16},
            (3, 16, 16),
            "held out: small ViT with nn.MultiheadAttention (Dosovitskiy et al., ICLR 2021)",
            held_out=True,
        ),
        _spec(
            "heldout_wide_resnet",
            WideResNet,
            (3, 32, 32),
            {"width": 1.0},
            {"width": 0.25, "num_classes": 10},
            (3, 16, 16),
            "held out: Wide ResNet WRN-10-4 (Zagoruyko & Komodakis, BMVC 2016)",
            held_out=True,
        ),
    )
}
"""The held-out trio of issue 19 (speed must generalise to them; no code is tuned on them)."""

ALL: dict[str, Spec] = {**ARCHITECTURES, **HELD_OUT}


def build(name: str, seed: int = 0, small: bool = False, **overrides) -> nn.Module:
    """Architecture ``name`` (of :data:`ALL`) with its weights drawn from ``seed`` (the caller's
    torch random state is left as it was), full size or ``small``, in eval mode; ``overrides``
    replace keyword arguments of its :class:`Spec`."""
    spec = _get(name)
    kwargs = {**spec.kwargs, **(spec.small if small else spec.full), **overrides}
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = spec.make(**kwargs)
    return model.eval()


def _get(name: str) -> Spec:
    if name not in ALL:
        raise KeyError(f"unknown architecture {name!r}; known: {', '.join(ALL)}")
    return ALL[name]


def count_parameters(model: nn.Module) -> int:
    """Number of parameters (each tensor once)."""
    return sum(p.numel() for p in model.parameters())


# ------------------------------------------------------------------------------------ benchmark models
TBNIFY = {"p": 4, "min_size": 4096, "keep_first_last_binary": True}
"""How :func:`benchmark_model` tiles a model (``tbn_tvm.torch.tbnify`` arguments): p = 4, layers
of fewer than 4,096 weights binary, the first and last layer binary."""


def randomise_norms(model: nn.Module, seed: int) -> None:
    """Give every BatchNorm non-trivial running statistics (mean ~ N(0, 0.3²), var in [0.5,
    1.5)) and affine parameters (γ in [0.5, 1.5), β ~ N(0, 0.2²)), every LayerNorm affine
    parameters away from (1, 0), and every ConvNeXt layer-scale γ values in [0.1, 0.5) instead
    of timm's 1e-6 (which would make the blocks near-identities); as in
    ``tests/architectures/models.py``'s ``randomise_batchnorm``."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm1d | nn.BatchNorm2d):
                n = m.num_features
                m.running_mean.copy_(torch.randn(n, generator=g) * 0.3)
                m.running_var.copy_(torch.rand(n, generator=g) + 0.5)
                m.weight.copy_(torch.rand(n, generator=g) + 0.5)
                m.bias.copy_(torch.randn(n, generator=g) * 0.2)
            elif isinstance(m, nn.LayerNorm):
                m.weight.copy_(torch.rand(m.weight.shape, generator=g) + 0.5)
                m.bias.copy_(torch.randn(m.bias.shape, generator=g) * 0.2)
            elif isinstance(m, ConvNeXtBlock):
                m.gamma.copy_(torch.rand(m.gamma.shape, generator=g) * 0.4 + 0.1)


def sample_input(name: str, batch: int = 1, seed: int = 1, small: bool = False) -> np.ndarray:
    """A fixed standard-normal float32 input ``[batch, *input_shape]`` for ``name``."""
    spec = _get(name)
    shape = spec.small_input_shape if small else spec.input_shape
    return np.random.default_rng(seed).standard_normal((batch, *shape), dtype=np.float32)


@dataclass
class BenchModel:
    """What :func:`benchmark_model` made: the ONNX ``path``, its ``input`` (``[batch, ...]``), the
    torch model (tiled, eval), its output on ``input`` (``torch_output``), the number of
    ``parameters`` of the untiled model, the ``tiling`` plan (layer name -> p; ``None``: left
    fp32) and the ``tbnify`` arguments used."""

    name: str
    path: Path
    input: np.ndarray
    model: nn.Module
    torch_output: np.ndarray
    parameters: int
    tiling: dict[str, int | None]
    tbnify: dict
    export: object  # tbn_tvm.torch.ExportResult

    @property
    def layer_counts(self) -> dict[str, int]:
        """How many weighted layers ``tbnify`` tiled (p > 1), made binary (p = 1) or left fp32."""
        c = {"tiled": 0, "binary": 0, "fp32": 0}
        for p in self.tiling.values():
            c["fp32" if p is None else "tiled" if p > 1 else "binary"] += 1
        return c


def benchmark_model(
    name: str,
    path: str | os.PathLike,
    *,
    batch: int = 1,
    seed: int = 0,
    small: bool = False,
    tbnify_args: dict | None = None,
    form: str = "tile",
    check: bool | None = None,
) -> BenchModel:
    """Make the benchmark model ``name`` and write its ONNX file at ``path``: build (``seed``),
    ``tbnify`` (:data:`TBNIFY`, or ``tbnify_args``), :func:`randomise_norms` (``seed + 100``),
    ``eval()``, ``export_onnx(form=form)`` with an example of batch ``batch`` (the file's fixed
    batch dimension; ``check`` as ``export_onnx``'s); the input is :func:`sample_input` (seed
    ``seed + 1``)."""
    from tbn_tvm.torch import export_onnx, tbnify
    from tbn_tvm.torch.tbnify import tiling_plan

    args = {**TBNIFY, **(tbnify_args or {})}
    model = build(name, seed, small)
    params = count_parameters(model)
    plan = {row.name: row.p for row in tiling_plan(model, **args)}
    tbnify(model, **args)
    randomise_norms(model, seed + 100)
    model.eval()
    x = sample_input(name, batch, seed + 1, small)
    result = export_onnx(model, torch.from_numpy(x), path, form=form, check=check)
    with torch.no_grad():
        want = model(torch.from_numpy(x)).numpy()
    return BenchModel(name, Path(path), x, model, want, params, plan, args, result)
