"""The small reference models trained by ``tbn-tvm train`` (full precision; ``tbnify`` tiles them).

Hidden Linear/Conv layers have no bias (a BatchNorm follows them); the classifier keeps its bias.
Layer names are readable (``fc1``, ``conv2``...) and appear in summaries and ONNX initializers.

>>> model = mnist_mlp()
>>> [name for name, _ in model.named_children()]
['fc1', 'bn1', 'relu1', 'fc2', 'bn2', 'relu2', 'fc3']
"""

from __future__ import annotations

from collections import OrderedDict

from torch import nn

__all__ = ["mnist_mlp", "digits_cnn", "cifar10_cnn", "resnet_tiny", "BasicBlock", "MODELS"]


def mnist_mlp(hidden: int = 256, num_classes: int = 10) -> nn.Sequential:
    """MLP 784-256-256-10 with BatchNorm, input ``[N, 784]`` in [0, 1] (200,704 + 65,536 + 2,560
    weights; with first/last layers kept binary only ``fc2`` is tiled)."""
    return nn.Sequential(
        OrderedDict(
            [
                ("fc1", nn.Linear(784, hidden, bias=False)),
                ("bn1", nn.BatchNorm1d(hidden)),
                ("relu1", nn.ReLU()),
                ("fc2", nn.Linear(hidden, hidden, bias=False)),
                ("bn2", nn.BatchNorm1d(hidden)),
                ("relu2", nn.ReLU()),
                ("fc3", nn.Linear(hidden, num_classes)),
            ]
        )
    )


def _conv_block(i: int, cin: int, cout: int, pool: bool) -> list[tuple[str, nn.Module]]:
    block: list[tuple[str, nn.Module]] = [
        (f"conv{i}", nn.Conv2d(cin, cout, 3, padding=1, bias=False)),
        (f"bn{i}", nn.BatchNorm2d(cout)),
        (f"relu{i}", nn.ReLU()),
    ]
    if pool:
        block.append((f"pool{i}", nn.MaxPool2d(2)))
    return block


def digits_cnn(num_classes: int = 10) -> nn.Sequential:
    """CNN for 8×8 digits, input ``[N, 1, 8, 8]``: conv 1→32, conv 32→64 (each BN, ReLU, 2×2 max
    pool), linear 256→10 (288 + 18,432 + 2,560 weights; ``conv2`` is the tiled one)."""
    return nn.Sequential(
        OrderedDict(
            [
                *_conv_block(1, 1, 32, pool=True),
                *_conv_block(2, 32, 64, pool=True),
                ("flatten", nn.Flatten()),
                ("fc", nn.Linear(64 * 2 * 2, num_classes)),
            ]
        )
    )


def cifar10_cnn(num_classes: int = 10) -> nn.Sequential:
    """VGG-style CNN for 32×32 RGB, input ``[N, 3, 32, 32]``: conv 3→32, 32→64, 64→128,
    128→256 (BN, ReLU; max pool after the last three), linear 4096→10."""
    return nn.Sequential(
        OrderedDict(
            [
                *_conv_block(1, 3, 32, pool=False),
                *_conv_block(2, 32, 64, pool=True),
                *_conv_block(3, 64, 128, pool=True),
                *_conv_block(4, 128, 256, pool=True),
                ("flatten", nn.Flatten()),
                ("fc", nn.Linear(256 * 4 * 4, num_classes)),
            ]
        )
    )


class BasicBlock(nn.Module):
    """ResNet basic block: conv 3×3 (stride) → BN → ReLU → conv 3×3 → BN, plus the shortcut
    (identity, or conv 1×1 with stride → BN when the shape changes), then ReLU."""

    def __init__(self, cin: int, cout: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.relu1 = nn.ReLU()
        self.conv2 = nn.Conv2d(cout, cout, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or cin != cout:
            self.shortcut = nn.Sequential(
                OrderedDict(
                    [
                        ("conv", nn.Conv2d(cin, cout, 1, stride=stride, bias=False)),
                        ("bn", nn.BatchNorm2d(cout)),
                    ]
                )
            )
        self.relu2 = nn.ReLU()

    def forward(self, x):  # noqa: D102
        out = self.bn2(self.conv2(self.relu1(self.bn1(self.conv1(x)))))
        return self.relu2(out + self.shortcut(x))


def resnet_tiny(
    in_channels: int = 1,
    num_classes: int = 10,
    widths: tuple[int, ...] = (16, 32, 32),
    blocks: int = 1,
    stem_stride: int = 1,
) -> nn.Sequential:
    """A small ResNet-style CNN, input ``[N, in_channels, H, W]`` (e.g. MNIST as
    ``[N, 1, 28, 28]``): stem conv 3×3 → BN → ReLU, then ``blocks`` :class:`BasicBlock` per
    width (the first stage at stride 1, the others at stride 2), global average pool, linear.
    The defaults have 38,864 weights: stem 144, six 3×3 block convs (36,864), two 1×1 shortcuts
    (1,536), fc 320.  ``stem_stride=2`` halves the input first (a wide model on MNIST: widths
    64/128/128 on 14x14, 7x7 and 4x4 maps, ``examples/snn4-wide-resnet-mnist.onnx``).

    >>> import torch
    >>> resnet_tiny()(torch.zeros(2, 1, 28, 28)).shape
    torch.Size([2, 10])
    """
    layers: list[tuple[str, nn.Module]] = [
        ("stem", nn.Conv2d(in_channels, widths[0], 3, stride=stem_stride, padding=1, bias=False)),
        ("bn", nn.BatchNorm2d(widths[0])),
        ("relu", nn.ReLU()),
    ]
    cin = widths[0]
    for s, width in enumerate(widths):
        for b in range(blocks):
            stride = 2 if s > 0 and b == 0 else 1
            layers.append((f"layer{s + 1}_{b}", BasicBlock(cin, width, stride)))
            cin = width
    layers += [
        ("pool", nn.AdaptiveAvgPool2d(1)),
        ("flatten", nn.Flatten()),
        ("fc", nn.Linear(cin, num_classes)),
    ]
    return nn.Sequential(OrderedDict(layers))


MODELS = {"mnist": mnist_mlp, "digits": digits_cnn, "cifar10": cifar10_cnn}
"""Data set name -> model builder used by ``tbn-tvm train``."""
