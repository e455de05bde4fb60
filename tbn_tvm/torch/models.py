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

__all__ = ["mnist_mlp", "digits_cnn", "cifar10_cnn", "MODELS"]


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


MODELS = {"mnist": mnist_mlp, "digits": digits_cnn, "cifar10": cifar10_cnn}
"""Data set name -> model builder used by ``tbn-tvm train``."""
