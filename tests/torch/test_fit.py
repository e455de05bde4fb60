"""The public ``fit`` / ``evaluate`` API and ``tbn-tvm train --model`` / ``--data-npz``."""

from __future__ import annotations

import json

import numpy as np
import pytest

torch = pytest.importorskip("torch")
onnx = pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")

from torch import nn  # noqa: E402
from torch.utils.data import DataLoader, Dataset, TensorDataset  # noqa: E402

from tbn_tvm.cli import main  # noqa: E402
from tbn_tvm.errors import TBNError  # noqa: E402
from tbn_tvm.torch import History, SubBitConv2d, TiledLayer, evaluate, fit  # noqa: E402
from tbn_tvm.torch.fitting import GlobalBatches  # noqa: E402
from tbn_tvm.torch.train import load_factory, parse_variant  # noqa: E402


def toy(n=120, d=6, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, d)).astype(np.float32)
    y = (x[:, 0] + 0.5 * x[:, 1] > 0).astype(np.int64)
    return x, y


def mlp(seed=0, bn=False):
    torch.manual_seed(seed)
    layers = [nn.Linear(6, 16)] + ([nn.BatchNorm1d(16)] if bn else []) + [nn.ReLU(), nn.Linear(16, 2)]
    return nn.Sequential(*layers)


def weights(model):
    return [t.detach().clone() for t in model.state_dict().values()]


class PairDataset(Dataset):
    def __init__(self, x, y):
        self.x, self.y = x, y

    def __len__(self):
        return len(self.x)

    def __getitem__(self, i):
        return torch.from_numpy(self.x[i]), int(self.y[i])


def test_history_and_validation():
    x, y = toy()
    model = mlp()
    h = fit(model, (x, y), (x[:40], y[:40]), epochs=4, batch_size=32, progress=False)
    assert isinstance(h, History) and len(h.epochs) == 4 and h.steps == 4 * 4 and h.world_size == 1
    assert [e["epoch"] for e in h.epochs] == [1, 2, 3, 4]
    assert h.loss[-1] < h.loss[0] and 0.5 < h.accuracy[-1] <= 1.0
    assert h.val_accuracy[-1] == evaluate(model, (x[:40], y[:40]))["accuracy"]
    assert h.val_loss[-1] == pytest.approx(evaluate(model, (x[:40], y[:40]))["loss"])
    assert not model.training and "val_accuracy" in repr(h)
    json.dumps(h.to_dict())


def test_every_kind_of_data_gives_the_same_training():
    x, y = toy()
    runs = []
    for data in (
        (x, y),
        (torch.from_numpy(x), torch.from_numpy(y)),
        TensorDataset(torch.from_numpy(x), torch.from_numpy(y)),
        PairDataset(x, y),
        (x.astype(np.float64), y.astype(np.uint8)),
    ):
        model = mlp()
        fit(model, data, epochs=2, batch_size=32, seed=5, progress=False)
        runs.append(weights(model))
    for other in runs[1:]:
        for a, b in zip(runs[0], other, strict=True):
            torch.testing.assert_close(a, b, rtol=0, atol=0)
    # a DataLoader is used as given: in order, it equals shuffle=False
    model_a, model_b = mlp(), mlp()
    fit(model_a, (x, y), epochs=2, batch_size=32, shuffle=False, progress=False)
    loader = DataLoader(TensorDataset(torch.from_numpy(x), torch.from_numpy(y)), batch_size=32)
    h = fit(model_b, loader, epochs=2, progress=False)
    assert h.steps == 8
    for a, b in zip(weights(model_a), weights(model_b), strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=0)


def test_seed_controls_the_order_and_the_callers_rng_is_restored():
    x, y = toy()
    torch.manual_seed(123)
    state = torch.get_rng_state()
    a, b, c = mlp(), mlp(), mlp()
    torch.set_rng_state(state)
    fit(a, (x, y), epochs=2, batch_size=16, seed=1, progress=False)
    assert torch.equal(torch.get_rng_state(), state)  # fit does not consume the caller's RNG
    fit(b, (x, y), epochs=2, batch_size=16, seed=1, progress=False)
    fit(c, (x, y), epochs=2, batch_size=16, seed=2, progress=False)
    assert all(torch.equal(p, q) for p, q in zip(weights(a), weights(b), strict=True))
    assert not all(torch.equal(p, q) for p, q in zip(weights(a), weights(c), strict=True))


