"""A trained MNIST p = 4 model, exported, compiled for cortex-m4 and run on QEMU, predicts like torch."""

from __future__ import annotations

import shutil

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("onnxscript")

from tbn_tvm.cli import main  # noqa: E402
from tbn_tvm.torch import export_onnx  # noqa: E402
from tbn_tvm.torch.train import TrainOptions, load_dataset, train_one  # noqa: E402


@pytest.mark.slow
@pytest.mark.qemu
@pytest.mark.parametrize("tile_first", [False, True])
def test_mnist_tbn4_on_qemu_cortex_m4_predicts_like_torch(tmp_path, tile_first):
    pytest.importorskip("tbn_tvm.api")
    if not (shutil.which("arm-none-eabi-gcc") and shutil.which("qemu-system-arm")):
        pytest.skip("needs arm-none-eabi-gcc and qemu-system-arm")
    model, result = train_one(
        "mnist", "tbn4", seed=0, options=TrainOptions(epochs=2, train_limit=2000, tile_first=tile_first)
    )
    assert result.accuracy > 0.8
    path = tmp_path / "mnist-tbn4.onnx"
    export_onnx(model, torch.zeros(1, 784), path)
    data = load_dataset("mnist")
    x = data.x_test[:200]
    with torch.no_grad():
        want = model(torch.from_numpy(x)).numpy()
    np.save(tmp_path / "x.npy", x[:, None])
    assert main(["compile", str(path), "--target", "cortex-m4", "-o", str(tmp_path / "m4")]) == 0
    assert (
        main(
            [
                "run",
                str(tmp_path / "m4"),
                "--qemu",
                "-i",
                str(tmp_path / "x.npy"),
                "-o",
                str(tmp_path / "y.npy"),
            ]
        )
        == 0
    )
    got = np.load(tmp_path / "y.npy").reshape(len(x), -1)
    np.testing.assert_array_equal(got.argmax(1), want.argmax(1))
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)
