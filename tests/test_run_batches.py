"""``tbn-tvm run`` and ``CompiledModel.run`` (issue 24): one rule for batches, arguments checked
before the build is loaded, and ``--repeat/--number`` figures of the model's own time.

The model's input is ``[1, 3, 12, 12]``: an array ``[4, 3, 12, 12]`` is 4 samples on its batch
axis (as onnxruntime and torch users stack them), ``[4, 1, 3, 12, 12]`` 4 samples stacked on a
new axis, ``[1, 3, 12, 12]`` one sample; numerics are checked against onnxruntime.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import onnx_zoo as zoo
import pytest
from test_cli import cli, ok, user_error

import tbn_tvm
from tbn_tvm.errors import TBNError


@pytest.fixture(scope="module")
def work(tmp_path_factory):
    return tmp_path_factory.mktemp("batches")


@pytest.fixture(scope="module")
def cnn(work):
    zm = zoo.cnn()  # x [1, 3, 12, 12] -> [1, 10]
    path = zm.save(work / "cnn.onnx")
    out = work / "cnn-llvm"
    ok(cli("compile", path, "-o", out))
    xs = zm.sample(seed=5, n=4)["x"]  # [4, 1, 3, 12, 12]
    ref = np.stack([zoo.run_onnxruntime(zm.model, {"x": x})[0] for x in xs])  # [4, 1, 10]
    return out, xs, ref


def test_a_batch_on_the_models_leading_axis_is_n_samples(cnn, work):
    out, xs, ref = cnn
    batch = xs[:, 0]  # [4, 3, 12, 12]
    np.save(work / "batch.npy", batch)
    np.save(work / "stacked.npy", xs)
    summary = json.loads(
        ok(cli("run", out, "--input", work / "batch.npy", "-o", work / "yb.npy", "--json")).stdout
    )
    assert summary["samples"] == 4
    got = np.load(work / "yb.npy")
    assert got.shape == (4, 10)  # the outputs on the batch axis too
    np.testing.assert_allclose(got, ref[:, 0], rtol=1e-5, atol=1e-5)
    ok(cli("run", out, "--input", work / "stacked.npy", "-o", work / "ys.npy"))
    assert np.load(work / "ys.npy").shape == (4, 1, 10)  # [N, *input_shape] keeps working
    np.testing.assert_allclose(np.load(work / "ys.npy"), ref, rtol=1e-5, atol=1e-5)
    # the API, the same rule
    m = tbn_tvm.load(out)
    np.testing.assert_allclose(m.run(batch), ref[:, 0], rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(m.run(xs), ref, rtol=1e-5, atol=1e-5)
    assert m.run(batch[:1]).shape == (1, 10) and m.last_run_stats["samples"] == 1
    # a shape of no form: one error naming the forms, from both
    np.save(work / "bad.npy", batch[:, :, 0])  # [4, 3, 12]
    user_error(cli("run", out, "--input", work / "bad.npy"), "4x3x12", "N x 3x12x12", "N x 1x3x12x12")
    with pytest.raises(TBNError, match="N x 3x12x12"):
        m.run(batch[:, :, 0])


def test_run_checks_every_argument_before_loading_the_build(cnn, work, monkeypatch, capsys):
    """A missing or unreadable input file, a wrong shape or dtype, an --output that is a
    directory: reported without loading the module (the load took 5-15 s before the error)."""
    from tbn_tvm import cli as tbn_cli
    from tbn_tvm.targets.host import HostBackend

    out, xs, _ = cnn
    loads = []

    def no_load(*args, **kwargs):
        loads.append(args)
        raise AssertionError("the build was loaded before the arguments were checked")

    monkeypatch.setattr(HostBackend, "load", classmethod(no_load))
    np.save(work / "f64.npy", xs.astype(np.float64))
    np.save(work / "wide.npy", np.zeros((2, 3, 12, 13), np.float32))
    np.save(work / "good.npy", xs[:, 0])
    (work / "not-npy.npy").write_text("hello")
    (work / "ydir").mkdir()
    cases = [
        (["--input", work / "missing.npy"], "missing.npy"),
        (["--input", work / "not-npy.npy"], "not-npy.npy"),
        (["--input", work / "wide.npy"], "2x3x12x13"),
        (["--input", work / "f64.npy"], "float64"),
        (["--input", f"nope={work / 'good.npy'}"], "nope"),
        (["--input", work / "good.npy", "--output", work / "ydir"], "ydir"),
        (["--input", work / "good.npy", "--count-instructions"], "--count-instructions"),
        (["--input", work / "good.npy", "--repeat", "0"], "--repeat"),
    ]
    for extra, mention in cases:
        code = tbn_cli.main(["run", str(out), *map(str, extra)])
        err = capsys.readouterr().err
        assert code == 2 and err.startswith("error: ") and len(err.splitlines()) == 1, (extra, code, err)
        assert mention in err, (mention, err)
    assert not loads


def test_repeat_number_is_the_models_own_time_as_compiled_model_time(cnn, work):
    """The figures of ``run --repeat/--number`` are those of ``CompiledModel.time()`` (TVM's
    time evaluator), not the run's wall time with Python, loading and copies (>10x more).
    Both are measured in processes of their own, one thread each, taking turns; their fastest
    repeats are compared."""
    out, xs, _ = cnn
    np.save(work / "one.npy", xs[0])
    repeat, number = 7, 300
    env = {**os.environ, "TVM_NUM_THREADS": "1", "PYTHONPATH": str(zoo.REPO_ROOT)}
    api_code = (
        "import sys, json, numpy as np, tbn_tvm; "
        f"print(json.dumps(tbn_tvm.load(sys.argv[1]).time(np.load(sys.argv[2]), number={number}, repeat={repeat})))"
    )
    run_args = ["run", out, "--input", work / "one.npy", "-o", work / "y1.npy", "--repeat", repeat]
    cli_mins, api_mins = [], []
    for _ in range(4):  # until both saw the machine alike (a shared machine: 19 or 33 us)
        proc = subprocess.run(
            [sys.executable, "-m", "tbn_tvm", *map(str, run_args), "--number", str(number), "--json"],
            capture_output=True, text=True, env=env, timeout=300,
        )  # fmt: skip
        summary = json.loads(ok(proc).stdout)
        t = summary["timing"]
        assert t["unit"] == "seconds" and "time evaluator" in t["measures"]
        assert (t["repeat"], t["number"], len(t["per_repeat"])) == (repeat, number, repeat)
        assert t["min"] <= t["median"] <= t["max"] < summary["seconds_per_inference"]  # wall time: more
        cli_mins.append(t["min"])
        api = subprocess.run(
            [sys.executable, "-c", api_code, str(out), str(work / "one.npy")],
            capture_output=True, text=True, env=env, timeout=300,
        )  # fmt: skip
        api_mins.append(min(json.loads(ok(api).stdout)))
        if abs(min(cli_mins) / min(api_mins) - 1) <= 0.2:
            break
    assert abs(min(cli_mins) / min(api_mins) - 1) <= 0.2, (cli_mins, api_mins)
    text = ok(cli(*run_args[:-1], 2)).stdout
    assert "min / median / max of 2 repeat(s) of 1 inference(s)" in text and "time evaluator" in text


@pytest.mark.qemu
def test_repeat_number_on_qemu_counts_instructions(work):
    """On Cortex-M the figure is instructions per inference (exact, QEMU), an int."""
    zm = zoo.cnn()
    out = work / "cnn-m4"
    ok(cli("compile", zm.save(work / "cnn-m4.onnx"), "--target", "cortex-m4", "--no-measure", "-o", out))
    np.save(work / "m4.npy", zm.sample(seed=1, n=2)["x"][:, 0])  # 2 samples on the batch axis
    summary = json.loads(
        ok(
            cli(
                "run", out, "--input", work / "m4.npy", "-o", work / "ym4.npy",
                "--count-instructions", "--repeat", 2, "--number", 2, "--json",
            )
        ).stdout
    )  # fmt: skip
    ins = summary["instructions_per_inference"]
    assert isinstance(ins, int) and ins > 0
    t = summary["timing"]
    assert t["unit"] == "instructions" and "QEMU" in t["measures"]
    assert t["min"] == t["median"] == t["max"] == ins  # the same sample: the same count
    assert np.load(work / "ym4.npy").shape == (2, 10)
