"""torch ``summary`` and ``tbn-tvm inspect`` give one byte count per layer: where the compiler
folds a BatchNorm into a layer (per-output-channel scales), the summary shows the compiled
figure next to the layer's own and says why (issue 24, item 9)."""

from __future__ import annotations

import json
from collections import OrderedDict

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("onnxscript")
from torch import nn  # noqa: E402

import tbn_tvm  # noqa: E402
from tbn_tvm.torch import export_onnx, summary, tbnify  # noqa: E402


def _randomise_bn(model: nn.Module) -> None:
    g = torch.Generator().manual_seed(3)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            with torch.no_grad():
                m.running_var.copy_(torch.rand(m.num_features, generator=g) + 0.5)
                m.running_mean.copy_(torch.randn(m.num_features, generator=g))
                m.weight.copy_(torch.rand(m.num_features, generator=g) + 0.5)
                m.bias.copy_(torch.randn(m.num_features, generator=g))


def users_cnn() -> nn.Module:
    """The issue's model: conv-BN-ReLU blocks and a classifier, trained BatchNorm statistics."""
    torch.manual_seed(0)
    model = nn.Sequential(
        OrderedDict(
            conv1=nn.Conv2d(1, 16, 3, bias=False),
            bn1=nn.BatchNorm2d(16),
            relu1=nn.ReLU(),
            conv2=nn.Conv2d(16, 32, 3, bias=False),
            bn2=nn.BatchNorm2d(32),
            relu2=nn.ReLU(),
            pool=nn.AdaptiveAvgPool2d(2),
            flat=nn.Flatten(),
            fc=nn.Linear(128, 10),
        )
    )
    _randomise_bn(model)
    return tbnify(model, p=4, min_size=0).eval()


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    model = users_cnn()
    path = tmp_path_factory.mktemp("summary") / "cnn.onnx"
    export_onnx(model, torch.zeros(1, 1, 12, 12), path)
    return model, tbn_tvm.inspect(path).to_dict()


def test_the_compiled_bytes_equal_inspect(exported):
    model, report = exported
    s = summary(model)
    rows = {r.name: r for r in s.rows}
    # by hand: conv1 is binary, 144 bits in 32-bit words (20 B) + one α as trained (4 B) ...
    assert rows["conv1"].bytes == 24 and rows["conv1"].compiled_bits is not None
    # ... and 16 per-output-channel scales once bn1 is folded in (20 + 64 B)
    assert rows["conv1"].compiled_bits == 8 * (20 + 4 * 16)
    # conv2: tile of 4608/4 = 1152 bits (144 B), 4 α as trained, 32 per-channel scales compiled
    assert rows["conv2"].weight_bits == 8 * (144 + 16) and rows["conv2"].compiled_bits == 8 * (144 + 128)
    assert rows["fc"].compiled_bits is None  # no BatchNorm after it: the layer's own figure
    for layer in report["layers"]:
        r = rows[layer["name"]]
        assert -(-r.compiled_weight_bits // 8) == layer["bytes"], (layer["name"], r, layer["label"])
    assert s.total["compiled_weight_bytes"] == report["total"]["weight_bytes"]


def test_the_table_shows_both_figures_and_why(exported):
    model, _ = exported
    s = summary(model)
    text = str(s)
    assert "conv1 [1]" in text and "conv2 [2]" in text and "fc [" not in text
    note = next(line for line in text.splitlines() if line.startswith("[1] conv1"))
    assert "compiled 84 bytes" in note and "4.6667 bits/weight" in note
    assert "BatchNorm 'bn1' is folded into this weight" in note and "16 per_channel scales" in note
    assert "tbn-tvm inspect" in note
    assert "compiled weights:" in text
    d = s.to_dict()
    json.dumps(d)
    conv1 = next(la for la in d["layers"] if la["name"] == "conv1")
    assert (conv1["bytes"], conv1["compiled_bytes"]) == (24, 84)
    assert "compiled_bits" not in next(la for la in d["layers"] if la["name"] == "fc")
    assert "[1] conv1" in s.table(markdown=True)


def test_the_layers_own_accounting_is_kept():
    model = users_cnn()
    plain = summary(model, compiled=False)
    assert all(r.compiled_bits is None for r in plain.rows)
    assert plain.total["bytes"] == summary(model).total["bytes"]  # the authors' figures unchanged


def test_an_untraceable_model_says_so():
    class Branchy(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv = nn.Conv2d(1, 8, 3, bias=False)
            self.bn = nn.BatchNorm2d(8)

        def forward(self, x):
            if x.sum() > 0:  # data-dependent control flow: torch.fx cannot trace it
                x = -x
            return self.bn(self.conv(x))

    model = tbnify(Branchy(), p=1, min_size=0)
    s = summary(model)
    assert "could not be traced with torch.fx" in str(s) and "tbn-tvm inspect" in s.trace_note
    assert "trace_note" in s.to_dict()
