"""The ``tbn-tvm`` command line, run as a subprocess (``python -m tbn_tvm``).

Success paths: inspect (table and --json), compile (manifest), run (--json, one and several
inputs), outputs checked against onnxruntime.  Every bad input: exit status 2, exactly one
``error: ...`` line on stderr, no traceback, nothing half-written left behind.
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys

import numpy as np
import onnx
import onnx_zoo as zoo
import pytest

for _cmd in ("inspect", "compile", "run"):
    if importlib.util.find_spec(f"tbn_tvm.commands.{_cmd}") is None:
        pytest.skip(f"tbn_tvm.commands.{_cmd} is not written yet", allow_module_level=True)


def cli(*args) -> subprocess.CompletedProcess:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(
        [str(zoo.REPO_ROOT)] + ([env["PYTHONPATH"]] if env.get("PYTHONPATH") else [])
    )
    return subprocess.run(
        [sys.executable, "-m", "tbn_tvm", *map(str, args)],
        capture_output=True,
        text=True,
        cwd=zoo.REPO_ROOT,
        env=env,
        timeout=300,
    )


def ok(proc: subprocess.CompletedProcess) -> subprocess.CompletedProcess:
    assert proc.returncode == 0, f"exit {proc.returncode}\nstdout:\n{proc.stdout}\nstderr:\n{proc.stderr}"
    assert "Traceback" not in proc.stderr
    return proc


def user_error(proc: subprocess.CompletedProcess, *mentions: str) -> str:
    """Exit 2, exactly one stderr line ``error: ...`` (mentioning ``mentions``), no traceback."""
    where = f"\nstdout:\n{proc.stdout}\nstderr:\n{proc.stderr}"
    assert proc.returncode == 2, f"exit {proc.returncode}{where}"
    assert "Traceback" not in proc.stderr + proc.stdout, where
    lines = proc.stderr.splitlines()
    assert len(lines) == 1, f"{len(lines)} stderr lines{where}"
    line = lines[0]
    assert line.startswith("error: ") and len(line) > len("error: ") + 10, where
    for m in mentions:
        assert m.lower() in line.lower(), f"{m!r} not in the error line{where}"
    return line


def listing(d) -> set[str]:
    return {str(p.relative_to(d)) for p in d.rglob("*")}


# ---------------------------------------------------------------------------------------------
# fixtures: models on disk, one compiled artifact shared by the run tests
# ---------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def work(tmp_path_factory):
    return tmp_path_factory.mktemp("cli")


@pytest.fixture(scope="module")
def mlp(work):
    zm = zoo.mlp()
    return zm, zm.save(work / "mlp.onnx")


@pytest.fixture(scope="module")
def mlp_artifact(work, mlp):
    zm, path = mlp
    out = work / "mlp-llvm"
    ok(cli("compile", path, "--target", "llvm", "-o", out))
    return zm, out


# ---------------------------------------------------------------------------------------------
# inspect
# ---------------------------------------------------------------------------------------------
def test_inspect_table(mlp):
    zm, path = mlp
    out = ok(cli("inspect", path)).stdout
    assert out.strip()
    for word in ("tiled", "binary", "dense"):
        assert word in out
    # the table shows the total weight bytes (with or without thousands separators)
    total = json.loads(ok(cli("inspect", path, "--json")).stdout)["total"]["weight_bytes"]
    assert str(total) in out.replace(",", "").replace("_", "")


@pytest.mark.parametrize("name", ["mlp", "cnn", "expand_form_gemm", "matmul_in_out"])
def test_inspect_json(work, name):
    zm = zoo.ZOO[name]()
    path = zm.save(work / f"{name}.onnx")
    d = json.loads(ok(cli("inspect", path, "--json")).stdout)
    assert isinstance(d, dict) and {"layers", "total"} <= set(d)
    zoo.check_layers(d["layers"], zm)
    zoo.check_total(d["total"], d["layers"], zm)


# ---------------------------------------------------------------------------------------------
# compile + run
# ---------------------------------------------------------------------------------------------
def _values(obj):
    """All scalars and lists in a JSON document (to look for a value without assuming keys)."""
    if isinstance(obj, dict):
        for v in obj.values():
            yield from _values(v)
    elif isinstance(obj, list):
        yield obj
        for v in obj:
            yield from _values(v)
    else:
        yield obj


def test_compile_manifest(mlp_artifact):
    zm, out = mlp_artifact
    manifest = json.loads((out / "manifest.json").read_text())
    assert "llvm" in str(manifest["target"])
    values = list(_values(manifest))
    assert zm.input_name in values and "y" in values  # input / output names
    assert list(zm.input_shape) in values and list(zm.output_shape) in values  # shapes
    assert "float32" in values
    text = json.dumps(manifest)
    for layer in zm.layers:
        assert f'"{layer.format}"' in text
    low = sum(min(layer.accepted_bytes()) for layer in zm.layers)
    assert any(isinstance(v, int) and low <= v <= zm.compact_weight_bytes + zm.bias_bytes for v in values)
    assert len(list(out.iterdir())) >= 2  # the library beside the manifest


def test_run_json(work, mlp_artifact):
    zm, out = mlp_artifact
    xs = zm.sample(seed=3, n=5)["x"]
    np.save(work / "x5.npy", xs)
    y_path = work / "y5.npy"
    proc = ok(cli("run", out, "--input", work / "x5.npy", "--output", y_path, "--json"))
    lines = proc.stdout.strip().splitlines()
    assert len(lines) == 1, proc.stdout
    summary = json.loads(lines[0])
    assert summary["samples"] == 5
    assert isinstance(summary["seconds_per_inference"], float) and summary["seconds_per_inference"] > 0
    ys = np.load(y_path)
    assert ys.shape == (5, *zm.output_shape) and ys.dtype == np.float32
    for i in range(5):
        zoo.assert_close(ys[i], zoo.run_onnxruntime(zm.model, {"x": xs[i]})[0], what=f"sample {i}")


def test_run_table(work, mlp_artifact):
    zm, out = mlp_artifact
    xs = zm.sample(seed=4, n=2)["x"]
    np.save(work / "x2.npy", xs)
    proc = ok(cli("run", out, "--input", work / "x2.npy", "--output", work / "y2.npy"))
    assert proc.stdout.strip()
    zoo.assert_close(np.load(work / "y2.npy")[1], zoo.run_onnxruntime(zm.model, {"x": xs[1]})[0])


def test_compile_and_run_two_inputs(work):
    zm = zoo.two_inputs()
    path = zm.save(work / "two.onnx")
    out = work / "two-llvm"
    ok(cli("compile", path, "--target", "llvm", "-o", out))
    feeds = zm.sample(seed=6, n=3)
    for k, v in feeds.items():
        np.save(work / f"in_{k}.npy", v)
    y = work / "two_y.npy"
    ok(
        cli(
            "run",
            out,
            "--input",
            f"a={work / 'in_a.npy'}",
            "--input",
            f"b={work / 'in_b.npy'}",
            "--output",
            y,
        )
    )
    ys = np.load(y)
    assert ys.shape == (3, *zm.output_shape)
    for i in range(3):
        want = zoo.run_onnxruntime(zm.model, {k: v[i] for k, v in feeds.items()})[0]
        zoo.assert_close(ys[i], want)


def test_cross_compile_aarch64(work, mlp):
    _, path = mlp
    out = work / "mlp-aarch64"
    ok(cli("compile", path, "--target", "aarch64-linux-gnu", "-o", out))
    assert "aarch64" in (out / "manifest.json").read_text()


# ---------------------------------------------------------------------------------------------
# user errors
# ---------------------------------------------------------------------------------------------
@pytest.fixture()
def case(tmp_path):
    """A fresh folder per error case; the test asserts nothing new is left in it."""
    return tmp_path


def test_error_inspect_missing_file(case):
    user_error(cli("inspect", case / "missing.onnx"), "missing.onnx")
    assert listing(case) == set()


def test_error_compile_missing_file(case):
    user_error(cli("compile", case / "missing.onnx", "--target", "llvm", "-o", case / "out"), "missing.onnx")
    assert listing(case) == set()


def test_error_truncated_onnx(case):
    data = zoo.mlp().model.SerializeToString()
    bad = case / "truncated.onnx"
    bad.write_bytes(data[: len(data) * 2 // 3])
    before = listing(case)
    user_error(cli("compile", bad, "--target", "llvm", "-o", case / "out"), "truncated.onnx")
    assert listing(case) == before
    user_error(cli("inspect", bad), "truncated.onnx")


def test_error_not_onnx(case):
    bad = case / "notes.onnx"
    bad.write_text("this is not a protobuf\n" * 20)
    before = listing(case)
    user_error(cli("compile", bad, "--target", "llvm", "-o", case / "out"))
    assert listing(case) == before


def test_error_unsupported_op(case):
    model, op, node = zoo.unsupported_op_model()
    path = case / "unsupported.onnx"
    onnx.save(model, str(path))
    before = listing(case)
    user_error(cli("compile", path, "--target", "llvm", "-o", case / "out"), op, node)
    assert listing(case) == before


def test_error_dynamic_shape(case):
    path = case / "dynamic.onnx"
    onnx.save(zoo.dynamic_batch_model(), str(path))
    before = listing(case)
    user_error(cli("compile", path, "--target", "llvm", "-o", case / "out"))
    assert listing(case) == before


def test_error_unknown_target(case, mlp):
    _, path = mlp
    user_error(cli("compile", path, "--target", "no-such-target", "-o", case / "out"), "no-such-target")
    assert listing(case) == set()


@pytest.mark.parametrize(
    "kind",
    ["missing_sample_axis", "wrong_feature_size", "float64", "int32"],
)
def test_error_run_bad_input(case, mlp_artifact, kind):
    zm, out = mlp_artifact
    xs = zm.sample(seed=0, n=2)["x"]
    bad = {
        "missing_sample_axis": xs[0],  # [1, 64]: not [N, 1, 64]
        "wrong_feature_size": xs[..., :-3],
        "float64": xs.astype(np.float64),
        "int32": np.ones(xs.shape, np.int32),
    }[kind]
    np.save(case / "x.npy", bad)
    before = listing(case)
    user_error(cli("run", out, "--input", case / "x.npy", "--output", case / "y.npy"))
    assert listing(case) == before  # no y.npy, no temporary file


def test_error_run_missing_input_file(case, mlp_artifact):
    _, out = mlp_artifact
    user_error(cli("run", out, "--input", case / "nope.npy", "--output", case / "y.npy"), "nope.npy")
    assert listing(case) == set()


def test_error_run_missing_artifact(case):
    np.save(case / "x.npy", np.zeros((1, 1, 64), np.float32))
    user_error(cli("run", case / "no-artifact", "--input", case / "x.npy", "--output", case / "y.npy"))
    assert listing(case) == {"x.npy"}
