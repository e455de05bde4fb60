"""The report says what was built: a layer ``inspect`` finds compact but the build keeps dense
(``--no-compress``) is reported dense with its dense bytes, the format found kept aside."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import tbn_tvm

MODEL = Path(__file__).resolve().parents[1] / "examples" / "tbn-mnist-mlp.onnx"


def test_no_compress_build_reports_dense_layers(tmp_path):
    built = tbn_tvm.compile(MODEL, "llvm", compress=False).report()
    layers = {layer["name"]: layer for layer in built["layers"]}
    assert {n: (la["label"], la["found"], la["bytes"]) for n, la in layers.items()} == {
        "fc1": ("dense", "tiled p=4 L=25088", 128 * 784 * 4),
        "fc2": ("dense", "binary", 10 * 128 * 4),
    }
    total = built["total"]
    assert total["weight_bytes"] == total["built_constant_bytes"] == 406_528
    assert (total["compression"], total["compact_layers"], total["dense_layers"]) == (1.0, 0, 2)


def test_compressed_build_report_is_unchanged():
    total = tbn_tvm.compile(MODEL, "llvm").report()["total"]
    assert (total["weight_bytes"], total["compact_layers"]) == (3_316, 2)


def test_inspect_out_dir_of_a_dense_build(tmp_path):
    out = tmp_path / "dense"
    cli = [sys.executable, "-m", "tbn_tvm"]
    subprocess.run(
        [*cli, "compile", str(MODEL), "-o", str(out), "--no-compress"], check=True, capture_output=True
    )
    text = subprocess.run([*cli, "inspect", str(out)], check=True, capture_output=True, text=True).stdout
    assert "tiled" not in text and "binary" not in text, text
    assert "weights 406,528 bytes" in text, text
