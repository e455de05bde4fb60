"""export_onnx: the graph is a valid inference graph, equals torch in onnxruntime and in tbn-tvm's
host build, keeps the compact tile (form="tile") or folds it (form="dense"), and the compiler
recognises every exported layer with the p it was trained with."""

from __future__ import annotations

import json
from collections import OrderedDict

import numpy as np
import pytest

torch = pytest.importorskip("torch")
onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")
pytest.importorskip("onnxscript")

import tbn_reference as ref  # noqa: E402
from onnx import numpy_helper  # noqa: E402
from torch import nn  # noqa: E402

from tbn_tvm.errors import TBNError  # noqa: E402
from tbn_tvm.torch import TiledLayer, export_onnx, tbnify  # noqa: E402
from tbn_tvm.torch.export import METADATA_KEY  # noqa: E402
from tbn_tvm.torch.models import digits_cnn  # noqa: E402

TRAINING_OPS = {"ReduceSum", "ReduceMean", "Abs", "Sign", "Where", "Greater", "GreaterOrEqual", "Clip"}


def _randomise_bn(model: nn.Module, seed: int, negative_gamma: bool = False) -> None:
    """Give BatchNorm layers non-trivial statistics and affine parameters (gamma in [0.5, 1.5],
    or of random sign with ``negative_gamma``)."""
    g = torch.Generator().manual_seed(seed)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm1d | nn.BatchNorm2d):
            with torch.no_grad():
                m.running_mean.copy_(torch.randn(m.num_features, generator=g) * 0.3)
                m.running_var.copy_(torch.rand(m.num_features, generator=g) + 0.5)
                gamma = torch.rand(m.num_features, generator=g) + 0.5
                if negative_gamma:
                    gamma *= torch.randint(0, 2, (m.num_features,), generator=g) * 2 - 1
                m.weight.copy_(gamma)
                m.bias.copy_(torch.randn(m.num_features, generator=g) * 0.2)


def mlp_bn(p: int, negative_gamma: bool = False) -> nn.Module:
    torch.manual_seed(0)
    model = nn.Sequential(
        OrderedDict(
            [
                ("fc1", nn.Linear(64, 128, bias=False)),
                ("bn1", nn.BatchNorm1d(128)),
                ("r1", nn.ReLU()),
                ("fc2", nn.Linear(128, 256, bias=False)),
                ("bn2", nn.BatchNorm1d(256)),
                ("r2", nn.ReLU()),
                ("fc3", nn.Linear(256, 10)),
            ]
        )
    )
    tbnify(model, p=p, min_size=0)
    _randomise_bn(model, 1, negative_gamma)
    return model.eval()


def cnn(p: int) -> nn.Module:
    torch.manual_seed(1)
    model = tbnify(digits_cnn(), p=p, min_size=0)
    _randomise_bn(model, 2)
    return model.eval()


def conv1d_net(p: int) -> nn.Module:
    torch.manual_seed(2)
    model = nn.Sequential(
        nn.Conv1d(3, 16, 3, padding=1),
        nn.ReLU(),
        nn.Conv1d(16, 32, 5, stride=2, bias=False),
        nn.ReLU(),
        nn.Conv1d(32, 32, 1),
        nn.ReLU(),
        nn.Flatten(),
        nn.Linear(32 * 4, 5),
    )
    return tbnify(model, p=p, min_size=0).eval()


def no_bn_mlp(p: int) -> nn.Module:
    torch.manual_seed(3)
    model = nn.Sequential(
        nn.Linear(32, 256), nn.ReLU(), nn.Linear(256, 512, bias=False), nn.ReLU(), nn.Linear(512, 8)
    )  # fc2: 131,072 weights, tile > the exporter's fold limit
    return tbnify(model, p=p, min_size=0).eval()


MODELS = {
    "mlp_bn": (mlp_bn, (1, 64)),
    "cnn": (cnn, (1, 1, 8, 8)),
    "conv1d": (conv1d_net, (1, 3, 12)),
    "no_bn_mlp": (no_bn_mlp, (1, 32)),
}
CASES = [("mlp_bn", 4), ("cnn", 8), ("conv1d", 2), ("no_bn_mlp", 4)]


def torch_out(model, x: np.ndarray) -> np.ndarray:
    with torch.no_grad():
        return model(torch.from_numpy(x)).numpy()