def test_global_batches_are_shared_between_processes():
    one = list(GlobalBatches(23, 8, seed=0).epoch())
    parts = [list(GlobalBatches(23, 8, seed=0, rank=r, world_size=2).epoch()) for r in (0, 1)]
    assert [g for _, g in one] == [8, 8, 7]
    for k, (idx, g) in enumerate(one):
        together = np.sort(np.concatenate([parts[0][k][0], parts[1][k][0]]))
        assert np.array_equal(together, np.sort(idx)) and parts[0][k][1] == g
    # a batch of one sample is skipped when the model has BatchNorm (min_batch=2)
    assert [g for _, g in GlobalBatches(17, 8, seed=0, min_batch=2).epoch()] == [8, 8]


def test_batchnorm_models_skip_a_last_batch_of_one():
    x, y = toy(n=65)
    h = fit(mlp(bn=True), (x, y), epochs=1, batch_size=32, progress=False)
    assert h.steps == 2  # 32 + 32, the 65th sample alone is skipped
    h = fit(mlp(bn=False), (x, y), epochs=1, batch_size=32, progress=False)
    assert h.steps == 3


def test_options_callbacks_checkpoint_and_regression(tmp_path):
    x, y = toy()
    seen = []

    def stop_after_two(epoch, logs, model):
        seen.append((epoch, round(logs["loss"], 6)))
        return epoch == 2

    model = mlp()
    h = fit(
        model,
        (x, y),
        epochs=5,
        batch_size=40,
        optimizer="sgd",
        schedule="cosine",
        weight_decay=1e-4,
        callbacks=[stop_after_two],
        checkpoint=tmp_path / "m.pt",
        progress={"leave": False},
    )
    assert len(h.epochs) == 2 and h.stopped_early and [e for e, _ in seen] == [1, 2]
    saved = torch.load(tmp_path / "m.pt")
    assert all(torch.equal(saved[k], v) for k, v in model.state_dict().items())
    # an Optimizer instance, a constant schedule and a regression loss (no accuracy)
    reg = nn.Linear(6, 1)
    target = (x[:, :1] * 2.0).astype(np.float32)
    h = fit(
        reg,
        (x, target),
        epochs=30,
        batch_size=30,
        optimizer=torch.optim.SGD(reg.parameters(), lr=0.1),
        loss="mse",
        schedule=None,
        progress=False,
    )
    assert h.accuracy[-1] is None and h.loss[-1] < 0.01 and h.epochs[-1]["lr"] == 0.1


@pytest.mark.parametrize(
    "kwargs,message",
    [
        (dict(train_data=(np.zeros((4, 6)), np.zeros(3))), "same number of samples"),
        (dict(train_data="data.csv"), "expected"),
        (dict(train_data=(np.zeros((0, 6)), np.zeros(0))), "empty"),
        (dict(epochs=0), "epochs"),
        (dict(batch_size=2.5), "batch_size"),
        (dict(lr=-1), "lr"),
        (dict(optimizer="lion"), "unknown optimizer"),
        (dict(loss="hinge"), "unknown loss"),
        (dict(schedule="steps"), "unknown schedule"),
        (dict(distributed=True), "torchrun"),
    ],
)
def test_errors_are_tbn_errors(kwargs, message, monkeypatch):
    for key in ("RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT"):
        monkeypatch.delenv(key, raising=False)
    x, y = toy()
    args = dict(train_data=(x, y)) | kwargs
    data = args.pop("train_data")
    with pytest.raises(TBNError, match=message):
        fit(mlp(), data, progress=False, **args)


