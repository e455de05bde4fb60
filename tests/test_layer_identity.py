"""A layer's identity survives every rewrite (issue 20, item 1): the importer names the call that
computes each layer, and folds (BatchNorm, a HardSigmoid's 1/6), fusions and shared weights keep
that name through to the report, the manifest, the per-call-site steps, the host profile and the
C arrays -- never looked up from the bytes of a weight the folds changed.

The model is a MobileNetV3-style network made with the project's torch code (``tbnify``,
``export_onnx``): conv-BN-HardSwish stem, two inverted-residual blocks of one shape with a
squeeze-excite gate (1x1 conv, ReLU, 1x1 conv, HardSigmoid), a head and a classifier.  The
squeeze-excite gate's second conv has the HardSigmoid's 1/6 folded into its weight; before the
fix it was built compact but reported ``dense (found: ...)`` under ``conv2d_<i>``."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
import reports
from onnx import TensorProto, helper, numpy_helper

import tbn_tvm
from tbn_tvm.frontend.layers import c_identifier

torch = pytest.importorskip("torch")
nn = torch.nn


class SqueezeExcite(nn.Module):
    def __init__(self, channels: int, reduced: int) -> None:
        super().__init__()
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc1 = nn.Conv2d(channels, reduced, 1)
        self.act = nn.ReLU()
        self.fc2 = nn.Conv2d(reduced, channels, 1)
        self.gate = nn.Hardsigmoid()

    def forward(self, x):
        return x * self.gate(self.fc2(self.act(self.fc1(self.pool(x)))))


class Block(nn.Module):
    def __init__(self, cin: int, hidden: int, cout: int) -> None:
        super().__init__()
        self.expand = nn.Sequential(
            nn.Conv2d(cin, hidden, 1, bias=False), nn.BatchNorm2d(hidden), nn.Hardswish()
        )
        self.dw = nn.Sequential(
            nn.Conv2d(hidden, hidden, 3, 1, 1, groups=hidden, bias=False),
            nn.BatchNorm2d(hidden),
            nn.Hardswish(),
        )
        self.se = SqueezeExcite(hidden, 8)
        self.project = nn.Sequential(nn.Conv2d(hidden, cout, 1, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x):
        return x + self.project(self.se(self.dw(self.expand(x))))


class MobileNetV3Style(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 16, 3, 2, 1, bias=False), nn.BatchNorm2d(16), nn.Hardswish())
        self.b1 = Block(16, 32, 16)
        self.b2 = Block(16, 32, 16)  # the same shapes as b1: one kernel body on Cortex-M (gcc folds)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.head = nn.Linear(16, 64)
        self.act = nn.Hardswish()
        self.classifier = nn.Linear(64, 10)

    def forward(self, x):
        x = self.b2(self.b1(self.stem(x)))
        return self.classifier(self.act(self.head(torch.flatten(self.pool(x), 1))))


@pytest.fixture(scope="module")
def mobilenet(tmp_path_factory):
    from tbn_tvm.torch import TiledLayer, export_onnx, tbnify

    torch.manual_seed(0)
    model = MobileNetV3Style()
    tbnify(model, p=4, min_size=0)
    g = torch.Generator().manual_seed(1)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.copy_(torch.rand(m.num_features, generator=g) - 0.5)
            m.running_var.copy_(torch.rand(m.num_features, generator=g) + 0.5)
            m.weight.data.copy_(torch.rand(m.num_features, generator=g) + 0.5)
    model.eval()
    path = tmp_path_factory.mktemp("mnv3") / "mnv3.onnx"
    x = torch.randn(1, 3, 16, 16, generator=g)
    export_onnx(model, x, path)
    names = {name for name, m in model.named_modules() if isinstance(m, TiledLayer)}
    return path, names, x.numpy()


def _by_name(layers):
    out = {layer["name"]: layer for layer in layers}
    assert len(out) == len(layers), [layer["name"] for layer in layers]
    return out


def _assert_agrees_with_inspect(report: dict, inspected: dict) -> None:
    """Every layer under its torch name, as inspect found it (or built dense with a note, on a
    Cortex-M); totals equal to the build's."""
    reports.check_layers_against_inspect(report, inspected)
    dense = reports.built_dense_layers(report)
    if not dense:
        assert report["total"]["weight_bytes"] == inspected["total"]["weight_bytes"]


