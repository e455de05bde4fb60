"""The benchmarks (``benchmarks/``): a ``python -m benchmarks --quick`` smoke run and ``--model``
runs on a tiny tiled Gemm, all into temporary folders; the trust rule on synthetic timing
samples; the ``tbn-tvm bench`` shim.

Checks that the command writes report.md, report.json and speedup.png, that the JSON holds the
expected keys with sane values (medians consistent with their samples, speed-ups equal to ratios
of medians, trust verdicts equal to the rule applied to the samples, outputs matching
onnxruntime, exact Cortex-M counts), that what fails the trust rule is never shown as a number,
and that no run writes into the repository.  No assertion on speed: the benchmark is not a
timed test.
"""

from __future__ import annotations

import argparse
import importlib
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
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


def _bench_module(name: str):
    """``benchmarks.<name>`` of this checkout, imported without writing ``__pycache__`` into it."""
    if str(REPO) not in sys.path:
        sys.path.insert(0, str(REPO))
    before = sys.dont_write_bytecode
    sys.dont_write_bytecode = True
    try:
        return importlib.import_module(f"benchmarks.{name}")
    finally:
        sys.dont_write_bytecode = before


def _bench(*args: str, timeout: int = 600) -> subprocess.CompletedProcess:
    env = dict(
        os.environ, PYTHONDONTWRITEBYTECODE="1", OMP_NUM_THREADS=os.environ.get("OMP_NUM_THREADS", "1")
    )
    env["PYTHONPATH"] = os.pathsep.join([str(REPO)] + ([env["PYTHONPATH"]] if env.get("PYTHONPATH") else []))
    return subprocess.run(
        [sys.executable, "-m", "benchmarks", *args],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def _snapshot() -> dict:
    """Every file under benchmarks/ (bytecode caches aside) with its size and modification time."""
    return {
        p.relative_to(REPO): (p.stat().st_size, p.stat().st_mtime_ns)
        for p in (REPO / "benchmarks").rglob("*")
        if p.is_file() and "__pycache__" not in p.parts
    }


def _ok(proc: subprocess.CompletedProcess) -> None:
    assert proc.returncode == 0, (
        f"exit {proc.returncode}\nstdout:\n{proc.stdout}\nstderr:\n{proc.stderr[-4000:]}"
    )


# ------------------------------------------------------------------------------------ quick run
@pytest.fixture(scope="module")
def quick(tmp_path_factory):
    out = tmp_path_factory.mktemp("bench")
    before = _snapshot()
    args = ["--quick", "--no-publish", "--out", str(out)] + (
        ["--skip-cortex-m"] if _toolchain_missing() else []
    )
    proc = _bench(*args)
    _ok(proc)
    return out, proc, json.loads((out / "report.json").read_text()), before, _snapshot()


def test_writes_the_three_files_and_progress(quick):
    out, proc, report, before, after = quick
    assert "Traceback" not in proc.stderr
    progress = [line for line in proc.stderr.splitlines() if line.startswith("[bench")]
    assert len(progress) >= 10, proc.stderr
    md = (out / "report.md").read_text()
    assert report["meta"]["command"] in md and "python -m benchmarks --quick" in md
    for heading in ("## Host CPU", "## Models", "## Method", "## Machine and versions"):
        assert heading in md
    assert 'mcpu="native"' in md and "Trust rule" in md
    assert (out / "speedup.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert before == after, "a quick run must not write into the repository"


def test_markdown_is_the_json_rendered(quick):
    out, _, report, _, _ = quick
    assert _bench_module("report").render_markdown(report) == (out / "report.md").read_text()


def test_meta_machine_versions(quick):
    _, _, report, _, _ = quick
    assert (
        report["meta"]["quick"] is True and report["meta"]["kind"] == "suite" and report["meta"]["wall_s"] > 0
    )
    m = report["machine"]
    assert m["cpu_model"] and m["usable_cpus"] >= 1 and m["logical_cpus"] >= m["usable_cpus"]
    v = report["versions"]
    for key in (
        "tbn-tvm",
        "apache-tvm",
        "onnxruntime",
        "numpy",
        "python",
        "arm-none-eabi-gcc",
        "qemu-system-arm",
    ):
        assert key in v
    for key in ("tbn-tvm", "apache-tvm", "onnxruntime", "numpy", "python"):
        assert v[key]
    assert report["threads"]["tvm"] >= 1 and report["threads"]["onnxruntime_intra_op"] >= 1
    assert report["authors"]["instructions_per_inference"] == 2_645_000
    assert "mcpu=" in report["host_target"]
    assert set(report["trust_rule"]) == {"min_rounds", "max_spread_iqr_over_median", "min_timed_s"}


def test_models_table(quick):
    _, _, report, _, _ = quick
    keys = [m["key"] for m in report["models"]]
    assert keys == ["authors_mnist_mlp", "wide_mlp_p8", "tiled_resnet", "conv_bn_cnn_tile"]
    for m in report["models"]:
        assert 0 < m["weight_bytes"] < m["fp32_bytes"] == 4 * m["parameters"]
        assert any(layer["format"] == "tiled" for layer in m["layers"])
    mnist = report["models"][0]
    assert mnist["weight_bytes"] == 3316 and mnist["input_shape"] == [1, 784]


def test_host_rows(quick):
    harness = _bench_module("harness")
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
            assert t["trusted"] == harness.trust(samples, t["number"])["trusted"]
        for name in v:
            if name != "tbn-tvm":
                expected = v[name]["median_s"] / v["tbn-tvm"]["median_s"]
                assert r["speedup"][f"vs_{name}"] == pytest.approx(expected)
                both = v[name]["trusted"] and v["tbn-tvm"]["trusted"]
                assert r["speedup_trusted"][f"vs_{name}"] is both
        assert v["tbn-tvm"]["weight_bytes_in_build"] < v["tvm-fp32"]["weight_bytes_in_build"]
        assert r["outputs_within_tolerance"] is True


def test_untrusted_figures_are_not_shown_as_numbers(quick):
    """Whatever this run measured: a ratio is printed as a number exactly when it is trusted."""
    report_mod = _bench_module("report")
    out, proc, report, _, _ = quick
    for r in report["host"]:
        for key, trusted in r["speedup_trusted"].items():
            text = report_mod.ratio_text(r, key[len("vs_") :])
            assert text.endswith("×") is trusted and text.startswith("not measured enough") is not trusted
    bad = report_mod.untrusted_timings(report)
    md = (out / "report.md").read_text()
    assert ("did not meet the trust rule" in md) is bool(bad)
    assert ("did not meet the trust rule" in proc.stdout) is bool(bad)


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
        # issue 22: estimated cycles beside instructions on every Cortex-M row
        assert b["estimated_cycles_m4_per_inference"] >= b["instructions_per_inference"]
        assert b["estimated_cycles_m7_per_inference"] > 0
        assert b["rel_err_vs_onnxruntime"] <= 1e-5 and b["predictions_equal_onnxruntime"] == 1.0
    assert (
        tbn["weight_bytes"] == 3316
        and tbn["instructions_per_inference"] < dense["instructions_per_inference"]
    )
    mn = mlp["mnist"]
    assert mn["images"] == report["settings"]["mnist_samples"]
    assert mn["predictions_equal_numpy_reference"] == mn["predictions_equal_onnxruntime"] == mn["images"]
    assert mlp["fewer_instructions_than_authors"] == pytest.approx(
        2_645_000 / tbn["instructions_per_inference"]
    )
    cmsis = mlp["builds"].get("cmsis-nn-int8")
    assert cmsis is not None, "the CMSIS-NN row is there, measured or skipped with its reason"
    if cmsis["status"] == "ok":
        assert cmsis["weight_bytes"] == 101_632 and cmsis["samples"] == mn["images"]
        assert cmsis["outputs_equal_numpy_int8_reference"] == cmsis["samples"]
        assert cmsis["accuracy"] > 0.9 and cmsis["instructions_in_fully_connected"] > 0
        assert mlp["fewer_instructions_than_cmsis_nn"] == pytest.approx(
            cmsis["instructions_per_inference"] / tbn["instructions_per_inference"]
        )
        assert mlp["fewer_estimated_m4_cycles_than_cmsis_nn"] == pytest.approx(
            cmsis["estimated_cycles_m4_per_inference"] / tbn["estimated_cycles_m4_per_inference"]
        )
        issue22 = [f for f in report["issue_figures"] if f["issue"] == 22]
        assert issue22 and "CMSIS-NN" in issue22[0]["criterion"] and issue22[0]["pass"] is not None
    else:
        assert cmsis["status"] == "skipped" and "TBN_BENCH_CMSIS_NN" in cmsis["reason"]
    cnn = mcu["conv_bn_cnn_tile"]
    tiled, plain = cnn["builds"]["tbn-tvm"], cnn["builds"]["tvm-fp32"]
    for b in (tiled, plain):
        assert b["status"] == "ok" and b["rel_err_vs_onnxruntime"] <= 1e-5
    assert tiled["instructions_per_inference"] < plain["instructions_per_inference"]
    criteria = report["acceptance"]
    assert len(criteria) == 6
    for item in criteria:
        assert {"criterion", "required", "measured", "pass"} <= set(item) and "quick mode" in item["note"]


# ------------------------------------------------------------------------------------ the trust rule
def test_trust_rule_on_synthetic_samples():
    h = _bench_module("harness")
    steady = [1e-3 * (1 + 0.02 * i) for i in range(15)]  # 15 rounds of ~1 ms, 2 % apart
    assert h.trust(steady, number=10)["trusted"]  # 150 calls, ~0.17 s timed
    few = h.trust([1e-3, 1e-3], number=100)
    assert not few["trusted"] and few["reasons"] == [f"2 rounds < {h.TRUST_MIN_ROUNDS}"]
    noisy = h.trust([1e-3, 1e-3, 1e-3, 3e-3, 3e-3, 3e-3], number=100)  # IQR/median = 2 ms / 2 ms
    assert (
        not noisy["trusted"]
        and noisy["spread"] == pytest.approx(1.0)
        and noisy["reasons"][0].startswith("spread")
    )
    # the quick-run failure this rule exists for: 5 rounds x 2 calls of 0.04 ms = 0.4 ms timed
    short = h.trust([4e-5, 4.1e-5, 3.9e-5, 4e-5, 4.2e-5], number=2)
    assert (
        not short["trusted"]
        and short["timed_s"] == pytest.approx(4.04e-4)
        and "ms timed" in short["reasons"][0]
    )
    assert not h.trust([], number=1)["trusted"]


def test_measure_marks_each_variant():
    h = _bench_module("harness")
    settings = h.Settings(True, 5, 3, 0.01, 0.3, 0.0, 2, (1,), (), 1, 1, 1)

    def fake(seconds: float, jitter: float):
        rng = np.random.default_rng(0)
        return lambda number, repeat: [seconds * (1 + jitter * rng.random()) for _ in range(repeat)]

    out = h.measure(
        {"steady": fake(1e-3, 0.01), "noisy": fake(1e-3, 5.0)}, {"steady": 0.01, "noisy": 0.01}, settings
    )
    assert out["steady"]["trusted"] and out["steady"]["untrusted_reasons"] == []
    assert out["steady"]["rounds"] == 5 and out["steady"]["number"] == 10
    assert not out["noisy"]["trusted"] and out["noisy"]["spread"] > h.TRUST_MAX_SPREAD


def test_untrusted_ratio_rendering_and_acceptance():
    report_mod, suite = _bench_module("report"), _bench_module("suite")
    h = _bench_module("harness")

    def variant(samples, number):
        s = np.asarray(samples)
        t = h.trust(samples, number)
        return {
            "median_s": float(np.median(s)),
            "min_s": float(s.min()),
            "max_s": float(s.max()),
            "rounds": len(samples),
            "number": number,
            "samples_s": list(samples),
            "spread": t["spread"],
            "timed_s": t["timed_s"],
            "trusted": t["trusted"],
            "untrusted_reasons": t["reasons"],
            "rel_err_vs_onnxruntime": 0.0,
        }

    v = {
        "tbn-tvm": variant([3e-4] * 15, 200),  # 0.9 s timed: trusted
        "tvm-fp32": variant([0.4] * 5, 1),  # trusted
        "onnxruntime-fp32": variant([3e-3, 3.05e-3, 2.95e-3, 3e-3, 3.1e-3], 1),  # 15.1 ms timed: not
    }
    row = {"model": "wide_mlp_p8", "batch": 1, "variants": v}
    row["speedup"] = {f"vs_{n}": v[n]["median_s"] / v["tbn-tvm"]["median_s"] for n in v if n != "tbn-tvm"}
    row["speedup_fastest_rounds"] = dict(row["speedup"])
    row["speedup_trusted"] = {
        f"vs_{n}": v[n]["trusted"] and v["tbn-tvm"]["trusted"] for n in v if n != "tbn-tvm"
    }
    assert report_mod.ratio_text(row, "tvm-fp32") == "1,333×"
    assert (
        report_mod.ratio_text(row, "onnxruntime-fp32")
        == "not measured enough (5 rounds, spread 2%, 15.1 ms timed)"
    )
    assert report_mod.median_text(v, "onnxruntime-fp32").startswith("not measured enough (5 rounds")
    report = {"meta": {"quick": False, "kind": "suite"}, "host": [row], "cortex_m": [], "acceptance": []}
    acc = {a["criterion"]: a for a in suite.acceptance(report)}
    vs_ort = acc["host batch 1, MLP p=8: speed-up over onnxruntime fp32"]
    assert vs_ort["pass"] is False and vs_ort["trusted"] is False  # 10x measured (>= 4x), but not trusted
    assert acc["host batch 1, MLP p=8: speed-up over TVM's fp32 build"]["pass"] is True
    report["acceptance"] = list(acc.values())
    summary = report_mod.render_summary(report)
    assert "vs onnxruntime: not measured enough (5 rounds, spread 2%, 15.1 ms timed)" in summary
    assert "10.0×" not in summary and "NOT met (not measured enough)" in summary
    md = report_mod._acceptance(report, "cmd")
    assert any("not measured enough (5 rounds" in line and "10.0×" not in line for line in md)


def test_cortex_m_cycles_ram_rows_and_issue22_figures():
    """Issue 22's Cortex-M report on a synthetic report: estimated cycles in every row, the
    ``ram_size`` / float16 builds as their own rows with their RAM, the MLP-vs-CMSIS-NN cycle
    ratio said plainly when it misses the 3x bar, and the RAM limits checked."""
    report_mod, suite = _bench_module("report"), _bench_module("suite")

    def build(ins, cyc, ram, err=1e-7, **extra):
        return {
            "status": "ok",
            "board": "mps2-an386",
            "qemu_machine": "mps2-an386",
            "instructions_per_inference": ins,
            "estimated_cycles_m4_per_inference": cyc,
            "estimated_cycles_m7_per_inference": cyc // 2,
            "flash_bytes": 30_000,
            "ram_bytes": ram,
            "weight_bytes": 10_000,
            "samples": 2,
            "rel_err_vs_onnxruntime": err,
            **extra,
        }

    mlp = {
        "model": "authors_mnist_mlp",
        "builds": {
            suite.TBN: build(53_574, 70_000, 5_592),
            suite.CMSIS_INT8: {
                **build(213_546, 175_000, 5_384),
                "instructions_in_fully_connected": 197_702,
                "estimated_cycles_m4_in_fully_connected": 150_000,
            },
        },
        "fewer_instructions_than_cmsis_nn": 213_546 / 53_574,
        "smaller_flash_than_cmsis_nn": 1.0,
        "fewer_estimated_m4_cycles_than_cmsis_nn": 2.5,
        "fewer_estimated_m7_cycles_than_cmsis_nn": 2.5,
    }
    mlp["builds"][suite.CMSIS_INT8].update(
        accuracy=0.9587, outputs_equal_numpy_int8_reference=2, quantization={"weights": "int8"}
    )
    resnet = {
        "model": "tiled_resnet_16",
        "builds": {
            suite.TBN: build(15_000_000, 20_000_000, 215_000),
            suite.TBN_128K: build(
                16_000_000,
                21_000_000,
                126_928,
                title='tbn-tvm, `ram_size="128K"`',
                memory={"ram": {"used": 126_928, "limit": 131_072}},
                patchwise={"layers": ["stem", "block2.conv2"], "grid": [2, 2]},
            ),
            suite.TBN_64K_FP16: build(
                17_000_000,
                22_000_000,
                70_000,  # over 64 KiB: the figure says not met
                err=1.4e-4,
                title="tbn-tvm, float16",
                activations="float16",
                activation_accuracy={"max_rel_error": 1.4e-4, "top1_agreement": 1.0, "inputs": "8 inputs"},
            ),
        },
    }
    report = {"meta": {"quick": False, "kind": "suite"}, "host": [], "cortex_m": [mlp, resnet]}
    titles = {"authors_mnist_mlp": "MLP", "tiled_resnet_16": "ResNet 16"}
    figs = {f["criterion"]: f for f in suite.issue_figures(report) if f["issue"] == 22}
    cyc = next(f for c, f in figs.items() if "CMSIS-NN" in c)
    assert cyc["pass"] is False and "not met, short by 0.50x" in cyc["measured"]
    ram = [f for c, f in figs.items() if "ResNet" in c]
    assert [f["pass"] for f in ram] == [True, False] and "RAM 70,000 B" in ram[1]["measured"]
    md = "\n".join(report_mod._cortex_m({**report, "cycles_model": "per class"}, "cmd", titles))
    assert "est. Cortex-M4 cycles" in md and "| 70,000 | 35,000 |" in md and "| 175,000 |" in md
    assert 'tbn-tvm, `ram_size="128K"`' in md and "patch-wise stage of 2 layers" in md
    assert "in 2x2 tiles" in md and "RAM 126,928 of 131,072 B" in md and "top-1 agreement 100 %" in md
    assert "the 3x bar is not met, short by 0.50x" in md
    assert "outputs differ" not in md  # 1.4e-4 is within a float16 build's 1e-2
    summary = report_mod.render_summary({**report, "acceptance": [], "real": []})
    assert "tbn-tvm-ram-64K-fp16: 17,000,000 instructions" in summary and "short by 0.50x" in summary


def test_issue23_figures_and_subbit_cases():
    """Issue 23's rows: ``--cases subbit`` picks the three sub-bit layers; on a synthetic report
    the QEMU ratios (codebook vs its binary twin, bit-plane vs dense) and the host ratio at batch
    1 are checked against their bars, a ratio over 0.5x or an error over 1e-5 fails, and an
    untrusted host timing never passes."""
    suite, models = _bench_module("suite"), _bench_module("models")
    settings = _bench_module("harness").Settings.for_mode(quick=False)
    cases = suite.select_cases(suite.subbit_cases(models, settings.batches), "subbit")
    assert [c.key for c in cases] == suite.SUBBIT_KEYS
    assert all(not c.classifier for c in cases)

    def build(ins, err=1e-7):
        return {"status": "ok", "instructions_per_inference": ins, "rel_err_vs_onnxruntime": err}

    def host(tbn_s, ort_s, trusted=True):
        v = {"median_s": tbn_s, "trusted": trusted}
        return {
            "model": "bitplane_gemm_k4",
            "batch": 1,
            "variants": {suite.TBN: v, suite.ORT: {**v, "median_s": ort_s}},
        }

    mcu = [
        {"model": "codebook_conv_96x48", "builds": {suite.TBN: build(3_000_000)}},
        {"model": "binary_conv_96x48", "builds": {suite.TBN: build(10_000_000)}},
        {
            "model": "bitplane_gemm_k4",
            "builds": {suite.TBN: build(260_000), suite.TVM_FP32: build(500_000, 2e-5)},
        },
    ]
    report = {"meta": {"quick": False}, "host": [host(4e-6, 8e-6)], "cortex_m": mcu}
    figs = [f for f in suite.issue_figures(report) if f["issue"] == 23]
    assert [f["pass"] for f in figs] == [True, False, True]
    assert figs[0]["measured"].startswith("0.300x") and "error 2.0e-05" in figs[1]["measured"]
    report["host"] = [host(4e-6, 8e-6, trusted=False)]
    assert suite.issue_figures(report)[-1]["pass"] is False
    report["host"] = [host(9e-6, 8e-6)]
    assert suite.issue_figures(report)[-1]["pass"] is False


# ------------------------------------------------------------------------------------ --model
@pytest.fixture(scope="module")
def tiny_gemm(tmp_path_factory) -> Path:
    """A Gemm 64 -> 32 whose weight ``[32, 64]`` is one ±1 tile of 512 signs repeated p = 4
    times, copy k scaled by alpha_k; the batch dimension is dynamic (``N``)."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    out_f, in_f, p = 32, 64, 4
    n = out_f * in_f
    tile = np.where(rng.random(n // p) < 0.5, -1.0, 1.0).astype(np.float32)
    alphas = (rng.uniform(0.5, 1.5, p) / np.sqrt(in_f)).astype(np.float32)
    w = (np.tile(tile, p) * np.repeat(alphas, n // p)).reshape(out_f, in_f).astype(np.float32)
    graph = helper.make_graph(
        [helper.make_node("Gemm", ["x", "fc.weight"], ["y"], transB=1, name="fc")],
        "tiny_gemm",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", in_f])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", out_f])],
        [numpy_helper.from_array(w, "fc.weight")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 9
    onnx.checker.check_model(model)
    path = tmp_path_factory.mktemp("model") / "tiny_gemm.onnx"
    onnx.save(model, str(path))
    return path


def test_model_on_the_host(tiny_gemm, tmp_path):
    before = _snapshot()
    out = tmp_path / "out"
    proc = _bench(
        "--model", str(tiny_gemm), "--input-shape", "x=2,64", "--quick", "--out", str(out), timeout=300
    )
    _ok(proc)
    assert _snapshot() == before, "a --model run must not write into the repository"
    report = json.loads((out / "report.json").read_text())
    assert report["meta"]["kind"] == "model" and report["meta"]["target"] == "llvm"
    assert report["acceptance"] == [] and "authors" not in report
    (m,) = report["models"]
    assert m["title"] == "tiny_gemm.onnx" and m["input_shape"] == [2, 64]
    assert [(la["format"], la["p"]) for la in m["layers"]] == [("tiled", 4)]
    (row,) = report["host"]
    assert row["batch"] == 2 and set(row["variants"]) == {"tbn-tvm", "tvm-fp32", "onnxruntime-fp32"}
    for t in row["variants"].values():
        assert t["rel_err_vs_onnxruntime"] <= 1e-5 and isinstance(t["trusted"], bool)
    assert row["outputs_within_tolerance"] is True
    assert set(row["speedup_trusted"]) == {"vs_tvm-fp32", "vs_onnxruntime-fp32"}
    md = (out / "report.md").read_text()
    assert md.startswith("# tbn-tvm benchmark report: `tiny_gemm.onnx`") and "## Host CPU" in md
    assert "Acceptance" not in md and "authors' float C loop" not in md
    assert (out / "speedup.png").is_file()
    assert proc.stdout.splitlines()[0].startswith("tiny_gemm")


@pytest.mark.qemu
def test_model_on_cortex_m4(tiny_gemm, tmp_path):
    out = tmp_path / "out"
    proc = _bench(
        "--model",
        str(tiny_gemm),
        "--input-shape",
        "x=1,64",
        "--target",
        "cortex-m4",
        "--quick",
        "--out",
        str(out),
    )
    _ok(proc)
    report = json.loads((out / "report.json").read_text())
    assert report["host"] == []
    (r,) = report["cortex_m"]
    tbn, dense = r["builds"]["tbn-tvm"], r["builds"]["tvm-fp32"]
    for b in (tbn, dense):
        assert b["status"] == "ok" and b["rel_err_vs_onnxruntime"] <= 1e-5
        assert b["instructions_min"] == b["instructions_max"] == b["instructions_per_inference"] > 0
    assert tbn["instructions_per_inference"] < dense["instructions_per_inference"]
    assert tbn["weight_bytes"] < dense["weight_bytes"]
    assert r["fewer_instructions_than_dense"] == pytest.approx(
        dense["instructions_per_inference"] / tbn["instructions_per_inference"]
    )
    assert "fewer instructions than the dense build" in proc.stdout


# ------------------------------------------------------------------------------------ user errors
@pytest.mark.parametrize(
    "args, mention",
    [
        (["--rounds", "0"], "--rounds"),
        (["--threads", "0"], "--threads"),
        (["--models", "no-such-models.py"], "no-such-models.py"),
        (["--model", "no-such-model.onnx"], "no-such-model.onnx"),
        (["--target", "llvm"], "--model"),
        (["--model", "TINY", "--input-shape", "x=1,65"], "contradicts"),
        (["--model", "TINY"], "--input-shape x="),
        (["--cmsis-nn", "no-such-dir"], "--cmsis-nn"),
        (["--skip-host", "--skip-cortex-m"], "nothing to measure"),
    ],
)
def test_user_errors_are_one_line(args, mention, tmp_path, tiny_gemm):
    args = [str(tiny_gemm) if a == "TINY" else a for a in args]
    proc = _bench("--quick", "--out", str(tmp_path), *args, timeout=120)
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and mention in lines[0], proc.stderr
    assert "Traceback" not in proc.stderr


# ------------------------------------------------------------------------------------ tbn-tvm bench
def test_bench_command_is_registered():
    from tbn_tvm import cli

    with pytest.raises(SystemExit) as exc:
        cli.main(["bench", "--help"])
    assert exc.value.code == 0


def test_shim_options_mirror_the_suite():
    from tbn_tvm.commands import bench

    parser = _bench_module("cli").build_parser()
    suite_options = {o for a in parser._actions for o in a.option_strings} - {"-h", "--help"}
    assert {o for o, _ in bench.OPTIONS} == suite_options


def test_shim_forwards_the_same_arguments(monkeypatch):
    from tbn_tvm import cli
    from tbn_tvm.commands import bench

    bench_cli = _bench_module("cli")
    seen = {}
    monkeypatch.setattr(bench_cli, "main", lambda argv, prog: seen.update(argv=argv, prog=prog) or 0)
    monkeypatch.setattr(bench, "find_suite", lambda: bench_cli)
    argv = ["--quick", "--rounds", "7", "--out", "o", "--model", "m.onnx", "--input-shape", "x=1,2"]
    argv += ["--input-shape", "y=3", "--target", "cortex-m4", "--skip-cortex-m", "--no-publish"]
    assert cli.main(["bench", *argv]) == 0
    assert seen["prog"] == "tbn-tvm bench"
    parse = bench_cli.build_parser().parse_args
    assert vars(parse(seen["argv"])) == vars(parse(argv))
    assert isinstance(parse(seen["argv"]), argparse.Namespace)


def test_shim_outside_a_checkout(monkeypatch, capsys):
    from tbn_tvm import cli
    from tbn_tvm.commands import bench

    monkeypatch.setattr(bench, "find_suite", lambda: None)
    assert cli.main(["bench", "--quick"]) == 2
    err = capsys.readouterr().err.splitlines()
    assert err == [
        "error: the benchmark suite lives in the repository's benchmarks/ folder; "
        "run 'python -m benchmarks' from a checkout"
    ]


def test_shim_finds_this_checkout():
    from tbn_tvm.commands import bench

    before = sys.dont_write_bytecode
    sys.dont_write_bytecode = True
    try:
        found = bench.find_suite()
    finally:
        sys.dont_write_bytecode = before
    assert found is not None and Path(found.__file__).resolve() == REPO / "benchmarks" / "cli.py"


# ------------------------------------------------------------------------------------ issue 13's rows
def test_cmsis_nn_source_is_looked_up_not_downloaded(monkeypatch, tmp_path):
    cmsis_nn = _bench_module("cmsis_nn")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    monkeypatch.delenv(cmsis_nn.ENV, raising=False)
    src, why = cmsis_nn.find_source()
    assert src is None and cmsis_nn.ENV in why and cmsis_nn.PINNED_COMMIT[:7] in why
    src, why = cmsis_nn.find_source(str(tmp_path / "absent"))
    assert src is None and "does not exist" in why
    src, why = cmsis_nn.find_source(str(tmp_path))
    assert src is None and "neither" in why
    assert not (tmp_path / "cache").exists()


def test_cmsis_nn_quantization_model():
    """The int8 parameters and the numpy model of CMSIS-NN's arithmetic (no toolchain needed)."""
    cmsis_nn = _bench_module("cmsis_nn")
    for real in (0.3, 1e-4, 0.0009765625, 1.7):
        m, shift = cmsis_nn.quantize_multiplier(real)
        assert 2**30 <= m < 2**31 and m * 2.0 ** (shift - 31) == pytest.approx(real, rel=1e-9)
    from onnx import numpy_helper

    from tbn_tvm import zoo
    from tbn_tvm.datasets import load_mnist_test

    w = {t.name: numpy_helper.to_array(t) for t in zoo.authors_mnist_mlp().graph.initializer}
    images, labels = load_mnist_test()
    q = cmsis_nn.quantize(w["fc1.weight"], w["fc2.weight"], images[:200])
    assert q["q_w1"].dtype == np.int8 and q["q_w1"].shape == (128, 784) and q["q_w2"].shape == (10, 128)
    x = images[200:700]
    y = cmsis_nn.reference(q, x)
    ref = np.maximum(x @ w["fc1.weight"].T, 0) @ w["fc2.weight"].T
    assert (y.argmax(1) == ref.argmax(1)).mean() > 0.97
    assert np.abs(y - ref).max() < 0.1 * np.abs(ref).max()


@pytest.mark.qemu
def test_cmsis_nn_firmware_when_the_source_is_there():
    """Builds CMSIS-NN's int8 MLP and runs 20 images on QEMU (a few seconds); skipped where no
    CMSIS-NN source is available (nothing is downloaded)."""
    if _toolchain_missing():
        pytest.skip("Cortex-M toolchain absent")
    cmsis_nn = _bench_module("cmsis_nn")
    src, why = cmsis_nn.find_source()
    if src is None:
        pytest.skip(why)
    from tbn_tvm.datasets import load_mnist_test

    images, labels = load_mnist_test()
    fig = cmsis_nn.run(src, images[:20], labels[:20])
    assert fig["status"] == "ok" and fig["weight_bytes"] == 101_632
    assert fig["outputs_equal_numpy_int8_reference"] == 20 == fig["samples"]
    assert 0 < fig["instructions_in_fully_connected"] < fig["instructions_per_inference"]
    # issue 22: the same plugin's cycle estimate as tbn-tvm's rows (an SMLAD loop: fewer
    # estimated M4 cycles inside the CMSIS-NN calls than cycles per instruction would suggest)
    assert fig["estimated_cycles_m4_per_inference"] > fig["instructions_per_inference"] / 2
    assert 0 < fig["estimated_cycles_m4_in_fully_connected"] < fig["estimated_cycles_m4_per_inference"]
    assert fig["estimated_cycles_m7_per_inference"] > 0


def test_conv_bn_cnn_forms_compute_the_same_function():
    import onnxruntime as ort

    models = _bench_module("models")
    outs = []
    for form in ("dense", "tile"):
        m = models.conv_bn_cnn(form, batch=2)
        ops = {n.op_type for n in m.graph.node}
        assert "BatchNormalization" in ops and ("Tile" in ops) == (form == "tile")
        x = models.sample_input("conv_bn_cnn", m)
        outs.append(ort.InferenceSession(m.SerializeToString()).run(None, {"x": x})[0])
    assert outs[0].shape == (2, 10)
    np.testing.assert_allclose(outs[0], outs[1], rtol=1e-5, atol=1e-5 * np.abs(outs[0]).max())
    h = _bench_module("harness")
    suite = _bench_module("suite")
    keys = [c.key for c in suite.default_cases(models, h.Settings.for_mode(False))]
    assert {"conv_bn_cnn_dense", "conv_bn_cnn_tile"} <= set(keys)


def test_tiled_gemm_of_the_tuning_criterion():
    from tbn_tvm import inspect

    models = _bench_module("models")
    layers = inspect(models.tiled_gemm()).to_dict()["layers"]
    assert [(la["weight_shape"], la["format"], la["p"]) for la in layers] == [([256, 512], "tiled", 4)]
