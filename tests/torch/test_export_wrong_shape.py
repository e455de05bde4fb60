"""export_onnx with an example the model does not take: one clean TBNError naming the given
shape and what the first layer expects, no terminal colour codes, no exporter log (issue 14)."""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")
from torch import nn  # noqa: E402

from tbn_tvm.errors import TBNError  # noqa: E402
from tbn_tvm.torch import export_onnx, tbnify  # noqa: E402


@pytest.mark.parametrize(
    "model, example, given, expected",
    [
        (
            lambda: nn.Sequential(nn.Flatten(), nn.Linear(784, 32), nn.ReLU(), nn.Linear(32, 10)),
            (1, 100),
            "[1x100]",
            "784 features",
        ),
        (
            lambda: nn.Sequential(nn.Conv2d(1, 8, 3), nn.ReLU(), nn.Flatten(), nn.Linear(8 * 26 * 26, 10)),
            (1, 3, 28, 28),
            "[1x3x28x28]",
            "[N, 1, H, W]",
        ),
    ],
)
def test_wrong_example_shape_is_one_clean_error(tmp_path, capfd, model, example, given, expected):
    m = tbnify(model(), p=4, min_size=0)
    with pytest.raises(TBNError) as e:
        export_onnx(m, torch.zeros(example), tmp_path / "m.onnx")
    line = e.value.render()
    assert "\n" not in line and "\x1b" not in line
    assert given in line and expected in line
    out, err = capfd.readouterr()
    assert "always_classified" not in out + err and "Traceback" not in out + err
    assert not (tmp_path / "m.onnx").exists()
