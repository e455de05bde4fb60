"""fit's progress bar stays out of log files, and a batch of the wrong shape is one clear error
naming both shapes (issue 24, item 4)."""

from __future__ import annotations

import io
import sys

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("tqdm")
from torch import nn  # noqa: E402

from tbn_tvm.errors import TBNError  # noqa: E402
from tbn_tvm.torch import fit  # noqa: E402


class _Stream(io.StringIO):
    def __init__(self, tty: bool) -> None:
        super().__init__()
        self.tty = tty

    def isatty(self) -> bool:
        return self.tty


def _data(n: int = 32, features: int = 6):
    rng = np.random.default_rng(0)
    return rng.random((n, features), dtype=np.float32), rng.integers(0, 2, n)


@pytest.mark.parametrize("tty", [False, True])
def test_the_bar_is_shown_on_a_terminal_only(monkeypatch, tty):
    monkeypatch.delenv("TBN_TVM_PROGRESS", raising=False)
    stream = _Stream(tty)
    monkeypatch.setattr(sys, "stderr", stream)
    fit(nn.Linear(6, 2), _data(), epochs=2, batch_size=8, progress=True)
    text = stream.getvalue()
    if tty:
        assert "8/8" in text and "fit" in text, text  # the bar, with its final count
    else:
        assert text == "", f"a bar was written into a log: {text!r}"


@pytest.mark.parametrize("forced,shown", [("1", True), ("0", False)])
def test_tbn_tvm_progress_forces_the_bar(monkeypatch, forced, shown):
    monkeypatch.setenv("TBN_TVM_PROGRESS", forced)
    stream = _Stream(tty=not shown)
    monkeypatch.setattr(sys, "stderr", stream)
    fit(nn.Linear(6, 2), _data(), epochs=1, batch_size=8, progress=True)
    assert ("4/4" in stream.getvalue()) == shown


def _cnn() -> nn.Module:
    return nn.Sequential(nn.Conv2d(1, 4, 3), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 26 * 26, 10))


@pytest.mark.parametrize(
    "shape,words",
    [
        # wrong channels: the first conv refuses
        ((16, 3, 28, 28), ["[16x3x28x28]", "layer '0' (Conv2d)", "takes [N, 1, H, W]", "got [8x3x28x28]"]),
        # wrong image size: the classifier refuses the flattened features
        ((16, 1, 8, 8), ["[16x1x8x8]", "layer '3' (Linear)", "takes [..., 2704]", "got [8x144]"]),
    ],
)
def test_a_batch_of_the_wrong_shape_is_one_clear_error(shape, words):
    x = np.zeros(shape, np.float32)
    y = np.zeros(shape[0], np.int64)
    with pytest.raises(TBNError) as e:
        fit(_cnn(), (x, y), epochs=1, batch_size=8, progress=False)
    line = e.value.render()
    assert "\n" not in line and line.startswith("error: a training batch of shape [8x")
    for w in words:
        assert w.replace("[16x", "[8x") in line, line
    assert e.value.__cause__ is None and e.value.__suppress_context__


def test_a_validation_batch_of_the_wrong_shape_is_named_as_such():
    x, y = _data()
    with pytest.raises(
        TBNError, match=r"a validation batch of shape \[32x5\].*takes \[\.\.\., 6\] but got \[32x5\]"
    ):
        fit(nn.Linear(6, 2), (x, y), (x[:, :5], y), epochs=1, batch_size=8, progress=False)


def test_targets_the_loss_does_not_take_name_both_shapes():
    x, _ = _data()
    with pytest.raises(TBNError) as e:
        fit(nn.Linear(6, 2), (x, np.zeros((32, 3), np.int64)), epochs=1, batch_size=8, progress=False)
    assert "the model's output [8x2] and the targets [8x3]" in str(e.value)


def test_an_error_after_the_first_batch_is_left_alone():
    class Breaks(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.fc = nn.Linear(6, 2)
            self.calls = 0

        def forward(self, x):
            self.calls += 1
            if self.calls == 3:
                raise RuntimeError("boom")
            return self.fc(x)

    with pytest.raises(RuntimeError, match="boom"):
        fit(Breaks(), _data(), epochs=1, batch_size=8, progress=False)


def test_a_notebook_bar_is_always_shown(monkeypatch):
    import tqdm.auto
    import tqdm.notebook

    from tbn_tvm.torch.fitting import _bar_disabled

    monkeypatch.delenv("TBN_TVM_PROGRESS", raising=False)
    assert _bar_disabled(tqdm.notebook.tqdm) is False  # Jupyter: shown
    assert _bar_disabled(tqdm.auto.tqdm) is None  # outside one: tqdm decides by isatty()
