"""Training: a short smoke run of the table, the CLI, its errors, CIFAR-10 from a synthetic folder."""

from __future__ import annotations

import json

import numpy as np
import pytest

torch = pytest.importorskip("torch")
onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")

from test_datasets import write_cifar_folder  # noqa: E402  (tests/ is on sys.path: tests/conftest.py)

from tbn_tvm.cli import main  # noqa: E402
from tbn_tvm.errors import TBNError  # noqa: E402
from tbn_tvm.torch import TiledLayer  # noqa: E402
from tbn_tvm.torch.train import (  # noqa: E402
    TrainOptions,
    build_variant,
    train_one,
    train_table,
    variant_p,
)


def ort_run(path, x):
    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    sess = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
    return sess.run(None, {sess.get_inputs()[0].name: x})[0]


def test_variant_names():
    assert [variant_p(v) for v in ("fp32", "binary", "tbn2", "tbn16")] == [None, 1, 2, 16]
    for bad in ("tbn", "tbn0", "p4", "TBN4"):
        with pytest.raises(TBNError):
            variant_p(bad)


def tiled_ps(model) -> list[int | None]:
    return [
        getattr(m, "p", None) for m in model.modules() if isinstance(m, torch.nn.Linear | torch.nn.Conv2d)
    ]


def test_variants_tile_the_hidden_layers_and_keep_the_ends_binary():
    assert tiled_ps(build_variant("mnist", "fp32", 0)) == [None, None, None]
    assert tiled_ps(build_variant("mnist", "binary", 0)) == [1, 1, 1]
    assert tiled_ps(build_variant("mnist", "tbn8", 0)) == [1, 8, 1]
    assert tiled_ps(build_variant("digits", "tbn4", 0)) == [1, 4, 1]
    assert tiled_ps(build_variant("cifar10", "tbn2", 0)) == [1, 2, 2, 2, 1]
    assert tiled_ps(build_variant("mnist", "tbn4", 0, TrainOptions(tile_first=True))) == [4, 4, 1]
    assert tiled_ps(build_variant("mnist", "tbn4", 0, TrainOptions(overrides=(("fc2", 2),)))) == [1, 2, 1]
    assert tiled_ps(build_variant("mnist", "tbn4", 0, TrainOptions(min_size=70000))) == [1, 1, 1]
    with pytest.raises(TBNError, match="match no"):
        build_variant("digits", "tbn4", 0, TrainOptions(overrides=(("fc9", 2),)))


def test_train_one_learns_and_is_deterministic():
    opts = TrainOptions(epochs=3, train_limit=600)
    m1, r1 = train_one("digits", "tbn4", seed=3, options=opts)
    m2, r2 = train_one("digits", "tbn4", seed=3, options=opts)
    assert r1.accuracy == r2.accuracy and r1.final_loss == r2.final_loss
    for a, b in zip(m1.state_dict().values(), m2.state_dict().values(), strict=True):
        assert torch.equal(a, b)
    assert r1.accuracy > 0.5  # 10 classes: chance is 0.1
    tiled = [m for m in m1.modules() if isinstance(m, TiledLayer)]
    assert [m.p for m in tiled] == [1, 4, 1]  # conv1, conv2 (tiled), fc
    assert r1.bits_per_weight < 0.5 and not m1.training


def test_table_smoke_writes_results_plot_and_onnx(tmp_path):
    out = tmp_path / "train"
    seen = []
    table = train_table(
        ["digits"],
        ["fp32", "binary", "tbn4"],
        seeds=[0, 1],
        options=TrainOptions(epochs=2, train_limit=500),
        out_dir=out,
        workers=1,
        on_result=seen.append,
    )
    assert len(seen) == 6 and len(table.runs) == 6
    names = {p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file()}
    assert {
        "results.json",
        "results.md",
        "accuracy_vs_bits.png",
        "onnx/digits-tbn4.onnx",
        "onnx/digits-fp32.onnx",
        "onnx/digits-binary.onnx",
        "onnx/digits-tbn4.reference.npz",
    } <= names
    assert not any(p.name.startswith(".tbn-train-") for p in tmp_path.iterdir())  # staging removed
    data = json.loads((out / "results.json").read_text())
    rows = {r["variant"]: r for r in data["rows"]}
    assert set(rows) == {"fp32", "binary", "tbn4"}
    assert (
        rows["fp32"]["bits_per_weight"] == 32.0
        and rows["tbn4"]["bits_per_weight"] < rows["binary"]["bits_per_weight"] < 1.1
    )
    assert set(rows["tbn4"]["accuracies"]) == {"0", "1"}
    assert [r["seed"] for r in data["runs"] if r["variant"] == "tbn4"] == [0, 1]
    md = (out / "results.md").read_text()
    assert "| tbn4 | 4 |" in md and "held-out" in md
    # The exported model equals the reference logits saved next to it (torch) in onnxruntime.
    ref = np.load(out / "onnx" / "digits-tbn4.reference.npz")
    assert ref["x"].shape == (64, 1, 1, 8, 8) and ref["logits"].shape == (64, 1, 10)
    for x, logits in zip(ref["x"][:8], ref["logits"][:8], strict=True):
        np.testing.assert_allclose(
            ort_run(out / "onnx" / "digits-tbn4.onnx", x), logits, rtol=1e-5, atol=1e-5
        )
    check = data["compiler_check"].get("onnx/digits-tbn4.onnx")
    if check and check.get("available"):
        assert check["ok"], check


