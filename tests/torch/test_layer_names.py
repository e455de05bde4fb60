"""A layer keeps one name from PyTorch to the C array: export metadata -> inspect -> kernels ->
manifest steps -> weights.c, and torch's summary agrees with inspect on the bytes."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch
from torch import nn

import tbn_tvm
from tbn_tvm.torch import export_onnx, summary, tbnify


class Net(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(1, 8, 3, bias=False)
        self.bn = nn.BatchNorm2d(8)
        self.head = nn.Sequential(nn.Linear(8 * 6 * 6, 64), nn.ReLU(), nn.Linear(64, 10))

    def forward(self, x):
        return self.head(torch.relu(self.bn(self.conv1(x))).flatten(1))


EXPECTED = ["conv1", "head.0", "head.2"]


@pytest.fixture(scope="module", params=["tile", "dense"])
def exported(request, tmp_path_factory):
    torch.manual_seed(0)
    model = tbnify(Net(), p=4, min_size=0, keep_first_last_binary=False).eval()
    path = tmp_path_factory.mktemp("names") / f"net-{request.param}.onnx"
    export_onnx(model, torch.randn(1, 1, 8, 8), path, form=request.param)
    return model, path


def test_inspect_shows_torch_names_and_weights(exported):
    model, path = exported
    proc = subprocess.run(
        [sys.executable, "-m", "tbn_tvm", "inspect", str(path), "--json"], capture_output=True, text=True
    )
    assert proc.returncode == 0, proc.stderr
    layers = json.loads(proc.stdout)["layers"]
    assert [layer["name"] for layer in layers] == EXPECTED
    assert all(layer["weight"] for layer in layers)


def test_summary_bytes_equal_inspect(exported):
    model, path = exported
    rows = {r.name: r for r in summary(model).rows}
    for layer in tbn_tvm.inspect(path).to_dict()["layers"]:
        if layer["format"] == "tiled":
            assert rows[layer["name"]].weight_bits == 8 * layer["bytes"], layer["name"]


@pytest.mark.qemu
def test_c_arrays_and_manifest_steps_carry_the_names(exported, tmp_path):
    _, path = exported
    out = tbn_tvm.compile(path, "cortex-m4").save(tmp_path / "out")
    weights_c = (out / "lib" / "weights.c").read_text()
    manifest = json.loads((out / "manifest.json").read_text())
    for name in EXPECTED:
        c = name.replace(".", "_")
        assert f"tbn_{c}_" in weights_c, name
        assert any(name in step["layers"] for step in manifest["steps"]), name
    for layer in manifest["layers"]:
        assert layer["kernels"] and layer["flash_bytes"] > 0
