"""One word for one weight: an all-zero layer is ``zero`` in the export metadata and in
``tbn_tvm.inspect`` (it was ``binary``/``tiled`` in one and ``bitplane k=1`` in the other; issue
20, item 5)."""

from __future__ import annotations

import json
from collections import OrderedDict

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("onnxscript")
onnx = pytest.importorskip("onnx")
from torch import nn  # noqa: E402

import tbn_tvm  # noqa: E402
from tbn_tvm.formats import detect_layer_weight  # noqa: E402
from tbn_tvm.torch import export_onnx, summary, tbnify  # noqa: E402
from tbn_tvm.torch.export import METADATA_KEY  # noqa: E402


def test_an_all_zero_weight_is_zero_for_the_formats():
    for op, shape in (("matmul", (16, 8)), ("conv", (4, 2, 3, 3))):
        fmt = detect_layer_weight(np.zeros(shape, np.float32), op).format
        assert (fmt.kind, fmt.label()) == ("zero", "zero (bitplane k=1)")
        assert np.array_equal(fmt.decode().reshape(-1), np.zeros(int(np.prod(shape)), np.float32))
    q = np.array([[1, 0], [0, -1]], np.float32)  # not all zero: still a bit-plane
    assert detect_layer_weight(0.5 * q, "matmul").format.kind != "zero"


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    torch.manual_seed(0)
    model = nn.Sequential(
        OrderedDict(
            conv=nn.Conv2d(1, 8, 3),
            relu=nn.ReLU(),
            flat=nn.Flatten(),
            zero_tiled=nn.Linear(8 * 6 * 6, 32),
            relu2=nn.ReLU(),
            live=nn.Linear(32, 32),
            relu3=nn.ReLU(),
            zero_binary=nn.Linear(32, 10),
        )
    )
    model = tbnify(model, p=4, min_size=0, alpha_source="W")
    with torch.no_grad():  # zero-initialised layers (as some heads are): every α is 0
        model.zero_tiled.weight.zero_()
        model.zero_binary.weight.zero_()
    model.eval()
    path = tmp_path_factory.mktemp("zero") / "zero.onnx"
    export_onnx(model, torch.randn(1, 1, 8, 8), path)
    return model, path


def test_metadata_and_inspect_use_one_word(exported):
    model, path = exported
    meta = {e.key: e.value for e in onnx.load(str(path)).metadata_props}
    written = {d["name"]: d for d in json.loads(meta[METADATA_KEY])["layers"]}
    found = {d["name"]: d for d in tbn_tvm.inspect(path).to_dict()["layers"]}
    assert set(written) == set(found) == {"conv", "zero_tiled", "live", "zero_binary"}
    for name in written:
        assert written[name]["format"] == found[name]["format"], (name, written[name], found[name]["label"])
    assert written["zero_tiled"]["format"] == "zero" and written["zero_tiled"]["trained_format"] == "tiled"
    assert written["zero_binary"]["format"] == "zero" and written["zero_binary"]["trained_format"] == "binary"
    assert written["live"]["format"] == "tiled" and written["conv"]["format"] == "binary"
    # the trained p stays in the metadata
    assert (written["zero_tiled"]["p"], written["zero_binary"]["p"]) == (4, 1)


def test_summary_uses_the_same_word(exported):
    model, _ = exported
    rows = {r.name: r for r in summary(model).rows}
    assert rows["zero_tiled"].format == "zero" and rows["zero_binary"].format == "zero"
    assert rows["live"].format == "tiled"