def test_squeeze_excite_layers_are_reported_compact_under_torch_names(mobilenet):
    path, names, x = mobilenet
    inspected = tbn_tvm.inspect(path).to_dict()
    assert {layer["name"] for layer in inspected["layers"]} == names
    assert all(layer["format"] != "dense" for layer in inspected["layers"])
    folded = [layer["name"] for layer in inspected["layers"] if "folded" in layer]
    assert folded, "the SE gates' HardSigmoid and the BatchNorms are folded into weights"
    table = tbn_tvm.inspect(path).table()
    assert all(
        "(BatchNorm/scale folded)" in line for line in table.splitlines() if line.split(" ")[0] in folded
    )
    model = tbn_tvm.compile(path, "llvm")
    report = model.report()
    _assert_agrees_with_inspect(report, inspected)
    assert report["compressed_layers"] == len(names)
    # one call site per layer, each naming its layer, and the profile names them per call
    sites = [s for s in report["steps"] if s["layers"]]
    assert sorted(n for s in sites for n in s["layers"]) == sorted(names)
    model.run(x, profile=True)
    calls = model.last_run_stats["profile"]["calls"]
    assert sorted(n for c in calls for n in c["layers"]) == sorted(names)
    kernels = iter(s["kernel"] for s in report["steps"])  # the calls are steps, in order (a
    assert all(c["kernel"] in kernels for c in calls)  # reshape step may become a VM builtin)
    import onnxruntime as ort

    want = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, {"input": x})[0]
    np.testing.assert_allclose(model.run(x), want, rtol=1e-4, atol=1e-4 * float(np.abs(want).max()))


def test_dense_build_of_same_shape_layers_names_each_call_site(mobilenet):
    """``compress=False``: b1 and b2 have one shape; each layer still gets its own call site."""
    path, names, _ = mobilenet
    report = tbn_tvm.compile(path, "llvm", compress=False).report()
    sites = [s for s in report["steps"] if s["layers"]]
    assert sorted(n for s in sites for n in s["layers"]) == sorted(names)
    assert all(layer["format"] == "dense" for layer in report["layers"])
    assert report["total"]["constant_bytes"] == report["total"]["built_constant_bytes"]


@pytest.mark.qemu
def test_cortex_m_arrays_steps_and_per_layer_counts_name_every_layer(mobilenet, tmp_path):
    path, names, x = mobilenet
    model = tbn_tvm.compile(path, "cortex-m4")
    out = model.save(tmp_path / "out")
    report = model.report()
    _assert_agrees_with_inspect(report, tbn_tvm.inspect(path).to_dict())
    weights_c = (out / "lib" / "weights.c").read_text()
    for name in names:
        assert f"const float tbn_{c_identifier(name)}_" in weights_c or (
            f"tbn_{c_identifier(name)}_" in weights_c
        ), name
    for layer in report["layers"]:
        assert len(layer["kernels"]) == 1 and layer["instructions"] > 0, layer["name"]
    model.run(x, per_layer=True)
    per = model.last_run_stats["instructions_per_layer"]
    assert sorted(n for s in per for n in s["layers"]) == sorted(names)
    assert all(s["kernel_instructions"] > 0 for s in per)


# ------------------------------------------------------------------ plain ONNX, no torch names
def _gemm_hardsigmoid(shared: bool = False) -> onnx.ModelProto:
    """x[1,16] -> Gemm fc1 (a ±1 weight, no scale) -> HardSigmoid -> Gemm fc2 -> y; with
    ``shared``, fc2 reads fc1's weight (two layers, one weight)."""
    rng = np.random.default_rng(0)
    w1 = np.where(rng.standard_normal((16, 16)) > 0, 1.0, -1.0).astype(np.float32)
    w2 = w1 if shared else rng.standard_normal((16, 16)).astype(np.float32)
    inits = [numpy_helper.from_array(w1, "fc1.weight")]
    if not shared:
        inits.append(numpy_helper.from_array(w2, "fc2.weight"))
    nodes = [
        helper.make_node("Gemm", ["x", "fc1.weight"], ["h"], name="fc1", transB=1),
        helper.make_node("HardSigmoid", ["h"], ["g"], alpha=1 / 6, beta=0.5),
        helper.make_node(
            "Gemm", ["g", "fc1.weight" if shared else "fc2.weight"], ["y"], name="fc2", transB=1
        ),
    ]
    graph = helper.make_graph(
        nodes,
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 16])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 16])],
        inits,
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def test_hardsigmoid_fold_keeps_the_layer_and_inspect_mirrors_it():
    """A ±1 weight without a scale becomes α·±1 when the HardSigmoid's α is folded into it:
    inspect (on the ONNX graph) and the build describe the same weight, under the node's name."""
    proto = _gemm_hardsigmoid()
    inspected = tbn_tvm.inspect(proto).to_dict()
    fc1 = _by_name(inspected["layers"])["fc1"]
    assert fc1["format"] == "binary" and fc1.get("folded"), fc1
    report = tbn_tvm.compile(proto, "llvm").report()
    _assert_agrees_with_inspect(report, inspected)
    assert _by_name(report["layers"])["fc1"]["kernel"]


@pytest.mark.parametrize("compress", [True, False])
def test_a_weight_shared_by_two_layers_names_both_call_sites(compress):
    proto = _gemm_hardsigmoid(shared=True)
    report = tbn_tvm.compile(proto, "llvm", compress=compress).report()
    named = [s["layers"] for s in report["steps"] if s["layers"]]
    assert named == [["fc1"], ["fc2"]]
    x = np.random.default_rng(1).standard_normal((1, 16)).astype(np.float32)
    from onnx.reference import ReferenceEvaluator

    want = ReferenceEvaluator(proto).run(None, {"x": x})[0]
    got = tbn_tvm.compile(proto, "llvm", compress=compress).run(x)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
