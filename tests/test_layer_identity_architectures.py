"""Issue 20's eleven real architectures (``benchmarks/architectures.py``, the project's own torch
re-implementations at their small test widths, ``tbnify`` p=4, ``export_onnx``): for every layer,
``inspect``, the manifest, the call sites (steps), ``run --profile`` on the host, ``run
--per-layer`` on QEMU and the C array names agree, and the constant bytes inspect counts are the
build's.  The host check runs on all eleven; QEMU on the three with squeeze-excite gates,
repeated same-shape blocks and repeated LayerNorms."""

from __future__ import annotations

import numpy as np
import pytest
import reports

import tbn_tvm
from tbn_tvm.frontend.layers import c_identifier

pytest.importorskip("torch")

NAMES = (
    "resnet18d",
    "mobilenetv3_small_050",
    "efficientnet_b0",
    "mnasnet_small",
    "convnext_atto",
    "regnetx_002",
    "ghostnet_050",
    "mixer_tiny",
    "deit_tiny",
    "repvgg_a0",
    "m5",
)
ON_QEMU = ("mobilenetv3_small_050", "ghostnet_050", "mixer_tiny")


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    from benchmarks.architectures import ARCHITECTURES, benchmark_model

    assert set(NAMES) <= set(ARCHITECTURES)
    folder = tmp_path_factory.mktemp("real")
    made = {}

    def get(name):
        if name not in made:
            made[name] = benchmark_model(name, folder / f"{name}.onnx", small=True)
        return made[name]

    return get


def _agree(report: dict, inspected: dict) -> set[str]:
    found = {layer["name"]: layer for layer in inspected["layers"]}
    reports.check_layers_against_inspect(report, inspected)
    named = sorted(n for s in report["steps"] for n in s["layers"])
    assert named == sorted(found), "every layer at exactly one call site"
    return set(found)


@pytest.mark.slow
@pytest.mark.parametrize("name", NAMES)
def test_host_reports_agree_for_every_layer(exported, name):
    bm = exported(name)
    inspected = tbn_tvm.inspect(bm.path).to_dict()
    model = tbn_tvm.compile(bm.path, "llvm")
    layers = _agree(model.report(), inspected)
    y = model.run(bm.input, profile=True)
    calls = model.last_run_stats["profile"]["calls"]
    assert sorted(n for c in calls for n in c["layers"]) == sorted(layers)
    scale = float(np.abs(bm.torch_output).max())
    np.testing.assert_allclose(y, bm.torch_output, rtol=1e-4, atol=1e-4 * scale)


@pytest.mark.slow
@pytest.mark.qemu
@pytest.mark.parametrize("name", ON_QEMU)
def test_cortex_m_reports_agree_for_every_layer(exported, name, tmp_path):
    bm = exported(name)
    model = tbn_tvm.compile(bm.path, "cortex-m4")
    layers = _agree(model.report(), tbn_tvm.inspect(bm.path).to_dict())
    weights_c = (model.save(tmp_path / "out") / "lib" / "weights.c").read_text()
    assert all(f"tbn_{c_identifier(n)}_" in weights_c for n in layers)
    model.run(bm.input, per_layer=True)
    stats = model.last_run_stats
    per = stats["instructions_per_layer"]
    assert sorted(n for s in per for n in s["layers"]) == sorted(layers)
    assert (
        sum(s["instructions"] for s in per) + stats["instructions_after_last_call"]
        == stats["instructions_per_inference"]
    )
    assert all(s["kernel_instructions"] > 0 for s in per)