# ------------------------------------------------------------------------------ the command line
MODEL_FILE = """
from torch import nn

def small_cnn(width=8):
    return nn.Sequential(
        nn.Conv2d(1, width, 3, padding=1), nn.BatchNorm2d(width), nn.ReLU(),
        nn.Conv2d(width, 2 * width, 3, padding=1), nn.BatchNorm2d(2 * width), nn.ReLU(),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(2 * width, 3),
    )

def not_a_model():
    return 42
"""


def test_cli_trains_a_users_model_on_a_users_data(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "mymodels.py").write_text(MODEL_FILE)
    rng = np.random.default_rng(0)
    y = rng.integers(0, 3, 150)
    x = (rng.random((150, 1, 6, 6)) * 0.2 + y[:, None, None, None] * 0.3).astype(np.float32)
    np.savez(tmp_path / "mine.npz", x=x, y=y)
    out = tmp_path / "out"
    common = [
        "--data-npz",
        "mine.npz",
        "--seeds",
        "0",
        "--epochs",
        "5",
        "--batch-size",
        "16",
        "--workers",
        "1",
        "-q",
        "--no-plot",
    ]
    # package.module:factory (the current folder is importable) with --p, --model-kwargs
    rc = main(
        [
            "train",
            "--model",
            "mymodels:small_cnn",
            "--model-kwargs",
            '{"width": 4}',
            "--p",
            "4",
            *common,
            "--out",
            str(out),
        ]
    )
    assert rc == 0
    data = json.loads((out / "results.json").read_text())
    run = data["runs"][0]
    assert run["variant"] == "tbn4" and run["dataset"] == "npz" and run["accuracy"] > 0.5
    assert [(la["name"], la["p"]) for la in run["layers"]] == [("0", 1), ("3", 4), ("8", 1)]
    assert data["command"].startswith(
        "tbn-tvm train --model mymodels:small_cnn --data-npz mine.npz --variants tbn4"
    )
    proto = onnx.load(str(out / "onnx" / "npz-tbn4.onnx"))
    assert [d.dim_value for d in proto.graph.input[0].type.tensor_type.shape.dim] == [1, 1, 6, 6]
    assert "| tbn4 | 4 |" in capsys.readouterr().out
    # path/to/file.py:factory, the model as returned and an SNN variant in one table
    out2 = tmp_path / "out2"
    rc = main(
        [
            "train",
            "--model",
            str(tmp_path / "mymodels.py") + ":small_cnn",
            "--variants",
            "model",
            "snn4",
            *common,
            "--out",
            str(out2),
        ]
    )
    assert rc == 0
    data = json.loads((out2 / "results.json").read_text())
    assert [r["variant"] for r in data["rows"]] == ["model", "snn4"]
    formats = [la["format"] for la in data["runs"][1]["layers"]]
    assert formats == ["binary", "snn", "binary"]
    assert (out2 / "onnx" / "npz-snn4.onnx").exists()


def test_cli_model_on_bundled_digits_with_input_shape(tmp_path):
    out = tmp_path / "o"
    rc = main(
        [
            "train",
            "--model",
            "tbn_tvm.torch.models:mnist_mlp",
            "--model-kwargs",
            '{"hidden": 32}',
            "--dataset",
            "digits",
            "--input-shape",
            "1,64",
            "--variants",
            "bitwise4x2",
            "--seeds",
            "0",
            "--epochs",
            "1",
            "--workers",
            "1",
            "-q",
            "--no-plot",
            "--no-export",
            "--out",
            str(out),
        ]
    )
    # mnist_mlp takes 784 inputs: 1x64 digits do not fit, and the error says so in one line
    assert rc == 2 and not out.exists()
    rc = main(
        [
            "train",
            "--model",
            "tbn_tvm.torch.models:digits_cnn",
            "--dataset",
            "digits",
            "--input-shape",
            "1,8,8",
            "--variants",
            "bitwise4x2",
            "--seeds",
            "0",
            "--epochs",
            "1",
            "--train-limit",
            "200",
            "--workers",
            "1",
            "-q",
            "--no-plot",
            "--no-export",
            "--out",
            str(out),
        ]
    )
    assert rc == 0
    run = json.loads((out / "results.json").read_text())["runs"][0]
    assert {la["format"] for la in run["layers"]} == {"bitwise"} and run["bits_per_weight"] > 4


