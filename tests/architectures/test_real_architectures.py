"""Issue 19's real architectures (``benchmarks/architectures.py``: eleven published networks and the
held-out trio) in their small test configurations, end to end: seeded build, ``tbnify`` at p = 4
with ``min_size=0`` (so that every flavour of layer, depthwise and grouped convs included, is
tiled where p divides it), non-trivial norms, ``export_onnx``; onnxruntime runs the file, and the
``llvm`` build's outputs equal onnxruntime's within 1e-5 relative (max |diff| / max |ref|); the
compiler finds each tiled and binary layer ``tbnify`` made.

Marked ``real_architectures``: ``pytest -m real_architectures`` runs just these (one and a half
to two minutes on two cores).  The benchmark table of the same networks at full size is
``python -m benchmarks --cases real``.
"""

from __future__ import annotations

import doctest
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch

import tbn_tvm

REPO = Path(__file__).resolve().parents[2]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from benchmarks import architectures as arch  # noqa: E402

pytestmark = pytest.mark.real_architectures

ISSUE_19 = [
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
]
TEST_TBNIFY = {"min_size": 0}  # tile every layer p divides (the benchmark's own is arch.TBNIFY)
REL_TOL = 1e-5

CASES = [pytest.param(name, 1, id=f"{name}-b1") for name in arch.ALL] + [
    pytest.param("m5", 2, id="m5-b2"),
    pytest.param("mixer_tiny", 2, id="mixer_tiny-b2"),
    pytest.param("heldout_vit", 2, id="heldout_vit-b2"),
]


def rel_err(got: np.ndarray, want: np.ndarray) -> float:
    return float(np.abs(got - want).max() / np.abs(want).max())


def ort_run(path: Path, x: np.ndarray) -> np.ndarray:
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    opts.log_severity_level = 3
    sess = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
    return sess.run(None, {sess.get_inputs()[0].name: x})[0]


def test_the_registry_holds_issue_19s_architectures_and_a_separate_held_out_set():
    assert list(arch.ARCHITECTURES) == ISSUE_19
    assert set(arch.HELD_OUT) == {"heldout_mobilenetv3", "heldout_vit", "heldout_wide_resnet"}
    assert not set(arch.ARCHITECTURES) & set(arch.HELD_OUT)
    assert all(s.held_out for s in arch.HELD_OUT.values())
    assert not any(s.held_out for s in arch.ARCHITECTURES.values())
    assert arch.TBNIFY["p"] == 4
    failed, _ = doctest.testmod(arch, verbose=False)
    assert failed == 0


@pytest.mark.parametrize("name", list(arch.ALL))
def test_small_builds_are_seeded_and_classify(name):
    spec = arch.ALL[name]
    a, b, c = (
        arch.build(name, 0, small=True),
        arch.build(name, 0, small=True),
        arch.build(name, 1, small=True),
    )
    sa, sb, sc = a.state_dict(), b.state_dict(), c.state_dict()
    assert all(torch.equal(sa[k], sb[k]) for k in sa)
    assert any(not torch.equal(sa[k], sc[k]) for k in sa if sa[k].is_floating_point())
    x = torch.from_numpy(arch.sample_input(name, 2, small=True))
    assert tuple(x.shape) == (2, *spec.small_input_shape)
    with torch.no_grad():
        y = a(x)
    assert tuple(y.shape) == (2, spec.small.get("num_classes", 1000))
    assert torch.isfinite(y).all()


@pytest.mark.parametrize("name, batch", CASES)
def test_llvm_build_equals_onnxruntime(name, batch, tmp_path):
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="tbnify")  # "kept at p=1": p does not divide a layer
        bm = arch.benchmark_model(
            name, tmp_path / f"{name}.onnx", batch=batch, small=True, tbnify_args=TEST_TBNIFY
        )
    counts = bm.layer_counts
    assert counts["tiled"] > 0, f"tbnify tiled nothing: {bm.tiling}"
    want = ort_run(bm.path, bm.input)
    assert want.shape == bm.torch_output.shape and np.abs(want).max() > 0
    assert rel_err(want, bm.torch_output) <= REL_TOL, "onnxruntime vs torch"
    cm = tbn_tvm.compile(bm.path, "llvm")
    try:
        got = np.asarray(cm.run(bm.input)).reshape(want.shape)
        formats = [layer["format"] for layer in cm.report()["layers"]]
    finally:
        cm.close()
    err = rel_err(got, want)
    assert err <= REL_TOL, f"{name} batch {batch}: max |diff| / max |ref| = {err:.2e} > {REL_TOL:g}"
    assert formats.count("tiled") == counts["tiled"], formats
    assert formats.count("binary") == counts["binary"], formats


@pytest.mark.parametrize("tokens", [9, 17, 33])
@pytest.mark.parametrize("compress", [True, False])
def test_tiled_linear_on_a_batch_of_odd_token_counts(tmp_path, tokens, compress):
    """A Linear on [2, T, 32] with T rows that no register tile divides: the row tile of the
    GEMM once spanned two batch rows and wrote back a bounding box it had not computed (the
    first row of the second batch wrong, rel. error 0.45; both the tiled and the dense build)."""
    from tbn_tvm.torch import export_onnx, tbnify

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = torch.nn.Sequential(torch.nn.Linear(32, 32))
        x = torch.randn(2, tokens, 32)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        tbnify(model, p=4, min_size=0, keep_first_last_binary=False)
    export_onnx(model.eval(), x, tmp_path / "linear.onnx")
    want = ort_run(tmp_path / "linear.onnx", x.numpy())
    cm = tbn_tvm.compile(tmp_path / "linear.onnx", "llvm", compress=compress)
    try:
        got = np.asarray(cm.run(x.numpy())).reshape(want.shape)
    finally:
        cm.close()
    assert rel_err(got, want) <= REL_TOL, f"max |diff| / max |ref| = {rel_err(got, want):.2e}"