@pytest.mark.slow
def test_worker_processes_give_the_same_results_as_one_process(tmp_path):
    opts = TrainOptions(epochs=1, train_limit=300)
    one = train_table(["digits"], ["tbn2"], seeds=[0, 1], options=opts, workers=1, export=False)
    two = train_table(["digits"], ["tbn2"], seeds=[0, 1], options=opts, workers=2, export=False)
    assert [(r.seed, r.accuracy, r.final_loss) for r in one.runs] == [
        (r.seed, r.accuracy, r.final_loss) for r in two.runs
    ]


def test_cli_train(tmp_path, capsys):
    out = tmp_path / "cli"
    rc = main(
        [
            "train",
            "--dataset",
            "digits",
            "--variants",
            "tbn2",
            "--seeds",
            "1",
            "--epochs",
            "1",
            "--train-limit",
            "300",
            "--workers",
            "1",
            "--out",
            str(out),
            "-q",
            "--no-plot",
            "--export-form",
            "dense",
        ]
    )
    assert rc == 0
    stdout = capsys.readouterr().out
    assert "| tbn2 | 2 |" in stdout and "onnx/digits-tbn2.onnx" in stdout
    # "wrote N files" lists all N: the checkpoint and the reference outputs too
    head, _, listing = stdout.partition(f"files to {out}:\n")
    listed = [line.strip() for line in listing.splitlines() if line.startswith("  ")]
    written = sorted(p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file())
    assert head.endswith(f"wrote {len(written)} ") and listed == written
    proto = onnx.load(str(out / "onnx" / "digits-tbn2.onnx"))
    assert "Expand" not in {n.op_type for n in proto.graph.node}  # dense form
    data = json.loads((out / "results.json").read_text())
    assert data["command"].startswith("tbn-tvm train --dataset digits --variants tbn2 --seeds 1")


@pytest.mark.parametrize(
    "argv,message",
    [
        (["--dataset", "cifar10"], "cifar10 needs the folder"),
        (["--dataset", "cifar10", "--data", "/nonexistent/cifar"], "no such folder"),
        (["--variants", "tbn0"], "unknown variant"),
        (["--epochs", "0"], "positive integer"),
        (["--dataset", "digits", "--data", "x"], "only used with --dataset cifar10"),
        (["--dataset", "imagenet"], "invalid choice"),
        (["--override", "fc1"], "bad --override"),
        (["--override", "fc1=0"], "positive integer or fp32"),
        (["--dataset", "digits", "--override", "fc9=2"], "match no"),
    ],
)
def test_cli_errors_are_one_line(tmp_path, capsys, argv, message):
    rc = main(["train", *argv, "--out", str(tmp_path / "o"), "-q"])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1 and err[0].startswith("error: ") and message in err[0]
    assert not (tmp_path / "o").exists()


def test_cifar10_from_a_local_folder(tmp_path, capsys):
    write_cifar_folder(tmp_path / "data", n_per_batch=8)
    out = tmp_path / "cifar"
    rc = main(
        [
            "train",
            "--dataset",
            "cifar10",
            "--data",
            str(tmp_path / "data"),
            "--variants",
            "tbn4",
            "--seeds",
            "0",
            "--epochs",
            "1",
            "--batch-size",
            "16",
            "--workers",
            "1",
            "--out",
            str(out),
            "-q",
            "--no-plot",
        ]
    )
    assert rc == 0
    data = json.loads((out / "results.json").read_text())
    assert data["runs"][0]["dataset"] == "cifar10" and len(data["runs"]) == 1
    tiled = [(lay["name"], lay["p"]) for lay in data["runs"][0]["layers"]]
    assert tiled == [("conv1", 1), ("conv2", 4), ("conv3", 4), ("conv4", 4), ("fc", 1)]
    proto = onnx.load(str(out / "onnx" / "cifar10-tbn4.onnx"))
    dims = [d.dim_value for d in proto.graph.input[0].type.tensor_type.shape.dim]
    assert dims == [1, 3, 32, 32]


def test_cli_without_torch_says_how_to_install_it(monkeypatch, capsys, tmp_path):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == "torch" else real(name, *a)
    )
    assert main(["train", "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "pip install torch==2.13.0" in err[0]
