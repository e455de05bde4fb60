"""Real architectures, small enough for CI: a CIFAR ResNet-18, a MobileNetV2 stack, a ViT, a 1-D
conv time-series net and a UNet.  No torchvision; plain ``torch.nn`` only.

Every builder takes a ``seed`` and returns an untrained model in train mode (call
:func:`randomise_batchnorm` and ``tbnify`` before ``eval()``).  ``ARCHITECTURES`` maps a short name
to ``(builder, input shape)``.
"""

from __future__ import annotations

import torch
from torch import nn

__all__ = [
    "ARCHITECTURES",
    "ResNet18",
    "MobileNetV2Stack",
    "ViT",
    "TimeSeriesNet",
    "UNet",
    "randomise_batchnorm",
]


# --------------------------------------------------------------------------- ResNet-18 (CIFAR)
class BasicBlock(nn.Module):
    """3x3 conv-BN-ReLU, 3x3 conv-BN, plus the identity or a 1x1 conv-BN shortcut, ReLU."""

    expansion = 1

    def __init__(self, cin: int, cout: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.relu = nn.ReLU()
        self.shortcut = nn.Sequential()
        if stride != 1 or cin != cout:
            self.shortcut = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + self.shortcut(x))


class ResNet18(nn.Module):
    """ResNet-18 for CIFAR (He et al. 2016; the usual CIFAR variant): a 3x3 stride-1 stem, no
    max-pool, four stages of two basic blocks with widths w, 2w, 4w, 8w (stride 2 from stage 2
    on), global average pool, Linear."""

    def __init__(self, width: int = 8, num_classes: int = 10, blocks=(2, 2, 2, 2)) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, width, 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.relu = nn.ReLU()
        cin = width
        stages = []
        for i, n in enumerate(blocks):
            cout = width * 2**i
            layers = []
            for j in range(n):
                layers.append(BasicBlock(cin, cout, stride=2 if (i > 0 and j == 0) else 1))
                cin = cout
            stages.append(nn.Sequential(*layers))
        self.layer1, self.layer2, self.layer3, self.layer4 = stages
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(cin, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.relu(self.bn1(self.conv1(x)))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return self.fc(torch.flatten(self.pool(x), 1))


# --------------------------------------------------------------------------- MobileNetV2 stack
class InvertedResidual(nn.Module):
    """MobileNetV2 block: 1x1 expand-BN-ReLU6, 3x3 depthwise-BN-ReLU6, 1x1 project-BN; the
    input is added when stride is 1 and the channel counts match."""

    def __init__(self, cin: int, cout: int, stride: int, expand: int) -> None:
        super().__init__()
        hidden = cin * expand
        self.use_residual = stride == 1 and cin == cout
        self.expand = nn.Sequential(nn.Conv2d(cin, hidden, 1, bias=False), nn.BatchNorm2d(hidden), nn.ReLU6())
        self.depthwise = nn.Sequential(
            nn.Conv2d(hidden, hidden, 3, stride, 1, groups=hidden, bias=False),
            nn.BatchNorm2d(hidden),
            nn.ReLU6(),
        )
        self.project = nn.Sequential(nn.Conv2d(hidden, cout, 1, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.project(self.depthwise(self.expand(x)))
        return x + out if self.use_residual else out


class MobileNetV2Stack(nn.Module):
    """A 3x3 stem, inverted-residual blocks (expansion ``t``, some with residuals, some with
    stride 2), a 1x1 head conv, global average pool, Linear."""

    def __init__(self, width: int = 8, expand: int = 4, num_classes: int = 10) -> None:
        super().__init__()
        w = width
        self.stem = nn.Sequential(nn.Conv2d(3, w, 3, 1, 1, bias=False), nn.BatchNorm2d(w), nn.ReLU6())
        self.blocks = nn.Sequential(
            InvertedResidual(w, w, 1, expand),  # residual
            InvertedResidual(w, 2 * w, 2, expand),
            InvertedResidual(2 * w, 2 * w, 1, expand),  # residual
            InvertedResidual(2 * w, 3 * w, 2, expand),
            InvertedResidual(3 * w, 3 * w, 1, expand),  # residual
        )
        self.head = nn.Sequential(nn.Conv2d(3 * w, 8 * w, 1, bias=False), nn.BatchNorm2d(8 * w), nn.ReLU6())
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Linear(8 * w, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.head(self.blocks(self.stem(x)))
        return self.classifier(torch.flatten(self.pool(x), 1))


# --------------------------------------------------------------------------- ViT
class SelfAttention(nn.Module):
    """Multi-head self-attention with separate q/k/v/out ``nn.Linear`` layers."""

    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        assert dim % heads == 0
        self.heads, self.head_dim = heads, dim // heads
        self.q = nn.Linear(dim, dim)
        self.k = nn.Linear(dim, dim)
        self.v = nn.Linear(dim, dim)
        self.out = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, t, d = x.shape

        def split(y: torch.Tensor) -> torch.Tensor:
            return y.reshape(b, t, self.heads, self.head_dim).transpose(1, 2)  # b h t hd

        q, k, v = split(self.q(x)), split(self.k(x)), split(self.v(x))
        att = torch.softmax(q @ k.transpose(-2, -1) * self.head_dim**-0.5, dim=-1)
        y = (att @ v).transpose(1, 2).reshape(b, t, d)
        return self.out(y)


class EncoderBlock(nn.Module):
    """Pre-norm transformer encoder block: x + attn(LN(x)); x + MLP(LN(x)) with GELU."""

    def __init__(self, dim: int, heads: int, mlp_ratio: int = 2) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.attn = SelfAttention(dim, heads)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = nn.Sequential(nn.Linear(dim, mlp_ratio * dim), nn.GELU(), nn.Linear(mlp_ratio * dim, dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


class ViT(nn.Module):
    """Vision transformer (Dosovitskiy et al. 2021) in miniature: a strided-conv patch embedding,
    a class token, learned position embeddings, ``depth`` encoder blocks, a final LayerNorm and a
    Linear head on the class token."""

    def __init__(
        self,
        image: int = 16,
        patch: int = 4,
        dim: int = 32,
        depth: int = 2,
        heads: int = 4,
        num_classes: int = 10,
    ) -> None:
        super().__init__()
        tokens = (image // patch) ** 2
        self.patch_embed = nn.Conv2d(3, dim, patch, patch)
        self.cls_token = nn.Parameter(torch.randn(1, 1, dim) * 0.02)
        self.pos_embed = nn.Parameter(torch.randn(1, tokens + 1, dim) * 0.02)
        self.blocks = nn.Sequential(*[EncoderBlock(dim, heads) for _ in range(depth)])
        self.norm = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.patch_embed(x).flatten(2).transpose(1, 2)  # b, tokens, dim
        cls = self.cls_token.expand(x.shape[0], -1, -1)
        x = torch.cat([cls, x], dim=1) + self.pos_embed
        x = self.norm(self.blocks(x))
        return self.head(x[:, 0])


# --------------------------------------------------------------------------- 1-D conv time series
class TimeSeriesNet(nn.Module):
    """Fully convolutional time-series classifier (Wang et al. 2017 style): Conv1d-BN-ReLU
    stacks, global average pool over time, Linear."""

    def __init__(self, channels: int = 4, width: int = 16, num_classes: int = 5) -> None:
        super().__init__()
        w = width

        def unit(cin: int, cout: int, k: int, stride: int = 1) -> nn.Sequential:
            return nn.Sequential(
                nn.Conv1d(cin, cout, k, stride, k // 2, bias=False), nn.BatchNorm1d(cout), nn.ReLU()
            )

        self.features = nn.Sequential(
            unit(channels, w, 7),
            unit(w, 2 * w, 5, stride=2),
            unit(2 * w, 2 * w, 3),
            unit(2 * w, 2 * w, 3, stride=2),
        )
        self.pool = nn.AdaptiveAvgPool1d(1)
        self.fc = nn.Linear(2 * w, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.flatten(self.pool(self.features(x)), 1))


# --------------------------------------------------------------------------- UNet
class DoubleConv(nn.Sequential):
    def __init__(self, cin: int, cout: int) -> None:
        super().__init__(
            nn.Conv2d(cin, cout, 3, padding=1, bias=False),
            nn.BatchNorm2d(cout),
            nn.ReLU(),
            nn.Conv2d(cout, cout, 3, padding=1, bias=False),
            nn.BatchNorm2d(cout),
            nn.ReLU(),
        )


class UNet(nn.Module):
    """UNet (Ronneberger et al. 2015) with two down and two up levels: max-pool down,
    ``ConvTranspose2d(stride=2)`` up, skip connections concatenated on channels, 1x1 output conv."""

    def __init__(self, cin: int = 3, width: int = 8, classes: int = 2) -> None:
        super().__init__()
        w = width
        self.enc1 = DoubleConv(cin, w)
        self.enc2 = DoubleConv(w, 2 * w)
        self.bottleneck = DoubleConv(2 * w, 4 * w)
        self.pool = nn.MaxPool2d(2)
        self.up2 = nn.ConvTranspose2d(4 * w, 2 * w, 2, stride=2)
        self.dec2 = DoubleConv(4 * w, 2 * w)
        self.up1 = nn.ConvTranspose2d(2 * w, w, 2, stride=2)
        self.dec1 = DoubleConv(2 * w, w)
        self.out = nn.Conv2d(w, classes, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        e1 = self.enc1(x)
        e2 = self.enc2(self.pool(e1))
        b = self.bottleneck(self.pool(e2))
        d2 = self.dec2(torch.cat([self.up2(b), e2], dim=1))
        d1 = self.dec1(torch.cat([self.up1(d2), e1], dim=1))
        return self.out(d1)


# --------------------------------------------------------------------------- helpers
def randomise_batchnorm(model: nn.Module, seed: int) -> None:
    """Give every BatchNorm non-trivial running statistics and affine parameters (gamma in
    [0.5, 1.5]), so that BN is not the identity in eval mode."""
    g = torch.Generator().manual_seed(seed)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm1d | nn.BatchNorm2d):
            n = m.num_features
            with torch.no_grad():
                m.running_mean.copy_(torch.randn(n, generator=g) * 0.3)
                m.running_var.copy_(torch.rand(n, generator=g) + 0.5)
                m.weight.copy_(torch.rand(n, generator=g) + 0.5)
                m.bias.copy_(torch.randn(n, generator=g) * 0.2)


def randomise_layernorm(model: nn.Module, seed: int) -> None:
    """LayerNorm affine parameters away from (1, 0)."""
    g = torch.Generator().manual_seed(seed)
    for m in model.modules():
        if isinstance(m, nn.LayerNorm):
            with torch.no_grad():
                m.weight.copy_(torch.rand(m.weight.shape, generator=g) + 0.5)
                m.bias.copy_(torch.randn(m.bias.shape, generator=g) * 0.2)


ARCHITECTURES = {
    "resnet18": (ResNet18, (1, 3, 16, 16)),
    "mobilenetv2": (MobileNetV2Stack, (1, 3, 16, 16)),
    "vit": (ViT, (1, 3, 16, 16)),
    "timeseries": (TimeSeriesNet, (1, 4, 64)),
    "unet": (UNet, (1, 3, 16, 16)),
}