def ort_out(path, x: np.ndarray) -> np.ndarray:
    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    sess = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
    return sess.run(None, {sess.get_inputs()[0].name: x})[0]


def trained_layers(model) -> list[tuple[str, list[int], int]]:
    return [
        (name, list(m.weight.shape), m.p) for name, m in model.named_modules() if isinstance(m, TiledLayer)
    ]


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """Every (model, form) exported once for the whole module."""
    out = {}
    folder = tmp_path_factory.mktemp("export")
    for name, p in CASES:
        build, shape = MODELS[name]
        model = build(p)
        example = torch.from_numpy(np.random.default_rng(0).random(shape, dtype=np.float32))
        for form in ("tile", "dense"):
            path = folder / f"{name}-{form}.onnx"
            result = export_onnx(model, example, path, form=form)
            out[(name, form)] = (model, path, result)
    return out


@pytest.mark.parametrize("form", ["tile", "dense"])
@pytest.mark.parametrize("name,p", CASES)
def test_valid_static_inference_graph_equal_to_torch(exported, name, p, form):
    model, path, result = exported[(name, form)]
    proto = onnx.load(str(path))
    onnx.checker.check_model(proto, full_check=True)
    ops = {n.op_type for n in proto.graph.node}
    assert not ops & TRAINING_OPS, f"training ops left in the graph: {ops & TRAINING_OPS}"
    dims = [d.dim_value for d in proto.graph.input[0].type.tensor_type.shape.dim]
    assert dims == list(MODELS[name][1]) and all(d > 0 for d in dims)  # static, batch 1
    assert result.opset >= 18
    assert result.max_abs_diff is not None and result.max_abs_diff <= 1e-5
    meta = {e.key: e.value for e in proto.metadata_props}
    layers = json.loads(meta[METADATA_KEY])["layers"]
    assert [(d["name"], d["weight_shape"], d["p"]) for d in layers] == trained_layers(model)
    rng = np.random.default_rng(5)
    for _ in range(3):
        x = rng.standard_normal(MODELS[name][1]).astype(np.float32)
        np.testing.assert_allclose(ort_out(path, x), torch_out(model, x), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("name,p", CASES)
def test_tile_form_stores_the_tile_and_scales(exported, name, p):
    model, path, result = exported[(name, "tile")]
    inits = {i.name: numpy_helper.to_array(i) for i in onnx.load(str(path)).graph.initializer}
    for lname, m in model.named_modules():
        if not isinstance(m, TiledLayer):
            continue
        w = m.weight.detach().numpy()
        a = None if m.alpha_weight is None else m.alpha_weight.detach().numpy()
        tile = inits[f"{lname}.tile"]
        assert tile.shape == (1, w.size // m.p)
        np.testing.assert_array_equal(tile[0], ref.tile_bits(w, m.p))  # numpy re-derivation
        want_scales = ref.alphas(a if a is not None else w, m.p, m.alpha)
        np.testing.assert_allclose(inits[f"{lname}.scales"].reshape(-1), want_scales, rtol=1e-6)
    full_sizes = {m.weight.numel() for m in model.modules() if isinstance(m, TiledLayer) and m.p > 1}
    assert not any(v.size in full_sizes for v in inits.values()), "a tiled weight was folded to dense"
    assert {"Expand", "Mul", "Reshape"} <= set(result.ops)


def test_tile_form_is_smaller_than_dense(exported):
    _, _, tile = exported[("no_bn_mlp", "tile")]
    _, _, dense = exported[("no_bn_mlp", "dense")]
    assert tile.file_bytes < 0.5 * dense.file_bytes


def _periodic_with_copy_scales(w: np.ndarray, p: int) -> bool:
    """The compiler's criterion, re-derived: flat W = (p copies of one ±1 tile) x one scale per copy."""
    chunks = w.reshape(p, -1).astype(np.float64)
    signs = np.sign(chunks)
    if not (signs == signs[0]).all() or (signs == 0).any():
        return False
    mags = np.abs(chunks)
    return bool(np.allclose(mags, mags[:, :1], rtol=1e-6, atol=0))


def test_dense_form_weights_are_tiled_tensors(exported):
    model, path, _ = exported[("no_bn_mlp", "dense")]  # no BatchNorm: weights are exactly B_hat
    inits = [numpy_helper.to_array(i) for i in onnx.load(str(path)).graph.initializer]
    for m in (m for m in model.modules() if isinstance(m, TiledLayer)):
        shape = tuple(m.weight.shape)
        candidates = [a for a in inits if a.shape in (shape, shape[::-1])]
        assert candidates, f"no initializer of shape {shape}"
        w = candidates[0] if candidates[0].shape == shape else candidates[0].T
        assert _periodic_with_copy_scales(np.ascontiguousarray(w), m.p)
        assert not _periodic_with_copy_scales(np.ascontiguousarray(w), 2 * m.p)  # p is the trained one


def test_dynamic_batch_and_model_left_unchanged(tmp_path):
    model = mlp_bn(2).train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    result = export_onnx(model, torch.rand(1, 64), tmp_path / "m.onnx", dynamic_batch=True)
    assert model.training
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert isinstance(result.input_shape[0], str)
    x = np.random.default_rng(0).random((5, 64), dtype=np.float32)
    want = torch_out(model.eval(), x)
    np.testing.assert_allclose(ort_out(tmp_path / "m.onnx", x), want, rtol=1e-5, atol=1e-5)


def test_export_errors(tmp_path):
    model = mlp_bn(2)
    with pytest.raises(TBNError, match="no such folder"):
        export_onnx(model, torch.rand(1, 64), tmp_path / "missing" / "m.onnx")
    with pytest.raises(TBNError, match="form"):
        export_onnx(model, torch.rand(1, 64), tmp_path / "m.onnx", form="packed")
    with pytest.raises(TBNError, match=r"shape \[1x63\] does not fit the model.*takes 64 features"):
        export_onnx(model, torch.rand(1, 63), tmp_path / "m.onnx")
    assert list(tmp_path.iterdir()) == []  # nothing half-written


# --------------------------------------------------------------------- through the tbn-tvm compiler
def _expected_formats(model) -> list[tuple[list[int], str, int]]:
    return [
        (list(m.weight.shape), "tiled" if m.p > 1 else "binary", m.p)
        for m in model.modules()
        if isinstance(m, TiledLayer)
    ]


@pytest.mark.parametrize("form", ["tile", "dense"])
@pytest.mark.parametrize("name,p", CASES)
def test_compiler_recognises_every_layer_with_the_trained_p(exported, name, p, form):
    pytest.importorskip("tbn_tvm.api")
    import tbn_tvm

    model, path, _ = exported[(name, form)]
    layers = tbn_tvm.inspect(str(path)).to_dict()["layers"]
    got = [(d["weight_shape"], d["format"], d["p"]) for d in layers]
    assert got == _expected_formats(model)


@pytest.mark.slow
@pytest.mark.parametrize("form", ["tile", "dense"])
@pytest.mark.parametrize("name,p", [("mlp_bn", 4), ("cnn", 8), ("conv1d", 2)])
def test_round_trip_torch_onnxruntime_tbn_tvm(exported, name, p, form):
    pytest.importorskip("tbn_tvm.api")
    import tbn_tvm

    model, path, _ = exported[(name, form)]
    compiled = tbn_tvm.compile(str(path), target="llvm")
    shape = MODELS[name][1]
    xs = np.random.default_rng(11).standard_normal((4, *shape)).astype(np.float32)
    got = np.asarray(compiled.run(xs))
    for i, x in enumerate(xs):
        want = torch_out(model, x)
        np.testing.assert_allclose(ort_out(path, x), want, rtol=1e-5, atol=1e-5)
        np.testing.assert_allclose(got[i], want, rtol=1e-5, atol=1e-5)
    report = compiled.report()
    assert [(d["weight_shape"], d["format"], d["p"]) for d in report["layers"]] == _expected_formats(model)


def test_compiler_recognises_tiling_after_folding_a_batchnorm_with_negative_gamma(tmp_path):
    pytest.importorskip("tbn_tvm.api")
    import tbn_tvm

    model = mlp_bn(4, negative_gamma=True)
    path = tmp_path / "neg.onnx"
    result = export_onnx(model, torch.rand(1, 64), path, form="dense")
    assert "BatchNormalization" not in result.ops  # folded into the Gemm weights
    layers = tbn_tvm.inspect(str(path)).to_dict()["layers"]
    assert [(d["weight_shape"], d["format"], d["p"]) for d in layers] == _expected_formats(model)
