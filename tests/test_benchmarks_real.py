"""The real-architecture table of ``python -m benchmarks`` (issue 19, ``benchmarks/real.py``): one
``--quick --cases m5`` run into a temporary folder (the small M5 at batch 1: tbn-tvm's default
build, onnxruntime fp32 and int8), its JSON and markdown; ``--cases`` group keys; the geometric
means and issue 19's acceptance figures on synthetic rows; the int8 cell when quantization fails.
No assertion on speed."""

from __future__ import annotations

import importlib.util
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from benchmarks import harness, real, report, suite  # noqa: E402
from tbn_tvm import TBNError  # noqa: E402

pytestmark = [pytest.mark.slow, pytest.mark.real_architectures]

HAVE_TORCH = all(importlib.util.find_spec(m) is not None for m in ("torch", "onnxscript", "onnxruntime"))
needs_torch = pytest.mark.skipif(not HAVE_TORCH, reason="needs torch, onnxscript and onnxruntime")


@pytest.fixture(scope="module")
def m5_run(tmp_path_factory):
    if not HAVE_TORCH:
        pytest.skip("needs torch, onnxscript and onnxruntime")
    out = tmp_path_factory.mktemp("bench-real")
    env = dict(os.environ, PYTHONDONTWRITEBYTECODE="1")
    env["PYTHONPATH"] = os.pathsep.join([str(REPO)] + ([env["PYTHONPATH"]] if env.get("PYTHONPATH") else []))
    args = ["--quick", "--cases", "m5", "--skip-cortex-m", "--no-publish", "--out", str(out)]
    proc = subprocess.run(
        [sys.executable, "-m", "benchmarks", *args],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    return out, proc, json.loads((out / "report.json").read_text())


def test_one_row_with_the_three_variants(m5_run):
    _, _, rep = m5_run
    assert rep["host"] == [] and rep["cortex_m"] == []
    (row,) = rep["real"]
    assert row["model"] == "m5" and row["batch"] == 1 and row["input_shape"] == [1, 1, 4000]
    v = row["variants"]
    assert set(v) == {real.TBN, real.ORT, real.ORT_INT8}
    assert v[real.TBN]["rel_err_vs_onnxruntime"] <= suite.REL_TOLERANCE
    assert row["outputs_within_tolerance"] is True
    assert v[real.TBN]["compile_s"] > 0 and row["target"].startswith("kind=llvm")
    q = v[real.ORT_INT8]
    if "status" in q:  # not quantized: the cell says why
        assert q["reason"] and row["int8"]["reason"] == q["reason"]
    else:
        assert q["format"] in ("QDQ", "QOperator") and 0 < q["rel_err_vs_onnxruntime"] < 0.5
    for t in v.values():
        if "median_s" not in t:
            continue
        samples = t["samples_s"]
        assert len(samples) == t["rounds"] and all(math.isfinite(s) and s > 0 for s in samples)
        assert t["min_s"] <= t["median_s"] <= t["max_s"]
        assert t["trusted"] == harness.trust(samples, t["number"])["trusted"]
    for key, ratio in row["speedup"].items():
        other = key.removeprefix("vs_")
        assert ratio == pytest.approx(v[other]["median_s"] / v[real.TBN]["median_s"])
        assert row["speedup_trusted"][key] is bool(v[other]["trusted"] and v[real.TBN]["trusted"])


def test_the_model_entry_matches_the_architecture(m5_run):
    from benchmarks import architectures as arch

    _, _, rep = m5_run
    (m,) = rep["real_models"]
    model = arch.build("m5", real.SEED, small=True)
    assert m["parameters"] == arch.count_parameters(model)
    assert m["tbnify"] == arch.TBNIFY and m["input_shape"] == [1, 1, 4000]
    assert m["formats"].get("tiled", 0) == m["tbnify_layers"]["tiled"]
    assert m["formats"].get("binary", 0) == m["tbnify_layers"]["binary"]
    assert 0 < m["weight_bytes"] < m["fp32_bytes"]


def test_markdown_and_summary(m5_run):
    out, proc, rep = m5_run
    md = (out / "report.md").read_text()
    assert md == report.render_markdown(rep)
    assert "## Real architectures (issue 19)" in md and 'tbn_tvm.compile(model, "llvm")' in md
    (row,) = rep["real"]
    line = next(x for x in md.splitlines() if x.startswith("| m5 (small) | 1 |"))
    for other in (real.ORT, real.ORT_INT8):
        text = report.real_ratio_text(row, other)
        assert text in line
        trusted = row["speedup_trusted"].get(f"vs_{other}")
        if trusted:
            assert text.endswith("(faster)") is (row["speedup"][f"vs_{other}"] >= 1)
        elif f"vs_{other}" in row["speedup"]:
            assert text.startswith("not measured enough")
    assert proc.stdout.splitlines()[0].startswith("m5 ")
    assert "## Models" not in md  # no suite model ran


def _row(name: str, batch: int, ratio: float, err: float = 1e-7, trusted: bool = True) -> dict:
    t = {"median_s": 1e-3, "trusted": trusted, "rel_err_vs_onnxruntime": err}
    o = {"median_s": ratio * 1e-3, "trusted": True, "rel_err_vs_onnxruntime": 0.0}
    return {
        "model": name,
        "batch": batch,
        "variants": {real.TBN: t, real.ORT: o},
        "speedup": {f"vs_{real.ORT}": ratio},
        "speedup_trusted": {f"vs_{real.ORT}": trusted},
    }


@needs_torch
def test_geomeans_and_issue_19_figures_on_synthetic_rows():
    rows = [
        _row("heldout_mobilenetv3", 1, 2.0),
        _row("heldout_vit", 1, 2.0),
        _row("heldout_wide_resnet", 1, 1.0),
        _row("resnet18d", 1, 0.5),
        _row("m5", 1, 4.0, trusted=False),
        _row("deit_tiny", 1, 3.0, err=2e-5),
        _row("resnet18d", 8, 0.25),
    ]
    rep = {"meta": {"quick": False}, "real": rows}
    g = {(x["batch"], x["group"]): x for x in real.geomeans(rep)}
    held = g[(1, "held out")]
    assert held[f"vs_{real.ORT}"] == pytest.approx(4 ** (1 / 3)) and held[f"vs_{real.ORT}_wins"] == 3
    eleven = g[(1, "eleven")]
    assert eleven["rows"] == 3 and eleven[f"vs_{real.ORT}_rows"] == 2  # m5 left out: not trusted
    assert (
        eleven[f"vs_{real.ORT}"] == pytest.approx(np.sqrt(0.5 * 3.0)) and eleven[f"vs_{real.ORT}_wins"] == 1
    )
    assert g[(8, "eleven")][f"vs_{real.ORT}"] == pytest.approx(0.25)
    figs = {f["criterion"].split(":")[0]: f["pass"] for f in real.issue19_figures(rep)}
    assert figs["resnet18d"] is False and figs["m5"] is False  # slower; not measured enough
    assert figs["deit_tiny"] is False  # faster, but outside the tolerance
    assert figs["heldout_vit (held out)"] is True and figs["heldout_wide_resnet (held out)"] is True
    assert figs["held-out trio"] is True  # 1.59x >= 1.5x
    rows[2] = _row("heldout_wide_resnet", 1, 0.5)
    figs = {f["criterion"].split(":")[0]: f["pass"] for f in real.issue19_figures(rep)}
    assert figs["held-out trio"] is False and figs["heldout_wide_resnet (held out)"] is False
    assert real.issue19_figures({"meta": {"quick": True}, "real": rows}) == []


@needs_torch
def test_cases_groups():
    from benchmarks import architectures as arch

    settings = harness.Settings.for_mode(quick=True)
    pool = suite.selectable_cases(suite.load_models(), settings)
    assert [c.key for c in pool if c.family == real.FAMILY] == list(arch.ALL)
    assert [c.key for c in suite.select_cases(pool, "real")] == list(arch.ALL)
    assert [c.key for c in suite.select_cases(pool, "held_out")] == list(arch.HELD_OUT)
    assert [c.key for c in suite.select_cases(pool, "real_eleven")] == list(arch.ARCHITECTURES)
    picked = suite.select_cases(pool, "deit_tiny,authors_mnist_mlp")
    assert [c.key for c in picked] == ["authors_mnist_mlp", "deit_tiny"]
    with pytest.raises(TBNError) as e:
        suite.select_cases(pool, "resnet99")
    assert "resnet99" in str(e.value) and "held_out" in e.value.render()
    quick = [c.key for c in suite.default_cases(suite.load_models(), settings)]
    assert not set(quick) & set(arch.ALL)  # --quick's default run stays the issue-4 smoke run


@needs_torch
def test_int8_cell_says_why_when_quantization_fails(monkeypatch, tmp_path):
    import onnxruntime.quantization as q

    def refuse(*args, **kwargs):
        raise RuntimeError("no quantization today")

    monkeypatch.setattr(q, "quantize_static", refuse)
    data, info = real.quantize_int8(b"not read", "input", [1, 4], tmp_path)
    assert data is None and info["status"] == "not quantized"
    assert "QDQ: RuntimeError: no quantization today" in info["reason"]
    assert "QOperator: RuntimeError: no quantization today" in info["reason"]
