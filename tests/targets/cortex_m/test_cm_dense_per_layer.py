"""A dense Cortex-M build (``--no-compress``) reports each layer's own figures: flash, arena and
the instructions measured on QEMU at build time, in the manifest and in ``tbn-tvm inspect
OUT_DIR`` (issue 24: every layer of a dense build once showed "-")."""

from __future__ import annotations

import json

import onnx_zoo as zoo
import pytest
from test_cli import cli, ok

pytestmark = pytest.mark.qemu


def test_dense_build_has_per_layer_figures(tmp_path):
    zm = zoo.cnn()  # conv1, conv2 (convs) and fc (Gemm)
    out = tmp_path / "dense"
    ok(cli("compile", zm.save(tmp_path / "cnn.onnx"), "--target", "cortex-m4", "--no-compress", "-o", out))
    layers = json.loads((out / "manifest.json").read_text())["layers"]
    assert [layer["name"] for layer in layers] == ["conv1", "conv2", "fc"]
    for layer in layers:
        assert layer["format"] == "dense"
        assert layer["instructions"] > 0 and layer["flash_bytes"] >= layer["bytes"], layer
    table = ok(cli("inspect", out)).stdout.splitlines()
    head = table[1].split()
    rows = {
        line.split()[0]: line.split() for line in table if line.split()[:1] in (["conv1"], ["conv2"], ["fc"])
    }
    assert len(rows) == 3 and "instructions" in head
    for name, row in rows.items():
        assert "-" not in row, f"{name}: {row}"
