"""Smoke run of the benchmark suite: ``python -m benchmarks --quick`` into a temporary folder.

Checks that the one command writes report.md, report.json and speedup.png, that the JSON holds
the expected keys with sane values (medians consistent with their samples, speed-ups equal to
ratios of medians, outputs matching onnxruntime, exact Cortex-M counts) and that a quick run
leaves the committed report alone.  No assertion on speed: the benchmark is not a timed test.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.slow


def _toolchain_missing() -> bool:
    from tbn_tvm.errors import TBNError
    from tbn_tvm.targets.cortex_m.toolchain import find_gcc, find_qemu

    try:
        find_gcc()
        find_qemu()
    except TBNError:
        return True
    return False


def _bench(*args: str, timeout: int = 600) -> subprocess.CompletedProcess:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(REPO)] + ([env["PYTHONPATH"]] if env.get("PYTHONPATH") else []))
    return subprocess.run([sys.executable, "-m", "benchmarks", *args], cwd=REPO, env=env, capture_output=True,
                          text=True, timeout=timeout)


@pytest.fixture(scope="module")
def quick(tmp_path_factory):
    out = tmp_path_factory.mktemp("bench")
    committed = {p: p.stat().st_mtime_ns for p in (REPO / "benchmarks").glob("*") if p.is_file()}
    args = ["--quick", "--out", str(out)] + (["--skip-cortex-m"] if _toolchain_missing() else [])
    proc = _bench(*args)
    assert proc.returncode == 0, f"exit {proc.returncode}\nstdout:\n{proc.stdout}\nstderr:\n{proc.stderr[-4000:]}"
    after = {p: p.stat().st_mtime_ns for p in (REPO / "benchmarks").glob("*") if p.is_file()}
    return out, proc, json.loads((out / "report.json").read_text()), committed, after


def test_writes_the_three_files_and_progress(quick):
    out, proc, report, committed, after = quick
    assert "Traceback" not in proc.stderr
    progress = [line for line in proc.stderr.splitlines() if line.startswith("[bench")]
    assert len(progress) >= 10, proc.stderr
    md = (out / "report.md").read_text()
    assert report["meta"]["command"] in md and "python -m benchmarks --quick" in md
    for heading in ("## Host CPU", "## Models", "## Method", "## Machine and versions"):
        assert heading in md
    assert (out / "speedup.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert committed == after, "a quick run must not touch the committed report"


def test_meta_machine_versions(quick):
    _, _, report, _, _ = quick
    assert report["meta"]["quick"] is True and report["meta"]["wall_s"] > 0
    m = report["machine"]
    assert m["cpu_model"] and m["usable_cpus"] >= 1 and m["logical_cpus"] >= m["usable_cpus"]
    v = report["versions"]
    for key in ("tbn-tvm", "apache-tvm", "onnxruntime", "numpy", "python", "arm-none-eabi-gcc", "qemu-system-arm"):
        assert key in v
    for key in ("tbn-tvm", "apache-tvm", "onnxruntime", "numpy", "python"):
        assert v[key]
    assert report["threads"]["tvm"] >= 1 and report["threads"]["onnxruntime_intra_op"] >= 1
    assert report["authors"]["instructions_per_inference"] == 2_645_000


def test_models_table(quick):
    _, _, report, _, _ = quick
    keys = [m["key"] for m in report["models"]]
    assert keys == ["authors_mnist_mlp", "wide_mlp_p8", "tiled_resnet"]
    for m in report["models"]:
        assert 0 < m["weight_bytes"] < m["fp32_bytes"] == 4 * m["parameters"]
        assert any(layer["format"] == "tiled" for layer in m["layers"])
    mnist = report["models"][0]
    assert mnist["weight_bytes"] == 3316 and mnist["input_shape"] == [1, 784]


def test_host_rows(quick):
    _, _, report, _, _ = quick
    rows = report["host"]
    assert {(r["model"], r["batch"]) for r in rows} >= {("authors_mnist_mlp", 1), ("authors_mnist_mlp", 4)}
    for r in rows:
        v = r["variants"]
        assert {"tbn-tvm", "tvm-fp32", "onnxruntime-fp32"} <= set(v)
        for name, t in v.items():
            samples = t["samples_s"]
            assert len(samples) == t["rounds"] >= 1 and t["number"] >= 1
            assert all(math.isfinite(s) and s > 0 for s in samples)
            assert t["min_s"] <= t["median_s"] <= t["max_s"]
            assert t["rel_err_vs_onnxruntime"] <= 1e-5, (r["model"], r["batch"], name)
        for name in v:
            if name != "tbn-tvm":
                expected = v[name]["median_s"] / v["tbn-tvm"]["median_s"]
                assert r["speedup"][f"vs_{name}"] == pytest.approx(expected)
        assert v["tbn-tvm"]["weight_bytes_in_build"] < v["tvm-fp32"]["weight_bytes_in_build"]


def test_cortex_m_and_acceptance(quick):
    _, _, report, _, _ = quick
    if _toolchain_missing():
        assert report["cortex_m"] == []
        pytest.skip("Cortex-M toolchain absent")
    mcu = {r["model"]: r for r in report["cortex_m"]}
    mlp = mcu["authors_mnist_mlp"]
    tbn, dense = mlp["builds"]["tbn-tvm"], mlp["builds"]["tvm-fp32"]
    for b in (tbn, dense):
        assert b["status"] == "ok"
        assert b["instructions_min"] == b["instructions_max"] == b["instructions_per_inference"] > 0
        assert 0 < b["weight_bytes"] < b["flash_bytes"] and b["ram_bytes"] > 0
        assert b["rel_err_vs_onnxruntime"] <= 1e-5 and b["predictions_equal_onnxruntime"] == 1.0
    assert tbn["weight_bytes"] == 3316 and tbn["instructions_per_inference"] < dense["instructions_per_inference"]
    mn = mlp["mnist"]
    assert mn["images"] == report["settings"]["mnist_samples"]
    assert mn["predictions_equal_numpy_reference"] == mn["predictions_equal_onnxruntime"] == mn["images"]
    assert mlp["fewer_instructions_than_authors"] == pytest.approx(2_645_000 / tbn["instructions_per_inference"])
    criteria = report["acceptance"]
    assert len(criteria) == 6
    for item in criteria:
        assert {"criterion", "required", "measured", "pass"} <= set(item) and "quick mode" in item["note"]


def test_bench_command_is_registered():
    from tbn_tvm import cli

    with pytest.raises(SystemExit) as exc:
        cli.main(["bench", "--help"])
    assert exc.value.code == 0


@pytest.mark.parametrize("args, mention", [(["--rounds", "0"], "--rounds"), (["--threads", "0"], "--threads"),
                                           (["--models", "no-such-models.py"], "no-such-models.py")])
def test_user_errors_are_one_line(args, mention, tmp_path):
    proc = _bench("--quick", "--out", str(tmp_path), *args, timeout=120)
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and mention in lines[0], proc.stderr
    assert "Traceback" not in proc.stderr
