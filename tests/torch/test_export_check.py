"""export_onnx's onnxruntime check compares on the output's scale with a tolerance from the dtype
and the depth: a deep net with outputs of ~10³ is accepted (its export is as close to a float64
run as torch is), an export whose outputs really differ is refused with a message that says what
was measured and how to proceed (issue 20, item 3)."""

from __future__ import annotations

import copy

import numpy as np
import pytest

torch = pytest.importorskip("torch")
onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")
pytest.importorskip("onnxscript")

from onnx import numpy_helper  # noqa: E402
from torch import nn  # noqa: E402

import tbn_tvm.torch.export as export_mod  # noqa: E402
from tbn_tvm.errors import TBNError  # noqa: E402
from tbn_tvm.torch import export_onnx, tbnify  # noqa: E402


class Block(nn.Module):
    def __init__(self, c: int) -> None:
        super().__init__()
        self.c1, self.b1 = nn.Conv2d(c, c, 3, padding=1, bias=False), nn.BatchNorm2d(c)
        self.c2, self.b2 = nn.Conv2d(c, c, 3, padding=1, bias=False), nn.BatchNorm2d(c)

    def forward(self, x):
        return torch.relu(x + self.b2(self.c2(torch.relu(self.b1(self.c1(x))))))


def deep_net(blocks: int = 8, c: int = 32, classes: int = 1000) -> nn.Module:
    """A ResNet-style stack of 2·blocks + 2 weighted layers with an ImageNet-sized classifier."""
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(3, c, 3, padding=1, bias=False),
        nn.BatchNorm2d(c),
        nn.ReLU(),
        *[Block(c) for _ in range(blocks)],
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(c, classes),
    )
    g = torch.Generator().manual_seed(1)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            with torch.no_grad():
                m.running_mean.copy_(torch.randn(c, generator=g) * 0.1)
                m.running_var.copy_(torch.rand(c, generator=g) + 0.5)
                m.weight.copy_(torch.rand(c, generator=g) + 0.5)
                m.bias.copy_(torch.randn(c, generator=g) * 0.1)
    return tbnify(model, p=4, min_size=0).eval()


@pytest.fixture(scope="module")
def deep():
    model = deep_net()
    # unnormalised pixels (0..255-like magnitudes): outputs of 10^2..10^3
    x = torch.randn(1, 3, 16, 16, generator=torch.Generator().manual_seed(2)) * 3000.0
    return model, x


def _ort(path, x: np.ndarray) -> np.ndarray:
    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    sess = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
    return sess.run(None, {sess.get_inputs()[0].name: x})[0]


def test_a_deep_net_with_outputs_of_a_thousand_is_accepted(deep, tmp_path):
    model, x = deep
    result = export_onnx(model, x, tmp_path / "deep.onnx")
    got = _ort(tmp_path / "deep.onnx", x.numpy())
    with torch.no_grad():
        y32 = model(x).numpy()
        y64 = copy.deepcopy(model).double()(x.double()).numpy()  # the float64 reference
    scale = np.abs(y64).max()
    assert 300 < scale < 1e4, scale
    # the old element-wise check (1e-5 + 1e-5·|y|) refuses this correct export ...
    assert np.any(np.abs(got - y32) > 1e-5 + 1e-5 * np.abs(y32))
    # ... though onnxruntime is about as close to float64 as torch itself (float32 rounding)
    ort_err, torch_err = np.abs(got - y64).max() / scale, np.abs(y32 - y64).max() / scale
    assert ort_err < 4 * torch_err + 1e-7 and ort_err < 1e-6, (ort_err, torch_err)
    # what the check measured and against what
    assert result.max_rel_diff == pytest.approx(result.max_abs_diff / np.abs(y32).max(), rel=0.5)
    depth = 2 * 8 + 2  # Conv/Gemm nodes of the exported graph
    assert result.tolerance == pytest.approx(8 * np.finfo(np.float32).eps * depth)
    assert result.max_rel_diff < result.tolerance / 10


def _broken(monkeypatch, change):
    """Make the exporter's graph differ from the model: ``change(initializers)`` edits them."""
    original = export_mod._to_onnx

    def to_onnx(*args, **kwargs):
        proto = original(*args, **kwargs)
        inits = {t.name: t for t in proto.graph.initializer}
        for name, value in change({n: numpy_helper.to_array(t) for n, t in inits.items()}).items():
            inits[name].CopyFrom(numpy_helper.from_array(value, name))
        return proto

    monkeypatch.setattr(export_mod, "_to_onnx", to_onnx)


def _flip_one_tile_bit(inits):
    name = next(n for n in inits if n.endswith(".tile"))
    t = inits[name].copy()
    t.flat[0] = -t.flat[0]
    return {name: t}


def _nudge_one_scale(inits):  # a 1 % change of one α of one layer
    name = next(n for n in inits if n.endswith(".scales") and inits[n].size > 1)
    s = inits[name].copy()
    s.flat[0] *= np.float32(1.01)
    return {name: s}


@pytest.mark.parametrize("change", [_flip_one_tile_bit, _nudge_one_scale])
def test_an_export_whose_outputs_differ_is_refused(deep, tmp_path, monkeypatch, change):
    model, x = deep
    _broken(monkeypatch, change)
    path = tmp_path / "broken.onnx"
    with pytest.raises(TBNError) as e:
        export_onnx(model, x, path)
    line = e.value.render()
    assert "\n" not in line
    for words in ("max |diff|", "max |y|", "tolerance", "float32 eps", "depth 18", "check=False", "rtol="):
        assert words in line, line
    assert not path.exists()
    # the user's way out: check=False writes the (here truly broken) file
    export_onnx(model, x, path, check=False)
    assert path.exists()


def test_a_given_rtol_is_used_and_named(deep, tmp_path, monkeypatch):
    model, x = deep
    _broken(monkeypatch, _nudge_one_scale)
    with pytest.raises(TBNError, match="as given"):
        export_onnx(model, x, tmp_path / "m.onnx", rtol=1e-9)
    assert export_onnx(model, x, tmp_path / "m.onnx", rtol=0.5).tolerance == 0.5


def test_the_tolerance_follows_dtype_and_depth():
    from tbn_tvm.torch.export import check_tolerance

    eps32, eps16 = np.finfo(np.float32).eps, np.finfo(np.float16).eps
    assert check_tolerance(np.float32, 10) == pytest.approx(80 * eps32)
    assert check_tolerance(np.float16, 10) == pytest.approx(80 * eps16)
    assert check_tolerance(np.float32, 0) == pytest.approx(8 * eps32)
    assert check_tolerance(np.int64, 10) == 0.0
