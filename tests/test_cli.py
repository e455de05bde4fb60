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
from concurrent.futures import ThreadPoolExecutor

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
def test_inspect_json_and_table(mlp):
    zm, path = mlp
    d = json.loads(ok(cli("inspect", path, "--json")).stdout)
    assert isinstance(d, dict) and {"layers", "total"} <= set(d)
    zoo.check_layers(d["layers"], zm)
    zoo.check_total(d["total"], d["layers"], zm)
    table = ok(cli("inspect", path)).stdout
    for word in ("tiled", "binary", "dense"):
        assert word in table
    # the table shows the total weight bytes (with or without thousands separators)
    assert str(d["total"]["weight_bytes"]) in table.replace(",", "").replace("_", "")


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


def test_compile_verbose_times_each_stage(work, mlp):
    """``compile -v`` prints the seconds of each stage (issue 21: where a compile's time goes)."""
    _, path = mlp
    text = ok(cli("compile", path, "--target", "llvm", "-o", work / "mlp-verbose", "-v")).stdout
    stages = text[text.index("stages (") :].splitlines()[1:]
    names = [line.split()[0] for line in stages if line.strip()]
    for name in ("import", "weight", "passes", "fuse", "schedules", "Relax", "TIR", "save"):
        assert name in names, text
    assert all(line.rstrip().endswith(" s") for line in stages if line.strip()), text
    d = json.loads(
        ok(cli("compile", path, "--target", "llvm", "-o", work / "mlp-verbose", "-v", "--json")).stdout
    )
    assert [n for n, _ in d["stage_seconds"]][-1] == "save" and all(s >= 0 for _, s in d["stage_seconds"])


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


def test_run_two_inputs(work):
    """``--input NAME=FILE`` repeated; the artifact is built with the API (one CLI call fewer)."""
    tbn_tvm = zoo.require_module("tbn_tvm.api")
    zm = zoo.two_inputs()
    out = work / "two-llvm"
    tbn_tvm.compile(zm.model, target="llvm").save(out)
    feeds = zm.sample(seed=6, n=3)
    for k, v in feeds.items():
        np.save(work / f"in_{k}.npy", v)
    y = work / "two_y.npy"
    proc = ok(
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
    assert proc.stdout.strip()  # a human summary without --json
    ys = np.load(y)
    assert ys.shape == (3, *zm.output_shape)
    for i in range(3):
        want = zoo.run_onnxruntime(zm.model, {k: v[i] for k, v in feeds.items()})[0]
        zoo.assert_close(ys[i], want)


# ---------------------------------------------------------------------------------------------
# user errors: all cases are prepared and run concurrently once (each CLI start imports TVM,
# seconds of CPU), then one test per case checks its result
# ---------------------------------------------------------------------------------------------
ERROR_CASES = [
    "inspect_missing_file",
    "compile_missing_file",
    "compile_truncated_onnx",
    "compile_unsupported_op",
    "compile_dynamic_shape",
    "compile_unknown_target",
    "run_shape_of_no_form",
    "run_float64_input",
    "run_missing_input_file",
    "run_missing_artifact",
]


def _prepare(name: str, d, artifact, onnx_path) -> tuple[list, tuple[str, ...]]:
    """(CLI arguments, strings the error line must mention) for one case, files made in ``d``."""
    out = d / "out"
    if name == "inspect_missing_file":
        return ["inspect", d / "missing.onnx"], ("missing.onnx",)
    if name == "compile_missing_file":
        return ["compile", d / "missing.onnx", "--target", "llvm", "-o", out], ("missing.onnx",)
    if name == "compile_truncated_onnx":
        data = zoo.mlp().model.SerializeToString()
        (d / "truncated.onnx").write_bytes(data[: len(data) * 2 // 3])
        return ["compile", d / "truncated.onnx", "--target", "llvm", "-o", out], ("truncated.onnx",)
    if name == "compile_unsupported_op":
        model, op, node = zoo.unsupported_op_model()
        onnx.save(model, str(d / "unsupported.onnx"))
        return ["compile", d / "unsupported.onnx", "--target", "llvm", "-o", out], (op, node)
    if name == "compile_dynamic_shape":
        onnx.save(zoo.dynamic_batch_model(), str(d / "dynamic.onnx"))
        return ["compile", d / "dynamic.onnx", "--target", "llvm", "-o", out], ()
    if name == "compile_unknown_target":
        return ["compile", onnx_path, "--target", "no-such-target", "-o", out], ("no-such-target",)
    xs = zoo.mlp().sample(seed=0, n=2)["x"]  # [2, 1, 64]
    if name == "run_shape_of_no_form":
        np.save(d / "x.npy", xs[0, 0])  # [64]: not [1, 64], [N, 1, 64] nor [N, 64]
        return ["run", artifact, "--input", d / "x.npy", "--output", d / "y.npy"], ("N x 1x64", "N x 64")
    if name == "run_float64_input":
        np.save(d / "x.npy", xs.astype(np.float64))
        return ["run", artifact, "--input", d / "x.npy", "--output", d / "y.npy"], ()
    if name == "run_missing_input_file":
        return ["run", artifact, "--input", d / "nope.npy", "--output", d / "y.npy"], ("nope.npy",)
    if name == "run_missing_artifact":
        np.save(d / "x.npy", xs)
        return ["run", d / "no-artifact", "--input", d / "x.npy", "--output", d / "y.npy"], ()
    raise AssertionError(name)


@pytest.fixture(scope="module")
def error_runs(tmp_path_factory, mlp, mlp_artifact):
    _, onnx_path = mlp
    _, artifact = mlp_artifact
    cases = {}
    for name in ERROR_CASES:
        d = tmp_path_factory.mktemp(name)
        args, mentions = _prepare(name, d, artifact, onnx_path)
        cases[name] = (d, listing(d), args, mentions)
    with ThreadPoolExecutor(max_workers=max(2, os.cpu_count() or 2)) as pool:
        procs = dict(zip(cases, pool.map(lambda c: cli(*c[2]), cases.values()), strict=True))
    return {name: (procs[name], *cases[name]) for name in cases}


@pytest.mark.parametrize("name", ERROR_CASES)
def test_user_error(error_runs, name):
    proc, d, before, _, mentions = error_runs[name]
    user_error(proc, *mentions)
    assert listing(d) == before, "the failed command left files behind (OUT_DIR, y.npy or a temporary)"
