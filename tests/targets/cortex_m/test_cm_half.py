"""``compile --activations float16`` (issue 22): the Cortex-M arena stores activations as IEEE
half while the kernels compute in float32.  The arena halves, the outputs stay within 1e-2 of
onnxruntime, the build measures the accuracy cost against float32 on the user's samples (or
random ones) and says so; float32 stays the default; misuse is one error line."""

from __future__ import annotations

import json

import numpy as np
import onnx
import pytest
import reports
from test_cli import cli, ok, user_error
from test_cm_arena import residual_model

te = pytest.importorskip("tvm.te")


def test_rewrite_widens_loads_and_rounds_stores():
    """The float16 rewrite of a kernel: the chosen buffers become float16, every read of them
    is widened to float32 and every write rounded from float32; the others are untouched."""
    from tbn_tvm.targets.clib.half import rewrite

    a = te.placeholder((4, 3), name="a")
    b = te.placeholder((4, 3), name="b")
    y = te.compute((4, 3), lambda i, j: a[i, j] * 2.0 + b[i, j], name="y")
    f = rewrite(te.create_prim_func([a, b, y]), [0, 2])
    text = f.script()
    assert [str(p.dtype) for p in f.params] == ["float16", "float32", "float16"]
    assert 'T.Cast("float32", a[' in text and 'T.Cast("float16",' in text
    assert 'T.Cast("float32", b[' not in text


def test_accuracy_figures():
    from tbn_tvm.targets.clib.half import accuracy

    y32 = np.array([[1.0, 4.0, 2.0], [3.0, 0.5, -8.0]], np.float32)
    y16 = y32.copy()
    y16[0, 1] = 4.004  # 1e-3 of the row's largest magnitude
    y16[1, 0] = 1.0  # arg-max of row 1 unchanged (index 0 vs 0)
    acc = accuracy(y16, y32, 3)
    assert acc["samples"] == 2 and acc["max_rel_error"] == pytest.approx(0.25, rel=1e-6)
    assert acc["top1_agreement"] == 1.0
    y16[0, 2] = 9.0  # row 0's arg-max moves
    assert accuracy(y16, y32, 3)["top1_agreement"] == 0.5


@pytest.fixture(scope="module")
def builds(tmp_path_factory):
    root = tmp_path_factory.mktemp("half")
    model = residual_model(needed_later=True)
    path = root / "res.onnx"
    onnx.save(model, path)
    x = np.random.default_rng(11).standard_normal((5, 1, 8, 10, 10)).astype(np.float32)
    np.save(root / "calib.npy", x)
    out16 = root / "f16"
    proc = ok(
        cli(
            "compile", path, "--target", "cortex-m4", "--activations", "float16",
            "--calibration", root / "calib.npy", "-o", out16,
        )
    )  # fmt: skip
    out32 = root / "f32"
    ok(cli("compile", path, "--target", "cortex-m4", "-o", out32))
    return model, x, proc, out16, out32


@pytest.mark.qemu
def test_float16_halves_the_arena_and_reports_its_cost(builds):
    _, _, proc, out16, out32 = builds
    m16 = json.loads((out16 / "manifest.json").read_text())
    m32 = json.loads((out32 / "manifest.json").read_text())
    assert m16["activations"] == "float16" and m32["activations"] == "float32"
    assert m16["arena_bytes"] == m32["arena_bytes"] // 2
    acc = m16["activation_accuracy"]
    assert acc["samples"] == 5 and acc["inputs"] == "5 samples of calib.npy"
    assert 0 < acc["max_rel_error"] < 1e-2 and 0.0 <= acc["top1_agreement"] <= 1.0
    assert "activations: float16 in the arena" in proc.stdout and "calib.npy" in proc.stdout
    model_c = (out16 / "lib" / "model.c").read_text()
    assert "{2, 16, 1}" in model_c  # float16 tensors handed to the kernels
    assert "{2, 16, 1}" not in (out32 / "lib" / "model.c").read_text()


@pytest.mark.qemu
def test_float16_outputs_within_1e_2_of_onnxruntime(builds):
    import tbn_tvm

    model, x, _, out16, _ = builds
    ref = np.stack([reports.ort(model, {"x": xi})[0] for xi in x])
    got = tbn_tvm.load(out16).run(x)
    np.testing.assert_allclose(got.reshape(ref.shape), ref, rtol=1e-2, atol=1e-2 * np.abs(ref).max())


@pytest.mark.parametrize(
    "extra, mentions",
    [
        (["--activations", "float16", "--target", "llvm"], ["--activations"]),
        (["--calibration", "x.npy", "--target", "cortex-m4"], ["float16"]),
        (["--activations", "float16", "--calibration", "bad.npy", "--target", "cortex-m4"], ["calibration"]),
        (
            ["--activations", "float16", "--calibration", "missing.npy", "--target", "cortex-m4"],
            ["missing.npy"],
        ),
    ],
    ids=["host", "calibration_without_float16", "wrong_size", "missing_file"],
)
def test_misuse_is_one_error_line(tmp_path, extra, mentions):
    path = tmp_path / "res.onnx"
    onnx.save(residual_model(needed_later=False), path)
    np.save(tmp_path / "x.npy", np.zeros((2, 1, 8, 10, 10), np.float32))
    np.save(tmp_path / "bad.npy", np.zeros((2, 7), np.float32))
    args = [a if not a.endswith(".npy") else str(tmp_path / a) for a in extra]
    user_error(cli("compile", path, *args, "-o", tmp_path / "out"), *mentions)