@pytest.mark.parametrize(
    "argv,message",
    [
        (["--model", "nomodule_xyz:f"], "cannot import"),
        (["--model", "mymodels:missing"], "no callable"),
        (["--model", "mymodels:not_a_model"], "not a torch.nn.Module"),
        (["--model", "mymodels"], "bad model"),
        (["--model", "nofile.py:f"], "no such file"),
        (["--model", "mymodels:small_cnn", "--model-kwargs", "{bad"], "not JSON"),
        (["--model", "mymodels:small_cnn", "--model-kwargs", '{"depth": 3}'], "failed"),
        (["--data-npz", "mine.npz"], "needs --model"),
        (
            ["--model", "mymodels:small_cnn", "--data-npz", "mine.npz", "--dataset", "digits"],
            "replaces --dataset",
        ),
        (["--model", "mymodels:small_cnn", "--data-npz", "missing.npz"], "no such file"),
        (["--model", "mymodels:small_cnn", "--data-npz", "bad.npz"], "no array 'y'"),
        (["--p", "4"], "--p goes with --model"),
        (["--model", "mymodels:small_cnn", "--p", "4", "--variants", "tbn4"], "not both"),
        (["--variants", "snn5", "--dataset", "mnist"], "no 3×3 convolution"),
        (["--variants", "snn9"], "τ must be"),
        (["--variants", "bitwise4x5"], "T <= K"),
        (["--input-shape", "1,x"], "bad --input-shape"),
        (["--input-shape", "1,9,9"], "does not hold"),
        (["--model", "mymodels:small_cnn", "--dataset", "digits"], "expected logits [N, 10]"),
        (["--model", "tbn_tvm.torch.models:mnist_mlp", "--dataset", "digits"], "fails on digits samples"),
    ],
)
def test_cli_errors_are_one_line(tmp_path, capsys, monkeypatch, argv, message):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "mymodels.py").write_text(MODEL_FILE)
    np.savez(tmp_path / "mine.npz", x=np.zeros((20, 1, 6, 6), np.float32), y=np.arange(20) % 3)
    np.savez(tmp_path / "bad.npz", x=np.zeros((20, 4), np.float32))
    rc = main(["train", *argv, "--out", str(tmp_path / "o"), "-q", "--epochs", "1", "--workers", "1"])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1 and err[0].startswith("error: ") and message in err[0], err
    assert not (tmp_path / "o").exists()


def test_variant_names_and_factories():
    assert (parse_variant("snn5").kind, parse_variant("snn5").tau) == ("snn", 5)
    v = parse_variant("bitwise6x3")
    assert (v.kind, v.k, v.trainable, v.label) == ("bitwise", 6, 3, "k=6, t=3")
    assert parse_variant("model").kind == "model" and parse_variant("binary").p == 1
    for bad in ("snn", "snn0", "bitwise6", "bitwisex3", "bitwise1x1"):
        with pytest.raises(TBNError):
            parse_variant(bad)
    from tbn_tvm.torch.models import resnet_tiny

    assert load_factory("tbn_tvm.torch.models:resnet_tiny") is resnet_tiny


def test_snn_variant_of_the_bundled_digits_model():
    from tbn_tvm.torch.train import TrainOptions, train_one

    model, result = train_one("digits", "snn5", seed=0, options=TrainOptions(epochs=1, train_limit=200))
    assert [type(m).__name__ for m in model.modules() if isinstance(m, nn.Conv2d | nn.Linear)] == [
        "TiledConv2d",
        "SubBitConv2d",
        "TiledLinear",
    ]
    assert (
        isinstance(model.conv2, SubBitConv2d) and isinstance(model.conv1, TiledLayer) and model.conv1.p == 1
    )
    kernels = 64 * 32
    conv2_bits = 5 * kernels + 9 * 32 + 32 * 64
    expected = (288 + 32 + conv2_bits + 2560 + 32) / (288 + 18432 + 2560)
    assert result.bits_per_weight == pytest.approx(expected)
